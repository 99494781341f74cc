"""Proximal Policy Optimization for the controller, with NASNet/MnasNet's settings.

The papers fix: Adam, learning rate 0.00035, entropy weight 1e-5, a reward baseline that is
an exponential moving average of rewards (decay 0.95), and updates on minibatches of 20
sampled models. They do not give the clip range (we use PPO's standard 0.2), the number of
passes over each minibatch (`epochs`, default 4, full-batch steps) nor how the baseline
starts (we start it at the first minibatch's mean reward, so the first update is not pushed
up by a zero baseline).

One `update(tokens, old_log_probs, rewards)`:
1. advantage_i = reward_i - baseline, with the baseline as it stood *before* this minibatch
   (it must not contain the rewards it judges);
2. `epochs` Adam steps on the clipped surrogate
   L = -mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) - entropy_weight * mean(entropy),
   r = exp(log pi(seq) - old log pi(seq));
3. the baseline takes each reward in turn: b <- decay * b + (1 - decay) * reward.
`state_dict` holds the controller, the optimizer and the baseline, so a resumed search
updates exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mnas.errors import MnasError
from mnas.search.controller import Controller


@dataclass(frozen=True)
class PPOConfig:
    learning_rate: float = 0.00035
    clip: float = 0.2
    entropy_weight: float = 1e-5
    baseline_decay: float = 0.95
    minibatch_size: int = 20  # models per update (the searcher buffers this many)
    epochs: int = 4  # gradient steps per minibatch (not given by the papers)
    max_grad_norm: float | None = None  # gradient clipping; off as in the papers

    def __post_init__(self) -> None:
        checks = [
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("clip", 0 < self.clip < 1, "in (0, 1)"),
            ("entropy_weight", self.entropy_weight >= 0, ">= 0"),
            ("baseline_decay", 0 <= self.baseline_decay < 1, "in [0, 1)"),
            ("minibatch_size", isinstance(self.minibatch_size, int) and self.minibatch_size >= 1, "an integer >= 1"),
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "> 0 or None"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise MnasError(f"PPO config: {name} = {getattr(self, name)!r}: expected {expected}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpdateStats:
    """What one update did.

    `loss`, `ratio_mean` and `clip_fraction` come from the last epoch's forward pass;
    `clip_fraction` is the share of samples whose clipped term won the min (they gave no
    gradient). `kl` = mean(old log-prob - new log-prob) after the last step (an estimate of
    KL(old || new)); `baseline` is the value after taking this minibatch's rewards.
    """

    loss: float
    ratio_mean: float
    clip_fraction: float
    entropy: float
    baseline: float
    kl: float
    reward_mean: float
    advantage_mean: float
    n: int
    step: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def ppo_loss(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
             entropies: torch.Tensor, clip: float, entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss; returns (loss, ratios, mask of samples whose ratio was clipped away)."""
    ratio = torch.exp(new_log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    surrogate = torch.minimum(unclipped, clipped)
    loss = -surrogate.mean() - entropy_weight * entropies.mean()
    was_clipped = clipped < unclipped  # the min chose the clipped term: no gradient from this sample
    return loss, ratio.detach(), was_clipped.detach()


class PPOTrainer:
    """Owns the controller's optimizer and reward baseline; one `update` per minibatch."""

    def __init__(self, controller: Controller, config: PPOConfig | None = None) -> None:
        self.controller = controller
        self.config = config or PPOConfig()
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=self.config.learning_rate)
        self.baseline: float | None = None
        self.steps = 0  # updates done

    def update(self, tokens: torch.Tensor | Sequence[Sequence[int]], old_log_probs: torch.Tensor | Sequence[float],
               rewards: torch.Tensor | Sequence[float]) -> UpdateStats:
        cfg = self.config
        tokens_t = self.controller.check_tokens(tokens)
        old = torch.as_tensor(old_log_probs, dtype=torch.float32).detach().reshape(-1)
        reward = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        n = tokens_t.shape[0]
        if old.numel() != n or reward.numel() != n:
            raise MnasError(f"PPO update: {n} sequences, {old.numel()} old log-probs, {reward.numel()} rewards: "
                            "expected one of each per sequence")
        if not bool(torch.isfinite(reward).all()) or not bool(torch.isfinite(old).all()):
            raise MnasError("PPO update: a reward or old log-prob is not finite: expected finite numbers")
        baseline = float(reward.mean()) if self.baseline is None else self.baseline
        advantages = (reward - baseline).float()
        loss = ratio = clipped = entropy = None
        for _ in range(cfg.epochs):
            new_log_probs, entropy = self.controller.log_prob(tokens_t)
            loss, ratio, clipped = ppo_loss(new_log_probs, old, advantages, entropy, cfg.clip, cfg.entropy_weight)
            self.optimizer.zero_grad()
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.controller.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        with torch.no_grad():
            after, _ = self.controller.log_prob(tokens_t)
            kl = float((old - after).mean())
        for value in reward.tolist():
            baseline = cfg.baseline_decay * baseline + (1.0 - cfg.baseline_decay) * value
        self.baseline = baseline
        self.steps += 1
        assert loss is not None and ratio is not None and clipped is not None and entropy is not None
        return UpdateStats(loss=float(loss.detach()), ratio_mean=float(ratio.mean()), clip_fraction=float(clipped.float().mean()),
                           entropy=float(entropy.detach().mean()), baseline=baseline, kl=kl,
                           reward_mean=float(reward.mean()), advantage_mean=float(advantages.mean()), n=n,
                           step=self.steps)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline, "steps": self.steps, "config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("controller", "optimizer", "baseline", "steps"):
            if key not in state:
                raise MnasError(f"PPO checkpoint: key {key!r} missing: expected a PPOTrainer.state_dict()")
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        baseline = state["baseline"]
        self.baseline = None if baseline is None or (isinstance(baseline, float) and math.isnan(baseline)) else float(baseline)
        self.steps = int(state["steps"])
