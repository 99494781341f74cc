"""Searchers behind ask/tell: exact resume for all three, evolution's rules, PPO buffering."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch

from mnas.errors import MnasError
from mnas.search.baselines import PPOSearcher, RandomSearch, RegularizedEvolution
from mnas.search.controller import Controller
from mnas.search.ppo import PPOConfig, PPOTrainer
from mnas.search.types import Searcher, state_from_bytes, state_to_bytes
from mnas.space.search_space import mnasnet

SPACE = mnasnet()
TARGET = SPACE.sample_tokens(np.random.default_rng(11))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def toy_reward(tokens: Sequence[int]) -> float:
    """Share of decisions matching TARGET: deterministic, so a resumed run sees the same rewards."""
    return float(np.mean(np.asarray(tokens) == np.asarray(TARGET)))


def make_ppo(seed: int, init_seed: int = 0) -> PPOSearcher:
    torch.manual_seed(init_seed)
    controller = Controller.from_space(SPACE)
    return PPOSearcher(SPACE, controller, PPOTrainer(controller, PPOConfig(epochs=2)), seed=seed)


FACTORIES: dict[str, Callable[[int, int], Searcher]] = {
    "random": lambda seed, init: RandomSearch(SPACE, seed=seed),
    "evolution": lambda seed, init: RegularizedEvolution(SPACE, population=10, sample_size=3, seed=seed),
    "ppo": lambda seed, init: make_ppo(seed, init),
}


def drive(searcher: Searcher, steps: int, batch: int = 1, checkpoint_at: int | None = None) -> tuple[list[list[int]], bytes | None]:
    """`steps` rounds of ask(batch)/tell; optionally checkpoint after round `checkpoint_at`."""
    seen: list[list[int]] = []
    blob = None
    for step in range(steps):
        tokens = searcher.ask(batch)
        searcher.tell(tokens, [toy_reward(t) for t in tokens])
        seen.extend(tokens)
        if checkpoint_at is not None and step + 1 == checkpoint_at:
            blob = state_to_bytes(searcher.state_dict())
    return seen, blob


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("batch", [1, 3])
def test_resume_gives_the_same_samples(kind: str, batch: int) -> None:
    make = FACTORIES[kind]
    full, _ = drive(make(5, 0), 50, batch)
    head, blob = drive(make(5, 0), 23, batch, checkpoint_at=23)
    assert head == full[: 23 * batch]
    resumed = make(123, 42)  # other seed and other initial weights: the checkpoint must override both
    assert blob is not None
    resumed.load_state_dict(state_from_bytes(blob))
    tail, _ = drive(resumed, 27, batch)
    assert head + tail == full
    assert len({tuple(t) for t in full}) > 10  # the runs really explored


def test_ppo_resume_with_asked_but_untold_samples() -> None:
    a = make_ppo(3)
    b = make_ppo(3)
    for searcher in (a, b):
        drive(searcher, 6, 3)  # 18 told: no update yet
    pending_a = a.ask(4)
    pending_b = b.ask(4)
    assert pending_a == pending_b
    c = make_ppo(77, 9)
    c.load_state_dict(state_from_bytes(state_to_bytes(b.state_dict())))
    stats_a = a.tell(pending_a, [toy_reward(t) for t in pending_a])
    stats_c = c.tell(pending_b, [toy_reward(t) for t in pending_b])
    assert len(stats_a) == 1 and stats_a == stats_c  # the 20th sample triggered the same update
    assert a.ask(10) == c.ask(10)


def test_ppo_searcher_updates_every_minibatch() -> None:
    searcher = make_ppo(0)
    steps = []
    for i in range(45):
        tokens = searcher.ask(1)
        for stats in searcher.tell(tokens, [toy_reward(tokens[0])]):
            steps.append((i, stats.step, stats.n))
    assert steps == [(19, 1, 20), (39, 2, 20)]
    assert len(searcher.buffer) == 5 and not searcher.pending
    # a sequence it never proposed is scored by the current policy and buffered like any other
    searcher.tell([TARGET], [1.0])
    assert searcher.buffer[-1][0] == TARGET and searcher.buffer[-1][2] < 0


def test_evolution_starts_random_then_mutates_one_decision() -> None:
    evo = RegularizedEvolution(SPACE, population=20, sample_size=5, seed=1)
    first = evo.ask(20)
    random_twin = RandomSearch(SPACE, seed=1)
    assert first == random_twin.ask(20)  # the first `population` asks are uniform samples
    evo.tell(first, [toy_reward(t) for t in first])
    for child in evo.ask(50):
        distances = [sum(a != b for a, b in zip(child, parent, strict=True)) for parent, _ in evo.population]
        assert min(distances) == 1  # exactly one decision differs from its parent
        SPACE.check_tokens(child)


def test_evolution_removes_the_oldest_not_the_worst() -> None:
    evo = RegularizedEvolution(SPACE, population=5, sample_size=2, seed=0)
    tokens = evo.ask(7)
    rewards = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]
    evo.tell(tokens, rewards)
    assert [r for _, r in evo.population] == [0.2, 0.3, 0.4, 0.5, 0.0]  # the best (0.9, oldest) died


def test_tournament_prefers_the_best_member() -> None:
    """With sample size S = population P = 10 (drawn with replacement), the best member is in
    the sample with probability 1 - 0.9**10 = 0.65; a random parent would be it 10% of the time."""
    evo = RegularizedEvolution(SPACE, population=10, sample_size=10, seed=4)
    members = evo.ask(10)
    best = 6
    evo.tell(members, [1.0 if i == best else 0.0 for i in range(10)])
    spread = [sum(a != b for a, b in zip(members[best], m, strict=True)) for m in members]
    assert sorted(spread)[1] > 2  # the best member is far from the rest: children are attributable
    children = evo.ask(400)
    from_best = sum(sum(a != b for a, b in zip(c, members[best], strict=True)) == 1 for c in children) / 400
    assert 0.57 < from_best < 0.73


def test_random_search_is_uniform_and_tracks_best() -> None:
    searcher = RandomSearch(SPACE, seed=0)
    tokens = np.array(searcher.ask(3000))
    for d, (name, n) in enumerate(SPACE.decisions):
        if name.endswith((".skip", ".layers")):
            continue  # uniform over distinct networks, not tokens: tests/test_search_faults.py
        counts = np.bincount(tokens[:, d], minlength=n) / 3000
        np.testing.assert_allclose(counts, 1 / n, atol=0.04)
    searcher.tell([tokens[0].tolist(), TARGET], [0.3, 0.8])
    assert searcher.best == (TARGET, 0.8) and searcher.told == 2


def test_interface_and_errors() -> None:
    for kind, make in FACTORIES.items():
        searcher = make(0, 0)
        assert isinstance(searcher, Searcher) and searcher.name == kind
        with pytest.raises(MnasError) as info:
            searcher.tell(searcher.ask(2), [0.5])
        assert str(info.value) == "tell: 2 token sequences but 1 rewards: expected one reward each"
        with pytest.raises(MnasError) as info:
            searcher.tell([TARGET], [float("nan")])
        assert str(info.value) == "tell: reward[0] = nan: expected a finite number"
        with pytest.raises(MnasError) as info:
            searcher.ask(0)
        assert str(info.value) == "ask: n = 0: expected an integer >= 1"
        with pytest.raises(MnasError) as info:
            searcher.tell([[0] * 41], [0.5])
        assert str(info.value) == "tokens: got 41 values: expected 42 (6 per block)"
    with pytest.raises(MnasError) as info:
        RegularizedEvolution(SPACE, population=10, sample_size=11)
    assert str(info.value) == "RegularizedEvolution: sample_size = 11: expected an integer in [1, 10]"
    evo = RegularizedEvolution(SPACE, population=10, sample_size=3)
    with pytest.raises(MnasError) as info:
        evo.load_state_dict(RegularizedEvolution(SPACE, population=12, sample_size=3).state_dict())
    assert str(info.value) == ("RegularizedEvolution checkpoint: population/sample size 12/3: "
                               "expected 10/3 as configured")
    with pytest.raises(MnasError) as info:
        RandomSearch(SPACE).load_state_dict({"rng": {}, "told": 0})
    assert str(info.value) == "RandomSearch checkpoint: key 'best' missing: expected a RandomSearch.state_dict()"
