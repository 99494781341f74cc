"""MnasNet reward: values at known points for both presets, continuity at T, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnas.errors import MnasError
from mnas.search.reward import Reward

T = 75.0


def test_soft_doubling_latency_costs_about_five_percent() -> None:
    reward = Reward.soft(T)
    assert (reward.alpha, reward.beta) == (-0.07, -0.07)
    assert reward(0.8, 2 * T) == pytest.approx(0.8 * 0.952638, rel=1e-6)
    assert reward(0.8, T / 2) == pytest.approx(0.8 * 1.049717, rel=1e-6)  # faster models earn more
    assert reward(0.8, T) == 0.8
    # doubling latency is worth the same ~5% on both sides of the target
    assert reward(0.8, T) / reward(0.8, 2 * T) == pytest.approx(reward(0.8, T / 2) / reward(0.8, T))


def test_hard_gives_accuracy_below_target_and_divides_above() -> None:
    reward = Reward.hard(T)
    for lat in (1.0, T / 2, T):
        assert reward(0.7, lat) == 0.7
    assert reward(0.7, 2 * T) == pytest.approx(0.35)
    assert reward(0.7, 3 * T) == pytest.approx(0.7 / 3)


def test_custom_exponents() -> None:
    reward = Reward(50.0, alpha=-0.2, beta=-0.5)
    assert reward.kind == "custom"
    assert reward(0.9, 25.0) == pytest.approx(0.9 * 0.5**-0.2)
    assert reward(0.9, 200.0) == pytest.approx(0.9 * 4.0**-0.5)
    assert reward.to_dict() == {"target_ms": 50.0, "alpha": -0.2, "beta": -0.5, "kind": "custom"}
    assert Reward.preset("hard", 10.0).kind == "hard"


@pytest.mark.parametrize("reward", [Reward.soft(T), Reward.hard(T), Reward(T, -0.3, -1.7)])
def test_continuous_at_target(reward: Reward) -> None:
    below, above = reward(0.6, T * (1 - 1e-9)), reward(0.6, T * (1 + 1e-9))
    assert below == pytest.approx(0.6, abs=1e-8) and above == pytest.approx(0.6, abs=1e-8)


def test_consistency_batch_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    accs = rng.uniform(0, 1, 200)
    lats = rng.uniform(5, 300, 200)
    lats[:3] = [T, T / 2, 2 * T]
    for reward in (Reward.soft(T), Reward.hard(T), Reward(T, -0.1, -0.9)):
        batch = reward.batch(accs, lats)
        assert batch.shape == (200,)
        np.testing.assert_allclose(batch, [reward(a, lat) for a, lat in zip(accs, lats, strict=True)], rtol=1e-12)


def test_soft_reward_decreases_with_latency() -> None:
    values = Reward.soft(T).batch(np.full(50, 0.75), np.linspace(10, 400, 50))
    assert np.all(np.diff(values) < 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Reward(0.0), "reward: target_ms = 0.0: expected a finite latency > 0 ms"),
        (lambda: Reward(-5.0), "reward: target_ms = -5.0: expected a finite latency > 0 ms"),
        (lambda: Reward(math.inf), "reward: target_ms = inf: expected a finite latency > 0 ms"),
        (lambda: Reward(T, alpha=math.nan), "reward: alpha = nan: expected a finite exponent (e.g. -0.07)"),
        (lambda: Reward.preset("medium", T), "reward preset 'medium': expected one of ['hard', 'soft']"),
        (lambda: Reward.soft(T)(0.5, 0.0), "reward: latency = 0.0 ms: expected a finite latency > 0 ms"),
        (lambda: Reward.soft(T)(0.5, -3.0), "reward: latency = -3.0 ms: expected a finite latency > 0 ms"),
        (lambda: Reward.soft(T)(1.2, 10.0), "reward: accuracy = 1.2: expected an accuracy in [0, 1]"),
        (lambda: Reward.soft(T)(-0.1, 10.0), "reward: accuracy = -0.1: expected an accuracy in [0, 1]"),
        (lambda: Reward.soft(T).batch([0.5, 0.5], [10.0, 0.0]), "reward: latency[1] = 0.0 ms: expected a finite latency > 0 ms"),
        (lambda: Reward.soft(T).batch([0.5, 1.5], [10.0, 10.0]), "reward: accuracy[1] = 1.5: expected an accuracy in [0, 1]"),
        (lambda: Reward.soft(T).batch([0.5], [10.0, 20.0]),
         "reward: accuracies shape (1,) and latencies shape (2,): expected equal shapes"),
    ],
)
def test_errors_are_one_line(call, message: str) -> None:
    with pytest.raises(MnasError) as info:
        call()
    assert str(info.value) == message
