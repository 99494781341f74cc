"""A search run's life: start it, resume it, and keep its status in the store.

`mnas search` only parses options into a `RunConfig` and calls `start_run` or `resume_run`;
everything between (the predictor's device name, the executor, the setup, the window, the
run's row and status) is decided here, so a run started from Python behaves as one started
from the command line. Every piece that can fail on bad input runs before the run is
created, so a mistake leaves nothing behind.

Status: `running` while a process works on it (and after a kill, since nobody could say
otherwise), `interrupted` after Ctrl-C, `done` once the budget is stored. A write the store
refuses (disk full, read-only) stops the run in one line saying how many children are stored;
the sample and its checkpoint are one transaction, so `--resume` continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mnas.bench.store import StoreWriteError
from mnas.errors import MnasError
from mnas.search.executors import ExecutorOptions
from mnas.search.run_config import RunConfig, check_budget, check_threads, check_window
from mnas.search.run_store import RunStore
from mnas.search.runs import RunSummary
from mnas.search.types import Executor

__all__ = ["RESUMABLE_FLAGS", "RunInterrupted", "check_resume_flags", "open_run", "resolve_window", "resume_run",
           "run_dir", "start_run"]

# what a resumed run may change: its budget and how (not what) it computes
RESUMABLE_FLAGS = ("--samples", "--threads", "--executor", "--address", "--cpus-per-child", "--gpus-per-child",
                   "--workers", "--max-retries")


LOCAL = ExecutorOptions()  # one in-process worker


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the run is marked `interrupted`; every finished child is stored."""

    def __init__(self, run_id: str, stored: int, budget: int) -> None:
        super().__init__(f"search {run_id} interrupted with {stored} of {budget} children stored")
        self.run_id, self.stored, self.budget = run_id, stored, budget


def run_dir(database: Path, run_id: str) -> Path:
    """The run's files (written models, kept weights, reports) next to the results database."""
    return database.parent / "runs" / run_id


def open_run(database: Path, run_id: str) -> tuple[RunStore, RunConfig]:
    """The store holding `run_id` and the run's config (an unknown run fails naming the known ones)."""
    from mnas.bench.store import ResultsStore

    runs = RunStore(ResultsStore(database, create=False))
    return runs, RunConfig.from_dict(runs.run_config(run_id))


def resolve_window(config: RunConfig, requested: int | None, executor: Executor) -> RunConfig:
    """`config` with its pipeline window: `requested`, else the one stored with the run, else the default.

    Default: 1 (the sequential search) for the local executor with one worker, otherwise twice
    the children the executor runs at once. It is stored with the run, because the same seed
    gives the same samples only with the same window.
    """
    if requested is not None:
        check_window(requested)
        return replace(config, window=requested)
    if config.window is not None:
        return config
    slots = executor.slots()
    return replace(config, window=1 if slots == 1 and executor.name == "local" else 2 * slots)


def check_resume_flags(run_id: str, flags: Sequence[str]) -> None:
    """A resumed run is rebuilt from its stored config: refuse the first option that would be ignored."""
    for flag in flags:
        if flag not in RESUMABLE_FLAGS:
            raise MnasError(f"{flag}: given with --resume {run_id}: expected only --samples, --threads or executor options "
                            "(a resumed run keeps its stored settings)")


def start_run(database: Path, config: RunConfig, *, run_id: str | None = None,
              executor: ExecutorOptions = LOCAL, window: int | None = None, threads: int = 1,
              progress: bool = True) -> RunSummary:
    """Create a run from `config` and search until its budget is stored."""
    from mnas.bench.store import ResultsStore
    from mnas.search.setup import predictor_device_name

    check_threads(threads)
    store = ResultsStore(database)
    store.require_writable()  # a read-only store: one line before any setup or training
    if config.latency.predicts:
        device_name = predictor_device_name(config.latency.device, store)
        config = replace(config, latency=replace(config.latency, device_name=device_name))
    return _run(store, database, run_id or time.strftime("run-%Y%m%d-%H%M%S"), config, executor, window, threads,
                progress, new=True)


def resume_run(database: Path, run_id: str, *, samples: int | None = None, threads: int | None = None,
               executor: ExecutorOptions = LOCAL, progress: bool = True) -> RunSummary:
    """Continue `run_id` exactly where it stopped; only its budget and its threads may change."""
    from mnas.bench.store import ResultsStore

    if threads is not None:
        check_threads(threads)
    store = ResultsStore(database)
    config = RunConfig.from_dict(RunStore(store).run_config(run_id))  # an unknown run says so first
    store.require_writable()
    if samples is not None:
        check_budget(samples)
        config = replace(config, samples=samples)
    if threads is not None and config.accuracy.kind == "proxy":
        config = replace(config, accuracy=replace(config.accuracy, threads=threads))
    return _run(store, database, run_id, config, executor, None, threads or 1, progress, new=False)


def _run(store: Any, database: Path, run_id: str, config: RunConfig, options: ExecutorOptions, window: int | None,
         threads: int, progress: bool, *, new: bool) -> RunSummary:
    import torch

    from mnas.search.loop import run_search
    from mnas.search.setup import accuracy_factory, build_setup

    runs = RunStore(store)
    # One thread by default: on a shared 2-core machine two torch threads made the controller
    # ~10x and proxy training ~6x slower (measured); the proxy task restores it after training.
    torch.set_num_threads(config.accuracy.threads or threads)
    executor = options.build()
    try:
        # all bad input fails here, before training (on Ray also a device:* resource no node offers)
        setup, config = build_setup(config, store, run_dir(database, run_id), devices=executor.devices)
        config = resolve_window(config, window, executor)
        if new:
            runs.create_run(run_id, config.algorithm, config.to_dict())
        else:
            runs.update_config(run_id, config.to_dict())
            runs.set_status(run_id, "running")
        assert config.window is not None
        return run_search(runs, run_id, setup, config.samples, executor, window=config.window,
                          accuracy_factory=accuracy_factory(config.accuracy), progress=progress)
    except KeyboardInterrupt:
        runs.set_status(run_id, "interrupted")
        raise RunInterrupted(run_id, len(runs.samples(run_id)), config.samples) from None
    except StoreWriteError as exc:  # disk full, read-only: the child being stored is lost, the run is whole
        if run_id not in runs.run_ids():
            raise
        stored = len(runs.samples(run_id))
        raise StoreWriteError(f"{exc}; search {run_id}: {stored} of {config.samples} children stored: fix the "
                              f"cause and resume with `mnas search --resume {run_id}`", exc.cause) from None
    finally:
        executor.close()
