"""How well predicted latencies match measured ones: the figures latency-predictor papers report.

nn-Meter and LitePred report the share of models predicted within ±10% (and ±5%) of the
measured latency, plus RMSE; search only needs the *ranking* right, hence Kendall's tau.
Keys carry their units (`rmse_ms`, `mape_pct`, `within_10pct_share` in 0..1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnas.errors import MnasError


def _arrays(predicted_ms: Sequence[float] | np.ndarray,
            measured_ms: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted_ms, dtype=np.float64).ravel()
    measured = np.asarray(measured_ms, dtype=np.float64).ravel()
    if predicted.size != measured.size:
        raise MnasError(f"evaluate: {predicted.size} predictions vs {measured.size} measurements: expected equal counts")
    if measured.size == 0:
        raise MnasError("evaluate: no measurements: expected at least one measured network")
    if not np.all(np.isfinite(predicted)):
        raise MnasError(f"evaluate: prediction {int(np.flatnonzero(~np.isfinite(predicted))[0])} is not finite: expected finite ms")
    if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
        bad = int(np.flatnonzero(~np.isfinite(measured) | (measured <= 0))[0])
        raise MnasError(f"evaluate: measurement {bad} is {float(measured[bad])!r} ms: expected a finite latency > 0")
    return predicted, measured


def evaluate(predicted_ms: Sequence[float] | np.ndarray, measured_ms: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """n, rmse_ms, mae_ms, mape_pct, max_error_pct, within_5pct_share, within_10pct_share, kendall_tau.

    Relative error is |predicted - measured| / measured; "within x%" counts relative errors
    <= x/100 (a 1e-12 slack absorbs float rounding at the boundary). Kendall's tau (tau-b)
    is None for fewer than 2 networks or when either side is constant.
    """
    predicted, measured = _arrays(predicted_ms, measured_ms)
    error = predicted - measured
    relative = np.abs(error) / measured
    tau: float | None = None
    if measured.size >= 2:
        from scipy.stats import kendalltau

        value = float(kendalltau(predicted, measured).statistic)
        tau = value if math.isfinite(value) else None
    return {
        "n": int(measured.size),
        "rmse_ms": float(np.sqrt(np.mean(error**2))),
        "mae_ms": float(np.mean(np.abs(error))),
        "mape_pct": float(100.0 * np.mean(relative)),
        "max_error_pct": float(100.0 * np.max(relative)),
        "within_5pct_share": float(np.mean(relative <= 0.05 + 1e-12)),
        "within_10pct_share": float(np.mean(relative <= 0.10 + 1e-12)),
        "kendall_tau": tau,
    }


def scatter_png(predicted_ms: Sequence[float] | np.ndarray, measured_ms: Sequence[float] | np.ndarray,
                path: str | Path, title: str = "predicted vs measured latency") -> Path:
    """Predicted against measured latency with the y = x line and the ±10% band; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mnas.bench.files import write_atomic

    predicted, measured = _arrays(predicted_ms, measured_ms)
    metrics = evaluate(predicted, measured)
    path = Path(path)
    figure = Figure(figsize=(5.5, 5.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    low = 0.9 * min(float(measured.min()), float(predicted.min()))
    high = 1.1 * max(float(measured.max()), float(predicted.max()))
    line = np.array([low, high])
    axes.plot(line, line, color="black", linewidth=1.0, label="y = x")
    axes.plot(line, 1.1 * line, color="grey", linestyle="--", linewidth=0.8, label="±10%")
    axes.plot(line, 0.9 * line, color="grey", linestyle="--", linewidth=0.8)
    axes.scatter(measured, predicted, s=12, alpha=0.7, color="tab:blue", edgecolors="none")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("measured latency (ms)")
    axes.set_ylabel("predicted latency (ms)")
    tau = metrics["kendall_tau"]
    axes.set_title(f"{title}\nn={metrics['n']}  RMSE {metrics['rmse_ms']:.2f} ms  "
                   f"±10%: {100 * metrics['within_10pct_share']:.1f}%  tau {'-' if tau is None else f'{tau:.3f}'}",
                   fontsize=9)
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"), what="the plot", suffix=".png")
