"""Latency predictors: a network's latency as the (calibrated) sum of its layers' latencies.

Two interchangeable predictors share one interface (`LatencyPredictor`):

* `LookupPredictor` sums measured per-layer medians from a latency table (FBNet,
  ProxylessNAS, Once-for-All), then applies an optional linear calibration fitted on a few
  end-to-end measurements: per-layer runs each pay the per-model overhead once, a whole
  network pays it once in all, and that difference is linear in (sum, layer count). A
  layer timed alone also runs with its weights hot in cache, while inside a network every
  layer's weights were evicted by the others since its last run: that extra cost grows with
  the bytes of weights streamed, so the calibration may also take the network's weight
  count (`with_params`; on this host it cut the held-out error by a quarter). Layers
  absent from the table go to a learned fallback and are counted, never silently guessed.
* `LearnedPredictor` is an nn-Meter-like regressor (scikit-learn random forest or gradient
  boosting) on layer features, trained on table entries; it predicts layers the table never
  measured (other widths or resolutions). It predicts log(latency / work) so its relative
  accuracy holds across layer sizes.

Search needs hundreds of thousands of predictions per second, so for a `SearchSpace` every
block decision (with the previous block's width) is precompiled to a latency sum; a batch
of token rows is then a few numpy gathers (`predict_tokens`). `predict_ms` on `Arch` objects
takes the same path for archs of the space and expands the rest layer by layer.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mnas.bench.types import check_statistic
from mnas.errors import MnasError
from mnas.predictor.features import FEATURE_NAMES, layer_features, work
from mnas.predictor.layers import block_input_shapes, iter_block_variants, stem_and_head
from mnas.predictor.table import LatencyTable, Store, ensure_schema, load_table
from mnas.space.arch import Arch, LayerSig
from mnas.space.cost import layer_cost
from mnas.space.search_space import SearchSpace, mnasnet

STATE_VERSION = 1
LEARNED_MODELS = ("rf", "gbr")
TARGETS = ("log_per_work", "log")


@runtime_checkable
class LatencyPredictor(Protocol):
    """Predicts latency in ms of whole networks, token rows of a space, or single layers."""

    kind: str
    resolution: int

    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray: ...

    def predict_tokens(self, tokens: np.ndarray, space: SearchSpace | None = None) -> np.ndarray: ...


# --------------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    """measured_ms ~ intercept_ms + coef_sum * (sum of layer latencies) + coef_layers * (layer count)
    [+ coef_mparams * (million weights of the network), when `uses_params`]."""

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
        """Least squares (scikit-learn LinearRegression) on [layer sum, layer count(, million weights)]."""
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


def _apply(calibration: Calibration | None, sums: np.ndarray, counts: np.ndarray,
           mparams: np.ndarray | None = None) -> np.ndarray:
    return sums if calibration is None else calibration.apply(sums, counts, mparams)


def _uses_params(calibration: Calibration | None) -> bool:
    return calibration is not None and calibration.uses_params


def layer_mparams(layers: Sequence[LayerSig]) -> np.ndarray:
    """Million weights of each layer (what a network streams from memory per inference)."""
    return np.asarray([layer_cost(layer).params / 1e6 for layer in layers], dtype=np.float64)


# ------------------------------------------------------------------------------- token index

@dataclass
class _BlockStep:
    """Flat tables of one block over (previous width, its 6 decisions), C order."""

    columns: slice  # the block's 6 token columns
    prev_col: int  # token column of the previous block's filters (-1 for block 0)
    prev_stride: int  # flat stride of the previous width (the product of the decision sizes)
    strides: np.ndarray  # flat strides of the 6 decisions (int64)
    latency_ms: np.ndarray  # raw latency sum of the block's layers
    layers: np.ndarray  # layer count
    fallback: np.ndarray  # layers predicted by a fallback (lookup only)
    mparams: np.ndarray  # million weights of the block's layers


@dataclass
class TokenIndex:
    """Raw per-block latency sums of every token choice of a space, for `predict_tokens`."""

    steps: list[_BlockStep]
    stem_ms: float
    stem_fallback: int
    head_col: int
    head_ms: np.ndarray
    head_fallback: np.ndarray
    sizes: np.ndarray  # choices per token column
    act: str
    has_fallback: bool
    missing_keys: list[str]  # layers of the space neither table nor fallback can predict
    distinct_layers: int
    fallback_keys: list[str]  # layers of the space that come from the fallback
    stem_mparams: float = 0.0
    head_mparams: np.ndarray = field(default_factory=lambda: np.zeros(0))

    CHUNK_ROWS = 8192  # rows transposed at a time: column-major chunks keep every gather contiguous

    def check_shape(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        if tokens.ndim != 2 or tokens.shape[1] != self.sizes.size:
            raise MnasError(f"tokens: array of shape {tokens.shape}: expected [n, {self.sizes.size}] (6 per block)")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise MnasError(f"tokens: dtype {tokens.dtype}: expected integers")
        return tokens

    def _check_range(self, columns: np.ndarray, row0: int) -> None:
        low, high = columns.min(axis=1), columns.max(axis=1)
        bad = np.flatnonzero((low < 0) | (high >= self.sizes))
        if bad.size:
            col = int(bad[0])
            row = int(np.flatnonzero((columns[col] < 0) | (columns[col] >= self.sizes[col]))[0])
            raise MnasError(f"tokens[{row0 + row}, {col}] = {columns[col, row]}: "
                            f"expected an integer in [0, {self.sizes[col] - 1}]")

    def raw(self, tokens: np.ndarray, with_counts: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(latency sums, layer counts, fallback layer counts) of token rows [n, columns].

        Counts are None unless `with_counts`; fallback counts are None when no layer of the
        space came from a fallback.
        """
        total, counts, fallback, _ = self.raw_features(tokens, with_counts)
        return total, counts, fallback

    def raw_features(self, tokens: np.ndarray, with_counts: bool = True, with_params: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """`raw` plus the million weights of each row (None unless `with_params`)."""
        tokens = self.check_shape(tokens)
        n = tokens.shape[0]
        total = np.empty(n)
        counts = np.empty(n) if with_counts else None
        fallback = np.empty(n) if with_counts and self.has_fallback else None
        mparams = np.empty(n) if with_params else None
        for start in range(0, n, self.CHUNK_ROWS):
            columns = np.ascontiguousarray(tokens[start:start + self.CHUNK_ROWS].T, dtype=np.int64)
            self._check_range(columns, start)
            stop = start + columns.shape[1]
            t, c, f, p = self._raw_columns(columns, with_counts, with_params)
            total[start:stop] = t
            if counts is not None:
                counts[start:stop] = c
            if fallback is not None:
                fallback[start:stop] = f
            if mparams is not None:
                mparams[start:stop] = p
        return total, counts, fallback, mparams

    def _raw_columns(self, columns: np.ndarray, with_counts: bool, with_params: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        n = columns.shape[1]
        total = np.full(n, self.stem_ms)
        counts = np.full(n, 2.0) if with_counts else None  # stem + head
        fallback = np.full(n, float(self.stem_fallback)) if with_counts and self.has_fallback else None
        mparams = np.full(n, self.stem_mparams) if with_params else None
        for step in self.steps:
            first = step.columns.start
            index = columns[first] * step.strides[0]
            for j in range(1, 6):
                index += columns[first + j] * step.strides[j]
            if step.prev_col >= 0:
                index += columns[step.prev_col] * step.prev_stride
            total += step.latency_ms[index]
            if counts is not None:
                counts += step.layers[index]
            if fallback is not None:
                fallback += step.fallback[index]
            if mparams is not None:
                mparams += step.mparams[index]
        head = columns[self.head_col]
        total += self.head_ms[head]
        if fallback is not None:
            fallback += self.head_fallback[head]
        if mparams is not None:
            mparams += self.head_mparams[head]
        return total, counts, fallback, mparams


LayerSource = Any  # callable: layers -> (ms with NaN where unknown, from-fallback flags)


def compile_tokens(space: SearchSpace, resolution: int, num_classes: int, layer_source: LayerSource) -> TokenIndex:
    """Precompute every block decision's raw latency so a token row costs a few gathers."""
    stem, heads = stem_and_head(space, resolution, num_classes)
    shapes = block_input_shapes(space, resolution)
    variants = [list(iter_block_variants(space, b, *shapes[b], stem.act)) for b in range(space.num_blocks)]
    distinct: dict[str, LayerSig] = {stem.key: stem}
    for block in variants:
        for v in block:
            distinct.setdefault(v.first.key, v.first)
            if v.repeated is not None:
                distinct.setdefault(v.repeated.key, v.repeated)
    for head in heads:
        distinct.setdefault(head.key, head)
    layers = list(distinct.values())
    ms, from_fallback = layer_source(layers)
    latency = dict(zip(distinct, ms.tolist(), strict=True))
    fb = dict(zip(distinct, from_fallback.tolist(), strict=True))
    weights = dict(zip(distinct, layer_mparams(layers).tolist(), strict=True))
    steps = []
    for b, block in enumerate(variants):
        sizes = [len(v) for v in space.block_options(b).values()]
        depths = space.block_options(b)["layers"]
        prev = 1 if b == 0 else len(space.block_options(b - 1)["filters"])
        shape = (prev, *sizes)
        lat = np.full(shape, np.nan)
        nlayers = np.zeros(shape)
        nfallback = np.zeros(shape)
        nparams = np.zeros(shape)
        for v in block:
            first_ms, first_fb = latency[v.first.key], fb[v.first.key]
            rep_ms = latency[v.repeated.key] if v.repeated is not None else 0.0
            rep_fb = fb[v.repeated.key] if v.repeated is not None else 0
            rep_params = weights[v.repeated.key] if v.repeated is not None else 0.0
            for d, depth in enumerate(depths):
                at = (v.cin_index, *v.choice, d)
                lat[at] = first_ms + (depth - 1) * rep_ms
                nlayers[at] = depth
                nfallback[at] = first_fb + (depth - 1) * rep_fb
                nparams[at] = weights[v.first.key] + (depth - 1) * rep_params
        strides = np.asarray([math.prod(sizes[i + 1:]) for i in range(len(sizes))], dtype=np.int64)
        steps.append(_BlockStep(columns=slice(6 * b, 6 * b + 6), prev_col=-1 if b == 0 else 6 * (b - 1) + 4,
                                prev_stride=math.prod(sizes), strides=strides, latency_ms=lat.ravel(),
                                layers=nlayers.ravel(), fallback=nfallback.ravel(), mparams=nparams.ravel()))
    sizes = np.asarray([n for _, n in space.decisions], dtype=np.int64)
    return TokenIndex(
        steps=steps, stem_ms=latency[stem.key], stem_fallback=int(fb[stem.key]),
        head_col=6 * (space.num_blocks - 1) + 4,
        head_ms=np.asarray([latency[h.key] for h in heads]),
        head_fallback=np.asarray([float(fb[h.key]) for h in heads]),
        sizes=sizes, act=stem.act, has_fallback=bool(from_fallback.any()),
        missing_keys=[k for k, v in latency.items() if math.isnan(v)], distinct_layers=len(layers),
        fallback_keys=[k for k, v in fb.items() if v],
        stem_mparams=weights[stem.key], head_mparams=np.asarray([weights[h.key] for h in heads]),
    )


def _space_key(space: SearchSpace) -> tuple:
    return (space.stages, space.stem_filters, space.head_filters)


# ------------------------------------------------------------------------------ base predictor

class AdditivePredictor:
    """Shared machinery: arch = calibrated sum of layers; token index; calibration."""

    kind = "additive"

    def __init__(self, resolution: int, num_classes: int, calibration: Calibration | None,
                 space: SearchSpace | None) -> None:
        self.resolution = resolution
        self.num_classes = num_classes
        self.calibration = calibration
        self.space = space if space is not None else mnasnet()
        self.predictor_id: int | None = None  # set when saved to / loaded from a store
        self.table_id: int | None = None
        self.metrics: dict[str, Any] = {}
        self.statistic = "median"  # which per-run statistic its latencies (and calibration) stand for
        self._indexes: dict[tuple, TokenIndex] = {}

    # subclasses implement these two
    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        raise NotImplementedError

    def _layer_source(self, layers: Sequence[LayerSig]) -> tuple[np.ndarray, np.ndarray]:
        """Raw latencies for the token index: NaN where unknown; flags where a fallback answered."""
        return self.predict_layers_ms(layers), np.zeros(len(layers), dtype=bool)

    def _layers_counted(self, layers: Sequence[LayerSig]) -> np.ndarray:
        """predict_layers_ms plus whatever bookkeeping a subclass keeps (lookup: coverage)."""
        return self.predict_layers_ms(layers)

    def _count_tokens(self, counts: np.ndarray, fallback: np.ndarray | None) -> None:
        del counts, fallback

    def token_index(self, space: SearchSpace | None = None) -> TokenIndex:
        space = space if space is not None else self.space
        key = _space_key(space)
        if key not in self._indexes:
            self._indexes[key] = compile_tokens(space, self.resolution, self.num_classes, self._layer_source)
        return self._indexes[key]

    # raw sums (before calibration)
    def raw_tokens(self, tokens: np.ndarray, space: SearchSpace | None = None,
                   with_counts: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(sum of layer latencies, layer count or None) per token row, before calibration."""
        sums, counts, _ = self.raw_token_features(tokens, space, with_counts)
        return sums, counts

    def raw_token_features(self, tokens: np.ndarray, space: SearchSpace | None = None, with_counts: bool = True,
                           with_params: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """`raw_tokens` plus million weights per row (None unless `with_params`)."""
        space = space if space is not None else self.space
        index = self.token_index(space)
        tokens = index.check_shape(tokens)
        sums, counts, fallback, mparams = index.raw_features(tokens, with_counts=with_counts, with_params=with_params)
        if index.missing_keys:
            bad = np.flatnonzero(np.isnan(sums))
            if bad.size:  # re-run one row layer by layer: it raises naming the missing layer
                self._raw_layers([space.decode([int(t) for t in tokens[bad[0]]])])
        if counts is not None:
            self._count_tokens(counts, fallback)
        return sums, counts, mparams

    def _raw_layers(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        sums, counts, _ = self._raw_layer_features(archs, with_params=False)
        return sums, counts

    def _raw_layer_features(self, archs: Sequence[Arch], with_params: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per_arch = [arch.layers(self.resolution, self.num_classes) for arch in archs]
        counts = np.asarray([len(layers) for layers in per_arch], dtype=np.float64)
        flat = [layer for layers in per_arch for layer in layers]
        if not flat:
            return np.zeros(0), counts, np.zeros(0)
        ms = self._layers_counted(flat)
        starts = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64)
        mparams = np.add.reduceat(layer_mparams(flat), starts) if with_params else np.zeros(len(archs))
        return np.add.reduceat(ms, starts), counts, mparams

    def raw_ms(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """(sum of layer latencies, layer count) per arch, before calibration."""
        sums, counts, _ = self.raw_features(archs, with_params=False)
        return sums, counts

    def raw_features(self, archs: Sequence[Arch], with_params: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sum of layer latencies, layer count, million weights — zeros unless `with_params`) per arch."""
        archs = list(archs)
        sums = np.zeros(len(archs))
        counts = np.zeros(len(archs))
        mparams = np.zeros(len(archs))
        index = self.token_index()
        fast_rows: list[list[int]] = []
        fast_at: list[int] = []
        slow_at: list[int] = []
        for i, arch in enumerate(archs):
            if arch.activation == index.act:
                try:
                    fast_rows.append(self.space.encode(arch))
                    fast_at.append(i)
                    continue
                except MnasError:
                    pass
            slow_at.append(i)
        if fast_rows:
            s, c, fallback, p = index.raw_features(np.asarray(fast_rows, dtype=np.int64), with_params=with_params)
            assert c is not None
            nan = np.isnan(s)
            keep = ~nan
            at = np.asarray(fast_at)[keep]
            sums[at] = s[keep]
            counts[at] = c[keep]
            if p is not None:
                mparams[at] = p[keep]
            self._count_tokens(c[keep], None if fallback is None else fallback[keep])
            slow_at.extend(np.asarray(fast_at)[nan].tolist())
        if slow_at:
            s, c, p = self._raw_layer_features([archs[i] for i in slow_at], with_params)
            sums[slow_at] = s
            counts[slow_at] = c
            mparams[slow_at] = p
        return sums, counts, mparams

    # the public interface
    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        sums, counts, mparams = self.raw_features(archs, with_params=_uses_params(self.calibration))
        return _apply(self.calibration, sums, counts, mparams)

    def predict_tokens(self, tokens: np.ndarray, space: SearchSpace | None = None) -> np.ndarray:
        """Latency in ms of each token row ([n, 6 * blocks] integers) of `space` (default: the predictor's)."""
        counted = self.calibration is not None or self.kind == "lookup"
        sums, counts, mparams = self.raw_token_features(tokens, space, with_counts=counted,
                                                        with_params=_uses_params(self.calibration))
        if self.calibration is None:
            return sums
        assert counts is not None
        return self.calibration.apply(sums, counts, mparams)

    def predict_one_ms(self, arch: Arch) -> float:
        return float(self.predict_ms([arch])[0])

    def calibrate(self, archs: Sequence[Arch], measured_ms: Sequence[float] | np.ndarray,
                  with_params: bool = False) -> Calibration:
        """Fit (and keep) the end-to-end calibration on measured networks (see `Calibration`)."""
        sums, counts, mparams = self.raw_features(archs, with_params=with_params)
        self.calibration = Calibration.fit(sums, counts, np.asarray(measured_ms, dtype=np.float64),
                                           mparams if with_params else None)
        return self.calibration


# ------------------------------------------------------------------------------ lookup

@dataclass
class LookupStats:
    """How many predicted layer occurrences came from the table and how many from the fallback."""

    layers: int = 0
    from_fallback: int = 0
    fallback_keys: dict[str, int] = field(default_factory=dict)  # layer path only: key -> occurrences

    @property
    def coverage(self) -> float:
        """Share of layer occurrences answered by the table (1.0 when nothing was predicted)."""
        return 1.0 - self.from_fallback / self.layers if self.layers else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "from_table": self.layers - self.from_fallback,
                "from_fallback": self.from_fallback, "coverage_share": self.coverage,
                "fallback_keys": dict(self.fallback_keys)}


class LookupPredictor(AdditivePredictor):
    """Sum of measured layer medians from a latency table (+ calibration, + learned fallback)."""

    kind = "lookup"

    def __init__(self, table: LatencyTable, calibration: Calibration | None = None,
                 fallback: LearnedPredictor | None = None, space: SearchSpace | None = None,
                 statistic: str = "median") -> None:
        table.check()
        super().__init__(table.meta.resolution, table.meta.num_classes, calibration, space)
        if fallback is not None and fallback.statistic != statistic:
            raise MnasError(f"learned fallback predicts {fallback.statistic} latencies: expected {statistic} "
                            "like the lookup table")
        self.table = table
        self.table_id = table.table_id
        self.fallback = fallback
        self.statistic = check_statistic(statistic)
        self.stats = LookupStats()
        self._ms = table.latencies(statistic)

    def _split(self, layers: Sequence[LayerSig]) -> tuple[np.ndarray, list[int]]:
        get = self._ms.get
        values = [get(layer.key) for layer in layers]
        missing = [i for i, v in enumerate(values) if v is None]
        out = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
        return out, missing

    def _missing_error(self, key: str) -> MnasError:
        meta = self.table.meta
        return MnasError(
            f"layer {key!r} is not in latency table {meta.name!r} ({meta.device_name}, resolution "
            f"{meta.resolution}): expected a table built for this space and resolution, or a learned fallback")

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        out, missing = self._split(layers)
        if missing:
            if self.fallback is None:
                raise self._missing_error(layers[missing[0]].key)
            out[missing] = self.fallback.predict_layers_ms([layers[i] for i in missing])
        return out

    def _layers_counted(self, layers: Sequence[LayerSig]) -> np.ndarray:
        out = self.predict_layers_ms(layers)
        self.stats.layers += len(layers)
        for i in self._split(layers)[1]:
            key = layers[i].key
            self.stats.from_fallback += 1
            self.stats.fallback_keys[key] = self.stats.fallback_keys.get(key, 0) + 1
        return out

    def _layer_source(self, layers: Sequence[LayerSig]) -> tuple[np.ndarray, np.ndarray]:
        out, missing = self._split(layers)
        flags = np.zeros(len(layers), dtype=bool)
        if missing and self.fallback is not None:
            out[missing] = self.fallback.predict_layers_ms([layers[i] for i in missing])
            flags[missing] = True
        return out, flags

    def _count_tokens(self, counts: np.ndarray, fallback: np.ndarray | None) -> None:
        self.stats.layers += int(counts.sum())
        if fallback is not None:
            self.stats.from_fallback += int(fallback.sum())

    def space_coverage(self, space: SearchSpace | None = None) -> dict[str, Any]:
        """Distinct layers of the space at the table's resolution: how many the table holds."""
        index = self.token_index(space)
        absent = len(index.fallback_keys) + len(index.missing_keys)
        return {"space_layers": index.distinct_layers, "in_table": index.distinct_layers - absent,
                "from_fallback": len(index.fallback_keys), "unpredictable": len(index.missing_keys),
                "coverage_share": 1.0 - absent / index.distinct_layers,
                "missing_keys": sorted(index.fallback_keys + index.missing_keys)}


# ------------------------------------------------------------------------------ learned

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
    """nn-Meter-like: a tree ensemble on layer features predicts each layer's latency."""

    kind = "learned"
    CACHE_LIMIT = 200_000

    def __init__(self, model: Any, *, model_name: str = "gbr", target: str = "log_per_work", resolution: int = 224,
                 num_classes: int = 1000, calibration: Calibration | None = None,
                 space: SearchSpace | None = None, trained_on: dict[str, Any] | None = None) -> None:
        if target not in TARGETS:
            raise MnasError(f"learned predictor target {target!r}: expected one of {TARGETS}")
        super().__init__(resolution, num_classes, calibration, space)
        self.model = model
        self.model_name = model_name
        self.target = target
        self.trained_on = dict(trained_on or {})
        self.statistic = check_statistic(str(self.trained_on.get("statistic", "median")))
        self._cache: dict[str, float] = {}

    @classmethod
    def fit(cls, layers: Sequence[LayerSig], latencies_ms: Sequence[float] | np.ndarray, *, model: str = "gbr",
            target: str = "log_per_work", seed: int = 0, resolution: int = 224, num_classes: int = 1000,
            space: SearchSpace | None = None, trained_on: dict[str, Any] | None = None) -> LearnedPredictor:
        y_ms = np.asarray(latencies_ms, dtype=np.float64)
        if len(layers) != y_ms.size:
            raise MnasError(f"learned predictor: {len(layers)} layers vs {y_ms.size} latencies: expected one latency per layer")
        if y_ms.size < 2:
            raise MnasError(f"learned predictor: {y_ms.size} training layers: expected at least 2 table entries")
        if not np.all(np.isfinite(y_ms)) or np.any(y_ms <= 0):
            raise MnasError("learned predictor: latencies must be finite and > 0 ms: expected positive medians")
        if target not in TARGETS:
            raise MnasError(f"learned predictor target {target!r}: expected one of {TARGETS}")
        x = layer_features(layers)
        y = np.log(y_ms / work(x)) if target == "log_per_work" else np.log(y_ms)
        estimator = _make_model(model, seed).fit(x, y)
        info = {"layers": int(y_ms.size), "seed": seed, **(trained_on or {})}
        return cls(estimator, model_name=model, target=target, resolution=resolution, num_classes=num_classes,
                   space=space, trained_on=info)

    @classmethod
    def from_table(cls, table: LatencyTable, *, model: str = "gbr", target: str = "log_per_work", seed: int = 0,
                   space: SearchSpace | None = None, statistic: str = "median") -> LearnedPredictor:
        """Train on every entry of `table` (its resolution becomes the default for whole networks)."""
        table.check()
        layers = [LayerSig.from_key(key) for key in table.entries]
        latencies = list(table.latencies(statistic).values())
        predictor = cls.fit(layers, latencies, model=model, target=target, seed=seed, resolution=table.meta.resolution,
                            num_classes=table.meta.num_classes, space=space,
                            trained_on={"table": table.meta.name, "table_id": table.table_id, "statistic": statistic})
        predictor.table_id = table.table_id
        predictor.statistic = statistic
        return predictor

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        keys = [layer.key for layer in layers]
        todo: dict[str, LayerSig] = {}
        for key, layer in zip(keys, layers, strict=True):
            if key not in self._cache:
                todo.setdefault(key, layer)
        if todo:
            x = layer_features(list(todo.values()))
            y = np.exp(self.model.predict(x))
            if self.target == "log_per_work":
                y = y * work(x)
            if len(self._cache) + len(todo) > self.CACHE_LIMIT:
                self._cache.clear()
            self._cache.update(zip(todo, y.tolist(), strict=True))
        cache = self._cache
        return np.asarray([cache[key] for key in keys], dtype=np.float64)


# ------------------------------------------------------------------------------ persistence

def _calibration_state(calibration: Calibration | None) -> dict[str, Any] | None:
    return None if calibration is None else asdict(calibration)


def _learned_state(p: LearnedPredictor) -> dict[str, Any]:
    import sklearn

    return {"version": STATE_VERSION, "kind": "learned", "model": p.model, "model_name": p.model_name,
            "target": p.target, "resolution": p.resolution, "num_classes": p.num_classes,
            "calibration": _calibration_state(p.calibration), "feature_names": list(FEATURE_NAMES),
            "trained_on": p.trained_on, "sklearn_version": sklearn.__version__}


def predictor_state(predictor: AdditivePredictor) -> dict[str, Any]:
    """Everything needed to rebuild `predictor` (a lookup predictor's table stays in the store)."""
    if isinstance(predictor, LearnedPredictor):
        return _learned_state(predictor)
    if isinstance(predictor, LookupPredictor):
        return {"version": STATE_VERSION, "kind": "lookup", "table": predictor.table.meta.name,
                "statistic": predictor.statistic, "calibration": _calibration_state(predictor.calibration),
                "fallback": None if predictor.fallback is None else _learned_state(predictor.fallback)}
    raise MnasError(f"predictor kind {getattr(predictor, 'kind', type(predictor).__name__)!r}: expected lookup or learned")


def _learned_from_state(state: dict[str, Any], space: SearchSpace | None) -> LearnedPredictor:
    if state.get("feature_names") != list(FEATURE_NAMES):
        raise MnasError("stored learned predictor: its feature names differ from this version's: expected a predictor "
                        "fitted by this mnas version (refit it with `mnas table fit`)")
    calibration = Calibration(**state["calibration"]) if state.get("calibration") else None
    return LearnedPredictor(state["model"], model_name=state["model_name"], target=state["target"],
                            resolution=state["resolution"], num_classes=state["num_classes"],
                            calibration=calibration, space=space, trained_on=state.get("trained_on"))


def predictor_from_state(state: dict[str, Any], table: LatencyTable | None = None,
                         space: SearchSpace | None = None) -> AdditivePredictor:
    if state.get("version") != STATE_VERSION:
        raise MnasError(f"stored predictor: state version {state.get('version')!r}: expected {STATE_VERSION}")
    if state.get("kind") == "learned":
        return _learned_from_state(state, space)
    if state.get("kind") == "lookup":
        if table is None:
            raise MnasError("stored lookup predictor: its latency table is missing: expected the table it was fitted on")
        calibration = Calibration(**state["calibration"]) if state.get("calibration") else None
        fallback = _learned_from_state(state["fallback"], space) if state.get("fallback") else None
        return LookupPredictor(table, calibration=calibration, fallback=fallback, space=space,
                               statistic=state.get("statistic", "median"))
    raise MnasError(f"stored predictor: kind {state.get('kind')!r}: expected 'lookup' or 'learned'")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def save_predictor(store: Store, predictor: AdditivePredictor, table_id: int | None,
                   metrics: dict[str, Any] | None = None) -> int:
    """Store the predictor (pickled state), the table it came from and its metrics; returns its id."""
    ensure_schema(store)
    blob = pickle.dumps(predictor_state(predictor), protocol=pickle.HIGHEST_PROTOCOL)
    metrics = dict(metrics or {})
    with store.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO predictors (table_id, kind, params, metrics, created) VALUES (?, ?, ?, ?, ?)",
            (table_id, predictor.kind, blob, json.dumps(_json_safe(metrics), sort_keys=True), time.time()))
        predictor_id = int(cursor.lastrowid)
    predictor.predictor_id = predictor_id
    predictor.table_id = table_id
    predictor.metrics = metrics
    return predictor_id


def list_predictors(store: Store) -> list[dict[str, Any]]:
    """One row per stored predictor: id, kind, table, device, runtime, resolution, metrics, created."""
    ensure_schema(store)
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT p.id, p.kind, p.table_id, t.name, t.device, t.runtime, t.version, t.resolution, p.metrics, p.created "
            "FROM predictors p LEFT JOIN latency_tables t ON t.id = p.table_id ORDER BY p.id").fetchall()
    keys = ("id", "kind", "table_id", "table", "device", "runtime", "runtime_version", "resolution", "metrics", "created")
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["metrics"] = json.loads(item["metrics"])
        out.append(item)
    return out


