"""`mnas search`: run, resume, list, report and export MnasNet searches."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from mnas.bench.types import DELEGATES
from mnas.cli_util import (
    DELEGATE_HELP,
    DefaultGroup,
    db_path,
    device_option,
    echo_json,
    echo_table,
    iso_at,
    json_option,
)


@click.group(cls=DefaultGroup, default_command="run")
def search() -> None:
    """The MnasNet search (PPO controller) and its baselines; `mnas search run --help` for a run's options."""


@search.command("run")
@click.option("--latency", "latency_kind", type=click.Choice(["predicted", "measured", "hybrid"]), default="predicted",
              show_default=True, help="Where LAT(m) comes from.")
@device_option(help="host, a phone serial, all, or (predicted) a config name.", dest="device")
@click.option("--predictor", "predictor_id", type=int, default=None, help="Stored predictor id (default: latest for the device).")
@click.option("--share", type=float, default=0.1, show_default=True, help="Hybrid: share of samples also measured.")
@click.option("--algorithm", type=click.Choice(["ppo", "random", "evolution"]), default="ppo", show_default=True,
              help="ppo: the paper's LSTM controller; random and (regularized) evolution: baselines.")
@click.option("--samples", type=int, default=20, show_default=True, help="Budget: number of children.")
@click.option("--target-ms", type=float, default=75.0, show_default=True, help="Latency target T (ms).")
@click.option("--reward", "reward_preset", type=click.Choice(["soft", "hard", "custom"]), default="soft", show_default=True,
              help="ACC x (LAT/T)^w: soft alpha = beta = -0.07, hard alpha = 0, beta = -1, custom --alpha/--beta.")
@click.option("--alpha", type=float, default=None, help="Custom exponent when LAT <= T.")
@click.option("--beta", type=float, default=None, help="Custom exponent when LAT > T.")
@click.option("--latency-resolution", type=int, default=224, show_default=True, help="Input size of timed models.")
@click.option("--accuracy", "accuracy_kind", type=click.Choice(["proxy", "cheap"]), default="proxy", show_default=True,
              help="proxy: really train each child; cheap: a fixed function of mult-adds (NOT an accuracy; for tests).")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, digits, an ImageFolder tree, a CIFAR-10 python folder (its pickles are read by a "
                   "restricted unpickler that refuses anything but the real batches' arrays) or an .npz.")
@click.option("--proxy-resolution", type=int, default=32, show_default=True,
              help="Image size (px) each child is trained on (the proxy task).")
@click.option("--proxy-strides", type=click.Choice(["auto", "reduced", "full"]), default="auto", show_default=True,
              help="reduced: the proxy trains with the stem and the first stride-2 block at stride 1 (total stride "
                   "8), so late blocks see feature maps of their timed sizes (4x4 at 32 px); full: the timed "
                   "strides; auto: reduced below 64 px.")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Proxy training epochs per child.")
@click.option("--steps", type=int, default=None, help="Training steps per child (overrides --epochs).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Proxy training batch size.")
@click.option("--train-samples", type=int, default=4096, show_default=True, help="Training images per child (cap).")
@click.option("--val-samples", type=int, default=2000, show_default=True,
              help="Held-out images each child is scored on (cap).")
@click.option("--runs", type=int, default=20, show_default=True, help="Measured latency: timed runs.")
@click.option("--keep-models", is_flag=True,
              help="Measured latency: keep every timed .tflite in results/runs/RUN/models (default: each is deleted "
                   "once its latency is stored; ~15 MB per child at 224 px).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Measured latency: warm-up runs.")
@click.option("--min-secs", type=float, default=0.5, show_default=True,
              help="Measured latency: time the runs for at least this many seconds.")
@click.option("--latency-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measured latency: benchmark threads (benchmark_model --num_threads), one core each.")
@click.option("--delegate", type=click.Choice(DELEGATES), default="default", show_default=True,
              help="Measured latency: " + DELEGATE_HELP)
@click.option("--bm-arg", "bm_args", multiple=True, metavar="FLAG=VALUE",
              help="Measured latency on phones: one more benchmark_model flag (repeatable).")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="Latency of float32 or int8 (fully quantized) children: measured ones are timed as int8 "
                   "models, predicted ones use a predictor fitted on an int8 table (`mnas table build --dtype int8`).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Run seed: the controller (or baseline sampler), proxy training, which hybrid samples are measured.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads of this process (controller and proxy training); more than 1 only pays on an "
                   "otherwise idle machine.")
