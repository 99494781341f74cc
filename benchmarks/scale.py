"""Search throughput (children per hour) against the number of Ray workers on this machine.

Why: the executor's promise is that adding workers adds children per hour until the hardware
runs out; this measures it without the noise of real training. Each child "trains" for a
fixed amount of single-core work (`--cost compute`: a pure-Python loop calibrated to
`--child-s` seconds on one core) or waits (`--cost sleep`: like a child waiting on a remote
GPU), its accuracy is `CheapAccuracy` (NOT an accuracy), its latency is predicted in the
driver (a linear mult-adds model: microseconds). The search is the PPO controller with the
paper's settings and a pipeline window of twice the workers.

For each worker count a fresh local Ray cluster with that many CPUs runs the same search;
the local executor (in-process, one child at a time) is the baseline. Compute-bound children
scale near-linearly until the cores run out (`os.cpu_count()`); waiting children keep
scaling. Run: `python benchmarks/scale.py [--children 48] [--workers 1 2 4] [--cost compute]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mnas.bench.store import ResultsStore
from mnas.search.accuracy import AccuracyResult, CheapAccuracy
from mnas.search.executors import LocalExecutor, RayExecutor
from mnas.search.latency import PredictedLatency
from mnas.search.loop import run_search
from mnas.search.reward import Reward
from mnas.search.run_store import RunStore
from mnas.search.runs import SearchSetup
from mnas.search.setup import build_searcher
from mnas.space.arch import Arch
from mnas.space.cost import arch_cost
from mnas.space.search_space import mnasnet


def burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def calibrate(seconds: float) -> int:
    """Loop iterations that take `seconds` on one core of this machine (median of 3 probes)."""
    probe = 2_000_000
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        burn(probe)
        rates.append(probe / (time.perf_counter() - t0))
    return int(sorted(rates)[1] * seconds)


class CostlyAccuracy(CheapAccuracy):
    """CheapAccuracy after a fixed amount of work (or waiting) standing in for a child's training."""

    def __init__(self, cost: str, iterations: int, seconds: float) -> None:
        super().__init__()
        self.cost, self.iterations, self.seconds = cost, iterations, seconds

    def accuracy(self, arch: Arch) -> AccuracyResult:
        t0 = time.perf_counter()
        if self.cost == "compute":
            burn(self.iterations)
        else:
            time.sleep(self.seconds)
        result = super().accuracy(arch)
        return AccuracyResult(accuracy=result.accuracy, train_seconds=time.perf_counter() - t0, steps=0,
                              val_samples=0, task_key=result.task_key, final_loss=None)


class MaccPredictor:
    """A linear latency model on mult-adds (Pixel-1-like scale), computed in the driver."""

    predictor_id = "macc-linear"

    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([4.0 + 0.24 * arch_cost(a, 224, 1000).mult_adds / 1e6 for a in archs])


def _warm_worker(seconds: float) -> int:
    import mnas.search.accuracy  # noqa: F401 - the imports a child pays once per worker process

    time.sleep(seconds)
    return os.getpid()


def warm_up(workers: int) -> None:
    """Start every worker process (and its imports) before timing: a long search pays this once."""
    import ray

    task = ray.remote(_warm_worker).options(num_cpus=1)
    ray.get([task.remote(1.0) for _ in range(2 * workers)])


def one_run(executor, accuracy: CostlyAccuracy, children: int, window: int, folder: Path, name: str) -> tuple[float, float]:
    space = mnasnet()
    setup = SearchSetup(space=space, searcher=build_searcher(space, "ppo", 0), accuracy=accuracy,
                        latency=PredictedLatency(MaccPredictor()), reward=Reward.soft(75.0), weights_dir=None)
    run_store = RunStore(ResultsStore(folder / f"{name}.db"))
    run_store.create_run(name, "ppo", {})
    try:
        summary = run_search(run_store, name, setup, children, executor, window=window, progress=False)
    finally:
        executor.close()
    return summary.samples_per_hour, summary.elapsed_s


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--child-s", type=float, default=1.0, help="seconds of work per child on one core")
    parser.add_argument("--cost", choices=["compute", "sleep"], default="compute")
    args = parser.parse_args(argv)
    import ray

    torch.set_num_threads(1)  # the driver's controller; children run in their own processes
    iterations = calibrate(args.child_s)
    accuracy = CostlyAccuracy(args.cost, iterations, args.child_s)
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.children} children of "
          f"{args.child_s} s {args.cost} each, PPO, predicted latency")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mnas-scale-") as tmp:
        per_hour, elapsed = one_run(LocalExecutor(1), accuracy, args.children, 1, Path(tmp), "local")
        rows.append(("local (in-process)", 1, 1, per_hour, elapsed))
        for workers in args.workers:
            ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
            try:
                warm_up(workers)
                executor = RayExecutor(None, num_cpus_per_child=1)
                per_hour, elapsed = one_run(executor, accuracy, args.children, 2 * workers, Path(tmp), f"ray{workers}")
            finally:
                ray.shutdown()
            rows.append(("ray", workers, 2 * workers, per_hour, elapsed))
    base = rows[1][3] if len(rows) > 1 else rows[0][3]
    print(f"{'executor':<20} {'workers':>7} {'window':>6} {'children/h':>11} {'wall s':>7} {'speed-up':>8}")
    for name, workers, window, per_hour, elapsed in rows:
        print(f"{name:<20} {workers:>7} {window:>6} {per_hour:>11.0f} {elapsed:>7.1f} {per_hour / base:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
