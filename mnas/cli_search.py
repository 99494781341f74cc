"""`mnas search`: run, resume, list, report and export MnasNet searches."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from mnas.cli_util import DefaultGroup, db_path, echo_json, echo_table, json_option
from mnas.errors import MnasError


@click.group(cls=DefaultGroup, default_command="run")
def search() -> None:
    """The MnasNet search (PPO controller) and its baselines; `mnas search --help-run` for options."""


def _run_dir(database: Path, run_id: str) -> Path:
    return database.parent / "runs" / run_id


@search.command("run")
@click.option("--latency", "latency_kind", type=click.Choice(["predicted", "measured", "hybrid"]), default="predicted",
              show_default=True, help="Where LAT(m) comes from.")
@click.option("--device", default="host", show_default=True, help="host, a phone serial, all, or (predicted) a config name.")
@click.option("--predictor", "predictor_id", type=int, default=None, help="Stored predictor id (default: latest for the device).")
@click.option("--share", type=float, default=0.1, show_default=True, help="Hybrid: share of samples also measured.")
@click.option("--algorithm", type=click.Choice(["ppo", "random", "evolution"]), default="ppo", show_default=True)
@click.option("--samples", type=int, default=20, show_default=True, help="Budget: number of children.")
@click.option("--target-ms", type=float, default=75.0, show_default=True, help="Latency target T (ms).")
@click.option("--reward", "reward_preset", type=click.Choice(["soft", "hard", "custom"]), default="soft", show_default=True)
@click.option("--alpha", type=float, default=None, help="Custom exponent when LAT <= T.")
@click.option("--beta", type=float, default=None, help="Custom exponent when LAT > T.")
@click.option("--latency-resolution", type=int, default=224, show_default=True, help="Input size of timed models.")
@click.option("--accuracy", "accuracy_kind", type=click.Choice(["proxy", "cheap"]), default="proxy", show_default=True,
              help="proxy: really train each child; cheap: a fixed function of mult-adds (NOT an accuracy; for tests).")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, digits, an ImageFolder tree, a CIFAR-10 pickle folder or an .npz.")
@click.option("--proxy-resolution", type=int, default=32, show_default=True)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--steps", type=int, default=None, help="Training steps per child (overrides --epochs).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--train-samples", type=int, default=4096, show_default=True, help="Training images per child (cap).")
@click.option("--val-samples", type=int, default=2000, show_default=True,
              help="Held-out images each child is scored on (cap).")
@click.option("--runs", type=int, default=20, show_default=True, help="Measured latency: timed runs.")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--min-secs", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
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
            latency_resolution: int, accuracy_kind: str, dataset: str, proxy_resolution: int, epochs: float,
            steps: int | None, batch_size: int, train_samples: int, val_samples: int, runs: int, warmup: int,
            min_secs: float, seed: int, threads: int, benchmark_binary: str | None, run_name: str | None, resume_id: str | None,
            executor_kind: str, address: str, cpus_per_child: float, gpus_per_child: float, workers: int,
            window: int | None, max_retries: int, as_json: bool) -> None:
    """Run a search (or --resume one); every child is stored as it finishes."""
    from mnas.bench.store import ResultsStore
    from mnas.search.executors import (
        build_setup_for,
        make_executor,
        resolve_window,
        run_search_with_executor,
    )
    from mnas.search.run_store import RunStore
    from mnas.search.setup import predictor_device_name

    if threads < 1:
        raise MnasError(f"--threads {threads}: expected an integer >= 1")
    database = db_path(ctx)
    store = ResultsStore(database)
    runs_store = RunStore(store)
    if resume_id:
        _check_resume_options(ctx, resume_id)
        run_id = resume_id
        cfg = runs_store.run_config(run_id)
        changed = False
        if _given(ctx, "samples"):
            if samples < 1:
                raise MnasError(f"--samples {samples}: expected a budget >= 1")
            cfg["samples"], changed = samples, True
        if _given(ctx, "threads") and cfg["accuracy"]["kind"] == "proxy":
            cfg["accuracy"].setdefault("execution", {})["threads"], changed = threads, True
        if changed:
            runs_store.update_config(run_id, cfg)
    else:
        cfg = _new_config(latency_kind, device, predictor_id, share, algorithm, samples, target_ms, reward_preset,
                          alpha, beta, latency_resolution, accuracy_kind, dataset, proxy_resolution, epochs, steps,
                          batch_size, train_samples, runs, warmup, min_secs, seed, threads, benchmark_binary,
                          val_samples)
        if latency_kind != "measured":
            cfg["latency"]["device_name"] = predictor_device_name(device)
        run_id = run_name or time.strftime("run-%Y%m%d-%H%M%S")
    import torch

    # One thread by default: on a shared 2-core machine two torch threads made the controller
    # ~10x and proxy training ~6x slower (measured); the proxy task restores it after training.
    torch.set_num_threads(int(cfg["accuracy"].get("execution", {}).get("threads") or threads))
    executor = make_executor(executor_kind, address=address, workers=workers, num_cpus_per_child=cpus_per_child,
                             num_gpus_per_child=gpus_per_child, max_retries=max_retries)
    try:
        # all bad input fails here, before training (on Ray also a device:* resource no node offers)
        setup = build_setup_for(executor, cfg, store, _run_dir(database, run_id))
        run_window = resolve_window(cfg, window, executor)  # stored in cfg: a resume keeps it
        if not resume_id:
            runs_store.create_run(run_id, cfg["algorithm"], cfg)
        else:
            runs_store.update_config(run_id, cfg)
            runs_store.set_status(run_id, "running")
        summary = run_search_with_executor(runs_store, run_id, setup, int(cfg["samples"]), executor,
                                           window=run_window, cfg=cfg, progress=not as_json)
    except KeyboardInterrupt:
        runs_store.set_status(run_id, "interrupted")
        stored = len(runs_store.samples(run_id))
        explicit_db = (ctx.find_root().obj or {}).get("db")
        again = f"mnas{f' --db {shlex.quote(str(explicit_db))}' if explicit_db else ''} search --resume {shlex.quote(run_id)}"
        click.echo(f"mnas: search {run_id} interrupted with {stored} of {cfg['samples']} children stored "
                   f"(every finished child is kept): resume with `{again}`", err=True)
        # SystemExit, not click's Exit: `mnas.cli.main` runs click with standalone_mode=False,
        # where click turns Exit into a return value and the code would be lost
        raise SystemExit(130) from None
    finally:
        executor.close()
    payload = {"run_id": run_id, "samples": summary.samples, "new_samples": summary.new_samples,
               "best_reward": summary.best_reward, "best_arch": summary.best_arch,
               "elapsed_s": summary.elapsed_s, "samples_per_hour": summary.samples_per_hour,
               "executor": executor_kind, "window": run_window}
    if as_json:
        echo_json(payload)
    else:
        click.echo(f"run {run_id}: {summary.samples} children ({summary.new_samples} new, "
                   f"{summary.samples_per_hour:.0f}/hour); best reward {summary.best_reward:.4f}\n  {summary.best_arch}")
        click.echo(f"report: mnas search report {run_id}")


RESUMABLE_OPTIONS = ("samples", "threads", "resume_id", "as_json", "executor_kind", "address", "cpus_per_child",
                     "gpus_per_child", "workers", "max_retries")


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _check_resume_options(ctx: click.Context, run_id: str) -> None:
    """A resumed run is rebuilt from its stored config: refuse options that would be ignored."""
    for param in ctx.command.params:
        if param.name and param.name not in RESUMABLE_OPTIONS and _given(ctx, param.name):
            flag = max(param.opts, key=len) if param.opts else param.name
            raise MnasError(f"{flag}: given with --resume {run_id}: expected only --samples, --threads or executor options "
                            "(a resumed run keeps its stored settings)")


def _new_config(latency_kind, device, predictor_id, share, algorithm, samples, target_ms, reward_preset, alpha, beta,
                latency_resolution, accuracy_kind, dataset, proxy_resolution, epochs, steps, batch_size, train_samples,
                runs, warmup, min_secs, seed, threads=1, benchmark_binary=None, val_samples=2000) -> dict:
    import math

    from mnas.search.reward import PRESETS, Reward

    if not math.isfinite(target_ms) or target_ms <= 0:
        raise MnasError(f"--target-ms {target_ms:g}: expected a latency target > 0 ms")
    if reward_preset == "custom":
        if alpha is None or beta is None:
            raise MnasError("--reward custom: expected both --alpha and --beta")
    else:
        if alpha is not None or beta is not None:
            raise MnasError(f"--alpha/--beta: given with --reward {reward_preset}: expected --reward custom")
        alpha, beta = PRESETS[reward_preset]
    reward = Reward(target_ms, alpha, beta)  # validates T > 0
    if samples < 1:
        raise MnasError(f"--samples {samples}: expected a budget >= 1")
    if not 0 < share <= 1:
        raise MnasError(f"--share {share:g}: expected a value in (0, 1]")
    cfg = {
        "space": "mnasnet", "algorithm": algorithm, "seed": seed, "samples": samples,
        "reward": reward.to_dict(),
        "latency": {"kind": latency_kind, "device": device, "predictor_id": predictor_id, "share": share,
                    "resolution": latency_resolution, "runs": runs, "warmup": warmup, "min_secs": min_secs},
    }
    if benchmark_binary:
        path = Path(benchmark_binary).expanduser().resolve()
        if not path.is_file():
            raise MnasError(f"--benchmark-binary {benchmark_binary}: no such file: expected the arm64 benchmark_model binary")
        cfg["latency"]["benchmark_binary"] = str(path)
    if accuracy_kind == "cheap":
        # its mult-adds curve is defined at 224 px whatever resolution latency is timed at
        cfg["accuracy"] = {"kind": "cheap", "params": {"seed": seed}}
    else:
        from mnas.search.accuracy import ProxyTask

        task = ProxyTask(dataset=dataset, resolution=proxy_resolution, epochs=epochs, steps=steps, batch_size=batch_size,
                         max_train_samples=train_samples, max_val_samples=val_samples, seed=seed)
        cfg["accuracy"] = {"kind": "proxy", "task_key": task.key(), "execution": {"threads": threads}}
    return cfg


@search.command("list")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Search runs in the results store."""
    from mnas.bench.store import ResultsStore
    from mnas.search.run_store import RunStore

    rows = RunStore(ResultsStore(db_path(ctx))).runs()
    if as_json:
        echo_json(rows)
    else:
        echo_table([{**r, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))} for r in rows])


