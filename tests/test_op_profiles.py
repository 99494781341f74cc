"""Op profiles: parsed from benchmark_model, stored per measurement, printed, exported; the host says why it has none.

The phone path is tested end to end on a loopback phone whose benchmark_model replays a
recorded real op table (`REPLAY_RUNNER`): the host runner has no per-op profiler and prints
none of its own (tests/test_bm_runner.py), so a real recorded profile stands in for the
phone's, appended to the runner's real timings of the model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cli_run import run_mnas_db as mnas
from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb

from mnas.bench.bm_output import parse_benchmark_output
from mnas.bench.measure import PreparedModel
from mnas.bench.op_profile import HOST_NOTE, missing_profile_note, op_rows, top_ops
from mnas.bench.store import BENCH_MIGRATIONS, ResultsStore
from mnas.bench.types import BenchConfig, LatencyStats, Measurement, OpProfileRow
from mnas.errors import MnasError

DATA = Path(__file__).parent / "data" / "benchmark_model"
PROFILE_LOG = DATA / "tf2.8_riscv64_qemu_4threads_opprofiling_full.txt"


def recorded_profile() -> list[OpProfileRow]:
    out = parse_benchmark_output(PROFILE_LOG.read_text())
    assert out.op_profile is not None
    return out.op_profile


def measurement(op_profile: list[OpProfileRow] | None, *, runtime: str = "benchmark_model", i: int = 0,
                profile_ops: bool = True) -> Measurement:
    return Measurement(
        device_id="SER4" if runtime == "benchmark_model" else "host",
        device_name="pixel4" if runtime == "benchmark_model" else "host",
        model_sha256=f"{i:064x}", model_path=f"/models/m{i}.tflite", runtime=runtime,
        runtime_version="sha256:0123456789ab", config=BenchConfig(profile_ops=profile_ops),
        stats=LatencyStats(count=50, mean_us=2950340.0, std_us=109798.0, min_us=2727568.0, max_us=3189954.0,
                           median_us=2940000.0),
        op_profile=op_profile, timestamp=1_700_000_000.0 + i)


# ============================================================================ the recorded profile


def test_the_recorded_real_profile_parses_whole() -> None:
    rows = recorded_profile()
    assert len(rows) == 31  # "Number of nodes executed: 31"
    assert [r.node_type for r in rows].count("CONV_2D") == 15 and [r.node_type for r in rows].count(
        "DEPTHWISE_CONV_2D") == 13  # the tool's own "Summary by node type" counts
    # the nodes' averages add up to the profiler's own footer average (2.9499e+06 us), to print precision
    assert sum(r.avg_ms for r in rows) == pytest.approx(2949.9, rel=1e-4)
    assert sum(r.percent for r in rows) == pytest.approx(100.0, abs=0.02)
    top = top_ops(op_rows(rows), 3)
    assert [(t["run_order"], t["avg_ms"], t["percent"]) for t in top] == [
        (10, 277.374, 9.403), (16, 249.023, 8.442), (20, 248.456, 8.423)]  # the tool's "Top by Computation Time"
    assert top[0]["name"] == "[MobilenetV1/MobilenetV1/Conv2d_5_pointwise/Relu6]:10"


# ============================================================================ the store


def test_store_keeps_the_op_table_by_measurement_id_in_run_order(tmp_path: Path) -> None:
    rows = recorded_profile()
    with ResultsStore(tmp_path / "r.db") as store:
        with_profile = store.add_measurement(measurement(rows))
        without = store.add_measurement(measurement(None, i=1))
        assert store.op_profile(with_profile) == rows
        assert store.op_profile(without) is None
        with pytest.raises(MnasError, match="no measurement with id 99"):
            store.op_profile(99)
        counts = store.read("SELECT measurement_id, COUNT(*) FROM op_profiles GROUP BY measurement_id")
    assert counts == [(with_profile, 31)]


def test_a_table_without_start_column_comes_back_with_nan_start(tmp_path: Path) -> None:
    rows = [OpProfileRow("QUANTIZE", math.nan, 0.199, 0.203, 1.328, 1.328, 0.0, 1, "[tfl.quantize]:0"),
            OpProfileRow("Add (ND, QS8)", math.nan, 0.024, 0.024, 0.156, 1.484, 0.0, 3, "Delegate/Add (ND, QS8):9")]
    with ResultsStore(tmp_path / "r.db") as store:
        back = store.op_profile(store.add_measurement(measurement(rows)))
    assert back is not None and [math.isnan(r.start_ms) for r in back] == [True, True]
    assert [(r.node_type, r.avg_ms, r.times_called, r.name) for r in back] == [
        (r.node_type, r.avg_ms, r.times_called, r.name) for r in rows]


def test_migration_copies_profiles_stored_before_the_table_existed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    nan_start = [OpProfileRow("CONV_2D", math.nan, 1.5, 1.25, 60.0, 60.0, 0.0, 1, "conv"),
                 OpProfileRow("SOFTMAX", math.nan, 0.5, 0.75, 40.0, 100.0, 0.0, 2, "softmax")]
    with ResultsStore(path) as store:
        first = store.add_measurement(measurement(recorded_profile()))
        second = store.add_measurement(measurement(nan_start, i=1))
        none = store.add_measurement(measurement(None, i=2))
    # make it a version-2 store, as written before migration 3: no op_profiles table
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE op_profiles")
        conn.execute("DROP TABLE model_labels")  # and what migration 4 added
        conn.execute("ALTER TABLE measurements DROP COLUMN model_label")
        conn.execute("UPDATE mnas_schema SET version = 2 WHERE component = 'bench'")
    with ResultsStore(path) as store:
        assert store.schema_version("bench") == len(BENCH_MIGRATIONS) >= 3
        assert store.op_profile(first) == recorded_profile()
        again = store.op_profile(second)
        assert again is not None and [(r.node_type, r.avg_ms, r.times_called) for r in again] == [
            ("CONV_2D", 1.25, 1), ("SOFTMAX", 0.75, 2)] and all(math.isnan(r.start_ms) for r in again)
        assert store.op_profile(none) is None


# ============================================================================ mnas results ops


@pytest.fixture()
def filled_db(tmp_path: Path) -> tuple[Path, int, int]:
    path = tmp_path / "r" / "mnas.db"
    with ResultsStore(path) as store:
        phone = store.add_measurement(measurement(recorded_profile()), label="mobilenet-v1")
        host = store.add_measurement(measurement(None, runtime="ai-edge-litert", i=1))
    return path, phone, host


def test_results_ops_prints_json_and_top(capsys: pytest.CaptureFixture[str], filled_db: tuple[Path, int, int]) -> None:
    db, phone, _ = filled_db
    code, out, err = mnas(capsys, db, "results", "ops", str(phone), "--json")
    assert code == 0 and err == ""
    payload = json.loads(out)
    assert payload["measurement_id"] == phone and payload["op_profile_note"] is None
    assert payload["op_profile"] == op_rows(recorded_profile())
    code, out, _ = mnas(capsys, db, "results", "ops", str(phone), "--top", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 and "run_order" in lines[0]
    assert "277.374" in lines[1] and "Conv2d_5_pointwise" in lines[1] and "Conv2d_8_pointwise" in lines[2]


@pytest.mark.parametrize("name, fmt", [("ops.csv", None), ("ops.json", None), ("ops.txt", "csv")])
def test_results_ops_exports_round_trip(capsys: pytest.CaptureFixture[str], filled_db: tuple[Path, int, int],
                                        tmp_path: Path, name: str, fmt: str | None) -> None:
    db, phone, _ = filled_db
    target = tmp_path / "out" / name
    code, out, _ = mnas(capsys, db, "results", "ops", str(phone), "-o", str(target), *(["--format", fmt] if fmt else []))
    assert code == 0 and out.strip() == f"wrote 31 ops of measurement {phone} to {target} ({fmt or target.suffix[1:]})"
    expected = op_rows(recorded_profile())
    if target.suffix == ".json":
        assert json.loads(target.read_text())["op_profile"] == expected
        return
    with target.open(newline="") as handle:
        back = list(csv.DictReader(handle))
    assert [row["name"] for row in back] == [row["name"] for row in expected]
    assert [float(row["avg_ms"]) for row in back] == [row["avg_ms"] for row in expected]
    assert [int(row["times_called"]) for row in back] == [row["times_called"] for row in expected]


def test_results_ops_of_a_host_measurement_says_why_there_is_none(capsys: pytest.CaptureFixture[str],
                                                                   filled_db: tuple[Path, int, int],
                                                                   tmp_path: Path) -> None:
    db, _, host = filled_db
    code, out, err = mnas(capsys, db, "results", "ops", str(host), "--json")
    payload = json.loads(out)
    assert code == 0 and payload["op_profile"] is None and payload["op_profile_note"] == HOST_NOTE
    assert err.strip() == f"note: measurement {host}: {HOST_NOTE}"
    target = tmp_path / "x.csv"
    code, _, err = mnas(capsys, db, "results", "ops", str(host), "-o", str(target))
    assert code == 2 and not target.exists()
    assert err.strip().splitlines()[-1] == f"mnas: error: measurement {host}: nothing to write to {target}: {HOST_NOTE}"
    code, _, err = mnas(capsys, db, "results", "ops", str(host), "-o", str(tmp_path / "x.xlsx"))
    assert code == 2 and "cannot tell the format from the suffix '.xlsx'" in err
    code, _, err = mnas(capsys, db, "results", "ops", "404")
    assert code == 2 and err.strip() == f"mnas: error: {db}: no measurement with id 404"


# ============================================================================ mnas bench --profile-ops, host side


def test_missing_profile_notes() -> None:
    assert missing_profile_note(measurement(recorded_profile())) is None
    assert missing_profile_note(measurement(None, runtime="ai-edge-litert")) == HOST_NOTE
    assert "reused" in str(missing_profile_note(measurement(None, profile_ops=False), reused=True))
    assert "taken without op profiling" in str(missing_profile_note(measurement(None, profile_ops=False)))
    assert "printed no op-profiling table" in str(missing_profile_note(measurement(None)))


def test_host_rows_get_the_note_and_an_estimate_labelled_as_such(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mnas.cli_op_profile import attach_op_profiles, echo_top_ops
    from mnas.predictor.selection import host_runtime
    from mnas.predictor.table import TableEntry, TableMeta, store_table
    from mnas.space.resolve import resolve_arch

    arch = resolve_arch("mnasnet-a1", 1.0)
    layers = arch.layers(96)
    runtime, version = host_runtime()
    known = {layer.key: 0.1 * (i + 1) for i, layer in enumerate(layers[:-2])}  # the last two layers are missing
    with ResultsStore(tmp_path / "r.db") as store:
        store_table(store, TableMeta("host-96", "host", runtime, version, 96, BenchConfig().conditions_key()),
                    [TableEntry(key, ms, ms, 0.0, 5, 0.0, measurement={"min_ms": ms}) for key, ms in known.items()])
        host = measurement(None, runtime=runtime)
        outcomes = [SimpleNamespace(measurement=host, reused=False,
                                    model=PreparedModel(Path("a.tflite"), "mnasnet-a1", "0" * 64, str(arch), 96)),
                    SimpleNamespace(measurement=host, reused=False,
                                    model=PreparedModel(Path("b.tflite"), "b.tflite", "1" * 64))]
        rows: list[dict[str, Any]] = [{"device_id": "host", "model_name": "mnasnet-a1"}, {"device_id": "host", "model_name": "b"}]
        attach_op_profiles(rows, outcomes, store)
    assert rows[0]["op_profile"] is None and rows[0]["op_profile_note"] == HOST_NOTE
    estimate = rows[0]["op_profile_estimate"]
    assert estimate["estimated"] is True and "ESTIMATED" in estimate["label"] and estimate["statistic"] == "min"
    expected = [known.get(layer.key) for layer in layers]  # a repeated layer counts each time it runs
    assert expected[-2:] == [None, None] and expected.count(None) == 2
    assert [layer["estimated_ms"] for layer in estimate["layers"]] == expected
    assert estimate["missing_layers"] == 2
    assert estimate["sum_estimated_ms"] == pytest.approx(sum(ms for ms in expected if ms is not None))
    assert sum(layer["estimated_percent"] or 0 for layer in estimate["layers"]) == pytest.approx(100.0)
    assert rows[1]["op_profile_estimate"] is None and "not an arch" in rows[1]["op_profile_note"]
    err = capsys.readouterr().err
    assert err.count(HOST_NOTE) == 1  # said once, not once per row
    echo_top_ops(rows, count=3)
    out = capsys.readouterr().out
    assert "top 3 layers: host mnasnet-a1: ESTIMATED from the latency table" in out
    assert f"{max(known.values()):.3f}" in out


@pytest.mark.slow
def test_bench_profile_ops_on_the_host_says_so_in_text_and_json(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "r.db"
    quick = ("--runs", "3", "--warmup", "1", "--min-secs", "0")
    code, out, err = mnas(capsys, db, "bench", "mnasnet-small", "--resolution", "96", *quick, "--profile-ops", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["op_profile"] is None and row["op_profile_note"].startswith(HOST_NOTE)
    assert f"note: {HOST_NOTE}" in err
    code, out, err = mnas(capsys, db, "bench", "mnasnet-small", "--resolution", "96", *quick, "--profile-ops")
    assert code == 0 and f"note: {HOST_NOTE}" in err and "results:" in out


# ============================================================================ the phone path (loopback)

# benchmark_model on the loopback phone: the real host runner times the model; when asked for an
# op profile, the recorded real profile (PROFILE_LOG's regular-runs section) is printed after it,
# as benchmark_model prints its tables after the timings.
REPLAY_RUNNER = '''\
import runpy, sys
from pathlib import Path

text = Path({log!r}).read_text()
table = text[text.index("Operator-wise Profiling Info for Regular Benchmark Runs:"):]
sys.argv = ["benchmark_model", *sys.argv[1:]]
try:
    runpy.run_module("mnas.bench.bm_runner", run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
    if "--enable_op_profiling=true" in sys.argv:
        print(table, end="", flush=True)
    raise
'''


@pytest.mark.adb
@pytest.mark.slow
@requires_adb
def test_profile_ops_on_a_loopback_phone_stores_and_prints_the_op_table(tmp_path: Path) -> None:
    from test_phone_integration import QUICK, cli_env, fake_binary, run_cli

    runner = tmp_path / "replay_runner.py"
    runner.write_text(REPLAY_RUNNER.format(log=str(PROFILE_LOG)))
    db = tmp_path / "mnas.db"
    with isolated_adb_server(tmp_path / "adb") as adb, \
            loopback_phones(adb, tmp_path / "phones", "pixel4", host_core=sorted(os.sched_getaffinity(0))[0],
                            bm_runner=str(runner)) as phones:
        env = cli_env(adb, tmp_path / "phones")
        args = ("--db", str(db), "bench", "mnasnet-small", "--resolution", "96", "--device", phones[0].serial, *QUICK,
                "--benchmark-binary", str(fake_binary(tmp_path)), "--profile-ops")
        text = run_cli(env, *args, timeout_s=180)
        assert text.rc == 0, text.describe()
        assert "top 10 of 31 ops by time" in text.stdout and "Conv2d_5_pointwise" in text.stdout
        (row,) = json.loads(run_cli(env, *args, "--json", timeout_s=180).stdout)  # reused: the stored profile
    assert row["reused"] is True and row["op_profile_note"] is None
    assert row["op_profile"] == op_rows(recorded_profile())
    with ResultsStore(db) as store:
        (stored_id,) = [r["id"] for r in store.recent_measurements()]
        assert store.op_profile(stored_id) == recorded_profile()
        assert store.get_measurement(stored_id).config.profile_ops is True
