"""Fit a predictor on a latency table (with honest figures), and describe single predictions.

`fit_predictor` builds what `mnas table fit` stores: a lookup predictor with a learned
fallback (the default), a lookup predictor alone, or a learned predictor. The learned model
is also scored on a held-out fifth of the table (fitted on the rest), so the figure says how
well it predicts layers it has not seen — what a fallback is for. `prediction_rows` says,
per network, how many layers came from the table and how many from a learned model, since a
prediction is only as good as its share of measured layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mnas.bench.types import check_statistic, headline_statistic
from mnas.errors import MnasError
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.metrics import evaluate
from mnas.predictor.table import LatencyTable
from mnas.space.arch import Arch, LayerSig

HOLDOUT_SHARE = 0.2
MIN_HOLDOUT_TABLE = 10  # below this many entries no hold-out figure is computed
MIN_LEARNED_TABLE = 2


def learned_holdout(table: LatencyTable, model: str, seed: int, statistic: str = "median") -> dict[str, Any] | None:
    """Layer-level figures of a learned model fitted on 80% of the table, scored on the other 20%."""
    if len(table) < MIN_HOLDOUT_TABLE:
        return None
    keys = list(table.entries)
    order = np.random.default_rng(seed).permutation(len(keys))
    cut = max(1, int(round(HOLDOUT_SHARE * len(keys))))
    test, train = order[:cut], order[cut:]
    layers = [LayerSig.from_key(k) for k in keys]
    by_key = table.latencies(statistic)
    ms = np.asarray([by_key[k] for k in keys])
    predictor = LearnedPredictor(model, seed=seed, resolution=table.meta.resolution, num_classes=table.meta.num_classes,
                                 statistic=statistic).fit([layers[i] for i in train], ms[train])
    return evaluate(predictor.predict_layers_ms([layers[i] for i in test]), ms[test])


def default_statistic(table: LatencyTable) -> str:
    """`min` for tables measured on the host (a shared, time-sliced CPU), `median` for phones."""
    return headline_statistic(table.meta.device_name)


def fit_predictor(table: LatencyTable, *, kind: str = "lookup", model: str = "gbr", fallback: bool = True,
                  seed: int = 0, statistic: str | None = None) -> tuple[AdditivePredictor, dict[str, Any]]:
    """A fitted (uncalibrated) predictor and its metrics (coverage, learned hold-out figures).

    `statistic` (median or min of each model's timed runs; default `default_statistic`)
    is what the table entries, and later the calibration and eval measurements, stand for.
    """
    table.check()
    statistic = check_statistic(statistic or default_statistic(table))
    metrics: dict[str, Any] = {"table": table.meta.name, "table_entries": len(table), "model": model, "seed": seed,
                               "statistic": statistic}
    if kind == "learned":
        if len(table) < MIN_LEARNED_TABLE:
            raise MnasError(f"latency table {table.meta.name!r} has {len(table)} entry: expected at least "
                            f"{MIN_LEARNED_TABLE} to fit a learned predictor")
        metrics["learned_holdout"] = learned_holdout(table, model, seed, statistic)
        return LearnedPredictor.from_table(table, model=model, seed=seed, statistic=statistic), metrics
    if kind != "lookup":
        raise MnasError(f"predictor kind {kind!r}: expected 'lookup' or 'learned'")
    learned = None
    if fallback and len(table) >= MIN_LEARNED_TABLE:
        metrics["learned_holdout"] = learned_holdout(table, model, seed, statistic)
        learned = LearnedPredictor.from_table(table, model=model, seed=seed, statistic=statistic)
    metrics["fallback"] = None if learned is None else model
    predictor = LookupPredictor(table, fallback=learned, statistic=statistic)
    coverage = predictor.space_coverage()
    coverage.pop("missing_keys")
    metrics["space_coverage"] = coverage
    return predictor, metrics


def _table_name(predictor: AdditivePredictor) -> str | None:
    if isinstance(predictor, LookupPredictor):
        return predictor.table.meta.name
    if isinstance(predictor, LearnedPredictor):
        return predictor.trained_on_.get("table")
    return None


def prediction_rows(predictor: AdditivePredictor, archs: Sequence[tuple[str, Arch]]) -> list[dict[str, Any]]:
    """One row per (input text, arch): predicted ms, layer sources, and which predictor answered."""
    predicted = predictor.predict_ms([arch for _, arch in archs])
    raw = predictor.raw_sums([arch for _, arch in archs])
    assert raw.counts is not None
    calibration = predictor.calibration_
    rows = []
    for (text, arch), ms, raw_ms, count in zip(archs, predicted, raw.latency_ms, raw.counts, strict=True):
        if isinstance(predictor, LookupPredictor):
            coverage = predictor.layer_coverage([arch])
            from_table = coverage.layers - coverage.from_fallback
        else:
            from_table = 0
        rows.append({
            "input": text, "arch": str(arch), "arch_hash": arch.hash, "resolution": predictor.resolution,
            "predicted_ms": float(ms), "layer_sum_ms": float(raw_ms), "layers": int(count),
            "layers_from_table": int(from_table), "layers_from_learned": int(count) - int(from_table),
            "predictor_id": predictor.predictor_id, "predictor_kind": predictor.kind, "table": _table_name(predictor),
            "calibrated": calibration is not None, "calibration_samples": None if calibration is None else calibration.n,
        })
    return rows
