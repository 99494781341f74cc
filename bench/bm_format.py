"""Write `BenchmarkOutput` as a recent LiteRT `benchmark_model` prints it.

The host's benchmark_model stand-in (`bench/bm_runner.py`) prints through this, so whatever
drives or parses the real tool works against the host too; `bench/bm_output.py` reads the
text back to an equal `BenchmarkOutput` (the tests hold the two to that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mnas.bench.bm_output import REGULAR_SECTION, RUN_ORDER, SUMMARY_BY_TYPE, BenchmarkOutput
from mnas.bench.types import LatencyStats

__all__ = ["format_benchmark_output", "format_params"]

# benchmark_model's defaults, used to print its "Running benchmark for ..." lines
_DEFAULTS = {
    "Min warmup runs": "1",
    "Min warmup runs duration (seconds)": "0.5",
    "Min num runs": "50",
    "Min runs duration (seconds)": "1",
    "Max runs duration (seconds)": "150",
}

def _num(value: float) -> str:
    """A number as C++ streams print it when integral, else Python's shortest exact form."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _stats_line(stats: LatencyStats | None, first: float | None, curr: float | None) -> str:
    if stats is None:
        return "count=0"
    if stats.min_us == stats.max_us and stats.std_us == 0 and curr is not None:
        return f"count={stats.count} curr={_num(curr)}" + ("(all same)" if stats.count > 1 else "")
    line = f"count={stats.count}"
    line += f" first={_num(first)}" if first is not None else ""
    line += f" curr={_num(curr)}" if curr is not None else ""
    line += f" min={_num(stats.min_us)} max={_num(stats.max_us)} avg={_num(stats.mean_us)} std={_num(stats.std_us)}"
    for key, value in (("p5", stats.p5_us), ("median", stats.median_us), ("p90", stats.p90_us), ("p95", stats.p95_us)):
        if value is not None:
            line += f" {key}={_num(value)}"
    return line


def _format_op_tables(out: BenchmarkOutput) -> list[str]:
    lines = [REGULAR_SECTION]
    if out.op_profile is not None:
        with_start = any(not math.isnan(row.start_ms) for row in out.op_profile)
        header = ["[node type]"] + (["[start]"] if with_start else [])
        header += ["[first]", "[avg ms]", "[%]", "[cdf%]", "[mem KB]", "[times called]", "[Name]"]
        lines += [f"============================== {RUN_ORDER} ==============================", "\t" + "\t".join(header)]
        for row in out.op_profile:
            cells = [row.node_type] + ([f"{row.start_ms:.3f}"] if with_start else [])
            cells += [f"{row.first_ms:.3f}", f"{row.avg_ms:.3f}", f"{row.percent:.3f}%", f"{row.cdf_percent:.3f}%",
                      f"{row.mem_kb:.3f}", str(row.times_called), row.name]
            lines.append("\t" + "\t".join(cells))
        lines.append("")
    if out.op_summary is not None:
        lines += [
            f"============================== {SUMMARY_BY_TYPE} ==============================",
            "\t" + "\t".join(["[Node type]", "[count]", "[avg ms]", "[avg %]", "[cdf %]", "[mem KB]", "[times called]"]),
        ]
        for item in out.op_summary:
            lines.append("\t" + "\t".join([
                str(item["node_type"]), str(item["count"]), f"{item['avg_ms']:.3f}", f"{item['avg_percent']:.3f}%",
                f"{item['cdf_percent']:.3f}%", f"{item['mem_kb']:.3f}", str(item["times_called"]),
            ]))
        lines.append("")
    return lines


def format_params(params: dict[str, str], prefix: str = "") -> list[str]:
    """benchmark_model's opening lines: STARTING! and one `Name: [value]` line per parameter."""
    return [f"{prefix}STARTING!"] + [f"{prefix}{key}: [{value}]" for key, value in params.items()]


def format_benchmark_output(out: BenchmarkOutput, *, prefix: str = "", notes: Sequence[str] = ()) -> str:
    """Print `out` as a recent LiteRT benchmark_model does; `parse_benchmark_output` reads it back equal.

    `prefix` goes before each log line ("INFO: " as LiteRT prints them; table rows have
    none); `notes` are extra log lines printed after the memory lines.
    """
    p = prefix
    setting = {**_DEFAULTS, **out.params}
    lines = format_params(out.params, p)
    if "Graph" in out.params:
        lines.append(f"{p}Loaded model {out.params['Graph']}")
    if out.init_us is not None:
        lines.append(f"{p}Initialized session in {_num(out.init_us / 1000.0)}ms.")
    max_secs = setting["Max runs duration (seconds)"]
    phases = (
        (out.warmup, out.warmup_first_us, out.warmup_curr_us, setting["Min warmup runs"],
         setting["Min warmup runs duration (seconds)"]),
        (out.inference, out.inference_first_us, out.inference_curr_us, setting["Min num runs"],
         setting["Min runs duration (seconds)"]),
    )
    shown = 2 if out.inference is not None or out.inference_first_us is not None else (
        1 if out.warmup is not None or out.warmup_first_us is not None else 0)
    for stats, first, curr, runs, secs in phases[:shown]:
        lines.append(f"{p}Running benchmark for at least {runs} iterations and at least {secs} seconds "
                     f"but terminate if exceeding {max_secs} seconds.")
        lines += [f"{p}{_stats_line(stats, first, curr)}", ""]
    if out.complete:
        items = [("Init", out.init_us), ("First inference", out.first_us),
                 ("Warmup (avg)", out.warmup_avg_us), ("Inference (avg)", out.inference_avg_us)]
        lines.append(f"{p}Inference timings in us: "
                     + ", ".join(f"{name}: {_num(value)}" for name, value in items if value is not None))
    if out.init_memory_mb is not None and out.overall_memory_mb is not None:
        lines.append(f"{p}Note: as the benchmark tool itself affects memory footprint, the following is only "
                     "APPROXIMATE to the actual memory footprint of the model at runtime. "
                     "Take the information at your discretion.")
        lines.append(f"{p}Memory footprint delta from the start of the tool (MB): "
                     f"init={_num(out.init_memory_mb)} overall={_num(out.overall_memory_mb)}")
    if out.peak_memory_mb is not None:
        lines.append(f"{p}Overall peak memory footprint (MB) via periodic monitoring: {_num(out.peak_memory_mb)}")
    lines += [f"{p}{note}" for note in notes]
    if out.op_profile is not None or out.op_summary is not None:
        lines += _format_op_tables(out)
    for error in out.errors:
        lines.append(f"ERROR: {error}")
    return "\n".join(lines) + "\n"
