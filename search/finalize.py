"""Final selection, as the paper did it: re-train the best children longer, several times.

A search scores each child with one short proxy training, so its ranking carries the noise of
one seed and one short schedule. MnasNet re-trained its top candidates fully before choosing;
`finalize_run` re-trains the top K distinct children of a run (by search reward) under S
seeds (0 .. S-1) with a longer schedule (`steps`, default 4x the search's steps per child),
stores every training as its own row (`search_finals`, `RunStore.add_final`) the moment it
finishes, and ranks the children by the mean of their final accuracies.

Resumable: a row is keyed by (run, network, task, steps), and the task key holds the seed
and the schedule; a re-run after Ctrl-C or a kill trains only the missing (child, seed,
steps) and never one twice. Asking for more seeds or children later reuses what is stored.

The reward of a finalized child is the run's reward (its target and exponents) of the mean
final accuracy at the child's latency as the search stored it (the run's latency source);
the spread is the sample standard deviation over seeds of the per-seed accuracy and reward
(the reward is linear in the accuracy at a fixed latency, so the mean of the per-seed
rewards is the reward of the mean accuracy). `search report` and `search export` rank by
these figures when a run has them (`finalized_ranking`) and say so.

With the cheap stand-in (`--accuracy cheap`) the "training" is its hash noise under each
seed: the schedule changes nothing, and the figures are NOT accuracies (tests and benchmarks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mnas.errors import MnasError
from mnas.search.run_config import RunConfig
from mnas.search.run_store import FinalRow, RunStore, SampleRow
from mnas.space.arch import Arch

__all__ = ["FINAL_STEPS_FACTOR", "FinalizeSummary", "check_finalize_options", "finalize_run", "finalized_ranking",
           "top_children"]

FINAL_STEPS_FACTOR = 4  # default final schedule: this many times the search's steps per child


@dataclass
class FinalizeSummary:
    run_id: str
    children: int
    seeds: int
    steps: int
    trained: int  # trainings run by this call
    reused: int  # trainings already stored, not run again
    ranking: list[dict[str, Any]] = field(default_factory=list)


def check_finalize_options(top: object, seeds: object, steps: object) -> None:
    if not isinstance(top, int) or top < 1:
        raise MnasError(f"--top {top!r}: expected an integer >= 1")
    if not isinstance(seeds, int) or seeds < 1:
        raise MnasError(f"--seeds {seeds!r}: expected an integer >= 1")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise MnasError(f"--steps {steps!r}: expected an integer >= 1")


def top_children(samples: list[SampleRow], top: int) -> list[SampleRow]:
    """The `top` distinct networks by search reward (a network sampled twice counts once, at its best)."""
    best: dict[str, SampleRow] = {}
    for s in samples:
        if s.arch_hash not in best or s.reward > best[s.arch_hash].reward:
            best[s.arch_hash] = s
    return sorted(best.values(), key=lambda s: (-s.reward, s.idx))[:top]


class _Trainers:
    """One accuracy source per seed at the final schedule; the proxy's data are prepared once."""

    def __init__(self, config: RunConfig, steps: int | None, device: str | None) -> None:
        self.config = config
        self.kind = config.accuracy.kind
        self._cache: dict[int, Any] = {}
        if self.kind == "cheap":
            self.steps = steps if steps is not None else 0  # nothing is trained: the schedule is a label
            self._data = None
            return
        from mnas.search.accuracy import ProxyTask, ProxyTrainer

        assert config.accuracy.task_key is not None
        execution = config.accuracy.execution() | ({"device": device} if device else {})
        self.base = ProxyTask.from_key(config.accuracy.task_key, **execution)
        first = ProxyTrainer(self.base)
        self._data = first.data
        self.steps = steps if steps is not None else FINAL_STEPS_FACTOR * first.total_steps()

    def source(self, seed: int) -> Any:
        if seed not in self._cache:
            if self.kind == "cheap":
                from mnas.search.accuracy import CheapAccuracy

                self._cache[seed] = CheapAccuracy(**{**self.config.accuracy.params, "seed": seed})
            else:
                from mnas.search.accuracy import ProxyTrainer

                task = dataclasses.replace(self.base, seed=seed, steps=self.steps)
                self._cache[seed] = ProxyTrainer(task, data=self._data)
        return self._cache[seed]


