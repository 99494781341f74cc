"""Build a run's components from its `RunConfig`, so `--resume` rebuilds exactly the same run.

This is the one place a config becomes a searcher, an accuracy source and a latency source;
what differs between executors is only where the measurement devices come from (`devices`:
this machine's, or Ray actors for the cluster's phones), so the executor passes that in.
Everything that can fail on bad input (unknown device, no fitted predictor, an empty dataset
folder) fails here, before any child is trained.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mnas.errors import MnasError
from mnas.predictor.selection import check_phone_names, resolve_device_name
from mnas.search.run_config import ALGORITHMS, AccuracyConfig, LatencyConfig, RunConfig
from mnas.search.runs import SearchSetup
from mnas.search.types import LatencySource, Searcher
from mnas.space.search_space import SearchSpace, mnasnet

__all__ = ["DeviceSource", "accuracy_factory", "build_accuracy", "build_latency", "build_searcher", "build_setup",
           "local_devices", "predictor_device_name"]

DeviceSource = Callable[..., list[Any]]  # (spec, **select_options) -> devices, like `select_devices`


def build_searcher(space: SearchSpace, algorithm: str, seed: int, *, ppo: Mapping[str, Any] | None = None,
                   evolution: Mapping[str, int] | None = None) -> Searcher:
    """PPO (controller seeded by `seed`), random search or regularized evolution over `space`."""
    if algorithm == "random":
        from mnas.search.baselines import RandomSearch

        return RandomSearch(space, seed=seed)
    if algorithm == "evolution":
        from mnas.search.baselines import RegularizedEvolution

        evo = evolution or {}
        return RegularizedEvolution(space, population=int(evo.get("population", 50)),
                                    sample_size=int(evo.get("sample_size", 10)), seed=seed)
    if algorithm == "ppo":
        import torch

        from mnas.search.baselines import PPOSearcher
        from mnas.search.controller import Controller
        from mnas.search.ppo import PPOConfig, PPOTrainer

        torch.manual_seed(seed)  # controller init U(-0.1, 0.1) is seeded by the run seed
        controller = Controller.from_space(space)
        trainer = PPOTrainer(controller, PPOConfig(**(ppo or {})))
        return PPOSearcher(space, controller, trainer, seed=seed)
    raise MnasError(f"--algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")


def build_accuracy(config: AccuracyConfig) -> Any:
    """The run's accuracy source; on Ray each worker calls this itself (`accuracy_factory`)."""
    if config.kind == "cheap":
        from mnas.search.accuracy import CheapAccuracy

        return CheapAccuracy(**config.params)
    from mnas.search.accuracy import ProxyTask, ProxyTrainer

    assert config.task_key is not None  # AccuracyConfig checks it
    return ProxyTrainer(ProxyTask.from_key(config.task_key, **config.execution()))


def accuracy_factory(config: AccuracyConfig) -> Callable[[], Any]:
    """How a worker builds the run's accuracy source on its own node (its GPU, its data)."""
    return functools.partial(build_accuracy, config)


def local_devices(spec: str, **select_options: Any) -> list[Any]:
    """This machine's devices; a phone name with no adb server to find it fails naming the phone."""
    from mnas.bench.devices import select_devices

    check_phone_names(spec, "host, all, or the serial of an attached phone")
    return select_devices(spec, **select_options)


def build_latency(config: LatencyConfig, seed: int, store: Any, workdir: Path,
                  devices: DeviceSource = local_devices) -> tuple[LatencySource, LatencyConfig]:
    """The latency source, and `config` with the predictor it uses pinned (for resume)."""
    from mnas.search.latency import HybridLatency, MeasuredLatency, PredictedLatency

    predicted = measured = None
    if config.predicts:
        from mnas.predictor.selection import ensure_shipped_predictor, load_device_predictor

        if not config.predictor_id:  # a device with a table shipped in device_configs/tables: stored on first use
            ensure_shipped_predictor(store, config.device_name, config.resolution, dtype=config.dtype)
        # the predictor of the run's dtype (an int8 run without an int8 predictor is refused in one line)
        predictor = load_device_predictor(store, config.device_name, config.resolution, None, config.predictor_id,
                                          dtype=config.dtype)
        config = dataclasses.replace(config, predictor_id=predictor.predictor_id)
        predicted = PredictedLatency(predictor, predictor_id=f"predictor-{predictor.predictor_id}")
    if config.measures:
        binary = config.benchmark_binary  # on Ray: a path that must exist on every node with phones
        found = devices(config.device, benchmark_binary=Path(binary) if binary else None,
                        timeout_s=config.timeout_s, retries=config.retries)
        measured = MeasuredLatency(found, config.resolution, config.bench_config(), None, store=store,
                                   workdir=workdir, keep_models=config.keep_models, dtype=config.dtype)
    if predicted is not None and measured is not None:
        from mnas.search.latency import check_hybrid_statistic

        check_hybrid_statistic(predicted, measured)  # before any child is trained
        return HybridLatency(predicted, measured, share=config.share, seed=seed), config
    source = predicted if predicted is not None else measured
    assert source is not None
    return source, config


def predictor_device_name(device: str, store: Any | None = None) -> str:
    """The device name latency tables are keyed on (`resolve_device_name`, attached phones included):
    predicting needs no phone attached, but a search may name the serial it will measure on."""
    return resolve_device_name(device, store, attached=True)


def build_setup(config: RunConfig, store: Any, run_dir: Path,
                devices: DeviceSource = local_devices) -> tuple[SearchSetup, RunConfig]:
    """Everything the run needs, and `config` as it must be stored (its predictor pinned)."""
    space = mnasnet()
    latency, latency_config = build_latency(config.latency, config.seed, store, run_dir / "models", devices)
    accuracy = build_accuracy(config.accuracy)
    searcher = build_searcher(space, config.algorithm, config.seed, ppo=config.ppo, evolution=config.evolution)
    setup = SearchSetup(space=space, searcher=searcher, accuracy=accuracy, latency=latency, reward=config.reward,
                        weights_dir=run_dir / "weights", keep_top=config.keep_top)
    return setup, dataclasses.replace(config, latency=latency_config)
