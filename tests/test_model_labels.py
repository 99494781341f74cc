"""Names are labels, not identities: a model benchmarked under two names keeps both, and each
measurement keeps the name given in its own run (`model_labels`, `measurements.model_label`).

Also `mnas results list --device/--model/--since` (filters in SQL, bad dates one line, exit 2)
and the migration of a store written before labels existed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cli_run import run_mnas_db as mnas
from tflite_fixtures import small_conv

from mnas.bench.store import BENCH_MIGRATIONS, DuplicateMeasurement, ResultsStore
from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement

DAY1 = dt.datetime(2026, 11, 1, 12, 0).timestamp()  # local time, as --since reads a naive date
DAY2 = dt.datetime(2026, 11, 20, 12, 0).timestamp()


def measurement(sha: str, *, device: str = "pixel4", at: float = DAY1, runs: int = 50, median_us: float = 5000.0,
                path: str = "/m.tflite") -> Measurement:
    return Measurement(
        device_id="host" if device == "host" else f"SER-{device}", device_name=device, model_sha256=sha,
        model_path=path, runtime="litert" if device == "host" else "benchmark_model", runtime_version="v1",
        config=BenchConfig(num_runs=runs), timestamp=at,
        stats=LatencyStats(count=runs, mean_us=median_us, std_us=10.0, min_us=median_us - 100, max_us=median_us + 100,
                           median_us=median_us))


SHA_A, SHA_B = "a1" * 32, "b2" * 32


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    """One model stored as first.tflite, measured again later as second.tflite (--force), plus another model."""
    path = tmp_path / "mnas.db"
    with ResultsStore(path) as store:
        store.add_measurement(measurement(SHA_A, at=DAY1, path="/x/first.tflite"), label="first.tflite")
        store.add_measurement(measurement(SHA_A, at=DAY2, path="/x/second.tflite", median_us=5100.0),
                              label="second.tflite", force=True)
        store.add_measurement(measurement(SHA_B, device="host", at=DAY2), label="mnasnet-a1", arch="stem32,head1280")
    return path


def test_each_measurement_keeps_the_name_of_its_run_and_the_model_keeps_both(db: Path) -> None:
    with ResultsStore(db) as store:
        rows = {r["id"]: r for r in store.recent_measurements(None)}
        assert rows[1]["model_label"] == "first.tflite" and rows[2]["model_label"] == "second.tflite"
        assert store.model_labels([SHA_A]) == {SHA_A: ["first.tflite", "second.tflite"]}
        assert store.model_labels() == {SHA_A: ["first.tflite", "second.tflite"], SHA_B: ["mnasnet-a1"]}
        frame = store.measurements_frame()
        assert list(frame["model_label"]) == ["first.tflite", "second.tflite", "mnasnet-a1"]


def test_a_refused_duplicate_still_keeps_the_name_it_was_given(db: Path) -> None:
    with ResultsStore(db) as store:
        with pytest.raises(DuplicateMeasurement):
            store.add_measurement(measurement(SHA_A, at=DAY2 + 5), label="third.tflite")
        assert store.model_labels([SHA_A])[SHA_A] == ["first.tflite", "second.tflite", "third.tflite"]
        assert len(store.recent_measurements(None)) == 3  # nothing stored but the name
        store.add_model_label(SHA_A, "second.tflite")  # a name used again is not repeated
        store.add_model_label("ff" * 32, "unknown.tflite")  # a model never stored: nothing to attach it to
        assert store.model_labels() == {SHA_A: ["first.tflite", "second.tflite", "third.tflite"],
                                        SHA_B: ["mnasnet-a1"]}


def test_results_list_shows_the_name_given_in_each_run(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = mnas(capsys, db, "results", "list", "--json")
    assert code == 0, err
    rows = {r["id"]: r for r in json.loads(out) if not r["published"]}
    assert [rows[i]["model_name"] for i in (1, 2, 3)] == ["first.tflite", "second.tflite", "mnasnet-a1"]
    assert rows[1]["model_labels"] == rows[2]["model_labels"] == ["first.tflite", "second.tflite"]
    code, out, _ = mnas(capsys, db, "results", "list")
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.split()}
    assert "first.tflite" in lines["1"] and "second.tflite" in lines["2"]


@pytest.mark.parametrize(("args", "ids"), [
    (("--device", "pixel4"), [2, 1]),
    (("--device", "SER-pixel4"), [2, 1]),
    (("--device", "host"), [3]),
    (("--model", "first.tflite"), [2, 1]),  # any name of the model finds all its measurements
    (("--model", "second.tflite", "--device", "host"), []),
    (("--model", "stem32,head1280"), [3]),  # its arch string
    (("--model", SHA_B[:8]), [3]),  # a sha256 prefix, as the table shows it
    (("--since", "2026-11-10"), [3, 2]),
    (("--since", "2026-11-20T12:00"), [3, 2]),
    (("--since", "2026-11-20T12:00:01"), []),
    (("--since", "2026-11-10", "--model", "first.tflite", "--limit", "1"), [2]),
])
def test_results_list_filters(db: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                              ids: list[int]) -> None:
    code, out, err = mnas(capsys, db, "results", "list", "--json", *args)
    assert code == 0, err
    assert [r["id"] for r in json.loads(out) if not r["published"]] == ids


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "30/11/2026", ""])
def test_a_bad_since_is_one_line_exit_2(db: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, out, err = mnas(capsys, db, "results", "list", "--since", bad)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and f"--since {bad!r}: expected an ISO-8601 date or datetime" in err


def test_migration_keeps_the_name_stored_before_labels_existed(db: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    shutil.copyfile(db, old)
    with sqlite3.connect(old) as conn:  # a version-3 store: no model_labels, no per-measurement label
        conn.execute("DROP TABLE model_labels")
        conn.execute("ALTER TABLE measurements DROP COLUMN model_label")
        conn.execute("UPDATE mnas_schema SET version = 3 WHERE component = 'bench'")
    with ResultsStore(old) as store:
        assert store.schema_version("bench") == len(BENCH_MIGRATIONS) >= 4
        # the old store held one name per model (the last used): each measurement gets that one
        assert [r["model_label"] for r in store.recent_measurements(None)] == [
            "mnasnet-a1", "second.tflite", "second.tflite"]
        assert store.model_labels() == {SHA_A: ["second.tflite"], SHA_B: ["mnasnet-a1"]}


@pytest.mark.slow
def test_bench_under_a_second_file_name_keeps_both_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Acceptance: the same .tflite benchmarked as a.tflite, then (reused) as b.tflite."""
    first = small_conv(tmp_path)
    second = tmp_path / "renamed.tflite"
    shutil.copyfile(first, second)
    db = tmp_path / "r" / "mnas.db"
    quick = ("--runs", "3", "--warmup", "1", "--min-secs", "0", "--json")
    code, out, err = mnas(capsys, db, "bench", str(first), *quick)
    assert code == 0, err
    code, out, err = mnas(capsys, db, "bench", str(second), *quick)
    assert code == 0, err
    [second_run] = json.loads(out)
    code, out, err = mnas(capsys, db, "results", "list", "--json")
    listed = {r["id"]: r for r in json.loads(out) if not r["published"]}
    # reused (the usual case), or measured again when the host run was flagged contended/throttled
    first_id = min(listed)
    assert listed[first_id]["model_name"] == first.name  # the run that measured it keeps its name
    if not second_run["reused"]:
        assert listed[second_run["stored_id"]]["model_name"] == second.name
    assert all(r["model_labels"] == [first.name, second.name] for r in listed.values())


