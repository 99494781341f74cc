"""`mnas bench`: benchmark models (the default `run` command) and read benchmark_model logs.

The group is a `DefaultGroup`: `mnas bench model.tflite` goes to `run` (registered by the
benchmark-running module), while `mnas bench parse LOG` reads a saved benchmark_model output
with the same parser the phone path uses, so a log from any TensorFlow/LiteRT version can be
checked by hand. Text with no benchmark output at all (no timing, memory or profiling line)
is bad input: exit 2. Output that is readable but incomplete (cut short, or a line rejected
for an impossible number) is printed with `complete: false`, and a note on stderr says why,
with or without `--json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mnas.bench.bm_output import BenchmarkOutput, parse_benchmark_output, quote_line
from mnas.bench.types import LatencyStats
from mnas.cli_util import DefaultGroup, echo_json, echo_table, json_option
from mnas.errors import MnasError


@click.group(cls=DefaultGroup, default_command="run")
def bench() -> None:
    """Benchmark .tflite models on a device (default: run), or parse benchmark_model logs."""


def _stats_fields(prefix: str, stats: LatencyStats | None) -> dict[str, Any]:
    names = ("count", "mean_us", "std_us", "min_us", "max_us", "median_us", "p5_us", "p90_us", "p95_us")
    return {f"{prefix}_{name}": (getattr(stats, name) if stats is not None else None) for name in names}


def output_summary(out: BenchmarkOutput, source: str) -> dict[str, Any]:
    """A flat, unit-suffixed view of a parsed output (the `--json` payload)."""
    payload: dict[str, Any] = {
        "source": source,
        "complete": out.complete,
        "init_us": out.init_us,
        "first_us": out.first_us,
        "warmup_avg_us": out.warmup_avg_us,
        "inference_avg_us": out.inference_avg_us,
        **_stats_fields("warmup", out.warmup),
        **_stats_fields("inference", out.inference),
        "init_memory_mb": out.init_memory_mb,
        "overall_memory_mb": out.overall_memory_mb,
        "peak_memory_mb": out.peak_memory_mb,
        "params": out.params,
        "errors": out.errors,
        "rejected": out.rejected,
        "op_profile": None,
        "op_summary": out.op_summary,
    }
    if out.op_profile is not None:
        payload["op_profile"] = [
            {
                "node_type": row.node_type,
                "start_ms": row.start_ms,
                "first_ms": row.first_ms,
                "avg_ms": row.avg_ms,
                "percent": row.percent,
                "cdf_percent": row.cdf_percent,
                "mem_kb": row.mem_kb,
                "times_called": row.times_called,
                "name": row.name,
            }
            for row in out.op_profile
        ]
    return payload


@bench.command("parse")
@click.argument("log", type=str)
@json_option
def parse_cmd(log: str, as_json: bool) -> None:
    """Parse a saved benchmark_model output LOG and print its figures."""
    path = Path(log)
    if not path.is_file():
        raise MnasError(f"{log}: no such log file")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MnasError(f"{log}: cannot read: {exc.strerror}") from None
    out = parse_benchmark_output(text, source=log)
    if not out.has_figures:
        last_error = f"; last error: {quote_line(out.errors[-1], quoted=False)}" if out.errors else ""
        raise MnasError(f"{log}: no benchmark_model output (no timing, memory or profiling line){last_error}")
    payload = output_summary(out, log)
    if as_json:
        echo_json(payload)
        _note_incomplete(out, log)
        return
    scalar_keys = [
        "complete", "init_us", "first_us", "warmup_avg_us", "inference_avg_us",
        "inference_count", "inference_mean_us", "inference_std_us", "inference_min_us",
        "inference_max_us", "inference_median_us", "inference_p5_us", "inference_p95_us",
        "warmup_count", "init_memory_mb", "overall_memory_mb", "peak_memory_mb",
    ]
    rows = [{"field": key, "value": "-" if payload[key] is None else payload[key]} for key in scalar_keys]
    rows += [{"field": f"param: {key}", "value": value} for key, value in out.params.items()]
    echo_table(rows, ["field", "value"])
    if payload["op_profile"]:
        click.echo("")
        echo_table(payload["op_profile"], ["node_type", "avg_ms", "percent", "cdf_percent", "times_called", "name"])
    _note_incomplete(out, log)


def _note_incomplete(out: BenchmarkOutput, log: str) -> None:
    """On stderr (so `--json` stays one document): why the output is not a complete result."""
    for reason in out.rejected:
        click.echo(f"note: {log}: rejected {reason}", err=True)
    if not out.complete and not out.rejected:
        click.echo(f"note: {log} ends before the final timing line (incomplete run)", err=True)
