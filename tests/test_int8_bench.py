"""`mnas bench --dtype int8` on the host: the int8 file is written, timed, stored under its own
label and sha256, and never stands in for the float model (or the other way round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_bench import FAST, mnas, stored

from mnas.space.tflite_schema import op_signatures

pytestmark = pytest.mark.slow


def test_bench_int8_is_stored_apart_from_float_and_reused_as_itself(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    out = mnas(db, "bench", "mnasnet-small", "--resolution", "96", "--dtype", "int8", *FAST, "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["model_name"] == "mnasnet-small-int8" and row["median_ms"] > 0 and not row["reused"]
    (written,) = (tmp_path / "models").glob("mnasnet-small-int8-96-*.tflite")
    ops = [o["op"] for o in op_signatures(written.read_bytes())]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    float_run = json.loads(mnas(db, "bench", "mnasnet-small", "--resolution", "96", *FAST, "--json").stdout)
    assert [(r["model_name"], r["reused"]) for r in float_run] == [("mnasnet-small", False)]
    again = json.loads(mnas(db, "bench", "mnasnet-small", "--resolution", "96", "--dtype", "int8", *FAST,
                            "--json").stdout)
    assert [(r["reused"], r["median_ms"]) for r in again] == [(True, row["median_ms"])]
    assert len(stored(db)) == 2


def test_bench_dtype_with_a_tflite_file_is_bad_input(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    assert mnas(tmp_path / "r.db", "arch", "export", "mnasnet-small", "-o", str(model), "--resolution", "96").returncode == 0
    out = mnas(tmp_path / "r.db", "bench", str(model), "--dtype", "int8", *FAST)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--dtype int8 applies to zoo names and arch strings: a .tflite file is timed as it is" in out.stderr
    assert stored(tmp_path / "r.db") == []
