"""What one search run works with (`SearchSetup`), what it reports (`RunSummary`), and the
bookkeeping after each stored child (`RunProgress`).

The loop itself is `mnas.search.loop.run_search`; what happens once a child is stored (its
trained weights kept if it ranks among the best, best-so-far, the progress bar, the
caller's callback) is written once here, so every caller of the loop sees the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas.search.reward import Reward
from mnas.search.run_store import SampleRow
from mnas.search.types import Searcher
from mnas.space.search_space import SearchSpace

__all__ = ["RunProgress", "RunSummary", "SearchSetup"]


@dataclass
class SearchSetup:
    """Everything one run needs, built from the run's config (`mnas.search.setup.build_setup`)."""

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


class RunProgress:
    """Per-child bookkeeping of one call of the loop: weights, best so far, progress bar, callback."""

    def __init__(self, run_id: str, setup: SearchSetup, stored: list[SampleRow], budget: int, *, progress: bool,
                 on_sample: Callable[[SampleRow], None] | None) -> None:
        from tqdm import tqdm

        self.run_id, self.setup, self.samples, self.on_sample = run_id, setup, stored, on_sample
        self.best = max(stored, key=lambda s: s.reward, default=None)
        self.new = 0
        self.start = time.time()
        self.bar = tqdm(total=budget, initial=len(stored), desc=f"search {run_id}", unit="child",
                        disable=not progress, dynamic_ncols=True)

    def stored(self, sample: SampleRow, accuracy_result: Any) -> None:
        """Called once per child, right after the child and its checkpoint are in the store."""
        self.samples.append(sample)
        _save_weights(self.setup, sample.idx, accuracy_result, self.samples)
        self.new += 1
        if self.best is None or sample.reward > self.best.reward:
            self.best = sample
        elapsed = time.time() - self.start
        self.bar.update(1)
        self.bar.set_postfix(best=f"{self.best.reward:.4f}", arch=self.best.arch_hash,
                             per_hour=f"{self.new / elapsed * 3600:.0f}" if elapsed > 0 else "-")
        if self.on_sample is not None:
            self.on_sample(sample)

    def close(self) -> None:
        self.bar.close()

    def summary(self, extra: dict[str, Any]) -> RunSummary:
        elapsed = time.time() - self.start
        best = self.best
        return RunSummary(self.run_id, len(self.samples), self.new, best.reward if best else None,
                          best.arch if best else None, elapsed,
                          self.new / elapsed * 3600 if elapsed > 0 else math.nan, extra=extra)
