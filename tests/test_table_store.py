"""Latency tables: resumable builds on fake devices, the store, and the portable file format."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from predictor_fakes import SyntheticDevice, synthetic_layer_ms, write_key

from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.errors import MeasurementError, MnasError
from mnas.predictor.build import build_table
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.table import (
    LatencyTable,
    TableMeta,
    export_table,
    import_table,
    list_tables,
    load_table,
    open_table,
    save_table,
)
from mnas.space.arch import LayerSig
from mnas.space.search_space import SearchSpace

SMALL = SearchSpace(stages=((1, 16, 1, 1), (6, 24, 2, 2)))
RES = 32
CONFIG = BenchConfig(warmup_runs=2, num_runs=10)
ALL_KEYS = [layer.key for layer in enumerate_layers(SMALL, RES)]


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "mnas.db")


def build(store: ResultsStore, devices: list[SyntheticDevice], name: str = "t", **kwargs: object) -> object:
    return build_table(SMALL, RES, devices, store, name, CONFIG, writer=write_key, progress=False, **kwargs)


def measured_keys(*devices: SyntheticDevice) -> Counter[str]:
    return Counter(call.removeprefix("layer ") for device in devices for call in device.calls)


def entry_rows(store: ResultsStore) -> list[tuple[str, int]]:
    with store.transaction() as conn:
        return conn.execute("SELECT layer_key, table_id FROM table_entries ORDER BY rowid").fetchall()


def test_full_build_stores_every_layer_once_with_its_conditions(store: ResultsStore) -> None:
    device = SyntheticDevice()
    result = build(store, [device])
    assert (result.total_layers, result.already_stored, result.measured, result.remaining) == (580, 0, 580, 0)
    assert measured_keys(device) == Counter(ALL_KEYS)
    table = load_table(store, "t", resolution=RES, runtime="synthetic")
    assert list(table.entries) == ALL_KEYS
    for key, entry in table.entries.items():
        assert entry.median_ms == pytest.approx(synthetic_layer_ms(LayerSig.from_key(key)), rel=1e-12)
        assert entry.runs == 10
    entry = table.entries[ALL_KEYS[5]]
    assert store.get_measurement(entry.measurement_id).median_ms == entry.median_ms
    assert entry.measurement["conditions"] == CONFIG.conditions_key()
    assert entry.measurement["pinned_cores"] == [7]
    assert table.meta.device_name == "fakephone" and table.meta.pinned_core == 7
    assert table.meta.conditions == CONFIG.conditions_key() and table.meta.device_ids == ("fake0",)
    # a second run finds nothing to do and measures nothing
    again = SyntheticDevice()
    result = build(store, [again])
    assert (result.already_stored, result.measured, again.calls) == (580, 0, [])


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), MeasurementError("phone went away")])
def test_killed_build_resumes_without_duplicates(store: ResultsStore, interrupt: BaseException) -> None:
    first = SyntheticDevice(fail_after=37, failure=interrupt)
    expected = KeyboardInterrupt if isinstance(interrupt, KeyboardInterrupt) else MeasurementError
    with pytest.raises(expected):
        build(store, [first])
    assert len(first.calls) == 37
    assert [key for key, _ in entry_rows(store)] == ALL_KEYS[:37]  # every finished layer kept, nothing else

    second = SyntheticDevice()
    result = build(store, [second])
    assert (result.already_stored, result.measured, result.remaining) == (37, 580 - 37, 0)
    rows = entry_rows(store)
    assert len(rows) == 580 and len({key for key, _ in rows}) == 580
    assert measured_keys(first, second) == Counter(ALL_KEYS)  # each layer asked exactly once overall


def test_all_devices_failing_is_one_measurement_error(store: ResultsStore) -> None:
    device = SyntheticDevice(fail_after=3, failure=RuntimeError("adb: device offline"))
    with pytest.raises(MeasurementError, match=(
            r"^latency table 't': every device failed \(first: device fake0: RuntimeError: adb: device offline\); "
            r"3 layers stored, 577 remaining: fix the device and re-run to resume$")):
        build(store, [device])


def test_two_devices_share_a_build_and_survive_one_failing(store: ResultsStore) -> None:
    good = SyntheticDevice("fake-a")
    bad = SyntheticDevice("fake-b", fail_after=4, failure=MeasurementError("fake-b: timeout"))
    result = build(store, [good, bad])
    assert result.failures == ["device fake-b: MeasurementError: fake-b: timeout"]
    assert result.measured == 580 and result.remaining == 0
    assert result.per_device["fake-b"] == 4 and result.per_device["fake-a"] == 576
    assert measured_keys(good, bad) == Counter(ALL_KEYS)  # the failed layer went to the other device
    assert load_table(store, "t").meta.device_ids == ("fake-a", "fake-b")


def test_limit_and_progress_bar(store: ResultsStore, capsys: pytest.CaptureFixture[str]) -> None:
    result = build_table(SMALL, RES, [SyntheticDevice()], store, "t", CONFIG, limit=10, writer=write_key,
                         progress=True)
    assert (result.measured, result.remaining) == (10, 570)
    err = capsys.readouterr().err
    assert "table t" in err and "10/10" in err
    assert [key for key, _ in entry_rows(store)] == ALL_KEYS[:10]


def test_build_refuses_mismatched_table_and_devices(store: ResultsStore) -> None:
    build(store, [SyntheticDevice()], limit=1)
    with pytest.raises(MnasError, match=r"^latency table 't': resolution is 32: expected 40 \(choose another table name\)$"):
        build_table(SMALL, 40, [SyntheticDevice()], store, "t", CONFIG, writer=write_key, progress=False)
    with pytest.raises(MnasError, match=r"^latency table 't': runtime_version is '1.0': expected '2.0'"):
        build(store, [SyntheticDevice(runtime_version="2.0")])
    with pytest.raises(MnasError, match=(
            r"^device fake1: runtime_version is '2.0': expected '1.0' like device fake0 "
            r"\(one table holds one device model and runtime\)$")):
        build(store, [SyntheticDevice(), SyntheticDevice("fake1", runtime_version="2.0")], name="u")
    with pytest.raises(MnasError, match=r"^build_table: no devices: expected at least one device to measure on$"):
        build(store, [])


def test_load_table_errors(store: ResultsStore) -> None:
    meta = TableMeta(name="empty", device_name="fakephone", runtime="synthetic", runtime_version="1.0",
                     resolution=RES, conditions=CONFIG.conditions_key())
    open_table(store, meta)
    with pytest.raises(MnasError, match=r"^latency table 'empty' has no entries: expected a built table \(run `mnas table build`\)$"):
        load_table(store, "empty")
    assert load_table(store, "empty", allow_empty=True).entries == {}
    build(store, [SyntheticDevice()], limit=3)
    with pytest.raises(MnasError, match=r"^latency table 't' was measured with resolution 32: expected 224$"):
        load_table(store, "t", resolution=224)
    with pytest.raises(MnasError, match=r"^latency table 't' was measured with runtime 'synthetic': expected 'ai-edge-litert'$"):
        load_table(store, "t", runtime="ai-edge-litert")
    with pytest.raises(MnasError, match=r"^latency table 'nope' not found: expected one of \['empty', 't'\]$"):
        load_table(store, "nope")
    rows = list_tables(store)
    assert [(r["name"], r["entries"], r["resolution"], r["device"]) for r in rows] == [
        ("empty", 0, RES, "fakephone"), ("t", 3, RES, "fakephone")]


@pytest.mark.parametrize("suffix", [".json.gz", ".json"])
def test_export_import_round_trip_is_exact(store: ResultsStore, tmp_path: Path, suffix: str) -> None:
    build(store, [SyntheticDevice()], limit=50)
    table = load_table(store, "t")
    path = export_table(table, tmp_path / f"out/table{suffix}")
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    back = import_table(path)
    assert back.meta == table.meta and back.entries == table.entries and back.table_id is None
    assert export_table(back, tmp_path / f"again{suffix}").read_bytes() == raw  # byte-identical
    # into another store, under a new name, and back out unchanged
    other = ResultsStore(tmp_path / "other.db")
    table_id = save_table(other, back, name="imported")
    loaded = load_table(other, table_id)
    assert loaded.entries == table.entries and loaded.meta.name == "imported"
    with pytest.raises(MnasError, match=r"^latency table 'imported' already exists in the store: expected a new name$"):
        save_table(other, back, name="imported")


def test_import_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MnasError, match=r"field 'format' is 'something-else': expected 'mnas-latency-table'$"):
        import_table(bad)
    broken = tmp_path / "y.json.gz"
    broken.write_bytes(gzip.compress(b"{not json"))
    with pytest.raises(MnasError, match=r"not valid \(gzipped\) JSON"):
        import_table(broken)
    table = LatencyTable(TableMeta("m", "d", "r", "1", RES, "c"), {})
    good = export_table(table, tmp_path / "z.json")
    data = json.loads(good.read_text())
    data["entries"] = [{"layer_key": "stem:conv:32x32x3:o32:k3:s2", "median_ms": 1.0}]
    good.write_text(json.dumps(data))
    with pytest.raises(MnasError, match=r"entries\[0\]: expected an object with fields \["):
        import_table(good)
    with pytest.raises(MnasError, match=r"No such file or directory: expected a readable \.json or \.json\.gz file$"):
        import_table(tmp_path / "missing.json")


def test_plan_counts_stored_layers_and_estimates_time(store: ResultsStore) -> None:
    from mnas.predictor.build import plan_build

    fresh = plan_build(SMALL, RES, store, "t", devices=2)
    assert (fresh["stored"], fresh["remaining"], fresh["per_layer_s"], fresh["estimate_s"]) == (0, 580, 2.0, 580.0)
    assert fresh["layers"]["total"] == 580 and fresh["per_layer_basis"] == "default"
    build(store, [SyntheticDevice()], limit=30)  # the fake reports wall_s = 0.01 s
    planned = plan_build(SMALL, RES, store, "t")
    assert (planned["stored"], planned["remaining"], planned["per_layer_s"]) == (30, 550, 0.01)
    assert planned["estimate_s"] == pytest.approx(5.5)
    assert planned["per_layer_basis"] == "median wall time of 30 stored layers"
