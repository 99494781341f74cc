"""A `benchmark_model` stand-in for Linux hosts: same flags, same printed output.

`python -m mnas.bench.bm_runner --graph=m.tflite --num_threads=1 --warmup_runs=W
--num_runs=N --min_secs=S` times a model with the host timing loop
(`bench.host_worker.time_model`, the project's only timing loop) in THIS process and prints
what a recent LiteRT benchmark_model prints (STARTING!, the parameter lines, Loaded model,
Initialized session, the warm-up and inference stats lines with p5/median/p95, the
`Inference timings in us:` summary and the memory lines), so everything that drives or parses
benchmark_model (`bench/bm_output.py`) works unchanged against a host without the binary.

Conventions copied from benchmark_model: flags are `--name=value` (booleans true/false/1/0; a
bare `--flag` means true); per-run times are whole microseconds; the warm-up runs at least
`warmup_runs` times and `warmup_min_secs` (default 0.5 s), the timed phase at least
`num_runs` times and `min_secs`, both stopping past `max_secs`; only parameters given on the
command line are logged (all with `--verbose=true`). Log lines go to stdout with the `INFO: `
prefix, failures to stderr as `ERROR: ...` with exit code 1. Unknown flags are an error rather
than being ignored, so a caller never believes a setting took effect when it did not.

Pinning: the runner does NOT pin itself. Run it under `taskset <mask>` (as benchmark_model is
run on phones); it honours whatever affinity it was started with and logs it.

Threads and delegates: `--num_threads=N` is the interpreter's thread count (run it under a
mask of N cores). `--use_xnnpack=false` turns XNNPACK off as benchmark_model does (the op
resolver without default delegates); `--use_xnnpack=true` keeps it, and says it was applied
only when LiteRT logged creating it. The Python interpreter has no GPU or NNAPI delegate:
`--use_gpu=true` / `--use_nnapi=true` print one line saying the run falls back to the CPU
(what benchmark_model does where a delegate is unavailable), so callers flag the figure.

Op profiling (`--enable_op_profiling=true`): the LiteRT Python interpreter exposes no per-op
profiler (ai-edge-litert's `Interpreter` has no profiling hook; only the C++ tool wires
TFLite's profiler to its StatsCalculator). Timing single-op sub-models would measure
different graphs (XNNPACK fuses and partitions the whole graph), so the runner prints one
clear note line instead of a table, never invented per-op numbers.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnas.bench.bm_format import format_benchmark_output, format_params
from mnas.bench.bm_output import BenchmarkOutput
from mnas.bench.host import check_tflite_file
from mnas.bench.host_worker import XNNPACK_LOG_LINE, TimingResult, time_model
from mnas.bench.runtime import load_runtime
from mnas.bench.types import LatencyStats
from mnas.errors import MnasError

PREFIX = "INFO: "


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError("expected true/false/1/0")


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_float(text: str) -> float:
    return float(text.strip())


@dataclasses.dataclass(frozen=True)
class _Flag:
    label: str  # benchmark_model's parameter label in the "Log parameter values" lines
    parse: Callable[[str], Any]
    default: Any
    kind: str  # "int", "float", "bool" or "string", for messages


FLAGS: dict[str, _Flag] = {
    "graph": _Flag("Graph", str, "", "string"),
    "num_runs": _Flag("Min num runs", _parse_int, 50, "int"),
    "min_secs": _Flag("Min runs duration (seconds)", _parse_float, 1.0, "float"),
    "max_secs": _Flag("Max runs duration (seconds)", _parse_float, 150.0, "float"),
    "num_threads": _Flag("Num threads", _parse_int, 1, "int"),
    "warmup_runs": _Flag("Min warmup runs", _parse_int, 1, "int"),
    "warmup_min_secs": _Flag("Min warmup runs duration (seconds)", _parse_float, 0.5, "float"),
    "enable_op_profiling": _Flag("Enable op profiling", _parse_bool, False, "bool"),
    "use_xnnpack": _Flag("Use xnnpack", _parse_bool, False, "bool"),
    "use_gpu": _Flag("Use gpu", _parse_bool, False, "bool"),
    "use_nnapi": _Flag("Use NNAPI", _parse_bool, False, "bool"),
    "verbose": _Flag("Log parameter values verbosely", _parse_bool, False, "bool"),
}


class FlagError(MnasError):
    """A command line benchmark_model would not accept either."""


def parse_flags(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Flag values (defaults filled in) and the names given on the command line, in order."""
    values = {name: flag.default for name, flag in FLAGS.items()}
    given: list[str] = []
    unknown: list[str] = []
    for arg in argv:
        if not arg.startswith("--"):
            unknown.append(arg)
            continue
        name, sep, raw = arg[2:].partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            unknown.append(arg)
            continue
        if not sep:
            if flag.kind != "bool":
                raise FlagError(f"flag --{name} needs a value: --{name}=<{flag.kind}>")
            raw = "true"
        try:
            value = flag.parse(raw)
        except ValueError:
            raise FlagError(f"invalid value for --{name}: {raw!r} (expected {flag.kind})") from None
        values[name] = value
        if name not in given:
            given.append(name)
    if unknown:
        raise FlagError(f"Unconsumed cmdline flags: {' '.join(unknown)}")
    if not values["graph"]:
        raise FlagError("Please specify the name of your TF Lite input file with --graph")
    for name in ("num_runs", "warmup_runs"):
        if values[name] < 0:
            raise FlagError(f"invalid value for --{name}: {values[name]} (expected >= 0)")
    if values["num_threads"] < 1:
        # benchmark_model's -1 means "runtime default"; the runner times one thread unless told
        raise FlagError(f"invalid value for --num_threads: {values['num_threads']} (expected >= 1)")
    return values, given


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def logged_params(values: dict[str, Any], given: list[str]) -> dict[str, str]:
    """The `Name: [value]` parameters benchmark_model would log for this command line."""
    names = list(FLAGS) if values["verbose"] else given
    params = {FLAGS["verbose"].label: _param_text(values["verbose"])}
    for name in names:
        if name != "verbose":
            params[FLAGS[name].label] = _param_text(values[name])
    params["#threads used for CPU inference"] = str(values["num_threads"])
    return params


