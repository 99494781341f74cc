"""The official MnasNet training recipe's optimizer and learning-rate schedule, for proxy training.

One job: turn a `ProxyTask`'s optimizer fields into a torch optimizer (`make_optimizer`) and a
learning rate per step (`learning_rate_at`). `TFRMSprop` is written by hand because torch's
own RMSprop has different semantics from TF1's (see its docstring); the recipe's sources are
named in `search/accuracy.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from mnas.search.accuracy import ProxyTask

__all__ = ["TFRMSprop", "learning_rate_at", "make_optimizer", "param_groups"]


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp with TF1 `tf.train.RMSPropOptimizer` semantics (the official MnasNet optimizer).

    It differs from `torch.optim.RMSprop` in three ways that matter for short runs: the mean
    square starts at 1 (torch: 0, which makes the first steps ~3x larger than lr), epsilon is
    added inside the square root, and the learning rate multiplies the gradient before it
    enters the momentum buffer. Update, per parameter:
        ms  = decay * ms + (1 - decay) * g^2
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        w  -= mom
    `weight_decay` adds `wd * w` to the gradient (the official L2 loss, wd * sum(w^2) / 2).
    """

    def __init__(self, params: Iterable[Any], lr: float, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "decay": decay, "momentum": momentum, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(decay).addcmul_(grad, grad, value=1.0 - decay)
                mom.mul_(momentum).addcdiv_(grad, (ms + group["eps"]).sqrt_(), value=lr)
                p.sub_(mom)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on every weight except BatchNorm's (as the official code)."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decayed = [p for p in model.parameters() if id(p) not in bn_params]
    plain = [p for p in model.parameters() if id(p) in bn_params]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def make_optimizer(task: ProxyTask, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, task.weight_decay)
    if task.optimizer == "rmsprop":
        return TFRMSprop(groups, lr=task.learning_rate, decay=task.rmsprop_decay, momentum=task.momentum,
                         eps=task.epsilon)
    return torch.optim.SGD(groups, lr=task.learning_rate, momentum=task.momentum, nesterov=task.momentum > 0)


def learning_rate_at(task: ProxyTask, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up from 0 over `warmup_fraction` of the run, then the chosen decay."""
    peak = task.learning_rate
    warmup = int(round(task.warmup_fraction * total_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    if task.lr_schedule == "cosine":
        span = max(1, total_steps - warmup)
        return 0.5 * peak * (1.0 + math.cos(math.pi * (step - warmup) / span))
    if task.lr_schedule == "exponential":
        decay_steps = max(1.0, steps_per_epoch * task.lr_decay_epochs)
        return peak * task.lr_decay ** math.floor(step / decay_steps)
    return peak
