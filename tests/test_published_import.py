"""Published end-to-end phone figures: `mnas results import` and `bench.published` (issue 12, point 1).

Good rows land as published figures with provenance; a model mnas cannot express is skipped by
name; a structural error (missing column, bad latency, a row contradicting its name) stores
nothing and exits 2 in one line; a re-import adds nothing; figures never become measurements.
The three shared CSVs import directly with one command each.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import pytest
from cli_run import run_mnas as mnas

from mnas.bench.published import (
    column_unit,
    import_published,
    published_figures,
    resolve_model,
)
from mnas.bench.store import ResultsStore
from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.arch import Arch
from mnas.space.cost import arch_cost

SHARED = next((p for p in (Path("/work/shared/data/phones"), Path(__file__).resolve().parents[1] / "shared/data/phones")
               if p.exists()), Path("/work/shared/data/phones"))
V2_PIXEL1 = SHARED / "mobilenet_v2_pixel1.csv"
PIXEL23 = SHARED / "mobilenet_v1_v2_pixel2_pixel3.csv"
MOBILE_ML = SHARED / "mobile_ml_benchmark_tflite_e2e.csv"
need_shared = pytest.mark.skipif(not (V2_PIXEL1.exists() and PIXEL23.exists() and MOBILE_ML.exists()),
                                 reason="the shared phone CSVs are not on this machine")

MOBILE_ML_MAPPED = {
    "mobilenet_w1", "mobilenet_w3d4", "mobilenet_wd2", "mobilenet_wd4",
    "mobilenetv2_w1", "mobilenetv2_w3d4", "mobilenetv2_wd2", "mobilenetv2_wd4",
    "mobilenetv2b_w1", "mobilenetv2b_w3d4", "mobilenetv2b_wd2", "mobilenetv2b_wd4",
    "proxylessnas_cpu", "proxylessnas_gpu", "proxylessnas_mobile", "proxylessnas_mobile14", "spnasnet",
}


def count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM published_figures").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


A1 = str(zoo.get("mnasnet-a1"))
SMALL_ARCH = "stem16,r1_k3_s11_e1_i16_o16_noskip,r2_k5_s22_e6_i16_o24,head1280"


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "figs.csv", ["model", "multiplier", "resolution", "latency_ms", "top1"], [
        ["mnasnet-a1", 1.0, 224, 78.0, 75.2],
        ["mobilenet-v2", 0.5, 160, 14.9, 61.0],
        [SMALL_ARCH, "", 128, 3.25, ""],
        ["resnet50", 1.0, 224, 400.0, 76.0],  # not expressible: skipped by name
        ["mobilenet-v1", 1.0, 224, "", 70.6],  # no figure in the column: skipped
    ])


# --------------------------------------------------------------------------- the library

def test_import_stores_figures_with_provenance_and_skips_by_name(tmp_path: Path, good_csv: Path) -> None:
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        report = import_published(store, good_csv, device="pixel1", source="MnasNet paper Table 1",
                                  runtime="TFLite", threads=1)
        figures = published_figures(store, "pixel1")
        assert store.recent_measurements() == []  # never measurements
        assert len(store.measurements_frame()) == 0
    assert (report.rows, report.imported, report.already_stored) == (5, 3, 0)
    assert [name for name, _ in report.skipped] == ["resnet50", "mobilenet-v1"]
    assert report.skipped_rows == [5, 6]
    assert "unknown model" in report.skipped[0][1] and "no figure in column 'latency_ms'" in report.skipped[1][1]
    by_name = {f.model_name: f for f in figures}
    a1 = by_name["mnasnet-a1"]
    assert (a1.device_name, a1.family, a1.arch, a1.resolution, a1.multiplier, a1.latency_ms) == (
        "pixel1", "mnasnet", A1, 224, 1.0, 78.0)
    assert (a1.source, a1.runtime, a1.threads, a1.metadata, a1.column, a1.unit) == (
        "MnasNet paper Table 1", "TFLite", 1, {"top1": "75.2"}, "latency_ms", "ms")
    assert a1.imported_at.endswith("+00:00") and a1.to_arch() == zoo.get("mnasnet-a1")
    v2 = by_name["mobilenet-v2"]
    assert (v2.family, v2.multiplier, v2.resolution, Arch.parse(v2.arch)) == (
        "mobilenet-v2", 0.5, 160, zoo.get("mobilenet-v2", 0.5))
    arch_row = by_name[SMALL_ARCH]
    assert (arch_row.family, arch_row.arch, arch_row.resolution) == ("arch", str(Arch.parse(SMALL_ARCH)), 128)
    with ResultsStore(db) as store:
        assert [f.model_name for f in published_figures(store, family="mnasnet")] == ["mnasnet-a1"]
        assert published_figures(store, "pixel4") == []


def test_a_reimport_adds_nothing(tmp_path: Path, good_csv: Path) -> None:
    db = tmp_path / "r.db"
    kwargs = {"device": "pixel1", "source": "s"}
    with ResultsStore(db) as store:
        first = import_published(store, good_csv, **kwargs)
        again = import_published(store, good_csv, **kwargs)
        assert (again.imported, again.already_stored, len(again.skipped)) == (0, first.imported, 2)
        assert count(db) == 3
        # without runtime/threads the key still matches (no NULLs in the UNIQUE key)
        assert import_published(store, good_csv, **kwargs).imported == 0
        # another source, runtime, thread count or device is another figure
        assert import_published(store, good_csv, device="pixel1", source="s", threads=4).imported == 3
        assert import_published(store, good_csv, device="pixel2", source="s").imported == 3
    assert count(db) == 9


def test_a_stored_figure_with_another_value_refuses_the_whole_file(tmp_path: Path, good_csv: Path) -> None:
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        import_published(store, good_csv, device="pixel1", source="s")
        changed = write_csv(tmp_path / "changed.csv", ["model", "resolution", "latency_ms"], [
            ["mobilenet-v2", 224, 75.0],  # new: would be imported, but the file is refused
            ["mnasnet-a1", 224, 80.0],  # stored with 78.0
        ])
        with pytest.raises(MnasError, match=r"row 3 \(model 'mnasnet-a1'\): 80 ms, but figure #\d+ .* holds 78 ms"):
            import_published(store, changed, device="pixel1", source="s")
        assert count(db) == 3  # nothing partial
        assert import_published(store, changed, device="pixel1", source="other paper").imported == 2


@pytest.mark.parametrize(("text", "message"), [
    ("model,resolution\nmobilenet-v2,224\n", r"header: no column 'latency_ms': expected columns model, "
                                                r"multiplier, resolution and latency_ms \(or --column NAME"),
    ("name,latency_ms\nmobilenet-v2,70\n", r"header: no column 'model'"),
    ("model,latency_ms\nmobilenet-v2,70\nmnasnet-a1,-3\n", r"row 3 \(model 'mnasnet-a1'\): latency_ms = -3: "
                                                            r"expected a positive latency"),
    ("model,latency_ms\nmobilenet-v2,70\nmnasnet-a1,0\n", r"row 3 .*expected a positive latency"),
    ("model,latency_ms\nmobilenet-v2,70\nmnasnet-a1,fast\n", r"row 3 \(model 'mnasnet-a1'\): latency_ms = 'fast': "
                                                              r"expected a number"),
    ("model,latency_ms\nmobilenet-v2,70\nmnasnet-a1,nan\n", r"row 3 .*expected a finite number"),
    ("model,latency_ms\nmobilenet-v2,70\n,5\n", r"row 3: column 'model' is empty: expected a model name"),
    ("model,resolution,latency_ms\nmobilenet-v2,224,70\nmnasnet-a1,224.5,5\n",
     r"row 3 .*resolution = 224.5: expected an integer number of pixels"),
    ("model,multiplier,latency_ms\nmobilenet-v2,1,70\nmnasnet-a1,wide,5\n", r"row 3 .*multiplier = 'wide': expected "
                                                                             r"a number"),
    ("model,multiplier,latency_ms\nmobilenet-v2,1,70\nmobilenet_v2_0.5_160,0.75,5\n",
     r"row 3 \(model 'mobilenet_v2_0.5_160'\): multiplier column 0.75 disagrees with the name's 0.5"),
    ("model,resolution,latency_ms\nmobilenet-v2,224,70\nproxylessnas_mobile,192,5\n",
     r"row 3 .*resolution column 192 disagrees"),
    ("model,latency_ms\nmobilenet-v2,70\nmnasnet-a1,1,5\n", r"row 3: 3 fields: expected 2 as in the header"),
    ("model,latency_ms\nmobilenet-v2,70\nmnasnet-a1\n", r"row 3: fewer fields than the header's 2"),
    ("model,latency_ms,latency_ms\nmobilenet-v2,70,70\n", r"column 'latency_ms' appears twice"),
])
def test_structural_errors_store_nothing(tmp_path: Path, text: str, message: str) -> None:
    db = tmp_path / "r.db"
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with ResultsStore(db) as store, pytest.raises(MnasError, match=message) as info:
        import_published(store, path, device="pixel1", source="s")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
    assert count(db) == 0  # the good first row was not stored either


def test_conflicting_rows_in_one_file_are_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dup.csv", ["model", "resolution", "latency_ms"], [
        ["mobilenet-v2", 224, 75.0], ["mobilenet_v2_1.0_224", 224, 75.0], ["mobilenet-v2", 224, 76.0]])
    with ResultsStore(tmp_path / "r.db") as store, pytest.raises(
            MnasError, match=r"row 4 \(model 'mobilenet-v2'\): 76 ms for the same network and resolution as row 2"):
        import_published(store, path, device="pixel1", source="s")
    same = write_csv(tmp_path / "same.csv", ["model", "resolution", "latency_ms"], [
        ["mobilenet-v2", 224, 75.0], ["mobilenet_v2_1.0_224", 224, 75.0]])
    with ResultsStore(tmp_path / "r.db") as store:
        assert import_published(store, same, device="pixel1", source="s").imported == 1


def test_bad_arguments_and_files_are_one_line(tmp_path: Path, good_csv: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        for kwargs, message in [
            ({"device": " ", "source": "s"}, "--device ' ': expected a non-empty name"),
            ({"device": "p", "source": ""}, "--source '': expected a non-empty name"),
            ({"device": "p", "source": "s", "threads": 0}, "--threads 0: expected a thread count >= 1"),
            ({"device": "p", "source": "s", "column": "top1"}, "column 'top1': cannot tell its unit"),
            ({"device": "p", "source": "s", "column": "latency_ms", "unit": "s"}, "unit 's': expected one of ms, us"),
        ]:
            with pytest.raises(MnasError, match=message):
                import_published(store, good_csv, **kwargs)
        with pytest.raises(MnasError, match="no such file"):
            import_published(store, tmp_path / "none.csv", device="p", source="s")
        (tmp_path / "empty.csv").write_text("")
        with pytest.raises(MnasError, match="empty file"):
            import_published(store, tmp_path / "empty.csv", device="p", source="s")
        std = write_csv(tmp_path / "std.csv", ["model", "p|1large|float|std"], [["mnasnet-a1", 3]])
        with pytest.raises(MnasError, match="holds a spread, not a latency"):
            import_published(store, std, device="p", source="s", column="p|1large|float|std")
    assert count(tmp_path / "r.db") == 0


def test_units_come_from_the_column_name_or_unit() -> None:
    assert column_unit("latency_ms", None) == "ms"
    assert column_unit("latency_ms_pixel1", None) == "ms"
    assert column_unit("pixel2_tflite_1thread_largecore_ms", None) == "ms"
    assert column_unit("pixel4|1large|float|mean", None) == "us"
    assert column_unit("time_us", None) == "us"
    assert column_unit("top1", "us") == "us"


def test_microsecond_columns_become_milliseconds(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "us.csv", ["model", "pixel4|1large|float|mean", "pixel4|1large|float|std"],
                     [["spnasnet", 30942.0, 101.0]])
    with ResultsStore(tmp_path / "r.db") as store:
        report = import_published(store, path, device="pixel4", source="s", column="pixel4|1large|float|mean")
        (figure,) = published_figures(store)
    assert (report.unit, figure.unit, figure.latency_ms) == ("us", "us", 30.942)
    assert figure.metadata == {"pixel4|1large|float|std": "101.0"}


@pytest.mark.parametrize(("name", "family", "multiplier", "resolution", "arch"), [
    ("mobilenet_v2_1.4_224", "mobilenet-v2", 1.4, 224, zoo.get("mobilenet-v2", 1.4)),
    ("Mobilenet_V1_0.25_128", "mobilenet-v1", 0.25, 128, zoo.get("mobilenet-v1", 0.25)),
    ("Mobilenet_V2_1.0_224", "mobilenet-v2", 1.0, 224, zoo.get("mobilenet-v2")),
    ("proxylessnas_gpu", "proxylessnas", 1.0, 224, zoo.get("proxylessnas-gpu")),
    ("mnasnet-small", "mnasnet", 1.0, 224, zoo.get("mnasnet-small")),
])
def test_published_names_resolve(name: str, family: str, multiplier: float, resolution: int, arch: Arch) -> None:
    resolved = resolve_model(name, None, None)
    assert (resolved.family, resolved.multiplier, resolved.resolution, resolved.arch) == (
        family, multiplier, resolution, arch)


# --------------------------------------------------------------------------- the shared CSVs

@need_shared
def test_the_mobilenet_v2_pixel1_table_imports_whole(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        report = import_published(store, V2_PIXEL1, device="pixel1", column="latency_ms_pixel1", threads=1,
                                  source="tensorflow/models slim MobileNetV2 README")
        figures = published_figures(store, "pixel1", "mobilenet-v2")
        assert import_published(store, V2_PIXEL1, device="pixel1", column="latency_ms_pixel1", threads=1,
                                source="tensorflow/models slim MobileNetV2 README").already_stored == 22
    assert (report.rows, report.imported, report.skipped) == (22, 22, [])
    assert count(db) == 22
    for figure in figures:
        cost = arch_cost(figure.to_arch(), figure.resolution)
        # the README prints mult-adds as whole millions rounded down: every row matches exactly
        assert math.floor(cost.mult_adds / 1e6) == int(figure.metadata["macs_millions"]), figure.model_name
        assert abs(cost.params / 1e6 / float(figure.metadata["params_millions"]) - 1) <= 0.015
    assert {f.model_name: f.latency_ms for f in figures}["mobilenet_v2_1.0_224"] == 73.8


@need_shared
def test_the_pixel2_pixel3_table_imports_whole(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        report = import_published(store, PIXEL23, device="pixel2", column="pixel2_tflite_1thread_largecore_ms",
                                  threads=1, source="TFLite hosted models")
        figures = published_figures(store, "pixel2")
    assert (report.rows, report.imported, report.skipped) == (17, 17, [])
    assert sorted({f.family for f in figures}) == ["mobilenet-v1", "mobilenet-v2"]
    v1 = {(f.multiplier, f.resolution): f for f in figures if f.family == "mobilenet-v1"}
    assert len(v1) == 16 and v1[(0.25, 128)].latency_ms == 6.2 and v1[(1.0, 224)].latency_ms == 160.1
    assert v1[(0.25, 128)].to_arch() == zoo.get("mobilenet-v1", 0.25)


@need_shared
def test_the_mobile_ml_benchmark_csv_imports_what_mnas_expresses(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        report = import_published(store, MOBILE_ML, device="pixel4", column="pixel4|1large|float|mean", threads=1,
                                  source="qed-usc/mobile-ml-benchmark tflite_cnn_e2e.csv")
        figures = published_figures(store, "pixel4")
    assert (report.rows, report.imported, len(report.skipped)) == (100, 17, 83)
    assert {f.model_name for f in figures} == MOBILE_ML_MAPPED
    skipped = dict(report.skipped)
    assert "MobileNet-B" in skipped["mobilenetb_w1"] and "FBNet" in skipped["fbnet_cb"]
    assert "unknown model" in skipped["resnet18"]
    by_name = {f.model_name: f for f in figures}
    assert by_name["spnasnet"].latency_ms == pytest.approx(30.942)
    assert (by_name["proxylessnas_mobile14"].multiplier, by_name["proxylessnas_mobile14"].resolution) == (1.4, 224)


# --------------------------------------------------------------------------- the command line

def test_cli_import_list_and_errors(tmp_path: Path, good_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")
    code, out, err = mnas(capsys, "--db", db, "results", "import", str(good_csv), "--device", "pixel1",
                          "--source", "paper", "--threads", "1")
    assert code == 0, err
    assert out.strip() == (f"imported 3 published figures for pixel1 from {good_csv} (column latency_ms, ms); "
                           "0 already stored, 2 skipped")
    assert err.splitlines() == [
        f"mnas: warning: {good_csv}: row 5: model 'resnet50' skipped: unknown model: not a zoo name (mnas arch "
        "list), mobilenet_v1/v2_<multiplier>_<resolution>, a mapped pytorchcv name or an arch string",
        f"mnas: warning: {good_csv}: row 6: model 'mobilenet-v1' skipped: no figure in column 'latency_ms'"]
    code, out, _ = mnas(capsys, "--db", db, "results", "import", str(good_csv), "--device", "pixel1",
                        "--source", "paper", "--threads", "1", "--json")
    payload = json.loads(out)
    assert (code, payload["imported"], payload["already_stored"]) == (0, 0, 3)
    assert [s["model_name"] for s in payload["skipped"]] == ["resnet50", "mobilenet-v1"]

    code, out, _ = mnas(capsys, "--db", db, "results", "list", "--device", "pixel1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("published figures (measured elsewhere, not here")
    assert lines[1].split() == ["id", "device", "model", "family", "multiplier", "resolution", "latency_ms",
                                "runtime", "threads", "source"]
    assert len(lines) == 5 and any("mnasnet-a1" in line and "78.000" in line for line in lines)
    code, out, _ = mnas(capsys, "--db", db, "results", "list", "--device", "pixel1", "--json")
    rows = json.loads(out)
    assert all(r["published"] for r in rows) and {r["model_name"] for r in rows} == {"mnasnet-a1", "mobilenet-v2",
                                                                                  SMALL_ARCH}
    assert {"latency_ms", "source", "runtime", "threads", "resolution", "arch", "metadata"} <= set(rows[0])
    code, out, _ = mnas(capsys, "--db", db, "results", "list", "--device", "pixel9")
    assert (code, out.strip()) == (0, "(nothing)")

    bad = write_csv(tmp_path / "bad.csv", ["model", "latency_ms"], [["mnasnet-a1", 70], ["mobilenet-v2", -1]])
    code, out, err = mnas(capsys, "--db", db, "results", "import", str(bad), "--device", "pixel3", "--source", "x")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"mnas: error: {bad}: row 3 (model 'mobilenet-v2'): latency_ms = -1: expected a "
                                "positive latency"]
    assert count(Path(db)) == 3


def test_cli_list_keeps_its_measurement_table_and_adds_published_rows(
        tmp_path: Path, good_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_store import make_measurement

    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        store.add_measurement(make_measurement(1), label="mnasnet-a1")
        import_published(store, good_csv, device="pixel4", source="paper")
    code, out, _ = mnas(capsys, "--db", str(db), "results", "list", "--device", "pixel4")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["id", "time", "device", "model", "runtime", "median_ms", "cv", "throttled", "source"]
    assert "published figures (measured elsewhere, not here; never reused as measurements):" in lines
    code, out, _ = mnas(capsys, "--db", str(db), "results", "list", "--json")
    rows = json.loads(out)
    assert [r["published"] for r in rows] == [False, True, True, True]
    assert "median_ms" in rows[0] and "latency_ms" in rows[1]