def load_predictor(store: Store, predictor_id: int | None = None, *, device: str | None = None,
                   resolution: int | None = None, runtime: str | None = None, kind: str | None = None,
                   space: SearchSpace | None = None) -> AdditivePredictor:
    """A stored predictor by id, or the latest one whose table matches device/resolution/runtime/kind."""
    ensure_schema(store)
    where, args = [], []
    if predictor_id is not None:
        where.append("p.id = ?")
        args.append(predictor_id)
    for column, value in (("t.device", device), ("t.resolution", resolution), ("t.runtime", runtime), ("p.kind", kind)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = ("SELECT p.id, p.table_id, p.params, p.metrics FROM predictors p LEFT JOIN latency_tables t "
           "ON t.id = p.table_id" + (" WHERE " + " AND ".join(where) if where else "") +
           " ORDER BY p.created DESC, p.id DESC LIMIT 1")
    with store.transaction() as conn:
        row = conn.execute(sql, args).fetchone()
    if row is None:
        asked = {"id": predictor_id, "device": device, "resolution": resolution, "runtime": runtime, "kind": kind}
        wanted = ", ".join(f"{k}={v}" for k, v in asked.items() if v is not None) or "any"
        raise MnasError(f"no stored predictor matches {wanted}: expected one fitted with `mnas table fit`")
    pid, table_id, blob, metrics = row
    try:
        state = pickle.loads(blob)
    except Exception as exc:  # unpickling a model from another scikit-learn version may fail many ways
        raise MnasError(f"stored predictor {pid}: cannot be unpickled ({type(exc).__name__}: {exc}): "
                        "expected the scikit-learn version it was saved with; refit it") from None
    table = load_table(store, int(table_id)) if state.get("kind") == "lookup" else None
    predictor = predictor_from_state(state, table=table, space=space)
    predictor.predictor_id = int(pid)
    predictor.table_id = None if table_id is None else int(table_id)
    predictor.metrics = json.loads(metrics)
    return predictor