class CleanPhone:
    """A phone whose every figure is clean (never throttled nor contended), so a second run reuses it."""

    device_id = "phone1"

    def __init__(self) -> None:
        self.calls = 0

    def profile(self) -> DeviceProfile:
        return DeviceProfile(self.device_id, "pixel-fake", "adb", "Pixel Fake", "arm", 7, 2_400_000,
                             "benchmark_model", "2.18")

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        self.calls += 1
        data = Path(model_path).read_bytes()
        runs = [1000.0, 1010.0, 1020.0]
        return Measurement(device_id=self.device_id, device_name="pixel-fake",
                           model_sha256=hashlib.sha256(data).hexdigest(), model_path=str(model_path),
                           runtime="benchmark_model", runtime_version="2.18", config=config,
                           stats=LatencyStats.from_runs(runs), runs_us=runs)


def test_a_reused_figure_under_another_name_keeps_both_names(tmp_path: Path) -> None:
    from mnas.bench.harness import run_benchmarks
    from mnas.bench.measure import PreparedModel

    sha = hashlib.sha256(b"model").hexdigest()
    phone = CleanPhone()
    with ResultsStore(tmp_path / "mnas.db") as store:
        for name in ("a.tflite", "b.tflite", "a.tflite"):
            path = tmp_path / name
            path.write_bytes(b"model")
            [outcome] = run_benchmarks([phone], [PreparedModel(path, name, sha)], BenchConfig(num_runs=3), store)
            assert outcome.error is None
        assert phone.calls == 1  # measured once, reused twice
        assert store.model_labels() == {sha: ["a.tflite", "b.tflite"]}
        [row] = store.recent_measurements(None)
        assert row["model_label"] == "a.tflite"
