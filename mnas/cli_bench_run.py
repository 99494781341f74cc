"""`mnas bench MODEL...`: measure models on the host or phones and store every figure.

Each failed (device, model) pair is reported the moment it happens as ONE line on stderr,
`mnas: error: SERIAL ...: MODEL ...: what happened`; stdout carries only the table or the JSON,
so `--json` output stays parseable when some pairs fail. The exit code is 1 if any failed.
Phones left out at selection (offline, unauthorized, a failed probe) are reported on stderr
too, and in `--json` as one row per (phone, model) with `error` set (`skipped_rows`), after
the measured rows, so a JSON consumer sees every pair it asked for.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mnas.cli_table import guard_options
from mnas.cli_util import (
    check_execution,
    db_path,
    device_option,
    echo_json,
    echo_table,
    execution_options,
    json_option,
    skipped_device,
)


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def outcome_row(outcome, multiplier: float | None = None) -> dict:
    """One stable JSON row per (device, model); keys from the vocabulary of docs/json.md.

    `flags` names why the figure should not be trusted at a glance (`bench.contention.figure_flags`:
    contended, throttled, noisy); `headline_ms` is the device's headline statistic
    (`headline_statistic`: min on the host, median on phones).
    """
    row = {"device_id": outcome.device_id, "model_name": outcome.model.label, "arch": outcome.model.arch,
           "resolution": outcome.model.resolution, "multiplier": multiplier if outcome.model.arch else None,
           "model_sha256": outcome.model.sha256,
           "stored_id": outcome.stored_id, "reused": outcome.reused, "error": outcome.error,
           "delegate_fallback": getattr(outcome, "delegate_fallback", False)}
    m = outcome.measurement
    if m is not None:
        from mnas.bench.contention import figure_flags
        from mnas.bench.types import headline_statistic, latency_ms

        s = m.stats
        statistic = headline_statistic(m.device_name)
        row.update({
            "device_config": m.device_name, "runtime": m.runtime,
            "runtime_version": m.runtime_version, "headline_statistic": statistic,
            "headline_ms": latency_ms(m, statistic) if statistic == "min" or m.median_ms is not None else None,
            "flags": figure_flags(m), "contended": m.extra.get("contended"), "child_cpu_share": m.extra.get("child_cpu_share"),
            "runs": s.count, "median_ms": m.median_ms, "mean_ms": _ms(s.mean_us), "std_ms": _ms(s.std_us),
            "min_ms": _ms(s.min_us), "max_ms": _ms(s.max_us), "p90_ms": _ms(s.p90_us), "cv": s.cv,
            "init_ms": _ms(m.init_us), "first_ms": _ms(m.first_us), "pinned_cores": list(m.pinned_cores),
            "cpu_model": m.cpu_model, "throttled": m.throttled, "wall_s": m.wall_s,
            "freq_before_khz": m.freq_before_khz, "freq_after_khz": m.freq_after_khz,
            **m.config.execution(), "taskset_mask": m.extra.get("taskset_mask"),
            "delegate_fallback_reason": m.extra.get("delegate_fallback"), "conditions": m.config.conditions_key(),
        })
    return row


def skipped_rows(unusable: list[str], prepared: list, multiplier: float | None = None) -> list[dict]:
    """One JSON row per (phone left out at selection, model), so `--json` names every pair.

    Same keys as `outcome_row` without a measurement: `device_id` is the phone's serial (None
    if the line does not name one), the model fields are the model's, `stored_id` None,
    `reused` False, and `error` is the line also printed on stderr.
    """
    rows = []
    for line in unusable:
        skipped = skipped_device(line)
        for model in prepared:
            rows.append({"device_id": skipped["device_id"], "model_name": model.label, "arch": model.arch,
                         "resolution": model.resolution, "multiplier": multiplier if model.arch else None, "model_sha256": model.sha256, "stored_id": None,
                         "reused": False, "error": skipped["error"], "delegate_fallback": False})
    return rows


@click.command("run")
@click.argument("models", nargs=-1, required=True)
@device_option(help="host, a phone SERIAL, or all (every attached phone, in parallel).")
@click.option("--runs", type=int, default=50, show_default=True, help="Minimum timed runs.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Warm-up runs.")
@click.option("--min-secs", type=float, default=1.0, show_default=True, help="Minimum timed seconds.")
@click.option("--profile-ops", is_flag=True,
              help="Phones: store benchmark_model's per-op table (--enable_op_profiling) and print the top ops "
                   "(`mnas results ops ID` exports it). The host has no op profiler: says so, with a per-layer "
                   "ESTIMATE from its latency table where one exists.")
@click.option("--core", type=int, default=None, help="Pin to this core (default: the fastest / config's).")
@execution_options
@guard_options(tries=3)
@click.option("--resolution", type=int, default=None, help="Input size for zoo/arch models.")
@click.option("--multiplier", type=float, default=1.0, show_default=True, help="Depth multiplier for zoo models.")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="Zoo/arch models: float32, or int8 fully quantized (`mnas arch export --dtype int8`).")
@click.option("--benchmark-binary", type=click.Path(dir_okay=False), default=None,
              help="Host path of the arm64 benchmark_model binary (phones).")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="Bound on one benchmark (s).")
@click.option("--retries", type=int, default=1, show_default=True, help="Retries of a failed phone run.")
@click.option("--force", is_flag=True, help="Measure again even if the store has this model under the same conditions "
              "(and store the new figure beside the old one).")
@click.option("--lock-timeout", "lock_timeout_s", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for a device another mnas run is using (default: $MNAS_LOCK_TIMEOUT or 3600).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a bar chart of this run (one bar per device and model, ms) to this .png file.")
@json_option
@click.pass_context
def run(ctx: click.Context, models: tuple[str, ...], device_spec: str, runs: int, warmup: int, min_secs: float,
        profile_ops: bool, core: int | None, num_threads: int, delegate: str, bm_args: tuple[str, ...],
        resolution: int | None, multiplier: float, dtype: str,
        benchmark_binary: str | None, timeout_s: float, retries: int, force: bool, lock_timeout_s: float | None,
        tries: int, min_cpu_share: float, as_json: bool, plot: Path | None = None) -> None:
    """Benchmark MODEL... (.tflite files, zoo names or arch strings) on one pinned core (or one per --threads)."""
    from tqdm import tqdm

    from mnas.bench.contention import ContentionGuard
    from mnas.bench.devices import select_devices
    from mnas.bench.harness import run_benchmarks
    from mnas.bench.models import prepare_model
    from mnas.bench.store import ResultsStore
    from mnas.bench.types import BenchConfig, parse_bm_args

    config = BenchConfig(warmup_runs=warmup, num_runs=runs, min_secs=min_secs, profile_ops=profile_ops,
                         core=core, timeout_s=timeout_s, num_threads=num_threads, delegate=delegate,
                         bm_args=parse_bm_args(bm_args))
    check_execution(device_spec, config)
    if plot is not None:  # a bad file name is told before any device time is spent
        from mnas.bench.plots import check_png_path
        check_png_path(plot)
    database = db_path(ctx)
    prepared = [prepare_model(spec, database.parent / "models", resolution, multiplier, dtype) for spec in models]
    unusable: list[str] = []
    devices = select_devices(device_spec, core=core, benchmark_binary=Path(benchmark_binary) if benchmark_binary else None,
                             timeout_s=timeout_s, retries=retries, unusable=unusable)
    for line in unusable:
        click.echo(f"mnas: error: {line}", err=True)
    store = ResultsStore(database)
    total = len(prepared) * len(devices)
    with tqdm(total=total, desc="bench", unit="model", disable=total < 2 or as_json, leave=False) as bar:
        store_lines: list[str] = []

        def progress(outcome) -> None:
            bar.update(1)
            if outcome.store_error:  # the store refused a write: its one line, once, not once per pair
                if not store_lines:
                    store_lines.append(outcome.store_error)
                    tqdm.write(f"mnas: error: {' '.join(outcome.store_error.split())}", file=sys.stderr)
            elif outcome.error:
                tqdm.write(f"mnas: error: {' '.join(outcome.error.split())}", file=sys.stderr)
        outcomes = run_benchmarks(devices, prepared, config, store=store, force=force, on_result=progress,
                                  lock_timeout_s=lock_timeout_s,
                                  guard=ContentionGuard(min_cpu_share=min_cpu_share, tries=tries))
    rows = [outcome_row(o, multiplier) for o in outcomes]
    phones = {row[0]: row[1] for row in store.read("SELECT device_id, model FROM devices WHERE kind = 'adb'")}
    if profile_ops:  # each row's op table, or why it has none (stderr and JSON)
        from mnas.cli_op_profile import attach_op_profiles
        attach_op_profiles(rows, outcomes, store)
    skipped = skipped_rows(unusable, prepared, multiplier)
    for row in rows + skipped:  # the phone's ro.product.model (docs/json.md: phone_model); None on the host
        row["phone_model"] = phones.get(row["device_id"])
    if as_json:
        echo_json(rows + skipped)
    else:
        host = any(r["device_id"] == "host" for r in rows)
        table = [{
            "device": r["device_id"], "model": r["model_name"], "median_ms": _fmt(r.get("median_ms")),
            **({HOST_MIN: _fmt(r.get("min_ms"))} if host else {}),
            "mean_ms": _fmt(r.get("mean_ms")), "p90_ms": _fmt(r.get("p90_ms")), "cv": _fmt(r.get("cv"), 3),
            "runs": r.get("runs"), "core": ",".join(map(str, r.get("pinned_cores") or [])),
            "status": _status(r),
        } for r in rows]
        table += [{"device": r["device_id"], "model": r["model_name"], "median_ms": "-", **({HOST_MIN: "-"} if host else {}),
                   "mean_ms": "-", "p90_ms": "-", "cv": "-", "runs": None, "core": "", "status": "skipped"}
                  for r in skipped]
        echo_table(table)
        from mnas.bench.contention import flags_hint
        hint = flags_hint({flag for r in rows for flag in r.get("flags") or []})
        if hint:
            click.echo(hint)
        if profile_ops:
            from mnas.cli_op_profile import echo_top_ops
            echo_top_ops(rows)
        click.echo(f"results: {database}")
    if plot is not None:  # after the figures are printed: a plot that cannot be written loses none of them
        from mnas.bench.plots import bench_run_figure, save_png
        save_png(bench_run_figure([(o.model.label, o.measurement) for o in outcomes
                                   if o.measurement is not None and not o.delegate_fallback]), plot)
        if not as_json:
            click.echo(f"plot: {plot}")
    if unusable or any(r["error"] for r in rows):
        # Each failure was reported on stderr as it happened. Not ctx.exit(1): mnas.cli.main runs
        # click with standalone_mode=False, where an Exit's code is returned and then dropped.
        sys.exit(1)


def _status(row: dict) -> str:
    if row.get("delegate_fallback"):  # measured, but on the CPU: never stored as a delegate figure
        return "delegate fell back: not stored"
    if row["error"]:  # a figure with an error: measured, but the store refused it
        return "not stored" if row.get("median_ms") is not None or row.get("runs") else "failed"
    flags = row.get("flags") or []  # contended, throttled, noisy: shown instead of a plain measured/stored
    return ",".join(flags) if flags else ("stored" if row["reused"] else "measured")


HOST_MIN = "min_ms (host headline)"  # the host's headline statistic, labelled beside the median


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
