"""The benchmark_model output parser against real logs and every documented format variant."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnas.bench.bm_format import format_benchmark_output
from mnas.bench.bm_output import (
    BenchmarkParseError,
    parse_benchmark_output,
    require_complete,
)
from mnas.bench.types import LatencyStats, OpProfileRow
from mnas.cli_bench import bench
from mnas.errors import MeasurementError

# real logs: a copy under tests/data when the repository carries one, else the shared folder
SAMPLES = next(
    (p for p in (Path(__file__).parent / "data" / "benchmark_model", Path("/work/shared/data/benchmark_model"))
     if p.is_dir()),
    Path("/work/shared/data/benchmark_model"),
)
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared sample logs not present")


def _sample(name: str) -> str:
    return (SAMPLES / name).read_text()


# ----------------------------------------------------------------------------- real logs


@needs_samples
def test_tf23_android_log_numbers() -> None:
    out = parse_benchmark_output(_sample("tf2.3_android_4threads_opprofiling.txt"))
    assert out.params == {
        "Log parameter values verbosely": "0",
        "Num threads": "4",
        "Graph": "/data/local/tmp/espcn_harmonic_2x_slim_w_cl.tflite",
        "Enable op profiling": "1",
        "#threads used for CPU inference": "4",
    }
    assert out.init_us == 855
    assert out.first_us == 49060
    assert out.warmup_avg_us == 34825.1
    assert out.inference_avg_us == 33209.4
    assert out.warmup == LatencyStats(count=15, mean_us=34825.1, std_us=3930, min_us=32825, max_us=49060)
    assert out.inference == LatencyStats(count=50, mean_us=33209.4, std_us=450, min_us=32641, max_us=34005)
    assert (out.warmup_first_us, out.warmup_curr_us) == (49060, 33682)
    assert (out.inference_first_us, out.inference_curr_us) == (32891, 33978)
    assert (out.init_memory_mb, out.overall_memory_mb, out.peak_memory_mb) == (0, 12.8672, None)
    assert out.op_profile is None and out.op_summary is None  # the paste cut the tables off
    assert out.complete is True
    assert out.errors == []


@needs_samples
def test_tf2x_1000_runs_log_numbers() -> None:
    out = parse_benchmark_output(_sample("tf2.x_android_1thread_1000runs.txt"))
    assert out.params["Min num runs"] == "1000"
    assert out.params["Min warmup runs"] == "1"
    assert out.params["Graph"] == "/data/local/tmp/model.tflite"
    assert (out.init_us, out.first_us, out.warmup_avg_us, out.inference_avg_us) == (17851, 2104, 1041.15, 1039.66)
    assert out.warmup == LatencyStats(count=478, mean_us=1041.15, std_us=63, min_us=1012, max_us=2104)
    assert out.inference == LatencyStats(count=1000, mean_us=1039.66, std_us=22, min_us=1012, max_us=1190)
    assert (out.inference_first_us, out.inference_curr_us) == (1040, 1018)
    # only the "Note:" line made it into the paste, no memory figures
    assert (out.init_memory_mb, out.overall_memory_mb, out.peak_memory_mb) == (None, None, None)
    assert out.complete is True


@needs_samples
def test_tf21_pixel4_log_is_incomplete_but_readable() -> None:
    out = parse_benchmark_output(_sample("tf2.1_pixel4_taskset_1thread.txt"))
    assert out.params == {}
    assert out.init_us == 682  # from "Initialized session in 0.682ms" (no summary line)
    assert out.first_us == 151057  # the warm-up's first run
    assert out.warmup == LatencyStats(count=10, mean_us=138180, std_us=4295, min_us=136418, max_us=151057)
    assert out.inference == LatencyStats(count=50, mean_us=137144, std_us=264, min_us=136834, max_us=138724)
    assert (out.inference_first_us, out.inference_curr_us) == (136997, 137191)
    assert out.warmup_avg_us == 138180 and out.inference_avg_us == 137144
    assert (out.init_memory_mb, out.overall_memory_mb) == (3.12109, 71.4961)  # max RSS in TF 2.1
    assert out.complete is False
    with pytest.raises(MeasurementError) as info:
        require_complete(out, "pixel4.log")
    assert str(info.value).startswith("pixel4.log: benchmark output ends before the final timing line")


@needs_samples
@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.txt")) if SAMPLES.is_dir() else [])
def test_sample_logs_round_trip(name: str) -> None:
    out = parse_benchmark_output(_sample(name))
    assert parse_benchmark_output(format_benchmark_output(out)) == out
    assert parse_benchmark_output(format_benchmark_output(out, prefix="INFO: ")) == out


# ----------------------------------------------------------------------------- format variants

LITERT_WITH_PERCENTILES = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [100]
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/mnas/m.tflite]
INFO: Signature to run: []
INFO: #threads used for CPU inference: [1]
INFO: Loaded model /data/local/tmp/mnas/m.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 58 out of 58 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions.
INFO: The input model file size (MB): 4.38
INFO: Initialized session in 3.337ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=81913 curr=55502 min=55502 max=81913 avg=58984.7 std=8115 p5=55502 median=56010 p95=81913

INFO: Running benchmark for at least 100 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1061 first=56576 curr=56299 min=54669 max=60236 avg=56265.8 std=982 p5=55012 median=56190 p95=58001

INFO: Inference timings in us: Init: 3337, First inference: 81913, Warmup (avg): 58984.7, Inference (avg): 56265.8
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.43359 overall=8.67578
INFO: Overall peak memory footprint (MB) via periodic monitoring: 13.1797
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 13 MB
INFO: + RssAnnon           : 7 MB
INFO: + RssFile + RssShmem : 6 MB
"""