@click.option("--benchmark-binary", type=click.Path(dir_okay=False), default=None,
              help="Phones: host path of the arm64 benchmark_model (pushed once, checked by hash).")
@click.option("--name", "run_name", default=None, help="Run id (default: a timestamped one).")
@click.option("--resume", "resume_id", default=None,
              help="Continue run RUN exactly where it stopped (its stored settings; only --samples, --threads and "
                   "the executor options may change).")
@click.option("--executor", "executor_kind", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: train children in this process; ray: as Ray tasks, with phones as Ray actors.")
@click.option("--address", default="auto", show_default=True,
              help="Ray cluster: auto (the one `ray start` runs here), HOST:PORT, ray://..., or local (a private one).")
@click.option("--cpus-per-child", type=float, default=1.0, show_default=True, help="Ray: CPUs each child trains on.")
@click.option("--gpus-per-child", type=float, default=0.0, show_default=True,
              help="Ray: GPUs each child trains on (0.5 = two children per GPU).")
@click.option("--workers", type=int, default=1, show_default=True, help="Local executor: children trained at once.")
@click.option("--window", type=int, default=None,
              help="Children asked ahead of the oldest unfinished one; stored with the run (same seed and window = "
                   "same samples on any executor). Default: 1 locally, twice the parallel children on Ray.")
@click.option("--max-retries", type=int, default=3, show_default=True,
              help="Ray: re-runs of a child whose worker or node died.")
@json_option
@click.pass_context
def run_cmd(ctx: click.Context, latency_kind: str, device: str, predictor_id: int | None, share: float, algorithm: str,
            samples: int, target_ms: float, reward_preset: str, alpha: float | None, beta: float | None,
            latency_resolution: int, accuracy_kind: str, dataset: str, proxy_resolution: int, proxy_strides: str,
            epochs: float, steps: int | None, batch_size: int, train_samples: int, val_samples: int, runs: int,
            keep_models: bool, warmup: int,
            min_secs: float, latency_threads: int, delegate: str, bm_args: tuple[str, ...], dtype: str, seed: int, threads: int, benchmark_binary: str | None, run_name: str | None, resume_id: str | None,
            executor_kind: str, address: str, cpus_per_child: float, gpus_per_child: float, workers: int,
            window: int | None, max_retries: int, as_json: bool) -> None:
    """Run a search (or --resume one); every child is stored as it finishes."""
    from mnas.search.executors import ExecutorOptions
    from mnas.search.lifecycle import RunInterrupted, check_resume_flags, resume_run, start_run
    from mnas.search.run_config import new_run_config

    database = db_path(ctx)
    executor = ExecutorOptions(executor_kind, address, workers, cpus_per_child, gpus_per_child, max_retries)
    try:
        if resume_id:
            check_resume_flags(resume_id, _given_flags(ctx))
            summary = resume_run(database, resume_id, samples=samples if _given(ctx, "samples") else None,
                                 threads=threads if _given(ctx, "threads") else None, executor=executor,
                                 progress=not as_json)
        else:
            config = new_run_config(
                algorithm=algorithm, seed=seed, samples=samples, target_ms=target_ms, reward=reward_preset, alpha=alpha,
                beta=beta, latency=latency_kind, device=device, predictor_id=predictor_id, share=share,
                latency_resolution=latency_resolution, runs=runs, warmup=warmup, min_secs=min_secs,
                benchmark_binary=benchmark_binary, accuracy=accuracy_kind, dataset=dataset,
                proxy_resolution=proxy_resolution, epochs=epochs, steps=steps, batch_size=batch_size,
                train_samples=train_samples, val_samples=val_samples, threads=threads, keep_models=keep_models,
                proxy_strides=proxy_strides, latency_threads=latency_threads, delegate=delegate, bm_args=bm_args,
                dtype=dtype)
            summary = start_run(database, config, run_id=run_name, executor=executor, window=window, threads=threads,
                                progress=not as_json)
    except RunInterrupted as stop:
        explicit_db = (ctx.find_root().obj or {}).get("db")
        again = f"mnas{f' --db {shlex.quote(str(explicit_db))}' if explicit_db else ''} search --resume {shlex.quote(stop.run_id)}"
        click.echo(f"mnas: {stop} (every finished child is kept): resume with `{again}`", err=True)
        # SystemExit, not click's Exit: `mnas.cli.main` runs click with standalone_mode=False,
        # where click turns Exit into a return value and the code would be lost
        raise SystemExit(130) from None
    payload = {"run_id": summary.run_id, "samples": summary.samples, "new_samples": summary.new_samples,
               "best_reward": summary.best_reward, "best_arch": summary.best_arch,
               "elapsed_s": summary.elapsed_s, "samples_per_hour": summary.samples_per_hour,
               "executor": executor_kind, "window": summary.extra["window"]}
    if as_json:
        echo_json(payload)
    else:
        click.echo(f"run {summary.run_id}: {summary.samples} children ({summary.new_samples} new, "
                   f"{summary.samples_per_hour:.0f}/hour); best reward {summary.best_reward:.4f}\n  {summary.best_arch}")
        click.echo(f"report: mnas search report {summary.run_id}")


CLI_ONLY = ("resume_id", "as_json")  # how to call, not what to run: always allowed with --resume


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _given_flags(ctx: click.Context) -> list[str]:
    """The long flags given on the command line, in the command's order (`--resume` and `--json` aside)."""
    return [max(p.opts, key=len) if p.opts else str(p.name) for p in ctx.command.params
            if p.name and p.name not in CLI_ONLY and _given(ctx, p.name)]


@search.command("list")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Search runs in the results store."""
    from mnas.bench.store import ResultsStore
    from mnas.search.run_store import RunStore

    rows = RunStore(ResultsStore(db_path(ctx), create=False)).runs()
    if as_json:  # times as ISO-8601 `*_at` strings (docs/json.md)
        echo_json([{**{k: v for k, v in r.items() if k != "created"}, "created_at": iso_at(r["created"])} for r in rows])
    else:
        echo_table([{**r, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))} for r in rows])


def _open_run(ctx: click.Context, run_id: str, out_dir: str | None, kind: str):
    """The run's store and config, and the output folder (default results/runs/RUN/<kind>)."""
    from mnas.search.lifecycle import open_run, run_dir

    database = db_path(ctx)
    runs_store, config = open_run(database, run_id)
    folder = run_dir(database, run_id)
    return runs_store, config, Path(out_dir) if out_dir else folder / kind, folder


@search.command("report")
@click.argument("run_id")
@click.option("--top", type=int, default=10, show_default=True, help="Children in the top-k table.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNGs (default: results/runs/RUN/report).")
@json_option
@click.pass_context
def report_cmd(ctx: click.Context, run_id: str, top: int, out_dir: str | None, as_json: bool) -> None:
    """Pareto front, reward curve, latency distribution (PNGs) and the top-k table of RUN."""
    from mnas.search.report import make_report

    runs_store, config, folder, _ = _open_run(ctx, run_id, out_dir, "report")
    report = make_report(runs_store, run_id, config, folder, top)
    if as_json:
        echo_json(report)
        return
    click.echo(f"run {run_id}: {report['samples']} children, target {report['target_ms']} ms, "
               f"{report['share_under_target'] * 100:.0f}% under target, hypervolume {report['hypervolume']:.4f}")
    sources = ", ".join(f"{kind} {n}" for kind, n in report["latency_sources"].items())
    click.echo(f"latency sources: {sources or 'none'}")
    if report["ranking"] == "finalized":
        first = report["top"][0] if report["top"] else {"seeds": [], "steps": 0}
        click.echo(f"ranking: finalized (mean of {len(first['seeds'])} seed(s) x {first['steps']} steps, "
                   f"`mnas search finalize`); {report['accuracy_label']}")
    else:
        click.echo(f"ranking: search (one training per child; `mnas search finalize {run_id}` re-trains the best); "
                   f"{report['accuracy_label']}")
    error = report["latency_error"]
    if error["n"]:
        click.echo(f"predicted vs measured latency ({error['n']} measured archs): MAPE {error['mape_pct']:.1f}%, "
                   f"max {error['max_ape_pct']:.1f}%, bias {error['bias_pct']:+.1f}%")
    if report["ranking"] == "finalized":
        echo_table([{"idx": r["idx"], "reward": f"{r['reward']:.4f}+-{r['reward_sd']:.4f}",
                     "accuracy": f"{r['accuracy']:.4f}+-{r['accuracy_sd']:.4f}", "seeds": len(r["seeds"]),
                     "search_reward": f"{r['search_reward']:.4f}", "latency_ms": f"{r['latency_ms']:.2f}",
                     "source": r["latency_source"], "arch": r["arch_hash"]} for r in report["top"]])
    else:
        echo_table([{"idx": r["idx"], "reward": f"{r['reward']:.4f}", "accuracy": f"{r['accuracy']:.4f}",
                     "latency_ms": f"{r['latency_ms']:.2f}", "source": r["latency_source"], "arch": r["arch_hash"]}
                    for r in report["top"]])
    for name, path in report["plots"].items():
        click.echo(f"{name}: {path}")


@search.command("export")
@click.argument("run_id")
@click.option("--top", type=int, default=3, show_default=True, help="Best children to export.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder (default: results/runs/RUN/export).")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, run_id: str, top: int, out_dir: str | None, as_json: bool) -> None:
    """Block strings, .tflite files and trained proxy weights of the top-K children of RUN."""
    from mnas.search.report import export_top

    runs_store, config, folder, run_dir = _open_run(ctx, run_id, out_dir, "export")
    rows = export_top(runs_store, run_id, config, folder, top, run_dir / "weights")
    if as_json:
        echo_json(rows)
    else:
        if rows:
            click.echo("ranking: finalized (mean final reward over seeds)" if rows[0]["ranking"] == "finalized"
                       else "ranking: search (one training per child)")
        for r in rows:
            kept = (f"\n   {r['weights']} (the search's proxy: ProxyTask.model(arch, {r['num_classes']}))"
                    if r["weights"] else "\n   (no trained weights kept for this child)")
            trained = f"\n   {r['trained_tflite']}" if r["trained_tflite"] else ""
            spread = f" +- {r['reward_sd']:.4f} ({len(r['seeds'])} seeds)" if r["ranking"] == "finalized" else ""
            click.echo(f"#{r['rank']} reward {r['reward']:.4f}{spread}: {r['arch']}\n   {r['blocks_txt']}\n   {r['tflite']}"
                       + kept + trained)


