"""ResultsStore: round-trips, queries, versioned migrations, refusal of foreign files, and
several writer processes at once."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mnas.bench.store import APPLICATION_ID, BENCH_MIGRATIONS, ResultsStore, measurement_row
from mnas.bench.types import (
    BenchConfig,
    DeviceProfile,
    LatencyStats,
    Measurement,
    OpProfileRow,
    latency_ms,
)
from mnas.errors import MnasError


def make_measurement(i: int = 0, **overrides) -> Measurement:
    fields = dict(
        device_id="SER4",
        device_name="pixel4",
        model_sha256=f"{i:064x}",
        model_path=f"/models/m{i}.tflite",
        runtime="benchmark_model",
        runtime_version="sha256:0123456789ab",
        config=BenchConfig(warmup_runs=5, num_runs=50, min_secs=1.0, core=None),
        stats=LatencyStats(count=50, mean_us=20810.2 + i, std_us=140.0, min_us=20598.0,
                           max_us=21302.0, median_us=20790.5 + i, p90_us=21001.0),
        runs_us=[20810.0, 20811.5],
        init_us=5123.0,
        first_us=31250.0,
        warmup_avg_us=21400.5,
        pinned_cores=(7,),
        cpu_model="msmnile cpu7 (prime)",
        temps_before_c={"cpu": 38.5, "battery": 30.0},
        temps_after_c={"cpu": 44.25, "battery": 30.5},
        freq_before_khz=2841600,
        freq_after_khz=1785600,
        max_freq_khz=2841600,
        throttled=False,
        peak_memory_mb=15.1,
        op_profile=[OpProfileRow("CONV_2D", 0.0, 1.5, 1.25, 10.0, 10.0, 0.0, 1, "conv1")],
        wall_s=2.5,
        timestamp=1_700_000_000.0 + i,
        extra={"attempts": 1, "cooldown_timed_out": False},
    )
    fields.update(overrides)
    return Measurement(**fields)


def test_measurement_round_trips_exactly(tmp_path):
    store = ResultsStore(tmp_path / "deep" / "er" / "mnas.db")  # parent folders created
    m = make_measurement(1)
    mid = store.add_measurement(m, label="mnasnet-a1", arch="a1-blockstring")
    assert store.get_measurement(mid) == m
    # and through a second process-like connection
    store.close()
    again = ResultsStore(tmp_path / "deep" / "er" / "mnas.db")
    assert again.get_measurement(mid) == m
    with pytest.raises(MnasError, match=r"mnas.db: no measurement with id 99"):
        again.get_measurement(99)


def test_columns_are_queryable(tmp_path):
    store = ResultsStore(tmp_path / "mnas.db")
    store.add_measurement(make_measurement(1), label="a1")
    store.add_measurement(make_measurement(2, throttled=True, device_name="pixel8",
                                           pinned_cores=(8,), config=BenchConfig(core=8)))
    frame = store.measurements_frame()
    assert list(frame["id"]) == [1, 2]
    row = frame.iloc[0]
    assert row["median_ms"] == pytest.approx(20.7915)
    assert row["mean_ms"] == pytest.approx(20.8112)
    assert row["std_ms"] == pytest.approx(0.14) and row["p90_ms"] == pytest.approx(21.001)
    assert row["cv"] == pytest.approx(140.0 / 20811.2)
    assert (row["init_ms"], row["first_ms"]) == (pytest.approx(5.123), pytest.approx(31.25))
    assert row["pinned_core"] == 7 and row["threads"] == 1 and row["warmup_runs"] == 5
    assert row["conditions_key"] == "threads=1;warmup=5;runs=50;min_secs=1;core=auto"
    assert row["temp_before_max_c"] == 38.5 and row["temp_after_max_c"] == 44.25
    assert row["label"] == "a1" and row["arch"] is None and "measurement_json" not in frame
    assert list(frame["throttled"]) == [False, True]
    only = store.measurements_frame(device_name="pixel8", throttled=True)
    assert list(only["id"]) == [2] and only.iloc[0]["conditions_key"].endswith("core=8")
    assert list(store.measurements_frame(label="a1")["id"]) == [1]
    assert list(store.measurements_frame(pinned_core=[7, 8])["id"]) == [1, 2]
    with pytest.raises(MnasError, match=r"unknown measurements filter 'devices' \(known: id, "):
        store.measurements_frame(devices="x")
    # a tool that printed no median (and no per-run latencies) stores no median: never the mean
    no_median = make_measurement(3)
    no_median.stats.median_us = None
    no_median.runs_us = None
    mid = store.add_measurement(no_median)
    assert pd.isna(store.measurements_frame(id=mid).iloc[0]["median_ms"])
    assert store.get_measurement(mid).median_ms is None
    with pytest.raises(MnasError, match=r"no median \(the tool printed only its mean, 20\.813 ms\): expected a "
                                        r"benchmark_model that prints the median, or the statistic 'min'$"):
        latency_ms(store.get_measurement(mid), "median")
    assert latency_ms(store.get_measurement(mid), "min") == pytest.approx(no_median.stats.min_us / 1000.0)


def test_find_measurement_returns_latest_under_same_conditions(tmp_path):
    store = ResultsStore(tmp_path / "mnas.db")
    old = make_measurement(5, timestamp=100.0)
    new = make_measurement(5, timestamp=200.0, stats=LatencyStats(50, 1.0, 0.1, 0.9, 1.1))
    other = make_measurement(5, timestamp=300.0, config=BenchConfig(num_runs=10))
    for m in (old, new, other):
        store.add_measurement(m, force=True)  # `new` duplicates `old`: stored only when forced
    key = BenchConfig(warmup_runs=5, num_runs=50, min_secs=1.0).conditions_key()
    found = store.find_measurement("SER4", f"{5:064x}", "benchmark_model", "sha256:0123456789ab", key)
    assert found == new
    assert store.find_measurement("SER4", f"{5:064x}", "benchmark_model", "other", key) is None


def test_models_and_devices(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x" * 1234)
    store = ResultsStore(tmp_path / "mnas.db")
    store.add_measurement(make_measurement(1, model_path=str(model)), label="first")
    store.add_measurement(make_measurement(1, model_path=str(model)), arch="arch-string", force=True)  # keeps label
    with store.transaction() as conn:
        rows = conn.execute("SELECT label, arch, path, size_bytes FROM models").fetchall()
    assert rows == [("first", "arch-string", str(model), 1234)]
    profile = DeviceProfile("SER4", "pixel4", "adb", "Pixel 4", "msmnile cpu7 (prime)", 7,
                            2841600, "benchmark_model", "sha256:0123456789ab")
    store.upsert_device(profile)
    moved = DeviceProfile(**{**profile.__dict__, "state": "offline"})
    store.upsert_device(moved)
    assert store.get_device("SER4") == moved and store.get_device("nope") is None


def test_component_migrations_are_ordered_versioned_and_idempotent(tmp_path):
    path = tmp_path / "mnas.db"
    store = ResultsStore(path)
    v1 = ["CREATE TABLE pred_tables (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"]
    v2 = v1 + ["ALTER TABLE pred_tables ADD COLUMN note TEXT DEFAULT 'a;b';"
               "CREATE TRIGGER pred_touch AFTER INSERT ON pred_tables BEGIN "
               "UPDATE pred_tables SET note = 'x;y' WHERE id = NEW.id; END;"]
    assert store.ensure_component_schema("predictor", v1) == 1
    assert store.ensure_component_schema("predictor", v1) == 1
    assert store.ensure_component_schema("predictor", v2) == 2
    with store.transaction() as conn:
        conn.execute("INSERT INTO pred_tables (name) VALUES ('t')")
        assert conn.execute("SELECT note FROM pred_tables").fetchone() == ("x;y",)
    assert store.schema_version("predictor") == 2 and store.schema_version("bench") == len(BENCH_MIGRATIONS)
    store.close()
    # an older mnas (knowing only v1 of predictor) refuses the newer file
    with pytest.raises(MnasError) as info:
        ResultsStore(path).ensure_component_schema("predictor", v1)
    assert str(info.value) == (f"{path}: schema of 'predictor' is version 2, newer than this "
                               "mnas knows (1); upgrade mnas to read it")


def test_failed_migration_rolls_back(tmp_path):
    store = ResultsStore(tmp_path / "mnas.db")
    with pytest.raises(sqlite3.OperationalError):
        store.ensure_component_schema("search", ["CREATE TABLE s1 (a);", "CREATE TABLE s1 (b);"])
    assert store.schema_version("search") == 0
    with store.transaction() as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 's1'").fetchall() == []


def test_refuses_foreign_and_newer_files(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(MnasError, match=r"junk.db: not a mnas results store \(file is not a database\)"):
        ResultsStore(junk)

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(MnasError) as info:
        ResultsStore(other)
    assert str(info.value) == (f"{other}: not a mnas results store (an SQLite database with tables "
                               "users and no mnas_schema table)")

    tagged = tmp_path / "tagged.db"
    with sqlite3.connect(tagged) as conn:
        conn.execute("PRAGMA application_id = 42")
    with pytest.raises(MnasError, match=r"application_id 0x2a, expected 0x6d6e6173"):
        ResultsStore(tagged)

    newer = tmp_path / "newer.db"
    ResultsStore(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE mnas_schema SET version = 7 WHERE component = 'bench'")
    with pytest.raises(MnasError) as info:
        ResultsStore(newer)
    assert str(info.value) == (f"{newer}: schema of 'bench' is version 7, newer than this mnas "
                               f"knows ({len(BENCH_MIGRATIONS)}); upgrade mnas to read it")
    with pytest.raises(MnasError, match=r"nowhere.db: no results database here"):
        ResultsStore(tmp_path / "nowhere.db", create=False)


def test_file_is_wal_and_marked(tmp_path):
    path = tmp_path / "mnas.db"
    ResultsStore(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_nested_transactions_join_and_roll_back_together(tmp_path):
    store = ResultsStore(tmp_path / "mnas.db")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_measurement(make_measurement(1))
            raise RuntimeError("boom")
    assert store.recent_measurements() == []


def _writer(path: str, worker: int, count: int, start: Any, barrier: Any) -> None:
    start.wait(30)
    store = ResultsStore(path, busy_timeout_s=60)  # every process opens (and may create) it
    barrier.wait(30)  # then all write at the same time
    for i in range(count):
        m = make_measurement(worker * 1000 + i, device_id=f"W{worker}", timestamp=time.time())
        store.add_measurement(m, label=f"w{worker}-{i}")
    store.close()


def test_several_writer_processes_at_once(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers, count = 4, 100
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_writer, args=(path, w, count, start, barrier))
             for w in range(workers)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * workers  # no "database is locked"
    store = ResultsStore(path)
    frame = store.measurements_frame()
    assert len(frame) == workers * count
    assert sorted(frame["label"]) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(count))
    assert frame.groupby("device_id").size().to_dict() == {f"W{w}": count for w in range(workers)}
    # the writers really overlapped: their rows interleave in insertion order
    order = list(frame.sort_values("id")["device_id"])
    switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert switches >= workers
    # each row still round-trips
    assert store.get_measurement(int(frame["id"].iloc[-1])).device_id.startswith("W")


def test_recent_measurements_rows(tmp_path):
    store = ResultsStore(tmp_path / "mnas.db")
    for i in range(3):
        store.add_measurement(make_measurement(i), label=f"m{i}")
    rows = store.recent_measurements(limit=2)
    assert [r["id"] for r in rows] == [3, 2]
    assert rows[0]["model_label"] == "m2" and rows[0]["median_ms"] == pytest.approx(20.7925)
    assert set(rows[0]) == {"id", "timestamp", "device_id", "device_name", "model_sha256",
                            "model_label", "arch", "runtime", "runtime_version", "median_ms", "min_ms", "cv",
                            "throttled", "threads", "pinned_cores", "conditions_key"}


def test_store_path_is_a_folder(tmp_path):
    with pytest.raises(MnasError, match=r"is a folder, expected a results database file"):
        ResultsStore(tmp_path)


def test_measurement_json_keeps_nonfinite_and_none(tmp_path: Path):
    store = ResultsStore(tmp_path / "mnas.db")
    m = make_measurement(9, op_profile=None, runs_us=None, max_freq_khz=None, wall_s=None)
    assert store.get_measurement(store.add_measurement(m)) == m


# --------------------------------------------------------------------------- `mnas results`


def _filled_db(tmp_path: Path) -> Path:
    path = tmp_path / "r" / "mnas.db"
    store = ResultsStore(path)
    store.add_measurement(make_measurement(1), label="mnasnet-a1")
    store.add_measurement(make_measurement(2, throttled=True))
    store.close()
    return path


def test_results_list(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mnas.cli_results import results

    monkeypatch.setenv("MNAS_DB", str(_filled_db(tmp_path)))
    result = CliRunner().invoke(results, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["id"], r["device_config"], r["model_name"], r["runtime"], r["throttled"]) for r in rows] == [
        (2, "pixel4", f"{2:064x}"[:12], "benchmark_model", True),
        (1, "pixel4", "mnasnet-a1", "benchmark_model", False)]
    assert rows[1]["median_ms"] == pytest.approx(20.7915)
    assert rows[1]["cv"] == pytest.approx(140.0 / 20811.2)
    assert rows[1]["measured_at"] == "2023-11-14T22:13:21+00:00"  # ISO-8601, UTC (docs/json.md)
    table = CliRunner().invoke(results, ["--limit", "1"])  # `list` is the default command
    lines = table.output.splitlines()
    assert lines[0].split() == ["id", "time", "device", "model", "runtime", "median_ms", "cv",
                                "throttled", "source"]
    assert len(lines) == 2 and lines[1].split()[-4:] == [f"{20.7925:.3f}", "0.007", "yes", "measured"]

    monkeypatch.setenv("MNAS_DB", str(tmp_path / "none.db"))
    missing = CliRunner().invoke(results, ["list"])
    assert isinstance(missing.exception, MnasError)
    assert str(missing.exception).startswith(f"{tmp_path / 'none.db'}: no results database here")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_results_export(tmp_path, monkeypatch, fmt):
    import pandas as pd
    from click.testing import CliRunner

    from mnas.cli_results import results

    monkeypatch.setenv("MNAS_DB", str(_filled_db(tmp_path)))
    out = tmp_path / "out" / f"all.{fmt}"
    result = CliRunner().invoke(results, ["export", "--format", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 2 measurements to {out} ({fmt})"
    frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert list(frame["id"]) == [1, 2]
    assert list(frame["label"].fillna("")) == ["mnasnet-a1", ""]
    assert frame["median_ms"].tolist() == pytest.approx([20.7915, 20.7925])
    assert {"conditions_key", "runtime_version", "pinned_core", "temp_before_max_c"} <= set(frame)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
    # the format also follows from the suffix; an unknown suffix is an error
    assert CliRunner().invoke(results, ["export", "-o", str(out)]).exit_code == 0
    odd = CliRunner().invoke(results, ["export", "-o", str(tmp_path / "x.txt")])
    assert str(odd.exception) == (f"{tmp_path / 'x.txt'}: cannot tell the format from the suffix "
                                  "'.txt' (pass --format csv|parquet)")


def test_upgrade_from_v1_stops_passing_a_mean_off_as_a_median(tmp_path):
    """Bench migration 2 rebuilds `measurements` with a nullable median; old rows keep every
    column, and a row whose JSON had no median (v1 stored the mean there) gets NULL."""
    path = tmp_path / "old.db"
    with_median, without = make_measurement(1), make_measurement(2)
    without.stats.median_us, without.runs_us = None, None
    with sqlite3.connect(path) as conn:  # a store as the first mnas wrote it
        conn.executescript(BENCH_MIGRATIONS[0])
        conn.execute("CREATE TABLE mnas_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                     "updated_at REAL NOT NULL)")
        conn.execute("INSERT INTO mnas_schema VALUES ('bench', 1, 0)")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for m in (with_median, without):
            row = measurement_row(m)
            row["median_ms"] = row["median_ms"] if row["median_ms"] is not None else row["mean_ms"]  # v1's fallback
            conn.execute("INSERT OR IGNORE INTO models (sha256, path, added_at) VALUES (?, ?, 0)",
                         (m.model_sha256, m.model_path))
            conn.execute(f"INSERT INTO measurements ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    with ResultsStore(path, create=False) as store:
        assert store.schema_version("bench") == len(BENCH_MIGRATIONS)
        frame = store.measurements_frame()
        assert frame.iloc[0]["median_ms"] == pytest.approx(with_median.median_ms)
        assert pd.isna(frame.iloc[1]["median_ms"]) and frame.iloc[1]["mean_ms"] == pytest.approx(without.mean_ms)
        assert store.get_measurement(1).to_dict() == with_median.to_dict()
