"""Three searchers behind one ask/tell interface: random search, regularized evolution, PPO.

Random search and regularized evolution (Real et al., AAAI 2019) are the baselines the RL
search has to beat with the same sample budget; `PPOSearcher` wraps the controller and
`PPOTrainer` in the same interface, so one search loop runs all three.

Every searcher checkpoints exactly: `state_dict()` holds its RNG state (numpy
`bit_generator.state`, torch `Generator.get_state()`) and everything it has learned, so a
search restored from a checkpoint asks for the very samples an uninterrupted one would.
`tell` accepts sequences the searcher did not propose (e.g. known architectures seeded in).

"Uniform" means uniform over distinct networks, not over token sequences: some token
sequences give the same network (one-layer blocks: layer choices n-1 and n, identity and none
skips), and random search and evolution's initial population draw every distinct network
equally often, as its canonical tokens (`mnas.search.distinct`). A mutation may still land
on another token sequence of the same network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from mnas.errors import MnasError
from mnas.search.controller import Controller
from mnas.search.distinct import DistinctSampler
from mnas.search.ppo import PPOTrainer, UpdateStats
from mnas.search.types import Tokens, check_ask, check_tell
from mnas.space.search_space import SearchSpace


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any], who: str) -> None:
    if not isinstance(state, dict) or state.get("bit_generator") != rng.bit_generator.state["bit_generator"]:
        raise MnasError(f"{who} checkpoint: RNG state {str(state)[:60]!r}: expected a numpy "
                        f"{rng.bit_generator.state['bit_generator']} state")
    rng.bit_generator.state = state


def _require(state: dict[str, Any], keys: Sequence[str], who: str) -> None:
    for key in keys:
        if key not in state:
            raise MnasError(f"{who} checkpoint: key {key!r} missing: expected a {who}.state_dict()")


class RandomSearch:
    """Uniform samples over the space's distinct networks; `tell` only counts and remembers the best."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.sampler = DistinctSampler(space)
        self.rng = np.random.default_rng(seed)
        self.told = 0
        self.best: tuple[Tokens, float] | None = None

    def ask(self, n: int) -> list[Tokens]:
        check_ask(n)
        return [self.sampler.sample_tokens(self.rng) for _ in range(n)]

    def tell(self, tokens_list: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        check_tell(tokens_list, rewards)
        for tokens, reward in zip(tokens_list, rewards, strict=True):
            self.space.check_tokens(tokens)
            if self.best is None or float(reward) > self.best[1]:
                self.best = ([int(t) for t in tokens], float(reward))
        self.told += len(tokens_list)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "rng": _rng_state(self.rng), "told": self.told,
                "best": None if self.best is None else [list(self.best[0]), self.best[1]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require(state, ("rng", "told", "best"), "RandomSearch")
        _set_rng_state(self.rng, state["rng"], "RandomSearch")
        self.told = int(state["told"])
        self.best = None if state["best"] is None else ([int(t) for t in state["best"][0]], float(state["best"][1]))


class RegularizedEvolution:
    """Aging evolution (Real et al. 2019).

    The first `population` asks are uniform samples of the distinct networks. After that each ask draws `sample_size`
    members of the population uniformly (with replacement, as in the paper's algorithm),
    takes the one with the highest reward as parent and returns it with one decision changed
    to a different value (decision and value uniform). Each `tell` appends to the population
    and removes the oldest member beyond `population`: age, not fitness, decides who dies.
    Asks that have not been told yet do not block: the tournament uses whoever has been told.
    Defaults (100, 25) are the paper's large-scale setting.
    """

    name = "evolution"

    def __init__(self, space: SearchSpace, population: int = 100, sample_size: int = 25, seed: int = 0) -> None:
        if not isinstance(population, int) or population < 2:
            raise MnasError(f"RegularizedEvolution: population = {population!r}: expected an integer >= 2")
        if not isinstance(sample_size, int) or not 1 <= sample_size <= population:
            raise MnasError(f"RegularizedEvolution: sample_size = {sample_size!r}: expected an integer in [1, {population}]")
        self.space = space
        self.sampler = DistinctSampler(space)
        self.population_size = population
        self.sample_size = sample_size
        self.rng = np.random.default_rng(seed)
        self.choices = [n for _, n in space.decisions]
        self.mutable = [i for i, n in enumerate(self.choices) if n > 1]
        if not self.mutable:
            raise MnasError("RegularizedEvolution: every decision has one choice: expected a space with something to mutate")
        self.population: list[tuple[Tokens, float]] = []  # oldest first
        self.asked = 0

    def mutate(self, tokens: Sequence[int]) -> Tokens:
        """`tokens` with one decision (uniform among those with > 1 choice) set to another value."""
        child = [int(t) for t in tokens]
        decision = self.mutable[int(self.rng.integers(len(self.mutable)))]
        value = int(self.rng.integers(self.choices[decision] - 1))
        child[decision] = value + 1 if value >= child[decision] else value
        return child

    def _select_parent(self) -> Tokens:
        picks = self.rng.integers(len(self.population), size=self.sample_size).tolist()
        best = picks[0]
        for i in picks[1:]:  # ties go to the earliest pick
            if self.population[i][1] > self.population[best][1]:
                best = i
        return self.population[best][0]

    def ask(self, n: int) -> list[Tokens]:
        check_ask(n)
        out = []
        for _ in range(n):
            if self.asked < self.population_size or not self.population:
                out.append(self.sampler.sample_tokens(self.rng))
            else:
                out.append(self.mutate(self._select_parent()))
            self.asked += 1
        return out

    def tell(self, tokens_list: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        check_tell(tokens_list, rewards)
        for tokens, reward in zip(tokens_list, rewards, strict=True):
            self.space.check_tokens(tokens)
            self.population.append(([int(t) for t in tokens], float(reward)))
            if len(self.population) > self.population_size:
                self.population.pop(0)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "rng": _rng_state(self.rng), "asked": self.asked,
                "population": [[list(t), r] for t, r in self.population],
                "population_size": self.population_size, "sample_size": self.sample_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require(state, ("rng", "asked", "population", "population_size", "sample_size"), "RegularizedEvolution")
        if (state["population_size"], state["sample_size"]) != (self.population_size, self.sample_size):
            raise MnasError(f"RegularizedEvolution checkpoint: population/sample size "
                            f"{state['population_size']}/{state['sample_size']}: expected "
                            f"{self.population_size}/{self.sample_size} as configured")
        _set_rng_state(self.rng, state["rng"], "RegularizedEvolution")
        self.asked = int(state["asked"])
        self.population = [([int(t) for t in tokens], float(r)) for tokens, r in state["population"]]


class PPOSearcher:
    """The MnasNet RL search: the controller proposes, PPO learns from every full minibatch.

    `ask` samples from the controller with this searcher's torch generator and remembers each
    sample's log-probability under the policy that drew it (PPO's "old" policy). `tell`
    buffers (tokens, reward, old log-prob) and runs `trainer.update` each time the buffer
    holds `trainer.config.minibatch_size` samples. Told sequences that were never asked are
    scored by the current policy.
    """

    name = "ppo"

    def __init__(self, space: SearchSpace, controller: Controller, trainer: PPOTrainer, seed: int = 0) -> None:
        if trainer.controller is not controller:
            raise MnasError("PPOSearcher: trainer.controller is another controller: expected the trainer of `controller`")
        if controller.choices != [n for _, n in space.decisions]:
            raise MnasError(f"PPOSearcher: controller choices {controller.choices}: expected the space's "
                            f"{[n for _, n in space.decisions]}")
        self.space = space
        self.controller = controller
        self.trainer = trainer
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: list[tuple[Tokens, float]] = []  # asked, not told: (tokens, old log-prob)
        self.buffer: list[tuple[Tokens, float, float]] = []  # told, not yet learned from
        self.last_stats: UpdateStats | None = None

    def ask(self, n: int) -> list[Tokens]:
        check_ask(n)
        tokens, log_probs, _ = self.controller.sample(n, self.generator)
        out = [[int(t) for t in row] for row in tokens.tolist()]
        self.pending.extend(zip(out, log_probs.tolist(), strict=True))
        return out

    def _old_log_prob(self, tokens: Tokens) -> float:
        for i, (asked, log_prob) in enumerate(self.pending):
            if asked == tokens:
                del self.pending[i]
                return log_prob
        with torch.no_grad():
            return float(self.controller.log_prob([tokens])[0][0])

    def tell(self, tokens_list: Sequence[Sequence[int]], rewards: Sequence[float]) -> list[UpdateStats]:
        """Buffer the results; returns the stats of the updates this call triggered (often none)."""
        check_tell(tokens_list, rewards)
        stats = []
        for tokens, reward in zip(tokens_list, rewards, strict=True):
            self.space.check_tokens(tokens)
            seq = [int(t) for t in tokens]
            self.buffer.append((seq, float(reward), self._old_log_prob(seq)))
            if len(self.buffer) >= self.trainer.config.minibatch_size:
                batch, self.buffer = self.buffer[: self.trainer.config.minibatch_size], self.buffer[self.trainer.config.minibatch_size:]
                self.last_stats = self.trainer.update([b[0] for b in batch], [b[2] for b in batch], [b[1] for b in batch])
                stats.append(self.last_stats)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "trainer": self.trainer.state_dict(), "generator": self.generator.get_state(),
                "pending": [[list(t), lp] for t, lp in self.pending],
                "buffer": [[list(t), r, lp] for t, r, lp in self.buffer],
                "last_stats": None if self.last_stats is None else asdict(self.last_stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require(state, ("trainer", "generator", "pending", "buffer"), "PPOSearcher")
        self.trainer.load_state_dict(state["trainer"])
        self.generator.set_state(state["generator"])
        self.pending = [([int(t) for t in tokens], float(lp)) for tokens, lp in state["pending"]]
        self.buffer = [([int(t) for t in tokens], float(r), float(lp)) for tokens, r, lp in state["buffer"]]
        last = state.get("last_stats")
        self.last_stats = None if last is None else UpdateStats(**last)
