"""`mnas bench parse LOG --store`: a hand-run benchmark_model log kept as a measurement with its provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_op_profiles import PROFILE_LOG, mnas, recorded_profile

from mnas.bench.hand_log import UNKNOWN_BINARY, log_flags
from mnas.bench.measure import find_reusable
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig, DeviceProfile
from mnas.errors import MnasError

DATA = Path(__file__).parent / "data" / "benchmark_model"
LOG = str(PROFILE_LOG)  # MobileNet V1, 4 threads, 50 runs, op profiling on; a real benchmark_model log
CUT_LOG = DATA / "tf2.1_pixel4_taskset_1thread.txt"  # a real log whose summary line was cut off


def stored(db: Path) -> list[tuple[int, str, str]]:
    if not db.exists():
        return []
    with ResultsStore(db) as store:
        return [(r["id"], r["device_id"], r["runtime_version"]) for r in store.recent_measurements(None)]


def profile(device_id: str, device_name: str, version: str) -> DeviceProfile:
    return DeviceProfile(device_id, device_name, "adb", "Pixel 4", "", 7, None, "benchmark_model", version)


def test_a_log_is_stored_with_its_provenance_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    code, out, err = mnas(capsys, db, "bench", "parse", LOG, "--store", "--device", "pixel4", "--model",
                          "mobilenet-v1", "--json")
    assert code == 0, err
    info = json.loads(out)["stored"]
    assert info["already_stored"] is False and info["runtime_version"] == UNKNOWN_BINARY
    assert info["conditions"] == "threads=4;warmup=1;runs=50;min_secs=1;core=auto;profile_ops=1"  # a profiled log
    assert info["log_sha256"] == hashlib.sha256(PROFILE_LOG.read_bytes()).hexdigest()
    with ResultsStore(db) as store:
        m = store.get_measurement(info["measurement_id"])
        assert store.op_profile(info["measurement_id"]) == recorded_profile()  # its op table, stored like a phone's
        model_row = store.read("SELECT label, path FROM models WHERE sha256 = ?", (m.model_sha256,))
    # the model hash is the zoo export's, as `mnas bench mobilenet-v1` writes it
    assert model_row[0][0] == "mobilenet-v1"
    assert hashlib.sha256(Path(model_row[0][1]).read_bytes()).hexdigest() == m.model_sha256 == info["model_sha256"]
    assert (m.device_id, m.device_name, m.runtime, m.pinned_cores) == ("pixel4", "pixel4", "benchmark_model", ())
    assert (m.stats.count, m.stats.mean_us, m.stats.min_us, m.init_us) == (50, 2950340.0, 2727568.0, 17187.0)
    assert m.median_ms is None  # this build printed no median: none is made up
    assert m.extra["source"] == "hand-run log" and m.extra["pinned"] == "unknown"
    assert m.extra["flags"] == {"threads": 4, "num_runs": 50, "warmup_runs": 1, "min_secs": 1.0, "profile_ops": True,
                                "delegate": "default"}
    assert m.extra["log_params"]["Graph"] == "./mobilenet_v1_1.0_224.tflite"
    code, out, _ = mnas(capsys, db, "results", "list", "--json")
    (row,) = json.loads(out)
    assert (row["id"], row["source"], row["device_config"], row["model_name"], row["median_ms"]) == (
        info["measurement_id"], "hand-run log", "pixel4", "mobilenet-v1", None)
    code, out, _ = mnas(capsys, db, "results", "list")
    assert code == 0 and "hand-run log" in out.splitlines()[1]


def test_the_same_log_twice_is_stored_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    args = ("bench", "parse", LOG, "--store", "--device", "pixel4", "--model", "mobilenet-v1")
    assert mnas(capsys, db, *args)[0] == 0
    code, out, _ = mnas(capsys, db, *args)
    assert code == 0 and f"{LOG}: not stored again: the same log is measurement 1" in out
    # the same log named another device is still that one measurement, not a second
    code, out, _ = mnas(capsys, db, *args[:4], "--device", "pixel6", *args[6:], "--json")
    assert code == 0 and json.loads(out)["stored"]["measurement_id"] == 1
    assert stored(db) == [(1, "pixel4", UNKNOWN_BINARY)]


def test_a_stored_log_is_reused_under_a_measured_runs_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF not really")
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()
    with ResultsStore(db) as store:  # the phone as `mnas bench` records it: serial SER4, config pixel4
        store.upsert_device(profile("SER4", "pixel4", f"sha256:{sha[:12]}"))
    code, out, err = mnas(capsys, db, "bench", "parse", LOG, "--store", "--device", "pixel4", "--model",
                          "mobilenet-v1", "--benchmark-binary", str(binary), "--json")
    assert code == 0, err
    info = json.loads(out)["stored"]
    # the runtime version is the phone path's: the binary's hash (bench.adb.run.runtime_version)
    assert (info["device_id"], info["runtime_version"]) == ("SER4", f"sha256:{sha[:12]}")
    phone = profile("SER4", "pixel4", f"sha256:{sha[:12]}")
    same = BenchConfig(warmup_runs=1, num_runs=50, min_secs=1.0, num_threads=4, profile_ops=True)  # a profiled log
    with ResultsStore(db) as store:
        found = find_reusable(store, phone, info["model_sha256"], same)
        assert [measurement_id for _, measurement_id in found] == [info["measurement_id"]]
        for other in (BenchConfig(warmup_runs=1, num_runs=50, min_secs=1.0, num_threads=4),  # unprofiled
                      BenchConfig(warmup_runs=1, num_runs=50, min_secs=1.0, num_threads=1),
                      BenchConfig(warmup_runs=5, num_runs=50, min_secs=1.0, num_threads=4)):
            assert find_reusable(store, phone, info["model_sha256"], other) == []
        assert find_reusable(store, profile("SER4", "pixel4", "sha256:ffffffffffff"), info["model_sha256"], same) == []
    # another log of the same model under the same conditions is that measurement, as a re-run would be
    other_log = tmp_path / "again.txt"
    other_log.write_text(PROFILE_LOG.read_text().replace("count=50 first=2990275", "count=50 first=2990276"))
    code, out, _ = mnas(capsys, db, "bench", "parse", str(other_log), "--store", "--device", "SER4", "--model",
                        "mobilenet-v1", "--benchmark-binary", str(binary))
    assert code == 0 and "not stored again: a measurement of this model on this device under the same conditions" in out
    assert len(stored(db)) == 1


@pytest.mark.parametrize("args, message", [
    (("--store", "--model", "mobilenet-v1"), "--store needs --device: expected --device NAME --model FILE_OR_NAME"),
    (("--store", "--device", "pixel4"), "--store needs --model: expected --device NAME --model FILE_OR_NAME"),
    (("--store", "--device", "pixel4", "--model", "no-such-net"), "unknown zoo model 'no-such-net'"),
    (("--store", "--device", "pixel4", "--model", "missing.tflite"), "missing.tflite: no such model file"),
    (("--store", "--device", "pixel99", "--model", "mobilenet-v1"), "--device 'pixel99': no such device in the store"),
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: tuple[str, ...], message: str) -> None:
    db = tmp_path / "mnas.db"
    code, out, err = mnas(capsys, db, "bench", "parse", LOG, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("mnas: error: ") and message in err
    assert stored(db) == []


def test_logs_that_are_not_a_whole_run_are_not_stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    notes = tmp_path / "notes.txt"
    notes.write_text("I ran it twice and it was fast.\n")
    code, _, err = mnas(capsys, db, "bench", "parse", str(notes), "--store", "--device", "pixel4", "--model",
                        "mobilenet-v1")
    assert code == 2 and err.strip() == f"mnas: error: {notes}: no benchmark_model output (no timing, memory or " \
                                        "profiling line)"
    code, _, err = mnas(capsys, db, "bench", "parse", str(CUT_LOG), "--store", "--device", "pixel4", "--model",
                        "mobilenet-v1")
    assert code == 2 and f"{CUT_LOG}: not stored: the log is incomplete" in err
    assert stored(db) == []


def test_log_flags_read_the_parameter_lines() -> None:
    base = {"Num threads": "2"}
    assert log_flags(base, "l") == {"threads": 2, "num_runs": 50, "warmup_runs": 1, "min_secs": 1.0,
                                    "profile_ops": False, "delegate": "default"}  # benchmark_model's defaults
    given = {**base, "Min num runs": "200", "Min warmup runs": "3", "Min runs duration (seconds)": "0.5"}
    assert {k: log_flags(given, "l")[k] for k in ("num_runs", "warmup_runs", "min_secs")} == {
        "num_runs": 200, "warmup_runs": 3, "min_secs": 0.5}
    assert log_flags({**base, "Use xnnpack": "1"}, "l")["delegate"] == "xnnpack"
    assert log_flags({**base, "Use xnnpack": "0"}, "l")["delegate"] == "none"
    assert log_flags({**base, "Use gpu": "1"}, "l")["delegate"] == "gpu"
    assert log_flags({**base, "Use NNAPI": "1", "Use xnnpack": "0"}, "l")["delegate"] == "nnapi"
    assert log_flags({"#threads used for CPU inference": "4"}, "l")["threads"] == 4
    assert log_flags({}, "l", threads=3)["threads"] == 3
    with pytest.raises(MnasError, match=r"l: the log does not say how many threads ran .*: pass --threads N"):
        log_flags({}, "l")
    with pytest.raises(MnasError, match="the log says 2 threads, --threads says 4"):
        log_flags(base, "l", threads=4)
    with pytest.raises(MnasError, match="more than one delegate"):
        log_flags({**base, "Use gpu": "1", "Use xnnpack": "1"}, "l")
    with pytest.raises(MnasError, match=r"'Min num runs: \[many\]': expected a whole number"):
        log_flags({**base, "Min num runs": "many"}, "l")