def test_litert_output_with_percentiles_and_memory() -> None:
    out = parse_benchmark_output(LITERT_WITH_PERCENTILES)
    assert out.params["Signature to run"] == ""
    assert out.params["Min num runs"] == "100"
    assert out.warmup == LatencyStats(9, 58984.7, 8115, 55502, 81913, median_us=56010, p5_us=55502, p95_us=81913)
    assert out.inference == LatencyStats(1061, 56265.8, 982, 54669, 60236, median_us=56190, p5_us=55012, p95_us=58001)
    assert (out.init_us, out.first_us, out.warmup_avg_us, out.inference_avg_us) == (3337, 81913, 58984.7, 56265.8)
    assert (out.init_memory_mb, out.overall_memory_mb, out.peak_memory_mb) == (2.43359, 8.67578, 13.1797)
    assert out.complete
    assert parse_benchmark_output(format_benchmark_output(out, prefix="INFO: ")) == out


TF1_LEGACY = """\
STARTING!
Num runs: [50]
Inter-run delay (seconds): [-1]
Num threads: [1]
Benchmark name: []
Output prefix: []
Warmup runs: [1]
Graph: [mobilenet_v1_1.0_224_quant.tflite]
Input layers: []
Input shapes: []
Use nnapi : [0]
Loaded model mobilenet_v1_1.0_224_quant.tflite
resolved reporter
Initialized session in 4.452ms
Running benchmark for 1 iterations
count=1 curr=146161

Running benchmark for 50 iterations
count=50 first=137789 curr=137254 min=137079 max=143416 avg=137722 std=896

Average inference timings in us: Warmup: 146161, Init: 4452, no stats: 137722
"""


def test_tf1_legacy_summary_and_single_run_stats() -> None:
    out = parse_benchmark_output(TF1_LEGACY)
    assert out.params["Use nnapi"] == "0"
    assert out.params["Warmup runs"] == "1"
    # "count=1 curr=X": one run, every statistic is that run
    assert out.warmup == LatencyStats(1, 146161, 0, 146161, 146161, 146161, 146161, 146161, 146161)
    assert out.inference == LatencyStats(50, 137722, 896, 137079, 143416)
    # "no stats" is the timed runs' average; Init comes from the summary
    assert (out.init_us, out.warmup_avg_us, out.inference_avg_us) == (4452, 146161, 137722)
    assert out.first_us == 146161  # no "First inference" item: the warm-up's only run
    assert out.complete
    assert parse_benchmark_output(format_benchmark_output(out)) == out


