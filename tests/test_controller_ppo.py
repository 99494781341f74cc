"""Controller (NASNet LSTM) and PPO: probabilities, sampling, the clipped loss, learning, resume."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from mnas.errors import MnasError
from mnas.search.controller import Controller
from mnas.search.ppo import PPOConfig, PPOTrainer, ppo_loss
from mnas.search.types import state_from_bytes, state_to_bytes
from mnas.space.search_space import mnasnet


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # the controller's ops are tiny: intra-op threads only add contention on a busy machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make(choices: list[int], seed: int = 0, **kwargs) -> Controller:
    torch.manual_seed(seed)
    return Controller(choices, **kwargs)


def test_architecture_follows_nasnet() -> None:
    space = mnasnet()
    controller = Controller.from_space(space)
    assert controller.num_decisions == 42 and controller.hidden_size == 100
    assert controller.cell.hidden_size == 100
    assert [h.out_features for h in controller.heads] == [n for _, n in space.decisions]
    assert len(controller.embeddings) == 41  # the last decision feeds nothing
    assert controller.names[:2] == ["b0.conv", "b0.kernel"]
    for param in controller.parameters():
        assert float(param.detach().abs().max()) <= 0.1
    # uniform init, not a constant: spread over most of the range
    flat = torch.cat([p.detach().flatten() for p in controller.parameters()])
    assert float(flat.min()) < -0.09 and float(flat.max()) > 0.09


def test_sample_shapes_ranges_and_determinism() -> None:
    controller = make([4, 2, 1, 3, 5])
    tokens, log_probs, entropies = controller.sample(64, torch.Generator().manual_seed(3))
    assert tokens.shape == (64, 5) and tokens.dtype == torch.long
    assert log_probs.shape == (64,) and entropies.shape == (64,)
    assert bool((tokens >= 0).all()) and bool((tokens < torch.tensor([4, 2, 1, 3, 5])).all())
    assert bool((tokens[:, 2] == 0).all())
    again, _, _ = controller.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(tokens, again)
    other, _, _ = controller.sample(64, torch.Generator().manual_seed(4))
    assert not torch.equal(tokens, other)
    assert not log_probs.requires_grad


def test_consistency_teacher_forcing_matches_sampling() -> None:
    controller = make([4, 2, 2, 3, 3, 3] * 2, seed=1)
    tokens, log_probs, entropies = controller.sample(32, torch.Generator().manual_seed(0))
    scored, entropy = controller.log_prob(tokens)
    assert scored.requires_grad
    torch.testing.assert_close(scored.detach(), log_probs)
    torch.testing.assert_close(entropy.detach(), entropies)
    # a list of lists works the same
    torch.testing.assert_close(controller.log_prob(tokens.tolist())[0].detach(), log_probs)


def test_probabilities_sum_to_one_and_sampling_matches_them() -> None:
    controller = make([3, 2], seed=2)
    with torch.no_grad():
        controller.heads[0].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))  # make the distribution uneven
        sequences = list(itertools.product(range(3), range(2)))
        probs = controller.log_prob(sequences)[0].exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    tokens, _, _ = controller.sample(20000, torch.Generator().manual_seed(0))
    counts = torch.zeros(len(sequences))
    for i, seq in enumerate(sequences):
        counts[i] = ((tokens[:, 0] == seq[0]) & (tokens[:, 1] == seq[1])).sum()
    np.testing.assert_allclose((counts / 20000).numpy(), probs.numpy(), atol=0.015)


def test_entropy_is_sum_of_step_entropies() -> None:
    controller = make([4, 4], seed=0)
    with torch.no_grad():
        for head in controller.heads:
            head.weight.zero_()
            head.bias.zero_()
    _, entropy = controller.log_prob([[0, 0]])
    assert float(entropy.detach()[0]) == pytest.approx(2 * math.log(4), rel=1e-6)


def test_temperature_and_tanh_constant() -> None:
    def best_prob(bias: float, **kwargs) -> float:
        controller = make([2], **kwargs)
        with torch.no_grad():
            controller.heads[0].weight.zero_()
            controller.heads[0].bias.copy_(torch.tensor([bias, -bias]))
            return float(controller.log_prob([[0]])[0].exp())

    assert best_prob(10.0, temperature=5.0) == pytest.approx(1 / (1 + math.exp(-4.0)), rel=1e-6)
    assert best_prob(100.0, tanh_constant=2.5) == pytest.approx(1 / (1 + math.exp(-5.0)), rel=1e-6)
    # both: C * tanh(logits / T) = 2.5 * tanh(2) per side
    assert best_prob(10.0, temperature=5.0, tanh_constant=2.5) == pytest.approx(
        1 / (1 + math.exp(-5.0 * math.tanh(2.0))), rel=1e-6)


def test_controller_errors() -> None:
    controller = make([2, 3])
    with pytest.raises(MnasError) as info:
        controller.log_prob([[1, 3]])
    assert str(info.value) == "controller: token d1 of sequence 0 = 3: expected an integer in [0, 2]"
    with pytest.raises(MnasError) as info:
        controller.log_prob([[1, 2, 0]])
    assert str(info.value) == "controller: tokens of shape (1, 3): expected [n >= 1, 2]"
    with pytest.raises(MnasError) as info:
        Controller([2, 0])
    assert str(info.value) == "controller: choices = [2, 0]: expected a non-empty list of counts >= 1"
    with pytest.raises(MnasError) as info:
        controller.sample(0)
    assert str(info.value) == "controller.sample: n = 0: expected an integer >= 1"


def test_ppo_loss_on_crafted_numbers() -> None:
    ratios = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    new = torch.log(ratios).requires_grad_(True)
    old = torch.zeros(5)
    entropies = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    loss, ratio, clipped = ppo_loss(new, old, advantages, entropies, clip=0.2, entropy_weight=0.01)
    # min(r A, clip(r) A): 1.2 (clipped), -0.8 (clipped), 0.5, -1.5, 1.1
    expected = -(1.2 - 0.8 + 0.5 - 1.5 + 1.1) / 5 - 0.01 * 30.0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(ratio, ratios)
    assert clipped.tolist() == [True, True, False, False, False]
    loss.backward()
    # clipped samples give no gradient; the others -A * r / n
    torch.testing.assert_close(new.grad, torch.tensor([0.0, 0.0, -0.5 / 5, 1.5 / 5, -1.1 / 5]))


def test_clipping_bounds_the_push_of_one_update() -> None:
    """A tighter clip moves the policy less in one many-epoch update.

    Adam's momentum carries the ratio somewhat past 1 + clip after the gradient is cut
    (measured at lr 0.001, 30 epochs: 1.39 / 1.62 / 2.37 / 3.35 for clip 0.1 / 0.2 / 0.5 / 0.99).
    """

    def ratios(clip: float) -> list[float]:
        controller = make([2, 2, 2], seed=0)
        trainer = PPOTrainer(controller, PPOConfig(learning_rate=0.001, epochs=30, clip=clip, entropy_weight=0.0))
        tokens = [[0, 0, 0], [1, 1, 1]]
        with torch.no_grad():
            old = controller.log_prob(tokens)[0]
        trainer.baseline = 0.5
        stats = trainer.update(tokens, old, [1.0, 0.0])
        assert stats.ratio_mean > 0
        with torch.no_grad():
            return (controller.log_prob(tokens)[0] - old).exp().tolist()

    up = {clip: ratios(clip) for clip in (0.1, 0.2, 0.5, 0.99)}
    assert up[0.1][0] < up[0.2][0] < up[0.5][0] < up[0.99][0]  # the rewarded sequence
    assert up[0.1][1] > up[0.2][1] > up[0.5][1] > up[0.99][1]  # the penalised one
    assert 1.2 < up[0.2][0] < 0.6 * up[0.99][0]


def test_baseline_is_ema_of_rewards_and_advantage_uses_previous_baseline() -> None:
    controller = make([3, 3])
    trainer = PPOTrainer(controller, PPOConfig(epochs=1))
    tokens = [[0, 1], [2, 2], [1, 0]]
    old = controller.log_prob(tokens)[0].detach()
    stats = trainer.update(tokens, old, [0.2, 0.5, 0.8])
    expected = 0.5  # starts at the first minibatch's mean
    for r in (0.2, 0.5, 0.8):
        expected = 0.95 * expected + 0.05 * r
    assert stats.advantage_mean == pytest.approx(0.0, abs=1e-7)
    assert stats.baseline == pytest.approx(expected) and trainer.baseline == pytest.approx(expected)
    old = controller.log_prob(tokens)[0].detach()
    stats = trainer.update(tokens, old, [0.9, 0.9, 0.9])
    assert stats.advantage_mean == pytest.approx(0.9 - expected, rel=1e-6)
    for _ in range(3):
        expected = 0.95 * expected + 0.05 * 0.9
    assert stats.baseline == pytest.approx(expected) and stats.step == 2


def test_ppo_raises_probability_of_rewarded_sequence() -> None:
    """Toy reward on the real 42-decision space: the share of tokens matching a target."""
    space = mnasnet()
    controller = make([n for _, n in space.decisions], seed=0)
    trainer = PPOTrainer(controller, PPOConfig())  # the paper's settings
    target = torch.tensor(space.sample_tokens(np.random.default_rng(5)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        start = float(controller.log_prob(target[None])[0])
    first_rewards = last_rewards = None
    for _ in range(20):  # 400 samples, 20 updates
        tokens, old, _ = controller.sample(20, generator)
        rewards = (tokens == target).float().mean(dim=1)
        first_rewards = rewards if first_rewards is None else first_rewards
        last_rewards = rewards
        trainer.update(tokens, old, rewards)
    with torch.no_grad():
        end = float(controller.log_prob(target[None])[0])
    assert start < -40  # ~uniform policy: sum of log(1/n) over 42 decisions is -45.6
    assert end - start > 15  # measured: -42.4 -> -20.0
    assert float(last_rewards.mean()) > float(first_rewards.mean()) + 0.15  # measured: 0.38 -> 0.62


def test_state_dict_round_trip_resumes_exactly() -> None:
    choices = [4, 2, 2, 3, 3, 3]
    target = torch.tensor([3, 1, 0, 2, 2, 0])

    def train(trainer: PPOTrainer, generator: torch.Generator, steps: int) -> None:
        for _ in range(steps):
            tokens, old, _ = trainer.controller.sample(20, generator)
            trainer.update(tokens, old, (tokens == target).float().mean(dim=1))

    a = PPOTrainer(make(choices, seed=0))
    gen_a = torch.Generator().manual_seed(7)
    train(a, gen_a, 3)
    blob = state_to_bytes({"trainer": a.state_dict(), "generator": gen_a.get_state()})

    b = PPOTrainer(make(choices, seed=99))  # different initial weights, overwritten by the load
    state = state_from_bytes(blob)
    b.load_state_dict(state["trainer"])
    gen_b = torch.Generator()
    gen_b.set_state(state["generator"])
    assert b.baseline == a.baseline and b.steps == 3

    train(a, gen_a, 2)
    train(b, gen_b, 2)
    for pa, pb in zip(a.controller.parameters(), b.controller.parameters(), strict=True):
        assert torch.equal(pa, pb)
    ta, la, _ = a.controller.sample(50, gen_a)
    tb, lb, _ = b.controller.sample(50, gen_b)
    assert torch.equal(ta, tb) and torch.equal(la, lb)
    assert a.baseline == b.baseline


def test_ppo_config_and_checkpoint_errors() -> None:
    with pytest.raises(MnasError) as info:
        PPOConfig(clip=1.5)
    assert str(info.value) == "PPO config: clip = 1.5: expected in (0, 1)"
    with pytest.raises(MnasError) as info:
        PPOConfig(epochs=0)
    assert str(info.value) == "PPO config: epochs = 0: expected an integer >= 1"
    trainer = PPOTrainer(make([2, 2]))
    with pytest.raises(MnasError) as info:
        trainer.load_state_dict({"controller": {}})
    assert str(info.value) == "PPO checkpoint: key 'optimizer' missing: expected a PPOTrainer.state_dict()"
    with pytest.raises(MnasError) as info:
        trainer.update([[0, 1]], [0.0, 0.0], [1.0])
    assert str(info.value) == ("PPO update: 1 sequences, 2 old log-probs, 1 rewards: "
                               "expected one of each per sequence")
    with pytest.raises(MnasError) as info:
        state_from_bytes(b"not a checkpoint")
    assert str(info.value).startswith("checkpoint: cannot be read (")
