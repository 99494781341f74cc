"""The benchmark_model-compatible runner: flags, output format, and the parser reading it back."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tflite_fixtures import small_conv

from mnas.bench.bm_format import format_benchmark_output
from mnas.bench.bm_output import parse_benchmark_output
from mnas.bench.bm_runner import logged_params, parse_flags, run, to_benchmark_output
from mnas.bench.host_worker import TimingResult
from mnas.bench.types import LatencyStats

STATS_LINE = re.compile(
    r"^INFO: count=(\d+) first=(\S+) curr=(\S+) min=(\S+) max=(\S+) avg=(\S+) std=(\S+) "
    r"p5=(\S+) median=(\S+) p95=(\S+)$",
    re.MULTILINE,
)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def test_runner_output_reads_back_with_equal_numbers(tmp_path: Path) -> None:
    model = small_conv(tmp_path)
    code, out, err = _run([f"--graph={model}", "--num_threads=1", "--warmup_runs=3", "--num_runs=20",
                           "--min_secs=0", "--warmup_min_secs=0"])
    assert code == 0, err
    assert out.startswith("INFO: STARTING!\nINFO: Log parameter values verbosely: [0]\n")
    parsed = parse_benchmark_output(out)
    assert parsed.complete
    assert parsed.params == {
        "Log parameter values verbosely": "0",
        "Graph": str(model),
        "Num threads": "1",
        "Min warmup runs": "3",
        "Min num runs": "20",
        "Min runs duration (seconds)": "0",
        "Min warmup runs duration (seconds)": "0",
        "#threads used for CPU inference": "1",
    }
    warm_line, inference_line = STATS_LINE.findall(out)
    for line, stats, first, curr in (
        (warm_line, parsed.warmup, parsed.warmup_first_us, parsed.warmup_curr_us),
        (inference_line, parsed.inference, parsed.inference_first_us, parsed.inference_curr_us),
    ):
        assert stats is not None
        count, *numbers = line
        assert int(count) == stats.count
        assert [float(n) for n in numbers] == [first, curr, stats.min_us, stats.max_us, stats.mean_us,
                                               stats.std_us, stats.p5_us, stats.median_us, stats.p95_us]
    assert parsed.warmup is not None and parsed.warmup.count == 3
    assert parsed.inference is not None and parsed.inference.count == 20
    summary = re.search(r"Inference timings in us: Init: (\S+), First inference: (\S+), "
                        r"Warmup \(avg\): (\S+), Inference \(avg\): (\S+)$", out, re.MULTILINE)
    assert summary is not None
    assert [float(x) for x in summary.groups()] == [parsed.init_us, parsed.first_us, parsed.warmup_avg_us,
                                                    parsed.inference_avg_us]
    assert parsed.first_us == parsed.warmup_first_us
    assert parsed.inference_avg_us == parsed.inference.mean_us
    assert parsed.init_memory_mb is not None and parsed.overall_memory_mb is not None
    assert "INFO: The input model file size (MB): " in out


def test_timing_to_output_round_trips_exactly() -> None:
    timing = TimingResult(
        model_path="m.tflite", runtime="ai-edge-litert", runtime_version="2.3.0", num_threads=1,
        init_us=1234.56, warmup_us=[480.4, 101.0, 99.5], runs_us=[100.4, 99.6, 101.0, 250.0],
        warmup_wall_s=0.001, timed_wall_s=0.001, maxrss_start_kb=1000, maxrss_init_kb=1512, maxrss_end_kb=3048,
    )
    params = logged_params(*parse_flags(["--graph=m.tflite", "--num_runs=4"]))
    out = to_benchmark_output(timing, params)
    # whole microseconds per run, as benchmark_model's clock gives them
    assert out.inference == LatencyStats(4, 137.75, pytest.approx(4200.1875 ** 0.5), 100.0, 250.0, 100.5, None,
                                         100.0, pytest.approx(227.65))
    assert (out.init_us, out.first_us, out.inference_first_us, out.inference_curr_us) == (1235, 480, 100, 250)
    assert (out.init_memory_mb, out.overall_memory_mb) == (0.5, 2.0)
    text = format_benchmark_output(out, prefix="INFO: ")
    assert "INFO: count=4 first=100 curr=250 min=100 max=250 avg=137.75 " in text
    assert parse_benchmark_output(text) == out


def test_op_profiling_prints_a_note_and_no_table(tmp_path: Path) -> None:
    code, out, _ = _run([f"--graph={small_conv(tmp_path)}", "--num_runs=2", "--min_secs=0",
                         "--warmup_min_secs=0", "--enable_op_profiling=true"])
    assert code == 0
    assert "INFO: Enable op profiling: [1]" in out
    assert "INFO: Op profiling is not available: the ai-edge-litert Python interpreter exposes no per-operator" in out
    parsed = parse_benchmark_output(out)
    assert parsed.op_profile is None and parsed.op_summary is None and parsed.complete


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "ERROR: Please specify the name of your TF Lite input file with --graph"),
        (["--graph=m.tflite", "--num_runs=ten"], "ERROR: invalid value for --num_runs: 'ten' (expected int)"),
        (["--graph=m.tflite", "--enable_op_profiling=yes"],
         "ERROR: invalid value for --enable_op_profiling: 'yes' (expected bool)"),
        (["--graph=m.tflite", "--use_hexagon=true", "extra"], "ERROR: Unconsumed cmdline flags: --use_hexagon=true extra"),
        (["--graph=m.tflite", "--num_runs"], "ERROR: flag --num_runs needs a value: --num_runs=<int>"),
        (["--graph=m.tflite", "--num_threads=0"], "ERROR: invalid value for --num_threads: 0 (expected >= 1)"),
    ],
)
def test_bad_command_lines_fail_like_benchmark_model(argv: list[str], error: str) -> None:
    code, out, err = _run(argv)
    assert code == 1
    assert err.strip() == error
    assert out == ""


def test_boolean_flag_forms() -> None:
    for raw, expected in (("--enable_op_profiling", True), ("--enable_op_profiling=1", True),
                          ("--enable_op_profiling=false", False), ("--enable_op_profiling=0", False)):
        values, given = parse_flags(["--graph=m.tflite", raw])
        assert values["enable_op_profiling"] is expected and given == ["graph", "enable_op_profiling"]
    values, _ = parse_flags(["--graph=m.tflite"])
    assert (values["num_runs"], values["min_secs"], values["warmup_runs"], values["warmup_min_secs"],
            values["max_secs"]) == (50, 1.0, 1, 0.5, 150.0)  # benchmark_model's defaults


def test_missing_model_prints_the_head_then_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tflite"
    code, out, err = _run([f"--graph={missing}"])
    assert code == 1
    assert out.splitlines()[:3] == ["INFO: STARTING!", "INFO: Log parameter values verbosely: [0]",
                                    f"INFO: Graph: [{missing}]"]
    assert err.strip() == f"ERROR: {missing}: no such model file"


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset not installed")
def test_module_entry_point_under_taskset_keeps_outer_pinning(tmp_path: Path) -> None:
    core = max(os.sched_getaffinity(0))
    model = small_conv(tmp_path)
    proc = subprocess.run(
        ["taskset", "-c", str(core), sys.executable, "-m", "mnas.bench.bm_runner", f"--graph={model}",
         "--num_runs=20", "--min_secs=0", "--warmup_min_secs=0"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"CPU affinity: {core}" in proc.stdout
    parsed = parse_benchmark_output(proc.stdout)
    assert parsed.complete and parsed.inference is not None and parsed.inference.count == 20