def test_tf_full_benchmark_summary_with_stats_item_and_glog_prefixes() -> None:
    text = (
        "2018-09-10 12:36:26.109025: I tensorflow/tools/benchmark/benchmark_model.cc:361] "
        "count=424 first=27363 curr=21886 min=20873 max=29838 avg=23601.1 std=1660\n"
        "2018-09-10 12:36:37.571102: I tensorflow/tools/benchmark/benchmark_model.cc:361] "
        "count=405 first=27236 curr=23132 min=21351 max=37195 avg=24724.8 std=1940\n"
        "2018-09-10 12:36:37.571200: I tensorflow/tools/benchmark/benchmark_model.cc:600] "
        "Average inference timings in us: Warmup: 335337, no stats: 23601, with stats: 24724\n"
    )
    out = parse_benchmark_output(text)
    assert out.warmup_avg_us == 335337  # the summary's Warmup item wins over the first stats line
    assert out.inference_avg_us == 23601  # "no stats", never "with stats"
    assert out.inference is not None and out.inference.count == 405
    assert out.complete


def test_android_app_logcat_summary_with_glued_memory() -> None:
    text = (
        "06-12 10:11:12.345  4321  4321 E tflite  : Average inference timings in us: Warmup: 91471, "
        "Init: 4108, Inference: 80660.1Overall max resident set size = 71.4961 MB, total malloc-ed size = 31.4656 MB\n"
    )
    out = parse_benchmark_output(text)
    assert (out.warmup_avg_us, out.init_us, out.inference_avg_us) == (91471, 4108, 80660.1)
    assert out.overall_memory_mb == 71.4961
    assert out.complete and out.warmup is None and out.inference is None


def test_oldest_summary_form_with_bare_average() -> None:
    out = parse_benchmark_output("Average inference timings in us: 137722 , Warmup: 146161, \n")
    assert (out.inference_avg_us, out.warmup_avg_us) == (137722, 146161)
    assert out.complete


def test_all_same_and_empty_stats_forms() -> None:
    text = "I/tflite( 1234): count=5 curr=800(all same)\nI/tflite( 1234): count=0\n"
    out = parse_benchmark_output(text)
    assert out.warmup == LatencyStats(5, 800, 0, 800, 800, 800, 800, 800, 800)
    assert out.warmup_first_us == 800
    assert out.inference is None and out.inference_first_us is None
    assert out.complete is False
    assert parse_benchmark_output(format_benchmark_output(out)) == out


def test_peak_memory_footprint_form_of_tf22() -> None:
    out = parse_benchmark_output("Peak memory footprint (MB): init=1.5 overall=30.25\n")
    assert (out.init_memory_mb, out.overall_memory_mb) == (1.5, 30.25)


OP_PROFILE_TF2 = """\
Profiling Info for Benchmark Initialization:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t         AllocateTensors\t            0.000\t    1.356\t    1.356\t100.000%\t100.000%\t     0.000\t        1\tAllocateTensors/0

Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                 CONV_2D\t            0.066\t   87.754\t   60.957\t 40.000%\t 40.000%\t     0.000\t        1\t[MobilenetV1/Conv2d_0/Relu6]:0
\t       DEPTHWISE_CONV_2D\t           61.033\t   53.628\t   49.870\t 35.000%\t 75.000%\t     0.000\t        1\t[MobilenetV1/Conv2d_1_depthwise/Relu6]:1
\t                 CONV_2D\t          110.912\t  134.346\t   37.500\t 25.000%\t100.000%\t     0.000\t        1\t[MobilenetV1/Conv2d_1_pointwise/Relu6]:2

============================== Top by Computation Time ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                 CONV_2D\t            0.066\t   87.754\t   60.957\t 40.000%\t 40.000%\t     0.000\t        1\t[MobilenetV1/Conv2d_0/Relu6]:0

Number of nodes executed: 3
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                 CONV_2D\t        2\t    98.457\t    65.000%\t    65.000%\t     0.000\t        2
\t       DEPTHWISE_CONV_2D\t        1\t    49.870\t    35.000%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=50 first=275728 curr=148254 min=147001 max=275728 avg=150327 std=18000
Memory (bytes): count=0
3 nodes observed
"""


