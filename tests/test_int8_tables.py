"""Latency tables, predictors and searches per dtype (issue 14 point 2), and op profiling in the reuse key.

A table holds one dtype: an int8 build times fully-quantized single-layer models (checked by
their sha256 against the writer's int8 bytes), is named `<default>-int8` and records its dtype;
a table stored before the field existed reads back as float32. Predictors are chosen per
dtype, and asking for int8 where only float32 exists is one line. A search's latency config
carries the dtype through its JSON round trip, and a measured search step times the int8 model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_mnas_db
from predictor_fakes import SyntheticDevice, write_key

from mnas.bench.measure import find_reusable
from mnas.bench.runtime import load_runtime
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.errors import MnasError
from mnas.predictor.build import build_table, network_writer
from mnas.predictor.fitting import fit_predictor
from mnas.predictor.registry import list_predictors, load_predictor, save_predictor
from mnas.predictor.selection import choose_table, default_table_name, load_device_predictor
from mnas.predictor.table import LatencyTable, export_table, import_table, list_tables, load_table
from mnas.search.run_config import LatencyConfig, RunConfig, new_run_config
from mnas.search.setup import build_latency
from mnas.space.arch import Arch, LayerSig
from mnas.space.search_space import SearchSpace
from mnas.space.tflite_writer import arch_to_bytes, layer_to_bytes

RUNTIME = load_runtime()
FLOAT_TABLE = f"host-r224-{RUNTIME.name}-{RUNTIME.version}"
INT8_TABLE = f"{FLOAT_TABLE}-int8"
TINY = ("--runs", "3", "--warmup", "1", "--min-secs", "0", "--tries", "1", "--min-cpu-share", "0")
SMALL = SearchSpace(stages=((1, 16, 1, 1), (6, 24, 2, 2)))
SMALL_ARCH = "stem32,r1_k3_s11_e1_i32_o16_noskip,head1280"


def run_cli(db: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`mnas --db DB ARGS` in this process: (exit code, stdout, stderr)."""
    return run_mnas_db(capsys, db, *args)


