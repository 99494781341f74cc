"""`mnas bench` on the host end to end: stored results, reuse on re-run, bad input stores nothing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# --min-cpu-share 0: the contention guard flags nothing, so reuse is exact whatever the load
# (flagging is tested in tests/test_bench_contention_flag.py)
FAST = ["--runs", "3", "--warmup", "1", "--min-secs", "0", "--min-cpu-share", "0"]


def mnas(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnas.cli", "--db", str(db), *args], capture_output=True, text=True,
                          timeout=300, cwd=db.parent)


def stored(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT device_id, runtime, median_ms FROM measurements ORDER BY id").fetchall()


def test_bench_two_zoo_models_stores_both_and_reuses_them(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    out = mnas(db, "bench", "mnasnet-small", "mobilenet-v2", "--resolution", "96", *FAST, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["model_name"] for r in rows] == ["mnasnet-small", "mobilenet-v2"]
    assert all(r["runtime"] == "ai-edge-litert" and r["runs"] >= 3 and r["median_ms"] > 0 for r in rows)
    assert all(len(r["pinned_cores"]) == 1 for r in rows)
    assert len(stored(db)) == 2
    # a re-run under the same conditions reuses the stored figures: nothing duplicated
    again = json.loads(mnas(db, "bench", "mnasnet-small", "mobilenet-v2", "--resolution", "96", *FAST, "--json").stdout)
    assert [r["reused"] for r in again] == [True, True]
    assert [r["median_ms"] for r in again] == [r["median_ms"] for r in rows]
    assert len(stored(db)) == 2
    forced = mnas(db, "bench", "mnasnet-small", "--resolution", "96", *FAST, "--force", "--json")
    assert forced.returncode == 0 and len(stored(db)) == 3


@pytest.mark.parametrize(("args", "message"), [
    (("missing.tflite",), "missing.tflite: no such model file"),
    (("mnasnet-a1", "--device", "nosuchphone"), "nosuchphone"),
    (("mnasnet-a1", "--runs", "0"), "num_runs=0"),  # BenchConfig checks its own settings, once
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    db = tmp_path / "r.db"
    out = mnas(db, "bench", *args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert stored(db) == []


def test_corrupt_tflite_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(b"\x00" * 64)
    db = tmp_path / "r.db"
    out = mnas(db, "bench", str(bad))
    assert out.returncode == 2
    assert "not a TFLite model" in out.stderr and stored(db) == []
