"""`LookupPredictor`: a network's latency from the measured layers of a latency table.

The sum of per-layer latencies (FBNet, ProxylessNAS, Once-for-All), read from a table built on
the device, then the optional calibration (`calibration`). Layers absent from the table go
to an optional learned fallback (`learned`) and are counted (`layer_coverage` for given
networks, `space_coverage` for the whole space), never silently guessed: without a fallback
the first absent layer is named in the error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnas.bench.types import check_statistic
from mnas.errors import MnasError
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.table import LatencyTable
from mnas.space.arch import Arch, LayerSig
from mnas.space.search_space import SearchSpace

__all__ = ["LayerCoverage", "LookupPredictor"]


@dataclass(frozen=True)
class LayerCoverage:
    """How many layer occurrences of some networks the table answers, and how many it lacks."""

    layers: int
    from_fallback: int  # absent from the table: the learned fallback answers them
    fallback_keys: Mapping[str, int] = field(default_factory=dict)  # absent layer key -> occurrences

    @property
    def coverage(self) -> float:
        """Share of layer occurrences answered by the table (1.0 when there are none)."""
        return 1.0 - self.from_fallback / self.layers if self.layers else 1.0

    def to_dict(self) -> dict[str, Any]:
        """The counts an evaluation stores (without the keys, which can run to hundreds)."""
        return {"layers": self.layers, "from_table": self.layers - self.from_fallback,
                "from_fallback": self.from_fallback, "coverage_share": self.coverage}


class LookupPredictor(AdditivePredictor):
    """Sum of measured layer latencies from a latency table (+ calibration, + learned fallback)."""

    kind = "lookup"
    _ms: dict[str, float] | None = None  # memo: the table's latencies of `statistic`, checked

    def __init__(self, table: LatencyTable, *, fallback: LearnedPredictor | None = None,
                 space: SearchSpace | None = None, statistic: str = "median") -> None:
        super().__init__(table.meta.resolution, table.meta.num_classes, space, statistic)
        self.table = table
        self.fallback = fallback

    @property
    def table_id(self) -> int | None:
        """The stored table it looks up (None for a table that only lives in memory)."""
        return self.table.table_id

    def _latencies(self) -> dict[str, float]:
        """The table's latencies, checked on first use (the table and statistic must agree with the fallback)."""
        if self._ms is None:
            self.table.check()
            statistic = check_statistic(self.statistic)
            if self.fallback is not None and self.fallback.statistic != statistic:
                raise MnasError(f"learned fallback predicts {self.fallback.statistic} latencies: expected {statistic} "
                                "like the lookup table")
            self._ms = self.table.latencies(statistic)
        return self._ms

    def _missing_error(self, key: str) -> MnasError:
        meta = self.table.meta
        return MnasError(
            f"layer {key!r} is not in latency table {meta.name!r} ({meta.device_name}, resolution "
            f"{meta.resolution}): expected a table built for this space and resolution, or a learned fallback")

    def _lookup(self, layers: Sequence[LayerSig], strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ms per layer, flags where the fallback answered); without a fallback an absent layer
        raises when `strict`, else is NaN."""
        get = self._latencies().get
        values = [get(layer.key) for layer in layers]
        missing = [i for i, v in enumerate(values) if v is None]
        out = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
        flags = np.zeros(len(layers), dtype=bool)
        if missing and self.fallback is not None:
            out[missing] = self.fallback.predict_layers_ms([layers[i] for i in missing])
            flags[missing] = True
        elif missing and strict:
            raise self._missing_error(layers[missing[0]].key)
        return out, flags

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        return self._lookup(layers, strict=True)[0]

    def _layer_source(self, layers: Sequence[LayerSig]) -> tuple[np.ndarray, np.ndarray]:
        return self._lookup(layers, strict=False)

    def layer_coverage(self, archs: Sequence[Arch]) -> LayerCoverage:
        """Where the layers of `archs` come from. It predicts nothing, so it can sit beside any
        prediction (an evaluation reports it for the networks it predicted)."""
        latencies = self._latencies()
        keys = [layer.key for arch in archs for layer in arch.layers(self.resolution, self.num_classes)]
        absent = Counter(key for key in keys if key not in latencies)
        return LayerCoverage(layers=len(keys), from_fallback=sum(absent.values()), fallback_keys=dict(absent))

    def space_coverage(self, space: SearchSpace | None = None) -> dict[str, Any]:
        """Distinct layers of the space at the table's resolution: how many the table holds."""
        index = self.token_index(space)
        absent = len(index.fallback_keys) + len(index.missing_keys)
        return {"space_layers": index.distinct_layers, "in_table": index.distinct_layers - absent,
                "from_fallback": len(index.fallback_keys), "unpredictable": len(index.missing_keys),
                "coverage_share": 1.0 - absent / index.distinct_layers,
                "missing_keys": sorted(index.fallback_keys + index.missing_keys)}
