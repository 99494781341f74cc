"""MnasNet's multi-objective reward: ACC(m) x (LAT(m) / T) ** w (Tan et al. 2019, Eq. 2).

w = alpha when LAT <= T, beta otherwise. The paper's two settings:
- soft (alpha = beta = -0.07): a model twice as slow needs ~5% more relative accuracy to
  earn the same reward (2 ** -0.07 = 0.9526), on both sides of the target, so the search
  explores a Pareto front around T;
- hard (alpha = 0, beta = -1): latency below T is not rewarded, latency above T is
  penalised in proportion (2T halves the reward), so the search stays under T.
Both are continuous at LAT = T, where the factor is exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mnas.errors import MnasError

PRESETS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


@dataclass(frozen=True)
class Reward:
    """The reward for a latency target `target_ms` with exponents `alpha` (LAT <= T) and `beta`."""

    target_ms: float
    alpha: float = -0.07
    beta: float = -0.07

    def __post_init__(self) -> None:
        if not isinstance(self.target_ms, int | float) or not math.isfinite(self.target_ms) or self.target_ms <= 0:
            raise MnasError(f"reward: target_ms = {self.target_ms!r}: expected a finite latency > 0 ms")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise MnasError(f"reward: {name} = {value!r}: expected a finite exponent (e.g. -0.07)")

    @classmethod
    def preset(cls, name: str, target_ms: float) -> Reward:
        """`soft` or `hard` (the paper's settings) for target `target_ms`."""
        if name not in PRESETS:
            raise MnasError(f"reward preset {name!r}: expected one of {sorted(PRESETS)}")
        alpha, beta = PRESETS[name]
        return cls(target_ms, alpha, beta)

    @classmethod
    def soft(cls, target_ms: float) -> Reward:
        return cls.preset("soft", target_ms)

    @classmethod
    def hard(cls, target_ms: float) -> Reward:
        return cls.preset("hard", target_ms)

    @property
    def kind(self) -> str:
        """The preset name when alpha/beta match one, else "custom"."""
        for name, pair in PRESETS.items():
            if (self.alpha, self.beta) == pair:
                return name
        return "custom"

    def factor(self, lat_ms: float) -> float:
        """The latency factor (LAT / T) ** w alone."""
        _check_latency(lat_ms, "latency")
        ratio = lat_ms / self.target_ms
        return ratio ** (self.alpha if lat_ms <= self.target_ms else self.beta)

    def __call__(self, acc: float, lat_ms: float) -> float:
        _check_accuracy(acc, "accuracy")
        return float(acc) * self.factor(lat_ms)

    def batch(self, accs: Sequence[float] | np.ndarray, lats_ms: Sequence[float] | np.ndarray) -> np.ndarray:
        """Vectorised reward of equal-length arrays of accuracies and latencies."""
        acc = np.asarray(accs, dtype=np.float64)
        lat = np.asarray(lats_ms, dtype=np.float64)
        if acc.shape != lat.shape:
            raise MnasError(f"reward: accuracies shape {acc.shape} and latencies shape {lat.shape}: expected equal shapes")
        bad = np.flatnonzero(~(np.isfinite(lat) & (lat > 0)))
        if bad.size:
            _check_latency(float(lat.flat[bad[0]]), f"latency[{int(bad[0])}]")
        bad = np.flatnonzero(~((acc >= 0) & (acc <= 1)))
        if bad.size:
            _check_accuracy(float(acc.flat[bad[0]]), f"accuracy[{int(bad[0])}]")
        exponent = np.where(lat <= self.target_ms, self.alpha, self.beta)
        return acc * (lat / self.target_ms) ** exponent

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


def _check_latency(lat_ms: float, what: str) -> None:
    if not isinstance(lat_ms, int | float | np.floating | np.integer) or not math.isfinite(lat_ms) or lat_ms <= 0:
        raise MnasError(f"reward: {what} = {lat_ms!r} ms: expected a finite latency > 0 ms")


def _check_accuracy(acc: float, what: str) -> None:
    if not isinstance(acc, int | float | np.floating | np.integer) or not 0.0 <= acc <= 1.0:
        raise MnasError(f"reward: {what} = {acc!r}: expected an accuracy in [0, 1]")
