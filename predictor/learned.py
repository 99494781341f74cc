"""`LearnedPredictor`: an nn-Meter-like regressor that predicts layers no table measured.

A scikit-learn random forest or gradient boosting model on layer features (`features`),
trained on latency-table entries: it answers for other widths or resolutions, and serves as
the lookup predictor's fallback. It predicts log(latency / work), so its relative accuracy
holds across layer sizes; whole networks are summed and calibrated like any
`AdditivePredictor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Self

import numpy as np

from mnas.bench.types import check_statistic
from mnas.errors import MnasError
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.features import layer_features, work
from mnas.predictor.table import LatencyTable
from mnas.space.arch import LayerSig
from mnas.space.search_space import SearchSpace

__all__ = ["LEARNED_MODELS", "TARGETS", "LearnedPredictor"]

LEARNED_MODELS = ("rf", "gbr")
TARGETS = ("log_per_work", "log")


def _make_model(model: str, seed: int) -> Any:
    if model == "rf":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=200, min_samples_leaf=1, max_features=0.6,
                                     random_state=seed, n_jobs=1)
    if model == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(n_estimators=600, max_depth=4, learning_rate=0.05,
                                         subsample=0.8, random_state=seed)
    raise MnasError(f"learned predictor model {model!r}: expected one of {LEARNED_MODELS}")


class LearnedPredictor(AdditivePredictor):
    """A tree ensemble on layer features predicts each layer's latency.

    Parameters: `model` ("gbr" or "rf"), `target`, `seed`, and the network's resolution, class
    count, space and statistic. Fitted: `model_` (the scikit-learn estimator) and `trained_on_`
    (what it was fitted on: layer count, seed, statistic, and the table when `from_table`).
    """

    kind = "learned"
    CACHE_LIMIT = 200_000
    model_: Any = None
    trained_on_: Mapping[str, Any] = MappingProxyType({})
    _cache: dict[str, float] | None = None  # memo: layer key -> predicted ms

    def __init__(self, model: str = "gbr", *, target: str = "log_per_work", seed: int = 0, resolution: int = 224,
                 num_classes: int = 1000, space: SearchSpace | None = None, statistic: str = "median") -> None:
        super().__init__(resolution, num_classes, space, statistic)
        self.model = model
        self.target = target
        self.seed = seed

    @property
    def table_id(self) -> int | None:
        """The stored table it was fitted on (None when fitted on layers given directly)."""
        return self.trained_on_.get("table_id")

    def fit(self, layers: Sequence[LayerSig], latencies_ms: Sequence[float] | np.ndarray, *,
            trained_on: Mapping[str, Any] | None = None) -> Self:
        """Fit `model_` on layers and their measured latencies; `trained_on` is recorded in `trained_on_`."""
        y_ms = np.asarray(latencies_ms, dtype=np.float64)
        if len(layers) != y_ms.size:
            raise MnasError(f"learned predictor: {len(layers)} layers vs {y_ms.size} latencies: expected one latency per layer")
        if y_ms.size < 2:
            raise MnasError(f"learned predictor: {y_ms.size} training layers: expected at least 2 table entries")
        if not np.all(np.isfinite(y_ms)) or np.any(y_ms <= 0):
            raise MnasError("learned predictor: latencies must be finite and > 0 ms: expected positive medians")
        if self.target not in TARGETS:
            raise MnasError(f"learned predictor target {self.target!r}: expected one of {TARGETS}")
        statistic = check_statistic(self.statistic)
        x = layer_features(layers)
        y = np.log(y_ms / work(x)) if self.target == "log_per_work" else np.log(y_ms)
        self.model_ = _make_model(self.model, self.seed).fit(x, y)
        self.trained_on_ = {"layers": int(y_ms.size), "seed": self.seed, "statistic": statistic, **(trained_on or {})}
        self._cache = None
        return self

    @classmethod
    def from_table(cls, table: LatencyTable, *, model: str = "gbr", target: str = "log_per_work", seed: int = 0,
                   space: SearchSpace | None = None, statistic: str = "median") -> LearnedPredictor:
        """Built and fitted on every entry of `table` (its resolution becomes the default for whole networks)."""
        table.check()
        layers = [LayerSig.from_key(key) for key in table.entries]
        latencies = list(table.latencies(statistic).values())
        predictor = cls(model, target=target, seed=seed, resolution=table.meta.resolution,
                        num_classes=table.meta.num_classes, space=space, statistic=statistic)
        return predictor.fit(layers, latencies,
                             trained_on={"table": table.meta.name, "table_id": table.table_id, "statistic": statistic})

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        if self.model_ is None:
            raise MnasError("learned predictor: not fitted: expected fit(layers, latencies) or from_table(table) first")
        if self._cache is None:
            self._cache = {}
        cache = self._cache
        keys = [layer.key for layer in layers]
        todo: dict[str, LayerSig] = {}
        for key, layer in zip(keys, layers, strict=True):
            if key not in cache:
                todo.setdefault(key, layer)
        if todo:
            x = layer_features(list(todo.values()))
            y = np.exp(self.model_.predict(x))
            if self.target == "log_per_work":
                y = y * work(x)
            if len(cache) + len(todo) > self.CACHE_LIMIT:
                cache.clear()
            cache.update(zip(todo, y.tolist(), strict=True))
        return np.asarray([cache[key] for key in keys], dtype=np.float64)
