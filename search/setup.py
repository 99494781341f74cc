"""Build a run's components from its stored config, so `--resume` rebuilds exactly the same run.

The config is plain JSON kept in `search_runs.config`: algorithm, seed, budget, reward,
latency source (kind, device, resolution, predictor id, hybrid share, bench conditions) and
accuracy source (the proxy task key, or the cheap stand-in). Everything that can fail on
bad input (unknown device, no fitted predictor, T <= 0, empty dataset folder) fails here,
before any child is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnas.errors import MnasError
from mnas.predictor.selection import check_phone_names, resolve_device_name
from mnas.search.reward import Reward
from mnas.search.runs import SearchSetup
from mnas.space.search_space import mnasnet

ALGORITHMS = ("ppo", "random", "evolution")
LATENCY_KINDS = ("predicted", "measured", "hybrid")


def build_reward(cfg: dict[str, Any]) -> Reward:
    return Reward(float(cfg["target_ms"]), float(cfg["alpha"]), float(cfg["beta"]))


def build_searcher(cfg: dict[str, Any], space):
    algorithm, seed = cfg["algorithm"], int(cfg["seed"])
    if algorithm == "random":
        from mnas.search.baselines import RandomSearch

        return RandomSearch(space, seed=seed)
    if algorithm == "evolution":
        from mnas.search.baselines import RegularizedEvolution

        evo = cfg.get("evolution", {})
        return RegularizedEvolution(space, population=int(evo.get("population", 50)),
                                    sample_size=int(evo.get("sample_size", 10)), seed=seed)
    if algorithm == "ppo":
        import torch

        from mnas.search.baselines import PPOSearcher
        from mnas.search.controller import Controller
        from mnas.search.ppo import PPOConfig, PPOTrainer

        torch.manual_seed(seed)  # controller init U(-0.1, 0.1) is seeded by the run seed
        controller = Controller.from_space(space)
        trainer = PPOTrainer(controller, PPOConfig(**cfg.get("ppo", {})))
        return PPOSearcher(space, controller, trainer, seed=seed)
    raise MnasError(f"--algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")


def build_accuracy(cfg: dict[str, Any]):
    acc = cfg["accuracy"]
    if acc["kind"] == "cheap":
        from mnas.search.accuracy import CheapAccuracy

        return CheapAccuracy(**acc.get("params", {}))
    if acc["kind"] == "proxy":
        from mnas.search.accuracy import ProxyTask, ProxyTrainer

        task = ProxyTask.from_key(acc["task_key"], **acc.get("execution", {}))
        return ProxyTrainer(task)
    raise MnasError(f"accuracy source {acc['kind']!r}: expected proxy or cheap")


def build_latency(cfg: dict[str, Any], store, workdir: Path):
    lat = cfg["latency"]
    kind = lat["kind"]
    if kind not in LATENCY_KINDS:
        raise MnasError(f"--latency {kind!r}: expected one of {', '.join(LATENCY_KINDS)}")
    from mnas.search.latency import HybridLatency, MeasuredLatency, PredictedLatency

    def predicted():
        from mnas.predictor.predictors import load_predictor

        predictor = load_predictor(store, lat.get("predictor_id"), device=None if lat.get("predictor_id") else lat["device_name"],
                                   resolution=lat["resolution"])
        lat["predictor_id"] = predictor.predictor_id  # pin the exact predictor for resume
        return PredictedLatency(predictor, predictor_id=f"predictor-{predictor.predictor_id}")

    def measured():
        from mnas.bench.devices import select_devices
        from mnas.bench.types import BenchConfig
        from mnas.space.tflite_writer import write_arch

        check_phone_names(lat["device"], "host, all, or the serial of an attached phone")
        binary = lat.get("benchmark_binary")
        devices = select_devices(lat["device"], benchmark_binary=Path(binary) if binary else None,
                                 timeout_s=float(lat.get("timeout_s", 600)), retries=int(lat.get("retries", 1)))
        config = BenchConfig(warmup_runs=int(lat["warmup"]), num_runs=int(lat["runs"]), min_secs=float(lat["min_secs"]))
        return MeasuredLatency(devices, int(lat["resolution"]), config, write_arch, store=store, workdir=workdir)

    if kind == "predicted":
        return predicted()
    if kind == "measured":
        return measured()
    return HybridLatency(predicted(), measured(), share=float(lat.get("share", 0.1)), seed=int(cfg["seed"]))


def predictor_device_name(device: str, store: Any | None = None) -> str:
    """The device name latency tables are keyed on (`resolve_device_name`, attached phones included):
    predicting needs no phone attached, but a search may name the serial it will measure on."""
    return resolve_device_name(device, store, attached=True)


def build_setup(cfg: dict[str, Any], store, run_dir: Path) -> SearchSetup:
    space = mnasnet()
    reward = build_reward(cfg["reward"])
    latency = build_latency(cfg, store, run_dir / "models")
    accuracy = build_accuracy(cfg)
    searcher = build_searcher(cfg, space)
    return SearchSetup(space=space, searcher=searcher, accuracy=accuracy, latency=latency, reward=reward,
                       weights_dir=run_dir / "weights", keep_top=int(cfg.get("keep_top", 5)))