def cli_json(db: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run_cli(db, capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def cli_error(db: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run_cli(db, capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    return lines[0]


def float_host_store(db: Path) -> int:
    """A store with a float32 host table (synthetic figures under this host's runtime) and its predictor."""
    device = SyntheticDevice("host", device_name="host", runtime=RUNTIME.name, runtime_version=RUNTIME.version)
    with ResultsStore(db) as store:
        build_table(SMALL, 224, [device], store, FLOAT_TABLE, BenchConfig(warmup_runs=1, num_runs=3),
                    limit=12, writer=write_key, progress=False, guard=None)
        predictor, metrics = fit_predictor(load_table(store, FLOAT_TABLE))
        return save_predictor(store, predictor, predictor.table_id, metrics)


# ------------------------------------------------------------------------------ names and metadata

def test_default_table_names_gain_int8_and_float_names_are_unchanged() -> None:
    assert default_table_name("host", 224, "litert", "1.2.0") == "host-r224-litert-1.2.0"
    assert default_table_name("host", 224, "litert", "1.2.0", "int8") == "host-r224-litert-1.2.0-int8"
    assert default_table_name("pixel 4", 192, "tflite", "2.16", "int8") == "pixel-4-r192-tflite-2.16-int8"


def test_tables_stored_without_a_dtype_load_as_float32(tmp_path: Path) -> None:
    """An older mnas wrote table metadata without `dtype`: store rows and files read back as float32."""
    float_host_store(tmp_path / "mnas.db")
    with ResultsStore(tmp_path / "mnas.db") as store:
        meta = load_table(store, FLOAT_TABLE).meta.to_dict()
        assert meta["dtype"] == "float32"
        old = {k: v for k, v in meta.items() if k != "dtype"}
        with store.transaction() as conn:  # as an older version stored it
            conn.execute("UPDATE latency_tables SET meta = ? WHERE name = ?", (json.dumps(old), FLOAT_TABLE))
        table = load_table(store, FLOAT_TABLE)
        assert table.meta.dtype == "float32"
        assert [row["dtype"] for row in list_tables(store)] == ["float32"]
        assert [row["dtype"] for row in list_predictors(store)] == ["float32"]
        assert load_predictor(store, device="host", dtype="float32").dtype == "float32"
        with pytest.raises(MnasError, match=r"^no stored predictor matches device=host, dtype=int8: expected one fitted"):
            load_predictor(store, device="host", dtype="int8")
        path = export_table(table, tmp_path / "t.json")
    data = json.loads(path.read_text())
    del data["meta"]["dtype"]
    path.write_text(json.dumps(data))
    assert import_table(path).meta.dtype == "float32"


def test_an_int8_build_may_not_extend_a_float_table(tmp_path: Path) -> None:
    float_host_store(tmp_path / "mnas.db")
    device = SyntheticDevice("host", device_name="host", runtime=RUNTIME.name, runtime_version=RUNTIME.version)
    with ResultsStore(tmp_path / "mnas.db") as store, pytest.raises(MnasError) as caught:
        build_table(SMALL, 224, [device], store, FLOAT_TABLE, BenchConfig(warmup_runs=1, num_runs=3),
                    writer=write_key, progress=False, guard=None, dtype="int8")
    assert str(caught.value) == (f"latency table {FLOAT_TABLE!r}: dtype is 'float32': expected 'int8' "
                                 "(choose another table name)")


# ------------------------------------------------------------------------------ predictors by dtype

def test_int8_prediction_is_refused_in_one_line_when_only_float_exists(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    predictor_id = float_host_store(db)
    rows = cli_json(db, capsys, "predict", SMALL_ARCH, "--device", "host")
    assert rows[0]["predictor_id"] == predictor_id and rows[0]["table"] == FLOAT_TABLE
    assert cli_error(db, capsys, "predict", SMALL_ARCH, "--device", "host", "--dtype", "int8") == (
        "mnas: error: no int8 predictor for device 'host' at resolution 224 (only float32 predictors are stored): "
        "expected one fitted on a table of int8 models: `mnas table build --device host --resolution 224 --dtype int8`, "
        "then `mnas table fit --device host --resolution 224 --dtype int8`")
    assert cli_error(db, capsys, "predict", SMALL_ARCH, "--device", "host", "--dtype", "int8",
                     "--predictor", str(predictor_id)) == (
        f"mnas: error: predictor {predictor_id} predicts float32 models: expected int8 (pass --dtype float32, "
        "or a predictor fitted on a table of int8 models)")
    assert cli_error(db, capsys, "table", "fit", "--device", "host", "--dtype", "int8") == (
        "mnas: error: no int8 latency table for device 'host' (its tables are float32): expected one built with "
        "`mnas table build --device host --resolution 224 --dtype int8`")


def test_a_search_for_int8_refuses_before_training_without_an_int8_predictor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    float_host_store(db)
    line = cli_error(db, capsys, "search", "run", "--device", "host", "--dtype", "int8", "--accuracy", "cheap",
                     "--samples", "2")
    assert line.startswith("mnas: error: no int8 predictor for device 'host' at resolution 224 "
                           "(only float32 predictors are stored)")


def test_predictors_are_chosen_by_the_dtype_of_their_table(tmp_path: Path) -> None:
    """Two tables of one device model, float32 and int8 (synthetic figures): each dtype gets its own."""
    device = SyntheticDevice("fake0")
    config = BenchConfig(warmup_runs=1, num_runs=3)
    with ResultsStore(tmp_path / "mnas.db") as store:
        for name, dtype in (("f", "float32"), ("q", "int8")):
            build_table(SMALL, 64, [device], store, name, config, limit=12, writer=write_key, progress=False,
                        guard=None, dtype=dtype)
        ids = {}
        for name in ("q", "f"):  # the float one is fitted last: the latest predictor of the device
            predictor, metrics = fit_predictor(load_table(store, name))
            ids[name] = save_predictor(store, predictor, predictor.table_id, metrics)
            assert predictor.dtype == load_table(store, name).meta.dtype
        assert choose_table(store, "fakephone", 64).meta.name == "f"
        assert choose_table(store, "fakephone", 64, dtype="int8").meta.name == "q"
        assert choose_table(store, "fakephone", 64, table="q").meta.dtype == "int8"  # a named table: its own
        with pytest.raises(MnasError, match="^latency table 'q' was measured with dtype 'int8': expected 'float32'$"):
            choose_table(store, "fakephone", 64, table="q", dtype="float32")
        int8 = load_device_predictor(store, "fakephone", 64, None, dtype="int8")
        plain = load_device_predictor(store, "fakephone", 64, None)
        assert (int8.predictor_id, int8.dtype, plain.predictor_id, plain.dtype) == (ids["q"], "int8", ids["f"], "float32")
        assert {row["id"]: row["dtype"] for row in list_predictors(store)} == {ids["q"]: "int8", ids["f"]: "float32"}


# ------------------------------------------------------------------------------ an int8 build on the host

def test_int8_table_build_times_int8_layers_on_the_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    plan = cli_json(db, capsys, "table", "plan", "--device", "host", "--dtype", "int8")
    assert (plan["table"], plan["dtype"]) == (INT8_TABLE, "int8")
    built = cli_json(db, capsys, "table", "build", "--device", "host", "--dtype", "int8", "--limit", "3",
                     "--no-heal", *TINY)
    assert (built["table"], built["dtype"], built["measured"]) == (INT8_TABLE, "int8", 3)
    with ResultsStore(db) as store:
        table: LatencyTable = load_table(store, INT8_TABLE)
        assert table.meta.dtype == "int8" and len(table) == 3
        for key, entry in table.entries.items():  # the file timed is the writer's int8 model of that layer
            sig = LayerSig.from_key(key)
            int8_sha = hashlib.sha256(layer_to_bytes(sig, dtype="int8")).hexdigest()
            assert entry.measurement is not None and entry.measurement["model_sha256"] == int8_sha
            assert int8_sha != hashlib.sha256(layer_to_bytes(sig)).hexdigest()
    fit = cli_json(db, capsys, "table", "fit", "--device", "host", "--dtype", "int8")
    assert (fit["table"], fit["dtype"]) == (INT8_TABLE, "int8")
    listed = cli_json(db, capsys, "table", "list")
    [table_row], [predictor_row] = listed["tables"], listed["predictors"]
    assert (table_row["table"], table_row["dtype"]) == (INT8_TABLE, "int8")
    assert (predictor_row["id"], predictor_row["dtype"]) == (fit["predictor_id"], "int8")
    predicted = cli_json(db, capsys, "predict", SMALL_ARCH, "--device", "host", "--dtype", "int8")
    assert predicted[0]["predictor_id"] == fit["predictor_id"] and predicted[0]["table"] == INT8_TABLE
    # float32 is still the default, and this store has no float predictor
    line = cli_error(db, capsys, "predict", SMALL_ARCH, "--device", "host")
    assert line.startswith("mnas: error: no stored predictor matches device=host, resolution=224")


def test_int8_calibrate_and_eval_time_int8_networks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On this host at 32 px, with an int8 predictor (fitted on synthetic int8 figures): every network
    calibrate and eval time is the writer's int8 file of that network."""
    db = tmp_path / "mnas.db"
    device = SyntheticDevice("host", device_name="host", runtime=RUNTIME.name, runtime_version=RUNTIME.version)
    with ResultsStore(db) as store:
        build_table(SMALL, 32, [device], store, "q", BenchConfig(warmup_runs=1, num_runs=3), limit=12,
                    writer=write_key, progress=False, guard=None, dtype="int8")
        predictor, metrics = fit_predictor(load_table(store, "q"))
        base = save_predictor(store, predictor, predictor.table_id, metrics)
    timing = ("--resolution", "32", "--dtype", "int8", "--repeats", "1", *TINY)
    calibrated = cli_json(db, capsys, "table", "calibrate", "--device", "host", "--samples", "4", *timing)
    assert (calibrated["base_predictor_id"], calibrated["dtype"]) == (base, "int8")
    report = cli_json(db, capsys, "table", "eval", "--device", "host", "--samples", "2", "--plot",
                      str(tmp_path / "eval.png"), *timing)
    assert (report["predictor_id"], report["dtype"]) == (calibrated["predictor_id"], "int8")
    with ResultsStore(db) as store:
        assert load_predictor(store, calibrated["predictor_id"]).dtype == "int8"
        timed = store.read("SELECT m.model_sha256, models.arch FROM measurements m JOIN models "
                           "ON models.sha256 = m.model_sha256 WHERE models.arch IS NOT NULL")
    assert len({arch for _, arch in timed}) == 6
    for sha, arch in timed:
        assert sha == hashlib.sha256(arch_to_bytes(Arch.parse(arch), resolution=32, dtype="int8")).hexdigest()


# ------------------------------------------------------------------------------ searches

def test_run_config_round_trips_its_dtype_and_old_configs_are_float32() -> None:
    config = new_run_config(accuracy="cheap", latency="measured", dtype="int8")
    assert config.latency.dtype == "int8"
    again = RunConfig.from_json(config.to_json())
    assert again == config and again.to_dict()["latency"]["dtype"] == "int8"
    old = config.to_dict()
    del old["latency"]["dtype"]  # a run stored before the field existed
    assert RunConfig.from_dict(old).latency.dtype == "float32"
    with pytest.raises(MnasError, match=r"^--dtype 'int4': expected one of float32, int8$"):
        LatencyConfig(dtype="int4")


def test_a_measured_search_step_times_the_int8_model(tmp_path: Path) -> None:
    """Through the run's own setup (`build_latency`) on this host: the file timed is the int8 model."""
    arch = Arch.parse(SMALL_ARCH)
    resolution = 32
    int8 = LatencyConfig(kind="measured", device="host", resolution=resolution, runs=3, warmup=1, min_secs=0.0,
                         dtype="int8")
    with ResultsStore(tmp_path / "mnas.db") as store:
        source, _ = build_latency(int8, 0, store, tmp_path / "models")
        [result] = source.latency_ms([arch])
        int8_sha = hashlib.sha256(arch_to_bytes(arch, resolution=resolution, dtype="int8")).hexdigest()
        float_sha = hashlib.sha256(arch_to_bytes(arch, resolution=resolution)).hexdigest()
        assert result.source == "measured:host" and result.model_sha256 == int8_sha != float_sha
        assert result.latency_ms > 0
        stored = store.get_measurement(result.measurement_id)
        assert stored.model_sha256 == int8_sha
        labels = [row[0] for row in store.read("SELECT label FROM models WHERE sha256 = ?", (int8_sha,))]
        assert labels == ["search-int8"]
        # the float32 search of the same arch does not reuse the int8 figure: it times its own model
        floats, _ = build_latency(LatencyConfig(kind="measured", device="host", resolution=resolution, runs=3,
                                                warmup=1, min_secs=0.0), 0, store, tmp_path / "models")
        [plain] = floats.latency_ms([arch])
        assert plain.source == "measured:host" and plain.model_sha256 == float_sha


def test_network_writer_writes_the_dtype_asked(tmp_path: Path) -> None:
    arch = Arch.parse(SMALL_ARCH)
    for dtype in ("float32", "int8"):
        path = tmp_path / f"{dtype}.tflite"
        network_writer(dtype)(arch, path, resolution=32)
        assert path.read_bytes() == arch_to_bytes(arch, resolution=32, dtype=dtype)


# ------------------------------------------------------------------------------ op profiling in the reuse key

def test_profile_ops_is_in_the_reuse_key_only_when_set(tmp_path: Path) -> None:
    assert BenchConfig().conditions_key() == "threads=1;warmup=5;runs=50;min_secs=1;core=auto"
    assert BenchConfig(profile_ops=True).conditions_key() == (
        "threads=1;warmup=5;runs=50;min_secs=1;core=auto;profile_ops=1")
    device = SyntheticDevice()
    path = tmp_path / "m.txt"
    write_key(LayerSig.from_key(next(iter(_small_keys()))), path)
    plain, profiled = BenchConfig(), BenchConfig(profile_ops=True)
    with ResultsStore(tmp_path / "mnas.db") as store:
        measurement = device.benchmark(path, plain)
        store.add_measurement(measurement, label="m")
        sha = measurement.model_sha256
        assert len(find_reusable(store, device.profile(), sha, plain)) == 1
        assert find_reusable(store, device.profile(), sha, profiled) == []  # profiled: measured anew
        store.add_measurement(device.benchmark(path, profiled), label="m")
        [(reused, _)] = find_reusable(store, device.profile(), sha, profiled)
        assert reused.config.profile_ops is True


def _small_keys() -> list[str]:
    from mnas.predictor.layers import enumerate_layers

    return [layer.key for layer in enumerate_layers(SMALL, 64)]
