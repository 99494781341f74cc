"""`mnas table ...` (latency tables and predictors) and `mnas predict` on the command line.

The commands follow the workflow: `plan` (what a build would measure and how long it would
take), `build` (resumable, Ctrl-C safe, several phones share one build), `fit` (a lookup
predictor with a learned fallback, or a learned one), `calibrate` (K measured networks),
`eval` (N held-out measured networks: figures + scatter plot, stored), `list`, `export`,
`import`, and `predict` for archs or zoo names. This module only parses options and prints;
the work is in `mnas.predictor`. Every result command has `--json` (units in key names).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NoReturn

import click

from mnas.cli_util import (
    check_execution,
    db_path,
    device_option,
    echo_json,
    echo_table,
    execution_options,
    iso_at,
    json_option,
    skipped_device,
)
from mnas.errors import MnasError
from mnas.predictor.transfer import DEFAULT_FEATURES, FEATURE_SETS
from mnas.space.quantize import DTYPES

SPACES = ("mnasnet",)


# ------------------------------------------------------------------------------------ helpers

def _space(name: str) -> Any:
    from mnas.space.search_space import mnasnet

    if name != "mnasnet":
        raise MnasError(f"--space {name!r}: expected one of {list(SPACES)}")
    return mnasnet()


def _store(ctx: click.Context, create: bool = True, read_only: bool = False) -> Any:
    """The results store; an unwritable one opens read-only (reads work, a write fails in one line)."""
    from mnas.bench.store import ResultsStore

    return ResultsStore(db_path(ctx), create=create, read_only=read_only)


def _bench_config(runs: int, warmup: int, min_secs: float, core: int | None, timeout_s: float,
                  execution: dict[str, Any] | None = None, device_spec: str | None = None) -> Any:
    """The timing conditions; `execution` holds --threads/--delegate/--bm-arg (`cli_util.execution_options`)."""
    from mnas.bench.types import BenchConfig, parse_bm_args

    execution = execution or {}
    config = BenchConfig(warmup_runs=warmup, num_runs=runs, min_secs=min_secs, core=core, timeout_s=timeout_s,
                         num_threads=execution.get("num_threads", 1), delegate=execution.get("delegate", "default"),
                         bm_args=parse_bm_args(execution.get("bm_args", ())))
    check_execution(device_spec, config)
    return config


def _select_options(core: int | None, benchmark_binary: str | None, timeout_s: float, retries: int) -> dict[str, Any]:
    return {"core": core, "benchmark_binary": Path(benchmark_binary) if benchmark_binary else None,
            "timeout_s": timeout_s, "retries": retries}


def _warn(line: str) -> None:
    click.echo(f"mnas: warning: {line}", err=True)


class _SkippedDevices(list):
    """Phones left out at selection: each warned on stderr as it comes and kept as a JSON row."""

    def __call__(self, line: str) -> None:
        _warn(line)
        self.append(skipped_device(line))


def _devices(spec: str, core: int | None, benchmark_binary: str | None, timeout_s: float, retries: int,
             skipped: _SkippedDevices | None = None) -> list[Any]:
    from mnas.bench.devices import select_devices

    unusable: list[str] = []
    devices = select_devices(spec, unusable=unusable, **_select_options(core, benchmark_binary, timeout_s, retries))
    for line in unusable:
        (skipped if skipped is not None else _warn)(line)
    return devices


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


_device_options = [
    click.option("--core", type=int, default=None, help="Pin to this core (default: the fastest / config's)."),
    click.option("--benchmark-binary", type=click.Path(dir_okay=False), default=None,
                 help="Host path of the arm64 benchmark_model binary (phones)."),
    click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
                 help="Bound on one benchmark (s)."),
    click.option("--retries", type=int, default=1, show_default=True, help="Retries of a failed phone run."),
]


def guard_options(tries: int) -> Any:
    def decorate(func: Any) -> Any:
        func = click.option("--min-cpu-share", type=click.FloatRange(0.0, 1.0), default=0.85, show_default=True,
                            help="host: a model whose benchmark process got less of its core than this was "
                                 "contended by other processes.")(func)
        return click.option("--tries", type=click.IntRange(min=1), default=tries, show_default=True,
                            help="host: measurements per model while contended (the fastest is kept).")(func)
    return decorate


def _guard(tries: int, min_cpu_share: float) -> Any:
    from mnas.bench.contention import ContentionGuard

    return ContentionGuard(min_cpu_share=min_cpu_share, tries=tries)


def device_options(func: Any) -> Any:
    for option in reversed(_device_options):
        func = option(func)
    return func


def repeats_option(func: Any) -> Any:
    return click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
                        help="Processes per network; its latency is the median of theirs (a process's memory "
                             "layout moves a network's latency by a few percent).")(func)


def timing_options(runs: int, warmup: int, min_secs: float) -> Any:
    def decorate(func: Any) -> Any:
        func = click.option("--min-secs", type=float, default=min_secs, show_default=True,
                            help="Minimum timed seconds per model.")(func)
        func = click.option("--warmup", type=int, default=warmup, show_default=True, help="Warm-up runs.")(func)
        return click.option("--runs", type=int, default=runs, show_default=True, help="Minimum timed runs.")(func)
    return decorate


def dtype_option(what: str) -> Any:
    """--dtype: the type of the models timed or predicted (one table and predictor per dtype)."""
    return click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                        help=f"{what}: float32, or int8 fully quantized (`mnas arch export --dtype int8`); "
                             "int8 tables are named <default>-int8 and never mix with float32 ones.")


# ------------------------------------------------------------------------------------ the group

@click.group("table")
def table() -> None:
    """Latency tables: plan, build, fit, calibrate, eval, list, export, import."""


@table.command("plan")
@click.option("--space", "space_name", type=click.Choice(SPACES), default="mnasnet", show_default=True,
              help="Search space whose distinct layers make the table.")
@click.option("--resolution", type=int, default=224, show_default=True, help="Input size (px) of the networks.")
@device_option(default=None, help="host, a serial, all or a comma list (for the estimate).")
@click.option("--name", "table_name", default=None, help="Table name (default: derived from the device).")
@click.option("--min-secs", type=float, default=0.2, show_default=True, help="Timed seconds per layer (estimate).")
@dtype_option("Layer models")
@device_options
@json_option
@click.pass_context
def plan_cmd(ctx: click.Context, space_name: str, resolution: int, device_spec: str | None, table_name: str | None,
             min_secs: float, dtype: str, core: int | None, benchmark_binary: str | None, timeout_s: float,
             retries: int, as_json: bool) -> None:
    """Layer counts by kind, how many are stored, and the estimated build time."""
    from mnas.predictor.build import plan_build
    from mnas.predictor.selection import table_name_for

    devices = _devices(device_spec, core, benchmark_binary, timeout_s, retries) if device_spec is not None else []
    if devices:
        table_name = table_name_for(devices, resolution, table_name, dtype)
    kind = devices[0].profile().kind if devices else "adb"  # no device: estimate for a phone
    # a plan only reads: no store yet means nothing stored, and an existing one is opened read-only
    store = _store(ctx, read_only=True) if db_path(ctx).exists() else None
    try:
        plan = plan_build(_space(space_name), resolution, store, table_name, devices=max(1, len(devices)),
                          device_kind=kind, min_secs=min_secs)
    finally:
        if store is not None:
            store.close()
    payload = {"space": space_name, "table": table_name, "device_spec": device_spec, "dtype": dtype, **plan}
    if as_json:
        echo_json(payload)
        return
    echo_table([{"kind": k, "layers": v} for k, v in plan["layers"].items()], ["kind", "layers"])
    click.echo(f"table {table_name or '(none chosen)'}: {plan['stored']} stored, {plan['remaining']} to measure")
    click.echo(f"estimate: {_duration(plan['estimate_s'])} on {plan['devices']} device(s) at "
               f"{plan['per_layer_s']:.2f} s/layer ({plan['per_layer_basis']})")


@table.command("build")
@device_option(help="host, a phone SERIAL, all, or a comma list (the phones share one build).")
@click.option("--space", "space_name", type=click.Choice(SPACES), default="mnasnet", show_default=True,
              help="Search space whose distinct layers make the table.")
@click.option("--resolution", type=int, default=224, show_default=True, help="Input size (px) of the networks.")
@click.option("--name", "table_name", default=None, help="Table name (default: <device>-r<res>-<runtime>-<version>).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Measure at most N layers in this run.")
@click.option("--executor", "executor_kind", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: measure on every phone of the Ray cluster whose node offers resource device:DEVICE.")
@click.option("--address", default="auto", show_default=True,
              help="Ray cluster: auto (the one `ray start` runs here), HOST:PORT, ray://..., or local.")
@click.option("--heal/--no-heal", default=True, show_default=True,
              help="After measuring, re-measure entries flagged contended/throttled and outliers of the learned "
                   "layer model until the table is stable.")
@click.option("--heal-only", is_flag=True, help="Measure no missing layer: only the healing pass.")
@click.option("--heal-rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Most healing rounds (refit, find suspects, re-measure).")
@dtype_option("Layer models")
@timing_options(runs=30, warmup=3, min_secs=0.2)
@execution_options
@guard_options(tries=2)
@device_options
@json_option
@click.pass_context
def build_cmd(ctx: click.Context, device_spec: str, space_name: str, resolution: int, table_name: str | None,
              limit: int | None, executor_kind: str, address: str, heal: bool, heal_only: bool, heal_rounds: int,
              dtype: str, runs: int, warmup: int, min_secs: float, tries: int,
              min_cpu_share: float, core: int | None, benchmark_binary: str | None, timeout_s: float, retries: int,
              as_json: bool, **execution: Any) -> None:
    """Measure every layer of the space on DEVICE (resumable: a re-run skips stored layers), then heal the table."""
    from mnas.predictor.heal import HealPolicy
    from mnas.predictor.ray_build import BuildInterrupted, build_table_with_executor

    if heal_only and not heal:
        raise MnasError("--heal-only with --no-heal: expected one of them")
    policy = HealPolicy(max_rounds=heal_rounds) if heal else None
    if heal_only:
        limit = 0

    config = _bench_config(runs, warmup, min_secs, core, timeout_s, execution, device_spec)
    skipped = _SkippedDevices()
    with _store(ctx) as store:
        try:
            # on Ray the contention guard runs inside each device actor, next to the device
            result = build_table_with_executor(
                executor_kind, _space(space_name), resolution, device_spec, store, table_name, config,
                address=address, select_options=_select_options(core, benchmark_binary, timeout_s, retries),
                on_unusable=skipped, limit=limit, progress=not as_json, space_name=space_name,
                guard=_guard(tries, min_cpu_share), heal=policy, dtype=dtype)
        except BuildInterrupted as stop:
            click.echo(f"mnas: interrupted: table {stop.table_name!r} holds {stop.stored} layers; every stored layer "
                       "is kept: run the same command again to resume", err=True)
            raise SystemExit(130) from None  # not ctx.exit: mnas.cli.main drops click's exit codes
        contended = contended_entries(store, result.table_id)
    payload = {**result.to_dict(), "device_spec": device_spec, "executor": executor_kind, "resolution": resolution,
               "dtype": dtype, "conditions": config.conditions_key(), "skipped_devices": list(skipped), **contended}
    if as_json:
        echo_json(payload)
    else:
        rate = f", {result.seconds_per_layer:.2f} s/layer" if result.seconds_per_layer else ""
        click.echo(f"table {result.table_name}: measured {result.measured} layers in {_duration(result.elapsed_s)}{rate}; "
                   f"{result.already_stored} were stored before; {result.remaining} of {result.total_layers} remain")
        if result.retaken:
            click.echo(f"{result.retaken} of them replaced stored entries flagged contended or throttled")
        if result.heal is not None:
            click.echo(_heal_line(result.heal))
        _echo_contended(result.table_name, contended)
        if result.remaining:
            click.echo("run the same command again to continue")
    for line in result.failures:
        click.echo(f"mnas: error: {line}", err=True)
    if result.failures:
        raise SystemExit(1)


def contended_entries(store: Any, table_id: int) -> dict[str, Any]:
    """How many of a table's entries were measured while other processes shared the core, and their share.

    The verdict is the one reuse rule's (`predictor.table.retake_reasons`); an empty table has no share (None).
    """
    from mnas.predictor.table import retake_reasons

    reasons = retake_reasons(store, table_id)
    count = sum(reason == "contended" for reason in reasons.values())
    return {"contended_entries": count, "contended_share": count / len(reasons) if reasons else None}


def _share_text(contended: dict[str, Any]) -> str:
    share = contended["contended_share"]
    return "-" if share is None else f"{contended['contended_entries']} ({100 * share:.0f}%)"


def _echo_contended(table_name: str, contended: dict[str, Any]) -> None:
    """One line when entries of the table were measured contended: how many, and what to do."""
    if contended["contended_entries"]:
        click.echo(f"warning: table {table_name}: {_share_text(contended)} of its entries were measured while other "
                   "processes shared the core (contended); `mnas table build --heal-only` on a quiet machine re-measures them")


def _table_row(table: dict[str, Any], contended: dict[str, Any]) -> dict[str, Any]:
    """A `table list` row in the vocabulary of docs/json.md."""
    renamed = {"name": "table", "device": "device_config"}
    row = {renamed.get(key, key): value for key, value in table.items() if key != "created"}
    return {**row, "created_at": iso_at(table["created"]), **contended}


def _heal_line(heal: Any) -> str:
    if not heal.retaken:
        return f"healing: nothing to re-measure ({heal.table_entries} entries)"
    reasons = ", ".join(f"{name} {count}" for name, count in sorted(heal.by_reason.items()))
    state = "stable" if heal.stable else f"{heal.left} suspects left (run again to go on)"
    return (f"healing: re-measured {heal.entries} of {heal.table_entries} entries ({100 * (heal.share or 0):.1f}%) "
            f"in {heal.rounds} round{'s' if heal.rounds != 1 else ''} ({reasons}): {heal.replaced} replaced, "
            f"{heal.confirmed} confirmed; {state}")


@table.command("fit")
@device_option(help="host, a serial or a device name (picks its table).")
@click.option("--table", "table_name", default=None, help="Table name (default: the device's largest at --resolution).")
@click.option("--resolution", type=int, default=224, show_default=True, help="Input size (px) of the table to fit.")
@click.option("--kind", type=click.Choice(("lookup", "learned")), default="lookup", show_default=True,
              help="lookup: table sums with a learned fallback for missing layers; learned: a regressor only.")
@click.option("--model", "model_name", type=click.Choice(("gbr", "rf")), default="gbr", show_default=True,
              help="Learned regressor (gradient boosting or random forest).")
@click.option("--no-fallback", is_flag=True, help="lookup only: no learned fallback (missing layers are errors).")
@click.option("--statistic", type=click.Choice(("auto", "median", "min")), default="auto", show_default=True,
              help="Per-model latency: median of the timed runs, or min (auto: min on the shared host, "
                   "median on phones).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the learned model.")
@dtype_option("The table's layer models (a --table given: any, unless --dtype is given too)")
@json_option
@click.pass_context
def fit_cmd(ctx: click.Context, device_spec: str, table_name: str | None, resolution: int, kind: str,
            model_name: str, no_fallback: bool, statistic: str, seed: int, dtype: str, as_json: bool) -> None:
    """Fit a predictor on a latency table and store it (uncalibrated; see `calibrate`)."""
    from mnas.predictor.fitting import fit_predictor
    from mnas.predictor.registry import save_predictor
    from mnas.predictor.selection import choose_table, resolve_device_name

    with _store(ctx) as store:
        device_name = resolve_device_name(device_spec, store)
        given = ctx.get_parameter_source("dtype") != click.core.ParameterSource.DEFAULT
        asked = dtype if table_name is None or given else None  # a named table: its own dtype unless asked
        loaded = choose_table(store, device_name, resolution, table_name, asked)
        predictor, metrics = fit_predictor(loaded, kind=kind, model=model_name, fallback=not no_fallback, seed=seed,
                                           statistic=None if statistic == "auto" else statistic)
        predictor_id = save_predictor(store, predictor, loaded.table_id, metrics)
        contended = contended_entries(store, loaded.table_id)
    # the fit's own "model" (the learned fallback's estimator) is `learned_model` in the vocabulary (docs/json.md)
    fitted = {("learned_model" if key == "model" else key): value for key, value in metrics.items()}
    payload = {"predictor_id": predictor_id, "kind": kind, "device_config": device_name, "table": loaded.meta.name,
               "table_entries": len(loaded), "resolution": loaded.meta.resolution, "dtype": loaded.meta.dtype,
               "runtime": loaded.meta.runtime,
               "runtime_version": loaded.meta.runtime_version, **fitted, **contended}
    if as_json:
        echo_json(payload)
        return
    click.echo(f"predictor {predictor_id} ({kind}, {metrics['statistic']} latencies) fitted on table "
               f"{loaded.meta.name} ({len(loaded)} layers)")
    _echo_contended(loaded.meta.name, contended)
    coverage = metrics.get("space_coverage")
    if coverage:
        click.echo(f"space coverage: {coverage['in_table']} of {coverage['space_layers']} layers in the table "
                   f"({100 * coverage['coverage_share']:.1f}%), {coverage['from_fallback']} from the learned fallback, "
                   f"{coverage['unpredictable']} unpredictable")
    holdout = metrics.get("learned_holdout")
    if holdout:
        click.echo(f"learned model on {holdout['n']} held-out table layers: MAPE {holdout['mape_pct']:.1f}%, "
                   f"within ±10% {100 * holdout['within_10pct_share']:.1f}%")
    click.echo(f"next: mnas table calibrate --device {device_spec} --samples 40")


def _networks_interrupted(stop: KeyboardInterrupt, command: str) -> NoReturn:
    """Ctrl-C during `table calibrate/eval`: one line saying what is kept and how to resume; exit 130."""
    from mnas.predictor.endtoend import NetworksInterrupted

    kept = "every finished measurement is stored"
    if isinstance(stop, NetworksInterrupted):
        kept = f"{stop.stored} of {stop.total} {stop.label} measurements are stored"
        if stop.reusable < stop.stored:  # the reuse rule: such figures are taken again
            kept += f" ({stop.stored - stop.reusable} flagged contended or throttled: measured again)"
    click.echo(f"mnas: interrupted: {kept}: run the same `mnas table {command}` again to resume (stored "
               "networks are reused, only the rest is measured)", err=True)
    raise SystemExit(130) from None  # not ctx.exit: mnas.cli.main drops click's exit codes


def network_target_options(func):
    """--device, --resolution and --predictor, shared by the commands that measure whole networks."""
    for option in reversed([
        device_option(help="host, a serial, or a comma list of phones of one model."),
        click.option("--resolution", type=int, default=224, show_default=True,
                     help="Input size (px) of the networks measured (and of the predictor)."),
        click.option("--predictor", "predictor_id", type=int, default=None,
                     help="Predictor id (default: the device's latest)."),
        dtype_option("Networks measured (and the predictor's table)"),
    ]):
        func = option(func)
    return func


def network_measure_options(func):
    """Timing, repeats, contention guard, device and --json options of calibrate and eval."""
    for decorate in (json_option, device_options, guard_options(tries=3), execution_options, repeats_option,
                     timing_options(runs=30, warmup=3, min_secs=0.4)):
        func = decorate(func)
    return func


@table.command("calibrate")
@network_target_options
@click.option("--samples", type=click.IntRange(min=4), required=True, help="K random networks to measure.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Calibration stream seed (disjoint from eval seeds by construction).")
@click.option("--weights/--no-weights", "with_params", default=True, show_default=True,
              help="Calibrate on each network's weight count too (weights are cold in cache inside a network).")
@network_measure_options
@click.pass_context
def calibrate_cmd(ctx: click.Context, device_spec: str, samples: int, seed: int, resolution: int,
                  predictor_id: int | None, dtype: str, with_params: bool, runs: int, warmup: int, min_secs: float,
                  repeats: int, tries: int, min_cpu_share: float, core: int | None, benchmark_binary: str | None,
                  timeout_s: float, retries: int, as_json: bool, **execution: Any) -> None:
    """Measure K random networks end to end and store a calibrated predictor."""
    from mnas.predictor.build import network_writer
    from mnas.predictor.evals import calibrate_on_device
    from mnas.predictor.selection import device_predictor

    config = _bench_config(runs, warmup, min_secs, core, timeout_s, execution, device_spec)
    skipped = _SkippedDevices()
    devices = _devices(device_spec, core, benchmark_binary, timeout_s, retries, skipped)
    space = _space("mnasnet")
    with _store(ctx) as store:
        predictor = device_predictor(store, devices, resolution, predictor_id, space, dtype)
        base_id = predictor.predictor_id
        try:
            report = calibrate_on_device(predictor, devices, store, space, samples, seed, config,
                                         with_params=with_params, progress=not as_json, writer=network_writer(dtype),
                                         guard=_guard(tries, min_cpu_share), repeats=repeats)
        except KeyboardInterrupt as stop:
            _networks_interrupted(stop, "calibrate")
    payload = {"base_predictor_id": base_id, "device_spec": device_spec, "seed": seed, "dtype": dtype,
               **report.to_dict(),
               "networks": [n.to_dict() for n in report.networks], "skipped_devices": list(skipped)}
    if as_json:
        echo_json(payload)
        return
    fit, raw = report.fit, report.uncalibrated
    click.echo(f"predictor {report.predictor_id}: predictor {base_id} calibrated on {samples} networks "
               f"({payload['measured']} measured, {payload['reused']} reused from the store)")
    click.echo(f"calibration: {report.calibration['formula']}")
    click.echo(f"on the calibration set: MAPE {fit['mape_pct']:.2f}% (uncalibrated {raw['mape_pct']:.2f}%), "
               f"within ±10% {100 * fit['within_10pct_share']:.1f}%, Kendall tau {_fmt(fit['kendall_tau'])}")
    click.echo(f"next: mnas table eval --device {device_spec} --samples 100")


@table.command("eval")
@network_target_options
@click.option("--samples", type=click.IntRange(min=2), default=None,
              help="N held-out random networks to measure (required unless --against stored).")
@click.option("--against", type=click.Choice(("measured", "stored")), default="measured", show_default=True,
              help="stored: measure nothing; score the predictor on every figure of the device stored by "
                   "`mnas results import` (published) at each network's own resolution.")
@click.option("--holdout", "holdout", default=None,
              help="With --against stored: a family (e.g. mobilenet-v2) whose figures are held out: the "
                   "network-level calibration is refitted on the other families only and the scores are on it.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Eval stream seed (disjoint from calibration seeds by construction).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Scatter PNG (default: <results>/plots/eval-<predictor>-<seed>-<N>.png).")
@network_measure_options
@click.pass_context
def eval_cmd(ctx: click.Context, device_spec: str, samples: int | None, against: str, holdout: str | None, seed: int,
             resolution: int, predictor_id: int | None, dtype: str, plot_path: str | None, runs: int, warmup: int,
             min_secs: float, repeats: int, tries: int, min_cpu_share: float, core: int | None,
             benchmark_binary: str | None, timeout_s: float, retries: int, as_json: bool, **execution: Any) -> None:
    """Measure N held-out networks (or use stored figures) and report RMSE, MAPE, ±5/±10% shares,
    Kendall tau and a plot."""
    if against == "stored":
        if dtype != "float32":
            raise MnasError(f"--dtype {dtype} with --against stored: expected --against measured (stored and "
                            "published figures are of float32 models)")
        _eval_stored(ctx, device_spec, holdout, resolution, predictor_id, plot_path, as_json)
        return
    if holdout is not None:
        raise MnasError("--holdout: expected --against stored (a measured eval samples fresh networks)")
    if samples is None:
        raise MnasError("--samples: expected N held-out networks to measure (or --against stored)")
    from mnas.predictor.build import network_writer
    from mnas.predictor.evals import evaluate_on_device
    from mnas.predictor.selection import device_predictor

    config = _bench_config(runs, warmup, min_secs, core, timeout_s, execution, device_spec)
    skipped = _SkippedDevices()
    devices = _devices(device_spec, core, benchmark_binary, timeout_s, retries, skipped)
    space = _space("mnasnet")
    with _store(ctx) as store:
        predictor = device_predictor(store, devices, resolution, predictor_id, space, dtype)
        plot = Path(plot_path) if plot_path else (
            db_path(ctx).parent / "plots" / f"eval-p{predictor.predictor_id}-s{seed}-n{samples}.png")
        try:
            report = evaluate_on_device(predictor, devices, store, space, samples, seed, config, plot=plot,
                                        progress=not as_json, writer=network_writer(dtype), guard=_guard(tries, min_cpu_share), repeats=repeats)
        except KeyboardInterrupt as stop:
            _networks_interrupted(stop, "eval")
    payload = {"device_spec": device_spec, "kind": predictor.kind, "dtype": dtype,
               "calibrated": predictor.calibration_ is not None,
               **report.to_dict(), "skipped_devices": list(skipped)}
    if as_json:
        echo_json(payload)
        return
    m = report.metrics
    click.echo(f"predictor {report.predictor_id} ({predictor.kind}"
               f"{', calibrated' if predictor.calibration_ is not None else ', uncalibrated'}) on {m['n']} held-out "
               f"networks (eval {report.eval_id}, seed {seed}; {report.excluded_calibration} calibration networks "
               f"excluded, overlap {report.overlap})")
    echo_table([{"metric": k, "value": _fmt(m[k], 4)} for k in
                ("rmse_ms", "mae_ms", "mape_pct", "max_error_pct", "within_5pct_share", "within_10pct_share",
                 "kendall_tau")], ["metric", "value"])
    if m.get("contended_share"):
        click.echo(f"warning: {100 * m['contended_share']:.0f}% of the networks were measured while other "
                   "processes shared the core: their figures are unreliable (measure on a quieter machine)")
    if report.coverage:
        c = report.coverage
        click.echo(f"layers: {c['from_table']} from the table, {c['from_fallback']} from the learned fallback")
    click.echo(f"plot: {report.plot}")


def _eval_stored(ctx: click.Context, device_spec: str, holdout: str | None, resolution: int,
                 predictor_id: int | None, plot_path: str | None, as_json: bool) -> None:
    """`mnas table eval --against stored [--holdout FAMILY]`: nothing is measured."""
    from mnas.predictor.evals import evaluate_against_figures, stored_figures
    from mnas.predictor.selection import load_device_predictor, resolve_device_name, runtime_filter

    with _store(ctx, create=False) as store:
        device_name = resolve_device_name(device_spec, store)
        predictor = load_device_predictor(store, device_name, resolution, runtime_filter(device_name), predictor_id,
                                          _space("mnasnet"))
        figures = stored_figures(store, device_name)
        tag = f"-holdout-{holdout}" if holdout else ""
        plot = Path(plot_path) if plot_path else (
            db_path(ctx).parent / "plots" / f"eval-p{predictor.predictor_id}-{device_name}-stored{tag}.png")
        report = evaluate_against_figures(predictor, figures, holdout=holdout, plot=plot,
                                          store=store if predictor.predictor_id is not None else None,
                                          device_name=device_name)
    payload = {"predictor_id": predictor.predictor_id, "kind": predictor.kind, "against": "stored", **report}
    if as_json:
        echo_json(payload)
        return
    where = f"held-out family {holdout} ({report['n']} figures; calibration refitted on " \
            f"{report['calibration']['refitted_on']} others)" if holdout else f"{report['n']} stored figures"
    click.echo(f"predictor {predictor.predictor_id} ({predictor.kind}) on {device_name}: {where}")
    echo_table([{"metric": k, "value": _fmt(report[k], 4)} for k in
                ("rmse_ms", "mae_ms", "mape_pct", "max_error_pct", "within_5pct_share", "within_10pct_share",
                 "kendall_tau")], ["metric", "value"])
    if report["seen_in_calibration"]:
        click.echo(f"warning: {report['seen_in_calibration']} of these figures were in the predictor's calibration "
                   "set (use --holdout FAMILY for figures it never saw)")
    click.echo(f"plot: {report['plot']}")


@table.command("transfer")
@click.option("--from", "source_name", required=True, help="The complete source table (e.g. this host's).")
@click.option("--device", "device_name", required=True, help="Target device name (e.g. pixel1).")
@click.option("--evidence", "evidence_tables", multiple=True,
              help="The target's partial table(s) (default: every stored published table of the device).")
@click.option("--prior", "prior_tables", multiple=True,
              help="Another device's partial table(s) whose per-layer ratio SHAPE is borrowed when DEVICE has no "
                   "layer table of its own (e.g. pixel1-r224-proxylessnas-lut for pixel4); the level and how much "
                   "of the shape to keep come from DEVICE's figures.")
@click.option("--figures/--no-figures", "use_figures", default=True, show_default=True,
              help="Calibrate on the device's stored end-to-end figures (`mnas results import`).")
@click.option("--holdout", default=None, help="Leave this family's figures out of the calibration.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Measure on this host the layers of the evidence and of the figure networks that the source "
                   "table lacks (else the learned model fitted on the source answers them).")
@click.option("--name", "table_name", default=None, help="Table name (default: <device>-r<res>-transfer).")
@click.option("--ratio-features", type=click.Choice(sorted(FEATURE_SETS)), default=DEFAULT_FEATURES, show_default=True,
              help="Features of the per-layer ratio model: the kind of layer plus the source's work rates "
                   "(kind_rates), the kind only, or every size feature too (all; extrapolates badly).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the table, its provenance and calibration to FILE.json.gz (as shipped in "
                   "device_configs/tables/).")
@click.option("--resolutions", default="96,128,160,192,224", show_default=True,
              help="Store a predictor for each of these resolutions (same entries).")
@json_option
@click.pass_context
def transfer_cmd(ctx: click.Context, source_name: str, device_name: str, evidence_tables: tuple[str, ...],
                 prior_tables: tuple[str, ...], use_figures: bool, holdout: str | None, measure: bool, table_name: str | None,
                 ratio_features: str, export_path: str | None, resolutions: str, as_json: bool) -> None:
    """Build a complete table of DEVICE from a complete table of another device plus the target's
    partial evidence (a partial layer table and/or end-to-end figures)."""
    from mnas.predictor.evals import stored_figures
    from mnas.predictor.table import list_tables, load_table
    from mnas.predictor.transfer_store import (
        figure_layers,
        measure_extra,
        run_transfer,
        save_transfer,
        source_latency,
        write_transfer_file,
    )
    from mnas.space.arch import LayerSig

    wanted = [int(r) for r in resolutions.split(",") if r.strip()]
    with _store(ctx, create=False) as store:
        source = load_table(store, source_name)
        names = list(evidence_tables) or [t["name"] for t in list_tables(store)
                                          if t["device"] == device_name and t.get("kind") == "published"]
        evidence: dict[str, float] = {}
        for name in names:
            evidence.update(load_table(store, name).latencies("median"))
        prior: dict[str, float] = {}
        for name in prior_tables:
            prior.update(load_table(store, name).latencies("median"))
        figures = stored_figures(store, device_name) if use_figures else []
        if holdout:
            figures = [f for f in figures if f.family != holdout]
        if not evidence and not figures:
            raise MnasError(f"device {device_name!r}: no evidence: expected a published table of it (`mnas table "
                            "import --format proxylessnas FILE --device NAME`) or end-to-end figures "
                            "(`mnas results import FILE --device NAME --source TEXT`)")
        measured = 0
        if measure:
            needed = figure_layers(figures) + [LayerSig.from_key(k) for k in [*evidence, *prior]]
            measured = measure_extra(store, source, needed, progress=not as_json)
        label = ", ".join(names) if names else ""
        result = run_transfer(source_latency(store, source), source, device_name, name=table_name,
                              layer_evidence=evidence, figures=figures, evidence_label=label,
                              prior_evidence=prior, prior_label=", ".join(prior_tables),
                              ratio_features_set=ratio_features)
        rows = save_transfer(store, result, resolutions=wanted)
    written = None
    if export_path:
        written = write_transfer_file(result, export_path, {"made_by": "mnas table transfer --from "
                                                            f"{source_name} --device {device_name}"})
    payload = {"table": result.table.meta.name, "device_config": device_name, "source_table": source_name,
               "entries": len(result.table), "evidence_tables": names, "evidence_layers": len(evidence),
               "figures": len(figures), "host_layers_measured": measured, "stored": rows,
               "ratio_model": result.ratio_model.to_dict(),
               "calibration": result.provenance.get("calibration"),
               "source_of_entries": result.provenance.get("source_of_entries"),
               "export": None if written is None else {"path": str(written), "size_bytes": written.stat().st_size}}
    if as_json:
        echo_json(payload)
        return
    click.echo(f"table {payload['table']}: {payload['entries']} transferred entries for {device_name} from "
               f"{source_name} ({len(evidence)} evidence layers from {label or 'no table'}, {len(figures)} figures)")
    model = result.ratio_model
    click.echo(f"per-layer ratio: global {model.to_dict()['global_ratio']:.3g}x, fitted on {model.n} layers "
               f"({'of ' + ', '.join(prior_tables) + ' (shape only), ' if prior and not evidence else ''}"
               f"features {model.features}, shrink {model.shrink:g}, alpha {model.alpha}, "
               f"cross-validated log RMSE {_fmt(model.loo_rmse_log)})")
    calibration = payload["calibration"]
    click.echo(f"calibration: {calibration['formula'] + ' [' + calibration['form'] + ']' if calibration else 'none'}")
    for row in rows:
        click.echo(f"  resolution {row['resolution']}: table {row['table']}, predictor {row['predictor_id']}")
    if written is not None:
        click.echo(f"written {written} ({payload['export']['size_bytes']} bytes)")


@table.command("list")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Stored tables (entries, device, runtime, resolution) and predictors (with their last eval)."""
    from mnas.predictor.evals import list_evals
    from mnas.predictor.registry import list_predictors
    from mnas.predictor.table import list_tables

    with _store(ctx, create=False) as store:
        tables = list_tables(store)
        shares = {t["id"]: contended_entries(store, t["id"]) for t in tables}
        predictors = list_predictors(store)
        evals = list_evals(store)
    last_eval: dict[int, dict[str, Any]] = {}
    for row in evals:
        last_eval[row["predictor_id"]] = row
    predictor_rows = []
    for p in predictors:
        e = last_eval.get(p["id"])
        predictor_rows.append({
            "id": p["id"], "kind": p["kind"], "table": p["table"], "device_config": p["device"],
            "resolution": p["resolution"], "dtype": p["dtype"], "calibration_samples": p["metrics"].get("calibration_samples"),
            "eval_id": None if e is None else e["id"], "eval_samples": None if e is None else e["samples"],
            "within_10pct_share": None if e is None else e["metrics"].get("within_10pct_share"),
            "kendall_tau": None if e is None else e["metrics"].get("kendall_tau"), "created_at": iso_at(p["created"])})
    if as_json:
        echo_json({"tables": [_table_row(t, shares[t["id"]]) for t in tables], "predictors": predictor_rows})
        return
    click.echo("tables:")
    echo_table([{"id": t["id"], "name": t["name"], "kind": t["kind"], "dtype": t["dtype"], "device": t["device"],
                 "runtime": t["runtime"],
                 "version": t["runtime_version"], "resolution": t["resolution"], "entries": t["entries"],
                 "contended": _share_text(shares[t["id"]]),
                 "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(t["created"]))} for t in tables])
    for t in tables:
        provenance = t["provenance"]
        if provenance:
            unmapped = len(provenance.get("unmapped") or [])
            click.echo(f"table {t['name']}: {provenance.get('note') or t['kind'] + ', not measured here'}: "
                       f"{provenance.get('source', '?')} ({provenance.get('source_file', '?')})"
                       f"{f'; {unmapped} source keys without a mnas layer' if unmapped else ''}")
    click.echo("predictors:")
    echo_table([{k: _fmt(v) for k, v in row.items() if k != "created_at"} for row in predictor_rows])


@table.command("export")
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="FILE.json or FILE.json.gz (what `mnas table import` reads), or FILE.csv (one row per layer).")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, name: str, output: str, as_json: bool) -> None:
    """Write table NAME (entries + metadata) to one portable file, or to CSV."""
    from mnas.predictor.table import load_table
    from mnas.predictor.table_csv import table_file_format, write_table_file

    file_format = table_file_format(output)  # an unknown suffix fails before the store is opened
    with _store(ctx, create=False) as store:
        loaded = load_table(store, name, allow_empty=True)
    path = write_table_file(loaded, output)
    payload = {"table": name, "entries": len(loaded), "path": str(path), "format": file_format,
               "size_bytes": path.stat().st_size}
    if as_json:
        echo_json(payload)
    else:
        click.echo(f"table {name}: {len(loaded)} entries written to {path} ({file_format}, "
                   f"{payload['size_bytes']} bytes)")


@table.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", "new_name", default=None,
              help="Store under this name (default: the file's; proxylessnas: <device>-r224-proxylessnas-lut).")
