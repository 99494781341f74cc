"""The end-to-end calibration: `a + b * layer sum + c * layer count (+ d * million weights)`.

A layer timed alone pays the per-model overhead once; a whole network pays it once in all,
so the gap between the layer sum and the measured network is linear in (sum, layer count)
(FBNet, ProxylessNAS, Once-for-All sum layers the same way). A layer timed alone also runs
with its weights hot in cache, while inside a network the other layers evicted them: that
extra cost grows with the weights streamed, hence the optional weight-count term (on this
host it cut the held-out error by a quarter). This module holds
only the maths, so both predictors and their persistence share one definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mnas.errors import MnasError

__all__ = ["Calibration", "calibrated"]


@dataclass(frozen=True)
class Calibration:
    """measured_ms ~ intercept_ms + coef_sum * (sum of layer latencies) + coef_layers * (layer count)
    [+ coef_mparams * (million weights of the network), when `uses_params`].

    The field names are the stored format (`asdict` is persisted): rename none of them.
    """

    coef_sum: float
    coef_layers: float
    intercept_ms: float
    n: int  # networks it was fitted on
    coef_mparams: float = 0.0
    uses_params: bool = False

    def apply(self, layer_sums: np.ndarray, layer_counts: np.ndarray, mparams: np.ndarray | None = None) -> np.ndarray:
        out = self.intercept_ms + self.coef_sum * layer_sums + self.coef_layers * layer_counts
        if self.uses_params:
            if mparams is None:
                raise MnasError("calibration: it uses the networks' weight counts: expected them (mparams)")
            out = out + self.coef_mparams * mparams
        return out

    def to_dict(self) -> dict[str, Any]:
        """The coefficients plus a readable `formula`."""
        params = f" {self.coef_mparams:+.4g} ms x M weights" if self.uses_params else ""
        return {**asdict(self), "formula": f"{self.intercept_ms:.4g} ms + {self.coef_sum:.4g} x layer sum "
                                           f"{self.coef_layers:+.4g} ms x layers{params} (fitted on {self.n} networks)"}

    @classmethod
    def fit(cls, layer_sums: np.ndarray, layer_counts: np.ndarray, measured_ms: np.ndarray,
            mparams: np.ndarray | None = None) -> Calibration:
        """Least squares (scikit-learn LinearRegression) on [layer sum, layer count(, million weights)].

        A classmethod because a `Calibration` is an immutable fitted value: it only builds and fits.
        """
        from sklearn.linear_model import LinearRegression

        sums = np.asarray(layer_sums, dtype=np.float64)
        counts = np.asarray(layer_counts, dtype=np.float64)
        measured = np.asarray(measured_ms, dtype=np.float64)
        columns = [sums, counts] if mparams is None else [sums, counts, np.asarray(mparams, dtype=np.float64)]
        if any(c.shape != measured.shape for c in columns) or sums.ndim != 1:
            raise MnasError(f"calibration: {sums.shape[0] if sums.ndim else 0} predictions vs "
                            f"{measured.shape[0] if measured.ndim else 0} measurements: expected one measurement per network")
        needed = len(columns) + 1
        if sums.size < needed:
            what = "intercept, sum, layer count" + (", weights" if mparams is not None else "")
            raise MnasError(f"calibration: {sums.size} measured networks: expected at least {needed} ({what})")
        if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
            raise MnasError("calibration: measured latencies must be finite and > 0 ms: expected positive medians")
        model = LinearRegression().fit(np.column_stack(columns), measured)
        return cls(coef_sum=float(model.coef_[0]), coef_layers=float(model.coef_[1]),
                   intercept_ms=float(model.intercept_), n=int(sums.size),
                   coef_mparams=float(model.coef_[2]) if mparams is not None else 0.0,
                   uses_params=mparams is not None)


def calibrated(calibration: Calibration | None, sums: np.ndarray, counts: np.ndarray | None,
               mparams: np.ndarray | None = None) -> np.ndarray:
    """`sums` through `calibration`, or unchanged when there is none (an uncalibrated predictor)."""
    if calibration is None:
        return sums
    if counts is None:
        raise MnasError("calibration: no layer counts: expected them for a calibrated predictor")
    return calibration.apply(sums, counts, mparams)