def finalize_run(runs: RunStore, run_id: str, config: RunConfig, *, top: int = 5, seeds: int = 3,
                 steps: int | None = None, device: str | None = None, progress: bool = True,
                 on_row: Callable[[FinalRow], None] | None = None) -> FinalizeSummary:
    """Re-train the run's top `top` children under `seeds` seeds for `steps` steps (module docstring)."""
    check_finalize_options(top, seeds, steps)
    runs.store.require_writable()
    children = top_children(runs.samples(run_id), top)
    if not children:
        raise MnasError(f"search run {run_id!r}: no stored children yet: expected a run with samples to finalize")
    trainers = _Trainers(config, steps, device)
    jobs = [(child, seed) for child in children for seed in range(seeds)]
    stored = {(r.arch_hash, r.accuracy_task, r.steps) for r in runs.finals(run_id)}
    todo = [(child, seed) for child, seed in jobs
            if (child.arch_hash, trainers.source(seed).task_key, trainers.steps) not in stored]
    from tqdm import tqdm

    trained = 0
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"finalize {run_id}", unit="training",
               disable=not progress, dynamic_ncols=True)
    try:
        for child, seed in todo:
            source = trainers.source(seed)
            result = source.accuracy(Arch.parse(child.arch))
            row = FinalRow(arch_hash=child.arch_hash, arch=child.arch, seed=seed, steps=trainers.steps,
                           accuracy_task=str(result.task_key), accuracy=float(result.accuracy),
                           train_s=float(result.train_seconds), final_loss=result.final_loss,
                           diverged=bool(getattr(result, "diverged", False)))
            if runs.add_final(run_id, row):
                trained += 1
                if on_row is not None:
                    on_row(row)
            bar.update(1)
            bar.set_postfix(child=child.arch_hash, seed=seed, acc=f"{row.accuracy:.4f}")
    finally:
        bar.close()
    ranking = finalized_ranking(runs, run_id, config, steps=trainers.steps,
                                children={c.arch_hash for c in children}, seeds=set(range(seeds))) or []
    return FinalizeSummary(run_id, len(children), seeds, trainers.steps, trained, len(jobs) - len(todo), ranking)


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def finalized_ranking(runs: RunStore, run_id: str, config: RunConfig, *, steps: int | None = None,
                      children: set[str] | None = None, seeds: set[int] | None = None) -> list[dict[str, Any]] | None:
    """Children ranked by mean final reward, or None when the run has no final trainings.

    `steps` picks the schedule (default: that of the latest final training); `children` and
    `seeds` restrict which rows count (default: all of that schedule).
    """
    finals = runs.finals(run_id)
    if not finals:
        return None
    steps = steps if steps is not None else finals[-1].steps
    chosen = [f for f in finals if f.steps == steps and (children is None or f.arch_hash in children)
              and (seeds is None or f.seed in seeds)]
    if not chosen:
        return None
    first_sample: dict[str, SampleRow] = {}
    for s in runs.samples(run_id):
        if s.arch_hash not in first_sample or s.reward > first_sample[s.arch_hash].reward:
            first_sample[s.arch_hash] = s
    by_child: dict[str, list[FinalRow]] = {}
    for f in chosen:
        by_child.setdefault(f.arch_hash, []).append(f)
    out = []
    for arch_hash, rows in by_child.items():
        sample = first_sample.get(arch_hash)
        if sample is None:
            continue
        rows = sorted(rows, key=lambda r: r.seed)
        accuracies = [r.accuracy for r in rows]
        rewards = [config.reward(a, sample.latency_ms) for a in accuracies]
        mean_acc = sum(accuracies) / len(accuracies)
        out.append({"arch_hash": arch_hash, "arch": sample.arch, "idx": sample.idx, "latency_ms": sample.latency_ms,
                    "latency_source": sample.latency_source, "search_reward": sample.reward,
                    "search_accuracy": sample.accuracy, "steps": steps, "seeds": [r.seed for r in rows],
                    "accuracies": accuracies, "accuracy_mean": mean_acc, "accuracy_sd": _sd(accuracies),
                    "reward": config.reward(mean_acc, sample.latency_ms), "reward_sd": _sd(rewards),
                    "diverged": sum(r.diverged for r in rows)})
    out.sort(key=lambda r: (-r["reward"], r["idx"]))
    for rank, row in enumerate(out, 1):
        row["rank"] = rank
    return out