@click.option("--format", "file_format", type=click.Choice(("mnas", "proxylessnas")), default="mnas",
              show_default=True,
              help="mnas: a file written by `mnas table export`; proxylessnas: a published per-block lookup "
                   "table (YAML, key -> {count, mean, var}), stored as a published table.")
@click.option("--device", "device_name", default=None,
              help="proxylessnas: the device the table was measured on (e.g. pixel1); required.")
@click.option("--source", "source_text", default=None,
              help="proxylessnas: where the table was published (kept in its provenance).")
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, file: str, new_name: str | None, file_format: str, device_name: str | None,
               source_text: str | None, as_json: bool) -> None:
    """Add a table file to the store: an export of `mnas table export`, or a published lookup table."""
    from mnas.predictor.table import import_table, save_table

    if file_format == "proxylessnas":
        _import_published(ctx, file, new_name, device_name, source_text, as_json)
        return
    for option, value in (("--device", device_name), ("--source", source_text)):
        if value is not None:
            raise MnasError(f"{option} {value!r}: expected only with --format proxylessnas (an export names its device)")
    loaded = import_table(file)
    with _store(ctx) as store:
        table_id = save_table(store, loaded, new_name)
    name = new_name or loaded.meta.name
    payload = {"table_id": table_id, "table": name, "entries": len(loaded), "device_config": loaded.meta.device_name,
               "runtime": loaded.meta.runtime, "runtime_version": loaded.meta.runtime_version,
               "resolution": loaded.meta.resolution}
    if as_json:
        echo_json(payload)
    else:
        click.echo(f"imported table {name} (id {table_id}): {len(loaded)} entries, {loaded.meta.device_name}, "
                   f"{loaded.meta.runtime} {loaded.meta.runtime_version}, resolution {loaded.meta.resolution}")


