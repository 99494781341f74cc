"""`mnas bench --json`: phones left out at selection are rows too, not only stderr lines (issue 11, point 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tflite_fixtures import small_conv

import mnas.bench.devices as devices_module
import mnas.bench.harness as harness_module
from mnas.bench.devices import _state_problem
from mnas.bench.harness import BenchOutcome
from mnas.cli import main
from mnas.cli_bench_run import outcome_row, skipped_rows

OFFLINE = _state_problem("192.168.1.7:5555", "offline")
UNAUTHORIZED = _state_problem("R58M", "unauthorized")
FAILED_PROBE = "device P4X: not measured: getprop answered nothing"


@pytest.fixture
def bench_with_skipped_phones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`mnas bench` where selection keeps one phone (PIX) and leaves three out; no device is run."""
    def fake_select(spec, *, unusable=None, **_options):
        assert unusable is not None
        unusable.extend([OFFLINE, UNAUTHORIZED, FAILED_PROBE])
        return [object()]

    def fake_run(devices, models, config, store=None, force=False, on_result=None, **_kwargs):
        outcomes = [BenchOutcome("PIX", model, None, None, error=f"PIX: {model.label}: boom") for model in models]
        for outcome in outcomes:
            if on_result is not None:
                on_result(outcome)
        return outcomes

    monkeypatch.setattr(devices_module, "select_devices", fake_select)
    monkeypatch.setattr(harness_module, "run_benchmarks", fake_run)
    first = small_conv(tmp_path)
    second = tmp_path / "second.tflite"
    second.write_bytes(first.read_bytes())
    return tmp_path, [first, second]


def test_json_has_a_row_for_every_skipped_phone_and_model(bench_with_skipped_phones,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path, models = bench_with_skipped_phones
    with pytest.raises(SystemExit) as info:
        main(["--db", str(tmp_path / "r.db"), "bench", *map(str, models), "--device", "all", "--json"])
    assert info.value.code == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert len(rows) == 2 + 3 * 2  # the measured phone's pairs, then every (skipped phone, model) pair
    skipped = rows[2:]
    assert [(r["device_id"], r["model_name"]) for r in skipped] == [
        ("192.168.1.7:5555", "small_conv.tflite"), ("192.168.1.7:5555", "second.tflite"),
        ("R58M", "small_conv.tflite"), ("R58M", "second.tflite"),
        ("P4X", "small_conv.tflite"), ("P4X", "second.tflite")]
    assert [r["error"] for r in skipped[::2]] == [OFFLINE, UNAUTHORIZED, FAILED_PROBE]
    assert all(r["stored_id"] is None and r["reused"] is False and r["model_sha256"] for r in skipped)
    assert all(set(r) == set(rows[0]) for r in skipped)  # the same keys as a measured pair's row
    # still on stderr, one line per phone
    for line in (OFFLINE, UNAUTHORIZED, FAILED_PROBE):
        assert f"mnas: error: {line}\n" in captured.err


def test_text_table_marks_skipped_phones(bench_with_skipped_phones, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path, models = bench_with_skipped_phones
    with pytest.raises(SystemExit):
        main(["--db", str(tmp_path / "r.db"), "bench", str(models[0]), "--device", "all"])
    out = capsys.readouterr().out
    assert sum(line.endswith(" skipped") for line in out.splitlines()) == 3 and "R58M" in out


def test_skipped_rows_have_the_outcome_row_keys(tmp_path: Path) -> None:
    from mnas.bench.models import prepare_model

    model = prepare_model(str(small_conv(tmp_path)), tmp_path / "models")
    measured = outcome_row(BenchOutcome("host", model, None, None, error="x"))
    (row,) = skipped_rows(["device ABC: state 'offline': expected 'device' (online)"], [model])
    assert set(row) == set(measured) and row["device_id"] == "ABC"
    (unnamed,) = skipped_rows(["something without a serial"], [model])
    assert unnamed["device_id"] is None and unnamed["error"] == "something without a serial"


def test_table_build_json_names_the_phones_left_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`mnas table build --json` (and calibrate/eval, through the same collector) lists skipped phones."""
    from mnas.bench.host import HostDevice

    def fake_select(spec, *, unusable=None, **_options):
        unusable.extend([OFFLINE, FAILED_PROBE])
        return [HostDevice()]

    monkeypatch.setattr(devices_module, "select_devices", fake_select)
    main(["--db", str(tmp_path / "r.db"), "table", "build", "--device", "all", "--resolution", "96",
          "--limit", "0", "--json"])
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["skipped_devices"] == [{"device_id": "192.168.1.7:5555", "error": OFFLINE},
                                          {"device_id": "P4X", "error": FAILED_PROBE}]
    assert f"mnas: warning: {OFFLINE}\n" in captured.err
