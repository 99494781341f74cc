"""The search loop: ask the searcher, score each child, tell the reward, store, repeat.

One loop serves every combination of searcher (PPO, random, evolution), latency source
(measured, predicted, hybrid) and accuracy source: it only sees their interfaces. After
every child the sample, any controller update and a checkpoint of the searcher's and the
latency source's full state (RNGs included) go to the store in one transaction, so a killed
run resumes with exactly the samples an uninterrupted run would have drawn, and holds every
sample exactly once.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas.errors import MnasError
from mnas.search.reward import Reward
from mnas.search.run_store import RunStore, SampleRow
from mnas.search.types import Searcher, state_from_bytes, state_to_bytes
from mnas.space.search_space import SearchSpace


@dataclass
class SearchSetup:
    """Everything one run needs, built from the run's stored config."""

    space: SearchSpace
    searcher: Searcher
    accuracy: Any  # AccuracySource: .accuracy(arch) -> result with .accuracy, .task_key
    latency: Any  # LatencySource
    reward: Reward
    weights_dir: Path | None = None  # trained proxy weights of the best children go here
    keep_top: int = 5


@dataclass
class RunSummary:
    run_id: str
    samples: int
    new_samples: int
    best_reward: float | None
    best_arch: str | None
    elapsed_s: float
    samples_per_hour: float
    extra: dict[str, Any] = field(default_factory=dict)


def _state(setup: SearchSetup) -> bytes:
    state: dict[str, Any] = {"searcher": setup.searcher.state_dict()}
    if hasattr(setup.latency, "state_dict"):
        state["latency"] = setup.latency.state_dict()
    return state_to_bytes(state)


def _restore(setup: SearchSetup, blob: bytes) -> None:
    state = state_from_bytes(blob)
    setup.searcher.load_state_dict(state["searcher"])
    if "latency" in state and hasattr(setup.latency, "load_state_dict"):
        setup.latency.load_state_dict(state["latency"])


def _save_weights(setup: SearchSetup, idx: int, result: Any, samples: list[SampleRow]) -> None:
    """Keep the trained weights of the `keep_top` best children by reward (atomic writes)."""
    model = getattr(result, "model", None)
    if setup.weights_dir is None or model is None:
        return
    weights = model.state_dict()
    import torch

    ranked = sorted(samples, key=lambda s: s.reward, reverse=True)[: setup.keep_top]
    keep = {s.idx for s in ranked}
    setup.weights_dir.mkdir(parents=True, exist_ok=True)
    if idx in keep:
        path = setup.weights_dir / f"{idx}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(weights, tmp)
        tmp.replace(path)
    for old in setup.weights_dir.glob("*.pt"):
        if old.stem.isdigit() and int(old.stem) not in keep:
            old.unlink(missing_ok=True)


def run_search(run_store: RunStore, run_id: str, setup: SearchSetup, budget: int,
               progress: bool = True, on_sample: Callable[[SampleRow], None] | None = None) -> RunSummary:
    """Run (or resume) `run_id` until it holds `budget` samples."""
    from tqdm import tqdm

    if budget < 1:
        raise MnasError(f"--samples {budget}: expected a budget >= 1")
    checkpoint = run_store.checkpoint(run_id)
    next_idx = 0
    if checkpoint is not None:
        next_idx, blob = checkpoint
        _restore(setup, blob)
    samples = run_store.samples(run_id)
    if len(samples) != next_idx:
        raise MnasError(f"search run {run_id!r}: {len(samples)} stored samples but checkpoint at {next_idx}: store is inconsistent")
    best = max(samples, key=lambda s: s.reward, default=None)
    wants_model = setup.weights_dir is not None and "return_model" in inspect.signature(setup.accuracy.accuracy).parameters
    start = time.time()
    new = 0
    bar = tqdm(total=budget, initial=next_idx, desc=f"search {run_id}", unit="child", disable=not progress,
               dynamic_ncols=True)
    try:
        for idx in range(next_idx, budget):
            tokens = [int(t) for t in setup.searcher.ask(1)[0]]
            arch = setup.space.decode(tokens)
            t0 = time.perf_counter()
            acc = setup.accuracy.accuracy(arch, return_model=True) if wants_model else setup.accuracy.accuracy(arch)
            t1 = time.perf_counter()
            lat = setup.latency.latency_ms([arch])[0]
            t2 = time.perf_counter()
            reward = setup.reward(float(acc.accuracy), float(lat.latency_ms))
            updates = setup.searcher.tell([tokens], [reward]) or []  # PPO: the updates this tell ran
            update_stats = [u.to_dict() if hasattr(u, "to_dict") else dict(u) for u in updates]
            sample = SampleRow(
                idx=idx, tokens=tokens, arch=str(arch), arch_hash=arch.hash, accuracy=float(acc.accuracy),
                accuracy_task=str(getattr(acc, "task_key", "")), latency_ms=float(lat.latency_ms),
                latency_source=lat.source, reward=float(reward), predicted_ms=lat.predicted_ms,
                measured_ms=lat.measured_ms, train_s=t1 - t0, latency_s=t2 - t1,
            )
            run_store.add_sample(run_id, sample, _state(setup), update_stats)
            samples.append(sample)
            _save_weights(setup, idx, acc, samples)
            new += 1
            if best is None or sample.reward > best.reward:
                best = sample
            elapsed = time.time() - start
            bar.update(1)
            bar.set_postfix(best=f"{best.reward:.4f}", arch=best.arch_hash,
                            per_hour=f"{new / elapsed * 3600:.0f}" if elapsed > 0 else "-")
            if on_sample is not None:
                on_sample(sample)
    finally:
        bar.close()
    elapsed = time.time() - start
    if len(samples) >= budget:
        run_store.set_status(run_id, "done")
    return RunSummary(run_id, len(samples), new, best.reward if best else None, best.arch if best else None,
                      elapsed, new / elapsed * 3600 if elapsed > 0 else math.nan)