def _import_published(ctx: click.Context, file: str, name: str | None, device_name: str | None,
                      source_text: str | None, as_json: bool) -> None:
    """`mnas table import --format proxylessnas`: one transaction, unmapped keys listed."""
    from mnas.predictor.published_lut import import_proxylessnas_lut, parse_proxylessnas_lut

    if device_name is None:
        raise MnasError("--format proxylessnas: --device missing: expected the device the table was measured on, "
                        "such as --device pixel1")
    parse_proxylessnas_lut(file)  # a malformed file is refused before any store is opened or created
    with _store(ctx) as store:
        result = import_proxylessnas_lut(store, file, device=device_name, name=name, source=source_text)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"imported published table {result.table} (id {result.table_id}): {result.entries} mnas layers "
               f"from {result.keys} keys of {file}, device {result.device} (published, not measured here)")
    if result.unmapped:
        click.echo(f"{len(result.unmapped)} keys have no mnas layer (recorded in the table's provenance):")
        for key, reason in result.unmapped:
            click.echo(f"  {key}: {reason}")
    else:
        click.echo("every key has a mnas layer")


# ------------------------------------------------------------------------------------ predict

@click.command("predict")
@click.argument("archs", nargs=-1, required=True)
@device_option(help="host, a serial or a device name.")
@click.option("--resolution", type=int, default=224, show_default=True, help="Input size (px) of the networks.")
@click.option("--multiplier", type=float, default=1.0, show_default=True, help="Depth multiplier for zoo models.")
@click.option("--predictor", "predictor_id", type=int, default=None, help="Predictor id (default: the device's latest).")
@click.option("--per-layer", is_flag=True,
              help="For .tflite files: print each layer found in the model (the JSON always carries them).")
