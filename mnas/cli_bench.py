"""`mnas bench`: benchmark models (the default `run` command) and read benchmark_model logs.

The group is a `DefaultGroup`: `mnas bench model.tflite` goes to `run` (registered by the
benchmark-running module), while `mnas bench parse LOG` reads a saved benchmark_model output
with the same parser the phone path uses, so a log from any TensorFlow/LiteRT version can be
checked by hand. Text with no benchmark output at all (no timing, memory or profiling line)
is bad input: exit 2. Output that is readable but incomplete (cut short, or a line rejected
for an impossible number) is printed with `complete: false`, and a note on stderr says why,
with or without `--json`.

`parse LOG --store --device NAME --model FILE_OR_NAME` keeps a log someone ran by hand as a
measurement (`bench.hand_log`: device, model hash, binary, the flags the log states), listed
by `mnas results list` (source `hand-run log`) and reused like a measured one. Only a complete
log is stored; bad input (no benchmark output, an unknown model or device, `--device` or
`--model` missing) is one line, exit 2, and stores nothing; the same log twice is stored once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click

from mnas.bench.bm_output import BenchmarkOutput, parse_benchmark_output, quote_line
from mnas.bench.op_profile import op_rows
from mnas.bench.types import LatencyStats
from mnas.cli_util import DefaultGroup, db_path, echo_json, echo_table, json_option
from mnas.errors import MnasError


@click.group(cls=DefaultGroup, default_command="run")
def bench() -> None:
    """Benchmark .tflite models on a device (default: run), or parse benchmark_model logs."""


def _stats_fields(prefix: str, stats: LatencyStats | None, units: str) -> dict[str, Any]:
    names = ("mean", "std", "min", "max", "median", "p5", "p90", "p95")
    fields: dict[str, Any] = {f"{prefix}_count": stats.count if stats is not None else None}
    for name in names:
        fields.update(_time_field(f"{prefix}_{name}", getattr(stats, f"{name}_us") if stats is not None else None,
                                  units))
    return fields


def _time_field(name: str, us: float | None, units: str) -> dict[str, Any]:
    """`{name}_ms` (the vocabulary's unit, docs/json.md), or `{name}_us` as the log printed it when asked."""
    if units == "us":
        return {f"{name}_us": us}
    return {f"{name}_ms": None if us is None else us / 1000.0}


def output_summary(out: BenchmarkOutput, source: str, units: str = "ms") -> dict[str, Any]:
    """A flat, unit-suffixed view of a parsed output (the `--json` payload): ms, or us under `--units us`."""
    payload: dict[str, Any] = {
        "source": source,
        "complete": out.complete,
        **_time_field("init", out.init_us, units),
        **_time_field("first", out.first_us, units),
        **_time_field("warmup_avg", out.warmup_avg_us, units),
        **_time_field("inference_avg", out.inference_avg_us, units),
        **_stats_fields("warmup", out.warmup, units),
        **_stats_fields("inference", out.inference, units),
        "init_memory_mb": out.init_memory_mb,
        "overall_memory_mb": out.overall_memory_mb,
        "peak_memory_mb": out.peak_memory_mb,
        "log_params": out.params,
        "errors": out.errors,
        "rejected": out.rejected,
        "op_profile": op_rows(out.op_profile) if out.op_profile is not None else None,
        "op_summary": out.op_summary,
    }
    return payload


@bench.command("parse")
@click.argument("log", type=str)
@click.option("--store", "store_it", is_flag=True,
              help="Keep the log as a measurement (needs --device and --model); parsing it again stores nothing.")
@click.option("--device", "device", default=None,
              help="With --store: the phone it ran on: a stored phone's serial or name, a device config name "
                   "(pixel4), or host.")
@click.option("--model", "model", default=None,
              help="With --store: the model it timed: the .tflite file, or a zoo name / arch string (hashed as "
                   "`mnas bench` writes it).")
@click.option("--resolution", type=int, default=None, help="With --store: input size of a zoo/arch --model.")
@click.option("--multiplier", type=float, default=1.0, show_default=True,
              help="With --store: depth multiplier of a zoo --model.")
@click.option("--benchmark-binary", type=click.Path(dir_okay=False), default=None,
              help="With --store: the benchmark_model binary that printed the log (its sha256 is the runtime "
                   "version, as on phones; default: binary-unknown).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="With --store: threads the run used, when the log does not say (no 'Num threads' line).")
@click.option("--core", type=click.IntRange(min=0), default=None,
              help="With --store: the core the run was pinned to (taskset); default: recorded as unknown.")
@click.option("--units", type=click.Choice(["ms", "us"]), default="ms", show_default=True,
              help="Unit of the printed times: ms (as every other command), or us as benchmark_model prints them.")
@json_option
@click.pass_context
def parse_cmd(ctx: click.Context, log: str, store_it: bool, device: str | None, model: str | None,
              resolution: int | None, multiplier: float, benchmark_binary: str | None, threads: int | None,
              core: int | None, units: str, as_json: bool) -> None:
    """Parse a saved benchmark_model output LOG and print its figures; `--store` keeps it as a measurement."""
    path = Path(log)
    if store_it:  # every option checked before the log is read: nothing is stored from bad input
        missing = [name for name, value in (("--device", device), ("--model", model)) if value is None]
        if missing:
            raise MnasError(f"{log}: --store needs {' and '.join(missing)}: expected --device NAME --model "
                            "FILE_OR_NAME (where the log ran, and what it timed)")
    if not path.is_file():
        raise MnasError(f"{log}: no such log file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MnasError(f"{log}: cannot read: {exc.strerror}") from None
    out = parse_benchmark_output(data.decode("utf-8", errors="replace"), source=log)
    if not out.has_figures:
        last_error = f"; last error: {quote_line(out.errors[-1], quoted=False)}" if out.errors else ""
        raise MnasError(f"{log}: no benchmark_model output (no timing, memory or profiling line){last_error}")
    payload = output_summary(out, log, units)
    if store_it:
        payload["stored"] = _store_log(ctx, out, path, hashlib.sha256(data).hexdigest(), str(device), str(model),
                                       resolution, multiplier, benchmark_binary, threads, core)
    if as_json:
        echo_json(payload)
        _note_incomplete(out, log)
        return
    scalar_keys = [
        "complete", *(f"{name}_{units}" for name in (
            "init", "first", "warmup_avg", "inference_avg")), "inference_count",
        *(f"inference_{name}_{units}" for name in ("mean", "std", "min", "max", "median", "p5", "p95")),
        "warmup_count", "init_memory_mb", "overall_memory_mb", "peak_memory_mb",
    ]
    rows = [{"field": key, "value": "-" if payload[key] is None else payload[key]} for key in scalar_keys]
    rows += [{"field": f"param: {key}", "value": value} for key, value in out.params.items()]
    echo_table(rows, ["field", "value"])
    if payload["op_profile"]:
        click.echo("")
        echo_table(payload["op_profile"], ["run_order", "node_type", "avg_ms", "percent", "cdf_percent",
                                           "times_called", "name"])
    if store_it:
        stored = payload["stored"]
        verb = f"not stored again: {stored['already_stored_reason']} is" if stored["already_stored"] else "stored as"
        click.echo(f"\n{log}: {verb} measurement {stored['measurement_id']} ({stored['device_id']}, "
                   f"{stored['model_name']}, {stored['runtime']} {stored['runtime_version']}, "
                   f"{stored['conditions']})")
    _note_incomplete(out, log)


def _store_log(ctx: click.Context, out: BenchmarkOutput, path: Path, log_sha256: str, device: str, model: str,
               resolution: int | None, multiplier: float, benchmark_binary: str | None, threads: int | None,
               core: int | None) -> dict[str, Any]:
    """Keep a complete log as a measurement (`bench.hand_log`); what was stored, or what already was."""
    from mnas.bench.files import sha256_file
    from mnas.bench.hand_log import (
        find_logged,
        hand_run_measurement,
        log_flags,
        resolve_logged_device,
    )
    from mnas.bench.models import prepare_model
    from mnas.bench.store import DuplicateMeasurement, ResultsStore

    log = str(path)
    if out.rejected or not out.complete:
        reason = out.rejected[0] if out.rejected else "it ends before the final 'Inference timings in us:' line"
        raise MnasError(f"{log}: not stored: the log is incomplete ({reason}): expected a whole benchmark_model run")
    flags = log_flags(out.params, log, threads=threads)
    binary_sha = None
    if benchmark_binary is not None:
        if not Path(benchmark_binary).is_file():
            raise MnasError(f"{benchmark_binary}: no such benchmark_model binary")
        binary_sha = sha256_file(Path(benchmark_binary))
    database = db_path(ctx)
    prepared = prepare_model(model, database.parent / "models", resolution, multiplier)
    with ResultsStore(database) as store:
        logged = resolve_logged_device(store, device)
        measurement = hand_run_measurement(out, log_path=path, log_sha256=log_sha256, device=logged,
                                           model_path=prepared.path, model_sha256=prepared.sha256, flags=flags,
                                           core=core, binary_sha256=binary_sha)
        existing, reason = find_logged(store, log_sha256), "the same log"
        if existing is None:
            try:
                existing, reason = store.add_measurement(measurement, label=prepared.label, arch=prepared.arch), None
            except DuplicateMeasurement as duplicate:  # the reuse rule: this pair is measured already
                existing, reason = duplicate.existing_id, "a measurement of this model on this device under the same conditions"
    return {"measurement_id": existing, "already_stored": reason is not None, "already_stored_reason": reason,
            "device_id": measurement.device_id,
            "device_config": measurement.device_name, "model_name": prepared.label, "model_sha256": prepared.sha256,
            "runtime": measurement.runtime, "runtime_version": measurement.runtime_version,
            "conditions": measurement.config.conditions_key(), "run_flags": flags, "log_sha256": log_sha256}


def _note_incomplete(out: BenchmarkOutput, log: str) -> None:
    """On stderr (so `--json` stays one document): why the output is not a complete result."""
    for reason in out.rejected:
        click.echo(f"note: {log}: rejected {reason}", err=True)
    if not out.complete and not out.rejected:
        click.echo(f"note: {log} ends before the final timing line (incomplete run)", err=True)
