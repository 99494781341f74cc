"""Every block decision of a search space precompiled to a latency sum, so a token row costs a few gathers.

Search asks for hundreds of thousands of predictions per second. A block's layers depend only
on its 6 decisions and the previous block's width, so for each block every (previous width,
decisions) combination is summed once into a flat table; a batch of token rows is then one
numpy gather per block (column-major chunks keep every gather contiguous). The index holds
raw layer sums: calibration is applied by the predictor that owns it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mnas.errors import MnasError
from mnas.predictor.features import layer_mparams
from mnas.predictor.layers import block_input_shapes, iter_block_variants, stem_and_head
from mnas.space.arch import LayerSig
from mnas.space.search_space import SearchSpace

__all__ = ["LayerSource", "RawSums", "TokenIndex", "compile_tokens", "space_key"]

LayerSource = Callable[[Sequence[LayerSig]], tuple[np.ndarray, np.ndarray]]
"""layers -> (raw latency in ms, NaN where nothing can predict it; flags where a fallback answered)."""


@dataclass(frozen=True)
class RawSums:
    """Per network, before calibration: what the calibration is fitted on and applied to.

    `counts` and `mparams` are None unless asked for (on the token path they cost gathers).
    """

    latency_ms: np.ndarray  # sum of the layers' latencies
    counts: np.ndarray | None  # layer count
    mparams: np.ndarray | None  # million weights

    @classmethod
    def empty(cls, n: int, with_counts: bool, with_params: bool) -> RawSums:
        return cls(np.zeros(n), np.zeros(n) if with_counts else None, np.zeros(n) if with_params else None)

    def rows(self, at: np.ndarray | slice) -> RawSums:
        """The rows `at` (a mask, indices or a slice)."""
        return RawSums(*(None if a is None else a[at] for a in (self.latency_ms, self.counts, self.mparams)))

    def put(self, at: np.ndarray | slice, part: RawSums) -> None:
        """Write `part` into rows `at` of the arrays this holds (what `part` lacks is left as is)."""
        for out, values in ((self.latency_ms, part.latency_ms), (self.counts, part.counts),
                            (self.mparams, part.mparams)):
            if out is not None and values is not None:
                out[at] = values


@dataclass(frozen=True)
class _BlockStep:
    """Flat tables of one block over (previous width, its 6 decisions), C order."""

    columns: slice  # the block's 6 token columns
    prev_col: int  # token column of the previous block's filters (-1 for block 0)
    prev_stride: int  # flat stride of the previous width (the product of the decision sizes)
    strides: np.ndarray  # flat strides of the 6 decisions (int64)
    latency_ms: np.ndarray  # raw latency sum of the block's layers
    layers: np.ndarray  # layer count
    mparams: np.ndarray  # million weights of the block's layers


@dataclass(frozen=True)
class TokenIndex:
    """Raw per-block latency sums of every token choice of a space."""

    steps: list[_BlockStep]
    stem_ms: float
    stem_mparams: float
    head_col: int
    head_ms: np.ndarray
    head_mparams: np.ndarray
    sizes: np.ndarray  # choices per token column
    act: str
    missing_keys: list[str]  # layers of the space neither table nor fallback can predict
    distinct_layers: int
    fallback_keys: list[str]  # layers of the space that come from the fallback

    CHUNK_ROWS = 8192  # rows transposed at a time

    def check_shape(self, tokens: np.ndarray) -> np.ndarray:
        """`tokens` as a 2-D integer array of this space's width (one row may come 1-D)."""
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

    def sums(self, tokens: np.ndarray, with_counts: bool = True, with_params: bool = False) -> RawSums:
        """Raw sums of token rows [n, columns]; NaN latency where a layer cannot be predicted."""
        tokens = self.check_shape(tokens)
        out = RawSums.empty(tokens.shape[0], with_counts, with_params)
        for start in range(0, tokens.shape[0], self.CHUNK_ROWS):
            columns = np.ascontiguousarray(tokens[start:start + self.CHUNK_ROWS].T, dtype=np.int64)
            self._check_range(columns, start)
            out.put(slice(start, start + columns.shape[1]), self._gather(columns, with_counts, with_params))
        return out

    def _gather(self, columns: np.ndarray, with_counts: bool, with_params: bool) -> RawSums:
        n = columns.shape[1]
        total = np.full(n, self.stem_ms)
        counts = np.full(n, 2.0) if with_counts else None  # stem + head
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
            if mparams is not None:
                mparams += step.mparams[index]
        head = columns[self.head_col]
        total += self.head_ms[head]
        if mparams is not None:
            mparams += self.head_mparams[head]
        return RawSums(total, counts, mparams)


def space_key(space: SearchSpace) -> tuple:
    """What makes two spaces compile to the same index (a predictor keeps one index per key)."""
    return (space.stages, space.stem_filters, space.head_filters)


def compile_tokens(space: SearchSpace, resolution: int, num_classes: int, layer_source: LayerSource) -> TokenIndex:
    """Precompute every block decision's raw latency, layer count and weights."""
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
    weights = dict(zip(distinct, layer_mparams(layers).tolist(), strict=True))
    steps = []
    for b, block in enumerate(variants):
        sizes = [len(v) for v in space.block_options(b).values()]
        depths = space.block_options(b)["layers"]
        prev = 1 if b == 0 else len(space.block_options(b - 1)["filters"])
        shape = (prev, *sizes)
        lat = np.full(shape, np.nan)
        nlayers = np.zeros(shape)
        nparams = np.zeros(shape)
        for v in block:
            rep = v.repeated.key if v.repeated is not None else None
            rep_ms = latency[rep] if rep is not None else 0.0
            rep_params = weights[rep] if rep is not None else 0.0
            for d, depth in enumerate(depths):
                at = (v.cin_index, *v.choice, d)
                lat[at] = latency[v.first.key] + (depth - 1) * rep_ms
                nlayers[at] = depth
                nparams[at] = weights[v.first.key] + (depth - 1) * rep_params
        strides = np.asarray([math.prod(sizes[i + 1:]) for i in range(len(sizes))], dtype=np.int64)
        steps.append(_BlockStep(columns=slice(6 * b, 6 * b + 6), prev_col=-1 if b == 0 else 6 * (b - 1) + 4,
                                prev_stride=math.prod(sizes), strides=strides, latency_ms=lat.ravel(),
                                layers=nlayers.ravel(), mparams=nparams.ravel()))
    return TokenIndex(
        steps=steps, stem_ms=latency[stem.key], stem_mparams=weights[stem.key],
        head_col=6 * (space.num_blocks - 1) + 4,
        head_ms=np.asarray([latency[h.key] for h in heads]),
        head_mparams=np.asarray([weights[h.key] for h in heads]),
        sizes=np.asarray([n for _, n in space.decisions], dtype=np.int64), act=stem.act,
        missing_keys=[k for k, v in latency.items() if math.isnan(v)], distinct_layers=len(layers),
        fallback_keys=[k for k, flag in zip(distinct, from_fallback.tolist(), strict=True) if flag],
    )