@dtype_option("Predict the latency of these models (a predictor fitted on a table of this dtype)")
@json_option
@click.pass_context
def predict(ctx: click.Context, archs: tuple[str, ...], device_spec: str, resolution: int, multiplier: float,
            predictor_id: int | None, per_layer: bool, dtype: str, as_json: bool) -> None:
    """Predicted latency of ARCH... (zoo names, arch strings, or float32 .tflite files mapped onto mnas layers,
    with the operators no layer covers listed) from the device's latest predictor."""
    from mnas.cli_predict_tflite import echo_models, predict_models, read_models
    from mnas.predictor.fitting import prediction_rows
    from mnas.predictor.selection import load_device_predictor, resolve_device_name, runtime_filter
    from mnas.space.resolve import resolve_arch

    given = {name: ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
             for name in ("resolution", "multiplier")}
    models = read_models(archs, resolution, given["resolution"], given["multiplier"], per_layer)
    resolution = models.resolution if models is not None else resolution
    resolved = [] if models is not None else [(text, resolve_arch(text, multiplier)) for text in archs]
    if not db_path(ctx).exists() and predictor_id is None and device_spec != "host":
        # no results store yet (a fresh clone): a table shipped for the device still answers
        device_name = resolve_device_name(device_spec, None)
        predictor = load_device_predictor(None, device_name, resolution, None, None, _space("mnasnet"), dtype)
    else:
        with _store(ctx, create=False) as store:
            device_name = resolve_device_name(device_spec, store)
            predictor = load_device_predictor(store, device_name, resolution, runtime_filter(device_name),
                                              predictor_id, _space("mnasnet"), dtype)
    rows = prediction_rows(predictor, resolved) if models is None else predict_models(models, predictor)
    if as_json:
        echo_json(rows)
        return
    if models is not None:
        echo_models(rows, device_name, per_layer)
    else:
        echo_table([{"arch": r["input"] if len(r["input"]) <= 40 else r["arch_hash"],
                     "predicted_ms": _fmt(r["predicted_ms"], 2), "layers": r["layers"],
                     "from_table": r["layers_from_table"], "from_learned": r["layers_from_learned"]} for r in rows])
    first = rows[0]
    click.echo(f"predictor {first['predictor_id']} ({first['predictor_kind']}, "
               f"{'calibrated on ' + str(first['calibration_samples']) + ' networks' if first['calibrated'] else 'uncalibrated'}"
               f") from table {first['table']}")