def test_op_profile_tables_take_the_regular_runs_section() -> None:
    out = parse_benchmark_output(OP_PROFILE_TF2)
    assert out.op_profile == [
        OpProfileRow("CONV_2D", 0.066, 87.754, 60.957, 40.0, 40.0, 0.0, 1, "[MobilenetV1/Conv2d_0/Relu6]:0"),
        OpProfileRow("DEPTHWISE_CONV_2D", 61.033, 53.628, 49.870, 35.0, 75.0, 0.0, 1,
                     "[MobilenetV1/Conv2d_1_depthwise/Relu6]:1"),
        OpProfileRow("CONV_2D", 110.912, 134.346, 37.5, 25.0, 100.0, 0.0, 1, "[MobilenetV1/Conv2d_1_pointwise/Relu6]:2"),
    ]
    assert out.op_summary == [
        {"node_type": "CONV_2D", "count": 2, "avg_ms": 98.457, "avg_percent": 65.0, "cdf_percent": 65.0,
         "mem_kb": 0.0, "times_called": 2},
        {"node_type": "DEPTHWISE_CONV_2D", "count": 1, "avg_ms": 49.87, "avg_percent": 35.0, "cdf_percent": 100.0,
         "mem_kb": 0.0, "times_called": 1},
    ]
    # the profiler's "Timings (microseconds): count=..." footer is not a warm-up/inference line
    assert out.warmup is None and out.inference is None
    assert parse_benchmark_output(format_benchmark_output(out)) == out


def test_newer_table_without_start_column_and_spaced_node_types() -> None:
    text = (
        "INFO: Operator-wise Profiling Info for Regular Benchmark Runs:\n"
        "============================== Run Order ==============================\n"
        "                     [node type]          [first]        [avg ms]            [%]          [cdf%]"
        "          [mem KB]        [times called]  [Name]\n"
        "                        QUANTIZE            0.199           0.203         1.328%          1.328%"
        "             0.000                1       [tfl.quantize]:0\n"
        "   Convolution (NHWC, QC8) IGEMM            0.398           0.407         2.658%          3.986%"
        "             0.000                1       Delegate/Convolution (NHWC, QC8) IGEMM:0\n"
        "\n"
    )
    out = parse_benchmark_output(text)
    assert out.op_profile is not None and len(out.op_profile) == 2
    row = out.op_profile[1]
    assert row.node_type == "Convolution (NHWC, QC8) IGEMM"
    assert (row.first_ms, row.avg_ms, row.percent, row.cdf_percent, row.times_called) == (0.398, 0.407, 2.658, 3.986, 1)
    assert row.name == "Delegate/Convolution (NHWC, QC8) IGEMM:0"
    assert math.isnan(row.start_ms)  # this format has no [start] column
    assert parse_benchmark_output(format_benchmark_output(out)) == out


# ----------------------------------------------------------------------------- truncation & errors


def test_truncated_output_is_incomplete_and_keeps_last_error() -> None:
    cut = LITERT_WITH_PERCENTILES.split("INFO: Inference timings")[0] + "ERROR: Failed to invoke the interpreter.\n"
    out = parse_benchmark_output(cut)
    assert out.complete is False
    assert out.inference is not None and out.inference.count == 1061  # what arrived is still read
    assert out.errors == ["Failed to invoke the interpreter."]
    with pytest.raises(MeasurementError) as info:
        require_complete(out, "pixel4:m.tflite")
    assert str(info.value) == (
        "pixel4:m.tflite: benchmark output ends before the final timing line ('Inference timings in us: ...' "
        "missing: the run was cut short or failed); last error: Failed to invoke the interpreter."
    )
    assert require_complete(parse_benchmark_output(LITERT_WITH_PERCENTILES), "x") is not None


def test_malformed_stats_line_names_line_number_and_text() -> None:
    text = "STARTING!\nGraph: [m.tflite]\ncount=50 first=1 curr=2 min=1 max=3 avg=abc std=1\n"
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(text, source="run.log")
    assert str(info.value) == (
        "run.log: benchmark output line 3: malformed stats line (avg='abc' is not a number): "
        "'count=50 first=1 curr=2 min=1 max=3 avg=abc std=1'"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("count=5 first=1 curr=2 min=1 max=3\n", "line 1: malformed stats line (missing avg=, std=)"),
        ("count=5 first=1 bogus=2 min=1 max=3 avg=2 std=1\n", "line 1: malformed stats line (unknown field 'bogus')"),
        ("a\nInference timings in us: Init: 5, Latency: 7\n", "line 2: malformed timing summary (unknown summary item 'Latency')"),
        ("Initialized session in fastms.\n", "line 1: malformed init line"),
        ("Memory footprint delta from the start of the tool (MB): init=x overall=2\n", "line 1: malformed memory line"),
        ("count=1 curr=1\ncount=1 curr=1\ncount=1 curr=1\n", "line 3: a third timing stats line"),
    ],
)
def test_records_that_do_not_parse_raise(text: str, message: str) -> None:
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(text)
    assert message in str(info.value)