def _open_run(ctx: click.Context, run_id: str, out_dir: str | None, kind: str):
    """The run's store and config, and the output folder (default results/runs/RUN/<kind>)."""
    from mnas.bench.store import ResultsStore
    from mnas.search.run_store import RunStore

    database = db_path(ctx)
    runs_store = RunStore(ResultsStore(database))
    cfg = runs_store.run_config(run_id)
    run_dir = _run_dir(database, run_id)
    return runs_store, cfg, Path(out_dir) if out_dir else run_dir / kind, run_dir


@search.command("report")
@click.argument("run_id")
@click.option("--top", type=int, default=10, show_default=True)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNGs (default: results/runs/RUN/report).")
@json_option
@click.pass_context
def report_cmd(ctx: click.Context, run_id: str, top: int, out_dir: str | None, as_json: bool) -> None:
    """Pareto front, reward curve, latency distribution (PNGs) and the top-k table of RUN."""
    from mnas.search.report import make_report

    runs_store, cfg, folder, _ = _open_run(ctx, run_id, out_dir, "report")
    report = make_report(runs_store, run_id, cfg, folder, top)
    if as_json:
        echo_json(report)
        return
    click.echo(f"run {run_id}: {report['samples']} children, target {report['target_ms']} ms, "
               f"{report['share_under_target'] * 100:.0f}% under target, hypervolume {report['hypervolume']:.4f}")
    sources = ", ".join(f"{kind} {n}" for kind, n in report["latency_sources"].items())
    click.echo(f"latency sources: {sources or 'none'}")
    error = report["latency_error"]
    if error["n"]:
        click.echo(f"predicted vs measured latency ({error['n']} measured archs): MAPE {error['mape_pct']:.1f}%, "
                   f"max {error['max_ape_pct']:.1f}%, bias {error['bias_pct']:+.1f}%")
    echo_table([{"idx": r["idx"], "reward": f"{r['reward']:.4f}", "accuracy": f"{r['accuracy']:.4f}",
                 "latency_ms": f"{r['latency_ms']:.2f}", "source": r["latency_source"], "arch": r["arch_hash"]}
                for r in report["top"]])
    for name, path in report["plots"].items():
        click.echo(f"{name}: {path}")


@search.command("export")
@click.argument("run_id")
@click.option("--top", type=int, default=3, show_default=True)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder (default: results/runs/RUN/export).")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, run_id: str, top: int, out_dir: str | None, as_json: bool) -> None:
    """Block strings, .tflite files and trained proxy weights of the top-K children of RUN."""
    from mnas.search.report import export_top

    runs_store, cfg, folder, run_dir = _open_run(ctx, run_id, out_dir, "export")
    rows = export_top(runs_store, run_id, cfg, folder, top, run_dir / "weights")
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            kept = (f"\n   {r['weights']} (build_model(arch, {r['num_classes']}))" if r["weights"]
                    else "\n   (no trained weights kept for this child)")
            trained = f"\n   {r['trained_tflite']}" if r["trained_tflite"] else ""
            click.echo(f"#{r['rank']} reward {r['reward']:.4f}: {r['arch']}\n   {r['blocks_txt']}\n   {r['tflite']}"
                       + kept + trained)
