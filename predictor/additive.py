"""What both predictors share: a network's latency is the (calibrated) sum of its layers' latencies.

A subclass says how one layer's latency is found (`predict_layers_ms`: a table lookup, a learned
model); this class turns that into whole networks — through the precompiled token index for
networks of the space (the search's hot path), layer by layer for the rest — and fits the
end-to-end calibration on measured networks.

The conventions are scikit-learn's, so a predictor behaves like any estimator: constructor
arguments are stored as given and do no work, fitted state ends in `_` (`calibration_`),
fitting returns self, and predicting never changes what a later call returns — the only state
a prediction touches is memoized (token indexes, layer predictions), never counted. Per-call
figures such as where the layers came from are asked for separately (`layer_coverage`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from mnas.errors import MnasError
from mnas.predictor.calibration import Calibration, calibrated
from mnas.predictor.features import layer_mparams
from mnas.predictor.token_index import RawSums, TokenIndex, compile_tokens, space_key
from mnas.space.arch import Arch, LayerSig
from mnas.space.search_space import SearchSpace, mnasnet

__all__ = ["AdditivePredictor", "LatencyPredictor"]


@runtime_checkable
class LatencyPredictor(Protocol):
    """Predicts latency in ms of whole networks, token rows of a space, or single layers."""

    kind: str
    resolution: int

    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray: ...

    def predict_tokens(self, tokens: np.ndarray, space: SearchSpace | None = None) -> np.ndarray: ...


class AdditivePredictor:
    """Arch = calibrated sum of its layers; subclasses implement `predict_layers_ms`."""

    kind = "additive"
    calibration_: Calibration | None = None  # fitted by `calibrate`; None: predictions are the raw layer sums
    # set by `registry.save_predictor` / `load_predictor`: neither parameters nor fitted state
    predictor_id: int | None = None
    dtype: str = "float32"  # of the models its table timed (`TableMeta.dtype`)
    metrics: Mapping[str, Any] = MappingProxyType({})
    _indexes: dict[tuple, TokenIndex] | None = None  # memo: one compiled index per space

    def __init__(self, resolution: int, num_classes: int, space: SearchSpace | None, statistic: str) -> None:
        self.resolution = resolution
        self.num_classes = num_classes
        self.space = space if space is not None else mnasnet()
        self.statistic = statistic  # which per-run statistic its latencies (and calibration) stand for

    @property
    def table_id(self) -> int | None:
        """The stored latency table it was built from (None: none)."""
        return None

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        raise NotImplementedError

    def _layer_source(self, layers: Sequence[LayerSig]) -> tuple[np.ndarray, np.ndarray]:
        """Raw latencies for the token index: NaN where unknown; flags where a fallback answered."""
        return self.predict_layers_ms(layers), np.zeros(len(layers), dtype=bool)

    def token_index(self, space: SearchSpace | None = None) -> TokenIndex:
        """`space`'s precompiled index (default: the predictor's), compiled on first use."""
        space = space if space is not None else self.space
        if self._indexes is None:
            self._indexes = {}
        key = space_key(space)
        if key not in self._indexes:
            self._indexes[key] = compile_tokens(space, self.resolution, self.num_classes, self._layer_source)
        return self._indexes[key]

    def _uses_params(self) -> bool:
        return self.calibration_ is not None and self.calibration_.uses_params

    # ---------------------------------------------------------------- raw sums (before calibration)

    def raw_layer_sums(self, archs: Sequence[Arch], with_params: bool = False) -> RawSums:
        """Raw sums expanding every arch layer by layer (the path for archs outside the space)."""
        per_arch = [arch.layers(self.resolution, self.num_classes) for arch in archs]
        counts = np.asarray([len(layers) for layers in per_arch], dtype=np.float64)
        flat = [layer for layers in per_arch for layer in layers]
        if not flat:
            return RawSums.empty(len(archs), True, with_params)
        starts = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64)
        mparams = np.add.reduceat(layer_mparams(flat), starts) if with_params else None
        return RawSums(np.add.reduceat(self.predict_layers_ms(flat), starts), counts, mparams)

    def raw_sums(self, archs: Sequence[Arch], with_params: bool = False) -> RawSums:
        """Per arch: the sum of its layers' latencies, its layer count and (`with_params`) its million weights.

        Archs of the predictor's space take the token index; the rest, and any row the index
        cannot predict, go layer by layer (which names the layer nothing can predict).
        """
        archs = list(archs)
        out = RawSums.empty(len(archs), True, with_params)
        index = self.token_index()
        fast_at: list[int] = []
        rows: list[list[int]] = []
        slow_at: list[int] = []
        for i, arch in enumerate(archs):
            row = self._encode(arch, index)
            if row is None:
                slow_at.append(i)
            else:
                fast_at.append(i)
                rows.append(row)
        if rows:
            fast = index.sums(np.asarray(rows, dtype=np.int64), with_params=with_params)
            known = ~np.isnan(fast.latency_ms)
            out.put(np.asarray(fast_at)[known], fast.rows(known))
            slow_at.extend(np.asarray(fast_at)[~known].tolist())
        if slow_at:
            out.put(np.asarray(slow_at), self.raw_layer_sums([archs[i] for i in slow_at], with_params))
        return out

    def _encode(self, arch: Arch, index: TokenIndex) -> list[int] | None:
        """The arch's token row in the predictor's space, or None when it is not of that space."""
        if arch.activation != index.act:
            return None
        try:
            return self.space.encode(arch)
        except MnasError:
            return None

    # ---------------------------------------------------------------- the public interface

    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        """Latency in ms of each arch."""
        raw = self.raw_sums(archs, with_params=self._uses_params())
        return calibrated(self.calibration_, raw.latency_ms, raw.counts, raw.mparams)

    def predict_tokens(self, tokens: np.ndarray, space: SearchSpace | None = None) -> np.ndarray:
        """Latency in ms of each token row ([n, 6 * blocks] integers) of `space` (default: the predictor's)."""
        space = space if space is not None else self.space
        index = self.token_index(space)
        tokens = index.check_shape(tokens)
        raw = index.sums(tokens, with_counts=self.calibration_ is not None, with_params=self._uses_params())
        if index.missing_keys:
            bad = np.flatnonzero(np.isnan(raw.latency_ms))
            if bad.size:  # re-run one row layer by layer: it raises naming the missing layer
                self.raw_layer_sums([space.decode([int(t) for t in tokens[bad[0]]])])
        return calibrated(self.calibration_, raw.latency_ms, raw.counts, raw.mparams)

    def calibrate(self, archs: Sequence[Arch], measured_ms: Sequence[float] | np.ndarray, *,
                  with_params: bool = False) -> Self:
        """Fit `calibration_` on measured networks (see `Calibration`); returns self.

        `with_params`: the calibration also takes each network's weight count.
        """
        raw = self.raw_sums(archs, with_params=with_params)
        assert raw.counts is not None
        self.calibration_ = Calibration.fit(raw.latency_ms, raw.counts, np.asarray(measured_ms, dtype=np.float64),
                                            raw.mparams)
        return self