def test_malformed_table_row_raises() -> None:
    broken = OP_PROFILE_TF2.replace("\t   53.628\t", "\t   5x.628\t")
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(broken)
    assert "line 10: malformed row of the 'Run Order' table" in str(info.value)


# ----------------------------------------------------------------------------- CLI


def test_cli_parse_json_has_unit_keys(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(LITERT_WITH_PERCENTILES)
    result = CliRunner().invoke(bench, ["parse", str(log), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["inference_median_ms"] == pytest.approx(56.190)  # ms, as every other command
    assert payload["init_ms"] == pytest.approx(3.337)
    assert not [key for key in payload if key.endswith("_us")]
    in_us = json.loads(CliRunner().invoke(bench, ["parse", str(log), "--json", "--units", "us"]).output)
    assert (in_us["inference_median_us"], in_us["init_us"]) == (56190, 3337)  # as the log printed them
    assert not [key for key in in_us if key.endswith("_ms")]
    assert payload["peak_memory_mb"] == 13.1797
    assert payload["inference_count"] == 1061 and payload["complete"] is True


def test_cli_parse_text_and_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(TF1_LEGACY)
    result = CliRunner().invoke(bench, ["parse", str(log)])
    assert result.exit_code == 0
    assert "inference_avg_ms" in result.output and "137.722" in result.output
    missing = CliRunner().invoke(bench, ["parse", str(tmp_path / "nope.log")])
    assert missing.exit_code != 0
    assert str(missing.exception) == f"{tmp_path / 'nope.log'}: no such log file"
    assert missing.exception.exit_code == 2  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- impossible numbers (issue 11)

GOOD_TAIL = (
    "count=3 first=900 curr=800 min=800 max=900 avg=850 std=40\n"
    "count=50 first=810 curr=800 min=790 max=830 avg=805 std=9\n"
    "Inference timings in us: Init: 100, First inference: 900, Warmup (avg): 850, Inference (avg): 805\n"
    "Memory footprint delta from the start of the tool (MB): init=1.5 overall=3.25\n"
)


def test_the_good_tail_is_complete() -> None:
    out = parse_benchmark_output(GOOD_TAIL)
    assert out.complete and out.rejected == []


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("Inference (avg): 805", "Inference (avg): nan", "line 3: impossible figure in the timing summary "
                                                         "(inference_avg=nan is not a time"),
        ("Inference (avg): 805", "Inference (avg): inf", "(inference_avg=inf is not a time"),
        ("Init: 100,", "Init: -100,", "(init=-100 is not a time"),
        ("avg=805 std=9", "avg=-805 std=9", "line 2: impossible figure in a stats line (avg=-805 is not a time"),
        ("avg=805 std=9", "avg=805 std=nan", "(std=nan is not a time"),
        ("min=790 max=830 avg=805", "min=790 max=830 avg=8050", "(avg=8050 is outside min=790 .. max=830)"),
        ("min=790 max=830", "min=890 max=830", "(min=890 is above max=830)"),
        ("count=50 ", "count=-50 ", "(count=-50 is not a run count"),
        ("count=50 ", "count=1e12 ", "(count=1e+12 is not a run count"),
        ("count=50 ", "count=2.5 ", "(count=2.5 is not a run count"),
        ("count=50 first=810 curr=800 min=790 max=830 avg=805 std=9", "count=0",
         "line 2: the timed runs never ran (count=0) but line 3 gives an inference average"),
        ("init=1.5 overall=3.25", "init=1.5 overall=-3.25", "line 4: impossible memory figure (overall=-3.25"),
        ("init=1.5 overall=3.25", "init=nan overall=3.25", "(init=nan is not a memory size"),
    ],
)
def test_impossible_numbers_make_the_output_incomplete_naming_the_line(old: str, new: str, reason: str) -> None:
    text = GOOD_TAIL.replace(old, new)
    assert text != GOOD_TAIL
    out = parse_benchmark_output(text)
    assert out.complete is False
    assert len(out.rejected) == 1 and reason in out.rejected[0]
    bad_line = text.splitlines()[int(out.rejected[0].split()[1].rstrip(":")) - 1]
    assert out.rejected[0].endswith(repr(bad_line.strip()))
    with pytest.raises(MeasurementError) as info:
        require_complete(out, "pixel4:m.tflite")
    assert str(info.value) == f"pixel4:m.tflite: benchmark output is incomplete: {out.rejected[0]}"
    # no impossible figure is kept
    for value in (out.init_us, out.inference_avg_us, out.overall_memory_mb, out.init_memory_mb):
        assert value is None or (math.isfinite(value) and value >= 0)
    if out.inference is not None:
        assert out.inference.count > 0 and math.isfinite(out.inference.mean_us) and out.inference.mean_us >= 0


def test_impossible_session_init_peak_memory_rss_and_table_rows() -> None:
    cases = [
        ("Initialized session in -3.5ms.\n", "impossible init time (init=-3.5 is not a time"),
        ("Overall peak memory footprint (MB) via periodic monitoring: -1\n", "(peak=-1 is not a memory size"),
        ("[Overall] - Memory usage: max resident set size = nan MB, total malloc-ed size = 3 MB\n",
         "(max resident set size=nan is not a memory size"),
        (OP_PROFILE_TF2.replace("\t   53.628\t", "\t  -53.628\t"),
         "line 10: impossible figure in a row of the 'Run Order' table (first_ms=-53.628 is not a time"),
        (OP_PROFILE_TF2.replace("Memory (bytes): count=0", "Memory (bytes): count=inf"), "(count=inf is not a run count"),
    ]
    for text, reason in cases:
        out = parse_benchmark_output(text)
        assert len(out.rejected) == 1 and reason in out.rejected[0], (text, out.rejected)
        assert out.complete is False
    row_case = parse_benchmark_output(cases[3][0])
    assert row_case.op_profile is not None and len(row_case.op_profile) == 2  # the bad row is not kept


def test_the_phone_path_turns_impossible_output_into_a_measurement_error() -> None:
    from mnas.bench.adb.run import read_timings
    from mnas.bench.adb.transport import ShellResult

    output = GOOD_TAIL.replace("Inference (avg): 805", "Inference (avg): nan")
    result = ShellResult(command="benchmark_model", returncode=0, output=output, stdout=output, stderr="",
                         protocol="v2")
    with pytest.raises(MeasurementError, match=r"pixel: benchmark output is incomplete: line 3: .*nan"):
        read_timings(result, "pixel")


def test_quoted_lines_are_cut_to_about_200_characters() -> None:
    long_line = "count=50 first=1 curr=2 min=1 max=3 avg=abc std=1 " + "x" * 5000
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(long_line)
    message = str(info.value)
    assert len(message) < 400 and "(5050 characters, cut)" in message
    bad_token = "count=1 curr=" + "9" * 3000 + "z"
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(bad_token)
    assert len(str(info.value)) < 500
    long_row = OP_PROFILE_TF2.replace("\t   53.628\t", "\t  -53.628\t").replace(
        "[MobilenetV1/Conv2d_1_depthwise/Relu6]:1", "y" * 900)
    rejected = parse_benchmark_output(long_row).rejected
    assert len(rejected) == 1 and len(rejected[0]) < 400 and "characters, cut)" in rejected[0]
    cut = "count=1 curr=5\nERROR: " + "boom " * 500 + "\n"
    with pytest.raises(MeasurementError) as failure:
        require_complete(parse_benchmark_output(cut), "x")
    assert len(str(failure.value)) < 450 and "characters, cut" in str(failure.value)


def test_cli_parse_without_benchmark_output_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mnas.cli import main

    log = tmp_path / "notes.txt"
    log.write_text("hello\nthis is not a benchmark log\nNum threads: [4]\nERROR: could not open model\n")
    for args in (["bench", "parse", str(log)], ["bench", "parse", str(log), "--json"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (
            f"mnas: error: {log}: no benchmark_model output (no timing, memory or profiling line); "
            "last error: could not open model\n")
    empty = tmp_path / "empty.log"
    empty.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "parse", str(empty), "--json"])
    assert exit_info.value.code == 2


def test_cli_parse_reports_rejected_lines_with_and_without_json(tmp_path: Path) -> None:
    log = tmp_path / "nan.log"
    log.write_text(GOOD_TAIL.replace("Inference (avg): 805", "Inference (avg): nan"))
    result = CliRunner().invoke(bench, ["parse", str(log), "--json"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["complete"] is False and "line 3" in payload["rejected"][0]
    assert f"note: {log}: rejected line 3:" in result.stderr
    text = CliRunner().invoke(bench, ["parse", str(log)])
    assert f"note: {log}: rejected line 3:" in text.stderr