def _whole_us(values: list[float]) -> list[float]:
    return [float(round(v)) for v in values]


def _tool_stats(runs_us: list[float]) -> LatencyStats:
    # benchmark_model prints p5/median/p95 only; keep the same set
    return dataclasses.replace(LatencyStats.from_runs(runs_us), p90_us=None)


def to_benchmark_output(timing: TimingResult, params: dict[str, str]) -> BenchmarkOutput:
    """The timing as benchmark_model reports it (whole-microsecond runs, memory deltas in MB)."""
    warmup = _whole_us(timing.warmup_us)
    runs = _whole_us(timing.runs_us)
    warmup_stats = _tool_stats(warmup)
    inference_stats = _tool_stats(runs) if runs else None
    return BenchmarkOutput(
        params=params,
        init_us=float(round(timing.init_us)),
        first_us=warmup[0],
        warmup_avg_us=warmup_stats.mean_us,
        inference_avg_us=inference_stats.mean_us if inference_stats else None,
        warmup=warmup_stats,
        inference=inference_stats,
        init_memory_mb=(timing.maxrss_init_kb - timing.maxrss_start_kb) / 1024.0,
        overall_memory_mb=(timing.maxrss_end_kb - timing.maxrss_start_kb) / 1024.0,
        peak_memory_mb=None,
        op_profile=None,
        op_summary=None,
        complete=inference_stats is not None,
        warmup_first_us=warmup[0],
        warmup_curr_us=warmup[-1],
        inference_first_us=runs[0] if runs else None,
        inference_curr_us=runs[-1] if runs else None,
    )


def _host_delegate(values: dict[str, Any], given: list[str]) -> str:
    """The interpreter setting for the delegate flags: XNNPACK off only when asked explicitly."""
    if "use_xnnpack" in given:
        return "xnnpack" if values["use_xnnpack"] else "none"
    return "default"


def delegate_lines(values: dict[str, Any], given: list[str], runtime_log: str) -> list[str]:
    """What the runner says about each delegate asked for (benchmark_model's wording where it applies)."""
    lines = []
    if "use_xnnpack" in given and values["use_xnnpack"]:
        if XNNPACK_LOG_LINE in runtime_log:
            lines.append("Explicitly applied XNNPACK delegate, and the model graph will be executed by the delegate "
                         "(the Python interpreter does not tell how many nodes it took).")
        else:
            lines.append("XNNPACK delegate was not created by the runtime: falling back to the CPU kernels.")
    for flag, name in (("use_gpu", "GPU"), ("use_nnapi", "NNAPI")):
        if values[flag]:
            lines.append(f"{name} acceleration is not available in this runner (the LiteRT Python interpreter has "
                         f"no {name} delegate): falling back to the CPU.")
    return lines


def run(argv: list[str], out: Any = None, err: Any = None) -> int:
    """Run the benchmark for `argv` (without the program name); returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        values, given = parse_flags(argv)
    except FlagError as exc:
        print(f"ERROR: {exc}", file=err)
        return 1
    params = logged_params(values, given)
    head = format_params(params, PREFIX)
    graph = Path(values["graph"])
    try:
        check_tflite_file(graph)
        runtime = load_runtime()
        affinity = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        timing = time_model(
            graph, values["warmup_runs"], values["num_runs"], values["min_secs"], values["num_threads"],
            warmup_min_secs=values["warmup_min_secs"], max_secs=values["max_secs"],
            delegate=_host_delegate(values, given),
        )
    except MnasError as exc:
        print("\n".join(head), file=out, flush=True)
        print(f"ERROR: {exc}", file=err)
        return 1
    result = to_benchmark_output(timing, params)
    notes = [f"Runtime: {runtime.name} {runtime.version} (Python interpreter); CPU affinity: {affinity}",
             *delegate_lines(values, given, timing.runtime_log)]
    if values["enable_op_profiling"]:
        notes.append(
            f"Op profiling is not available: the {runtime.name} Python interpreter exposes no per-operator "
            "profiler, so no operator table is printed."
        )
    text = format_benchmark_output(result, prefix=PREFIX, notes=notes)
    model_mb = graph.stat().st_size / 1e6
    lines = text.splitlines()
    # benchmark_model prints the model size right after "Loaded model"
    at = next((i for i, line in enumerate(lines) if line.startswith(f"{PREFIX}Loaded model")), len(head) - 1)
    lines.insert(at + 1, f"{PREFIX}The input model file size (MB): {model_mb:g}")
    print("\n".join(lines), file=out, flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (`mnas-benchmark-model`)."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
