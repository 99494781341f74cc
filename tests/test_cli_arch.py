"""`mnas arch ...` end to end through the console entry point (exit codes, JSON, errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnas.space import zoo
from mnas.space.cost import arch_cost


def mnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnas.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_list_json_has_every_zoo_model_with_cost() -> None:
    out = mnas("arch", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["model_name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(zoo.names())
    assert rows["mnasnet-a1"]["mult_adds"] == arch_cost(zoo.get("mnasnet-a1")).mult_adds


def test_show_json_blocks_sum_to_total() -> None:
    out = mnas("arch", "show", "mnasnet-a1", "--multiplier", "0.5", "--resolution", "192", "--json")
    data = json.loads(out.stdout)
    assert data["resolution"] == 192
    assert sum(b["mult_adds"] for b in data["blocks"]) == data["mult_adds"]
    assert data["params"] == arch_cost(zoo.get("mnasnet-a1", 0.5), 192).params


def test_sample_is_seeded_and_parses_back() -> None:
    first = json.loads(mnas("arch", "sample", "--seed", "5", "--json").stdout)
    again = json.loads(mnas("arch", "sample", "--seed", "5", "--json").stdout)
    assert first == again
    shown = json.loads(mnas("arch", "show", first["arch"], "--json").stdout)
    assert shown["arch_hash"] == first["arch_hash"]


def test_export_writes_a_tflite(tmp_path: Path) -> None:
    target = tmp_path / "small.tflite"
    out = mnas("arch", "export", "mnasnet-small", "-o", str(target), "--resolution", "96", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["size_bytes"] == target.stat().st_size
    assert target.read_bytes()[4:8] == b"TFL3"


@pytest.mark.parametrize(("args", "message"), [
    (("arch", "show", "mnasnet-z9"), "unknown zoo model 'mnasnet-z9'"),
    (("arch", "show", "r1_k3_s11_e1_i32_o16_q"), "token 'q'"),
    (("arch", "show", "r-2_k3_s11_e1_i32_o16"), "field 'r' = -2"),
    (("arch", "show", "mnasnet-a1", "--multiplier", "2"), "depth multiplier 2: expected a value in [0.35, 1.4]"),
    (("arch", "export", "mnasnet-a1", "-o", "x.tflite", "--resolution", "64"), "resolution 64: expected an input size in [96, 320]"),
])
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    out = mnas(*args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
