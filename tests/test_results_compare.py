"""Phones compared: `mnas results compare`, its grouped bar chart, `mnas bench --plot`, and the
search report's figures (titles naming run and device, units, integer ticks).

Figures are checked through their matplotlib texts (the builders return the Figure before it
is written) and the written file is checked to be a PNG that decodes. The acceptance test at
the bottom runs the real command line on two loopback phones (a Pixel 4 and a Pixel 6) and the host.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_mnas_db as mnas
from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb
from tflite_fixtures import conv_model_bytes, small_conv, write_model

from mnas.bench.compare import compare_devices, comparison_figure
from mnas.bench.plots import bench_run_figure, save_png
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig, LatencyStats, Measurement
from mnas.errors import MnasError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_780_000_000.0
SHA = {name: name * 64 for name in "abcd"}


def measurement(device: str, model: str, median_ms: float, *, min_ms: float | None = None, at: float = T0,
                threads: int = 1, throttled: bool = False, contended: bool = False) -> Measurement:
    min_us = (min_ms if min_ms is not None else 0.9 * median_ms) * 1000.0
    return Measurement(
        device_id="host" if device == "host" else f"SER-{device}", device_name=device, model_sha256=SHA[model],
        model_path=f"/m/{model}.tflite", runtime="litert" if device == "host" else "benchmark_model",
        runtime_version="2.18", config=BenchConfig(num_threads=threads), timestamp=at, throttled=throttled,
        stats=LatencyStats(count=50, mean_us=median_ms * 1000.0, std_us=10.0, min_us=min_us,
                           max_us=median_ms * 1100.0, median_us=median_ms * 1000.0),
        extra={"contended": contended})


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    """a on all three devices; b on pixel4 and host (2 threads on the host); c on pixel6 only;
    d on pixel4 (a newer contended figure and an older clean one) and pixel6 (throttled only)."""
    path = tmp_path / "mnas.db"
    with ResultsStore(path) as store:
        for m, label in [
            (measurement("pixel4", "a", 10.0), "a.tflite"),
            (measurement("pixel6", "a", 6.0), "a.tflite"),
            (measurement("host", "a", 4.0, min_ms=2.5), "a-host.tflite"),
            (measurement("pixel4", "b", 20.0), "b.tflite"),
            (measurement("host", "b", 9.0, min_ms=8.0, threads=2), "b.tflite"),
            (measurement("pixel6", "c", 1.0), "c.tflite"),
            (measurement("pixel4", "d", 30.0, at=T0), "d.tflite"),
            (measurement("pixel4", "d", 99.0, at=T0 + 60, contended=True), "d.tflite"),
            (measurement("pixel6", "d", 15.0, at=T0 + 120, throttled=True), "d.tflite"),
        ]:
            store.add_measurement(m, label=label, force=True)
    return path


def texts(figure: Any) -> str:
    """Every text the figure draws (title, labels, legend, tick labels, bar labels), one per line."""
    from matplotlib.text import Text

    figure.canvas.draw()  # tick labels exist once drawn
    return "\n".join(t.get_text() for t in figure.findobj(Text) if t.get_text())


# ============================================================================ the comparison


def test_each_device_gives_its_headline_figure_ratio_and_differing_conditions(db: Path) -> None:
    with ResultsStore(db) as store:
        comparison = compare_devices(store, ["pixel4", "pixel6", "host"])
    assert comparison.statistics == ["median", "median", "min"]
    assert comparison.single_device_models == 1  # c: on pixel6 only
    rows = {r.model_sha256: r for r in comparison.rows}
    assert set(rows) == {SHA["a"], SHA["b"], SHA["d"]}
    a = rows[SHA["a"]]
    assert [f.latency_ms for f in a.figures] == pytest.approx([10.0, 6.0, 2.5])  # host: its minimum
    assert a.ratios() == pytest.approx([1.0, 0.6, 0.25])
    assert a.differences() == {"statistic": ["median", "median", "min"],
                               "runtime": ["benchmark_model", "benchmark_model", "litert"]}
    b = rows[SHA["b"]]
    assert b.figures[1] is None and b.ratios()[1] is None and b.ratios()[2] == pytest.approx(0.4)
    assert b.differences()["threads"] == ["1", None, "2"]
    d = rows[SHA["d"]]
    # pixel4: the newest figure is contended, so the older clean one stands; pixel6 has only a throttled one
    assert (d.figures[0].latency_ms, d.figures[0].flag) == (30.0, None)
    assert (d.figures[1].latency_ms, d.figures[1].flag) == (15.0, "throttled")
    assert d.differences()["flag"] == ["none", "throttled", None]


def test_filters_and_all_models(db: Path) -> None:
    with ResultsStore(db) as store:
        everything = compare_devices(store, ["pixel6", "pixel4"], include_single=True)
        only_b = compare_devices(store, ["pixel4", "host"], model="b.tflite")
        later = compare_devices(store, ["pixel4", "pixel6"], since=T0 + 1, include_single=True)
    assert {r.model_name for r in everything.rows} == {"a.tflite", "c.tflite", "d.tflite", "b.tflite"}
    assert [r.model_name for r in only_b.rows] == ["b.tflite"]
    # since T0+1 only the flagged figures of d remain: shown, with their flags
    assert [(r.model_name, [f.flag for f in r.figures]) for r in later.rows] == [("d.tflite", ["contended", "throttled"])]
    with ResultsStore(db) as store, pytest.raises(MnasError, match="no measurements matching the filters on device 'host'"):
        compare_devices(store, ["pixel4", "host"], since=T0 + 1)


@pytest.mark.parametrize(("devices", "message"), [
    (["pixel4"], "expected at least two devices, got 1"),
    (["pixel4", "pixel4"], "device 'pixel4' given twice"),
    (["pixel4", "pixel9"], "no measurements on device 'pixel9' (stored devices: host, pixel4, pixel6)"),
])
def test_bad_device_lists_are_one_line(db: Path, devices: list[str], message: str) -> None:
    with ResultsStore(db) as store, pytest.raises(MnasError, match=None) as info:
        compare_devices(store, devices)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_text_and_json(db: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = mnas(capsys, db, "results", "compare", "pixel4", "SER-pixel6", "host")
    assert code == 0, err
    header, *lines = out.splitlines()
    for column in ("model", "pixel4 ms", "SER-pixel6 ms", "host ms", "SER-pixel6/pixel4", "host/pixel4", "differs"):
        assert column in header
    a_line = next(line for line in lines if line.startswith("a.tflite") or " a.tflite " in line)
    assert "10.000" in a_line and "6.000" in a_line and "2.500" in a_line and "0.60x" in a_line and "0.25x" in a_line
    assert "statistic median/median/min" in a_line
    assert "15.000 (throttled)" in out
    assert "latency: each device's headline statistic (pixel4 median, SER-pixel6 median, host min), ms" in out
    assert "(1 models measured on only one of these devices: --all-models lists them)" in out

    code, out, err = mnas(capsys, db, "results", "compare", "pixel4", "host", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert [d["device_spec"] for d in payload["devices"]] == ["pixel4", "host"]
    assert payload["devices"][0]["device_ids"] == ["SER-pixel4"] and payload["devices"][0]["device_configs"] == ["pixel4"]
    assert payload["devices"][1]["headline_statistic"] == "min" and payload["devices"][1]["device_configs"] == [None]
    a = next(m for m in payload["models"] if m["model_sha256"] == SHA["a"])
    assert [f["headline_ms"] for f in a["figures"]] == pytest.approx([10.0, 2.5])
    assert a["figures"][0]["flags"] == [] and a["figures"][1]["conditions"] == "threads=1;warmup=5;runs=50;min_secs=1;core=auto"
    assert a["differing_conditions"] == {"statistic": ["median", "min"], "runtime": ["benchmark_model", "litert"]}
    assert a["ratio_to_first"] == pytest.approx([1.0, 0.25])
    assert a["figures"][1]["measured_at"].startswith("2026-") and a["figures"][1]["model_name"] == "a-host.tflite"
    assert payload["plot"] is None


def test_cli_bad_input_is_one_line_exit_2(db: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for args, message in [
        (("pixel4",), "expected at least two devices"),
        (("pixel4", "host", "--plot", str(tmp_path / "x.jpg")), "expected a .png file name"),
        (("pixel4", "host", "--since", "last week"), "expected an ISO-8601 date or datetime"),
        (("pixel4", "host", "--model", "nothing.tflite"), "no measurements matching the filters on device 'pixel4'"),
    ]:
        code, out, err = mnas(capsys, db, "results", "compare", *args)
        assert code == 2 and out == "" and message in err and err.strip().count("\n") == 0, (args, err)
    assert not (tmp_path / "x.jpg").exists()


def test_plot_names_every_device_the_times_and_the_unit(db: Path, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    with ResultsStore(db) as store:
        figure = comparison_figure(compare_devices(store, ["pixel4", "pixel6", "host"]))
    drawn = texts(figure)
    assert "latency by device: pixel4 vs pixel6 vs host" in drawn
    for label in ("pixel4 (median)", "pixel6 (median)", "host (min)", "latency (ms)", "a.tflite", "d.tflite"):
        assert label in drawn
    assert "measured 2026-" in drawn and "15*" in drawn and "* throttled or contended" in drawn  # times; flags
    plot = tmp_path / "out" / "cmp.png"
    code, out, err = mnas(capsys, db, "results", "compare", "pixel4", "pixel6", "host", "--plot", str(plot))
    assert code == 0, err
    assert f"plot: {plot}" in out
    assert_png(plot)


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_a_plot_that_cannot_be_written_is_one_line(db: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with ResultsStore(db) as store:
        figure = comparison_figure(compare_devices(store, ["pixel4", "host"]))
    with pytest.raises(MnasError, match="cannot write the plot"):
        save_png(figure, blocker / "x.png")


def test_log_scale_when_bars_span_orders_of_magnitude(db: Path, tmp_path: Path) -> None:
    with ResultsStore(db) as store:
        store.add_measurement(measurement("pixel4", "c", 0.01), label="c.tflite", force=True)
        figure = comparison_figure(compare_devices(store, ["pixel4", "pixel6"]))
    [axes] = figure.axes
    assert axes.get_yscale() == "log" and "latency (ms, log scale)" == axes.get_ylabel()


# ============================================================================ mnas bench --plot


def test_bench_run_figure_names_devices_statistics_and_flags() -> None:
    results = [("a.tflite", measurement("pixel4", "a", 10.0)), ("a.tflite", measurement("host", "a", 4.0, min_ms=3.0)),
               ("b.tflite", measurement("host", "b", 8.0, min_ms=7.0, contended=True))]
    figure = bench_run_figure(results)
    drawn = texts(figure)
    assert "mnas bench: host, pixel4" in drawn and "pixel4 (median)" in drawn and "host (min)" in drawn
    assert "latency (ms)" in drawn and "threads 1, >= 50 runs after 5 warm-up" in drawn
    assert "7*" in drawn and "* throttled or contended" in drawn  # the contended host figure is marked
    [axes] = figure.axes
    heights = sorted(round(p.get_height(), 6) for p in axes.patches if not math.isnan(p.get_height()))
    assert heights == [3.0, 7.0, 10.0]  # host minimum, phone median
    with pytest.raises(MnasError, match="nothing to plot"):
        bench_run_figure([])


def test_bench_plot_with_a_bad_name_is_refused_before_measuring(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "r" / "mnas.db"
    code, out, err = mnas(capsys, db, "bench", str(small_conv(tmp_path)), "--runs", "3", "--plot",
                          str(tmp_path / "run.svg"))
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert f"--plot {tmp_path / 'run.svg'}: expected a .png file name" in err
    assert not db.exists() or not ResultsStore(db).recent_measurements(None)


@pytest.mark.slow
def test_bench_plot_on_the_host_writes_the_run_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, plot = tmp_path / "r" / "mnas.db", tmp_path / "run.png"
    code, out, err = mnas(capsys, db, "bench", str(small_conv(tmp_path)), "--runs", "3", "--warmup", "1",
                          "--min-secs", "0", "--plot", str(plot))
    assert code == 0, err
    assert f"plot: {plot}" in out
    assert_png(plot)


# ============================================================================ search report figures


def test_report_figures_have_titles_units_and_integer_ticks() -> None:
    from mnas.search.report import report_figures
    from mnas.search.run_store import SampleRow

    samples = [SampleRow(idx=i, tokens=[], arch=f"a{i}", arch_hash=f"h{i}", accuracy=0.5 + 0.01 * i,
                         accuracy_task="cheap", latency_ms=10.0 + i, latency_source="predicted", reward=0.1 * i)
               for i in range(7)]
    figures = report_figures(samples, 12.0, "proxy accuracy", "run r1: latency predicted for pixel4")
    for key, figure in figures.items():
        [axes] = figure.axes
        assert "run r1: latency predicted for pixel4" in axes.get_title(), key
    reward_axes, hist_axes = figures["reward_png"].axes[0], figures["latency_png"].axes[0]
    figures["reward_png"].canvas.draw()
    figures["latency_png"].canvas.draw()
    assert all(float(t).is_integer() for t in reward_axes.get_xticks())
    assert all(float(t).is_integer() for t in hist_axes.get_yticks())
    assert "(ms)" in hist_axes.get_xlabel() and "count" in hist_axes.get_ylabel()


# ============================================================================ acceptance: two loopback phones and the host


@pytest.fixture(scope="module")
def phones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from test_phone_integration import CORES, cli_env

    folder = tmp_path_factory.mktemp("compare")
    with isolated_adb_server(folder / "adb") as adb, \
            loopback_phones(adb, folder / "phones", "pixel4", host_core=CORES[0]) as four, \
            loopback_phones(adb, folder / "phones", "pixel6", host_core=CORES[-1]) as six:
        yield {"env": cli_env(adb, folder / "phones"), "pixel4": four[0], "pixel6": six[0]}


@pytest.mark.adb
@pytest.mark.slow
@requires_adb
def test_compare_two_loopback_phones_and_the_host(phones: dict[str, Any], tmp_path: Path) -> None:
    from test_phone_integration import QUICK, fake_binary, run_cli

    env, db = phones["env"], tmp_path / "mnas.db"
    models = [str(small_conv(tmp_path)), str(write_model(tmp_path / "conv2.tflite", conv_model_bytes(32, 16, 2)))]
    bench_plot = tmp_path / "bench.png"
    run = run_cli(env, "--db", str(db), "bench", *models, "--device", "all", *QUICK, "--benchmark-binary",
                  str(fake_binary(tmp_path)), "--plot", str(bench_plot), timeout_s=240)
    assert run.rc == 0, run.describe()
    assert f"plot: {bench_plot}" in run.stdout
    assert_png(bench_plot)
    run = run_cli(env, "--db", str(db), "bench", *models, "--device", "host", *QUICK, timeout_s=240)
    assert run.rc == 0, run.describe()

    plot = tmp_path / "compare.png"
    run = run_cli(env, "--db", str(db), "results", "compare", "pixel4", "pixel6", "host", "--plot", str(plot),
                  timeout_s=120)
    assert run.rc == 0, run.describe()
    header, *lines = run.stdout.splitlines()
    assert all(column in header for column in ("pixel4 ms", "pixel6 ms", "host ms", "pixel6/pixel4", "host/pixel4"))
    for name in ("small_conv.tflite", "conv2.tflite"):
        [line] = [line for line in lines if line.lstrip().startswith(name)]
        assert line.count("x ") + line.endswith("x") >= 1 and "statistic median/median/min" in line
    assert_png(plot)
    run = run_cli(env, "--db", str(db), "results", "compare", "pixel4", "pixel6", "host", "--json", timeout_s=120)
    payload = run.json()
    assert [d["device_ids"] for d in payload["devices"]] == [[phones["pixel4"].serial], [phones["pixel6"].serial],
                                                             ["host"]]
    assert len(payload["models"]) == 2 and all(None not in m["figures"] for m in payload["models"])
    # the written figure is the one the library builds: it names all three devices
    with ResultsStore(db) as store:
        drawn = texts(comparison_figure(compare_devices(store, ["pixel4", "pixel6", "host"])))
    assert all(f"{d} (" in drawn for d in ("pixel4", "pixel6", "host"))
    assert "pixel4 vs pixel6 vs host" in drawn and "latency (ms" in drawn