@search.command("finalize")
@click.argument("run_id")
@click.option("--top", type=int, default=5, show_default=True, help="Distinct children to re-train (best search reward).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Trainings per child (seeds 0 .. S-1).")
@click.option("--steps", type=int, default=None,
              help="Training steps of each final training (default: 4x the search's steps per child).")
@click.option("--device", "train_device", default=None, help="Proxy training device (cpu, cuda[:N]; default: the run's).")
@json_option
@click.pass_context
def finalize_cmd(ctx: click.Context, run_id: str, top: int, seeds: int, steps: int | None, train_device: str | None,
                 as_json: bool) -> None:
    """Re-train the top children of RUN longer under several seeds and rank them by mean reward.

    Every training is stored as it finishes; running the same command again (after Ctrl-C or a
    kill) trains only what is missing. `search report` and `search export` then use this ranking.
    """
    from mnas.search.finalize import check_finalize_options, finalize_run
    from mnas.search.lifecycle import open_run

    check_finalize_options(top, seeds, steps)
    runs_store, config = open_run(db_path(ctx), run_id)
    try:
        summary = finalize_run(runs_store, run_id, config, top=top, seeds=seeds, steps=steps, device=train_device,
                               progress=not as_json)
    except KeyboardInterrupt:
        done = len(runs_store.finals(run_id))
        click.echo(f"mnas: finalize {run_id} interrupted ({done} final training(s) stored in all): run the same "
                   "command again to train only what is missing", err=True)
        raise SystemExit(130) from None
    payload = {"run_id": summary.run_id, "children": summary.children, "seeds": summary.seeds, "steps": summary.steps,
               "trained": summary.trained, "reused": summary.reused, "accuracy_kind": config.accuracy.kind,
               "ranking": summary.ranking}
    if as_json:
        echo_json(payload)
        return
    click.echo(f"finalize {run_id}: {summary.children} children x {summary.seeds} seeds x {summary.steps} steps "
               f"({summary.trained} trained now, {summary.reused} already stored)"
               + ("; cheap stand-in: NOT accuracies" if config.accuracy.kind == "cheap" else ""))
    echo_table([{"rank": r["rank"], "reward": f"{r['reward']:.4f}", "reward_sd": f"{r['reward_sd']:.4f}",
                 "accuracy": f"{r['accuracy_mean']:.4f}", "accuracy_sd": f"{r['accuracy_sd']:.4f}",
                 "seeds": len(r["seeds"]), "search_reward": f"{r['search_reward']:.4f}",
                 "latency_ms": f"{r['latency_ms']:.2f}", "arch": r["arch_hash"]} for r in summary.ranking])
