"""Calibrate a predictor on measured networks and judge it on held-out ones; keep every eval run.

`calibrate_on_device` samples K networks from the calibration stream, measures them end to
end and fits the predictor's calibration on them; the set (arch, hash, measured latency,
measurement id) goes into the stored predictor's metrics, so an evaluation can prove it
never saw those networks. `evaluate_on_device` samples from the disjoint evaluation stream,
drops any hash of the calibration set, measures, predicts and reports the figures latency
predictor papers use (see `metrics.evaluate`); each run is stored in `predictor_evals`
with its per-network rows and the plot it wrote.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnas.bench.contention import NETWORK_GUARD, ContentionGuard, contended_share
from mnas.bench.types import BenchConfig, Device
from mnas.errors import MnasError
from mnas.json_safe import json_safe
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.endtoend import (
    CALIBRATION,
    EVALUATION,
    NetMeasurement,
    measure_networks,
    sample_archs,
)
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.metrics import evaluate, scatter_png
from mnas.predictor.registry import ReadStore, read_records, save_predictor
from mnas.predictor.table import Store, ensure_schema
from mnas.space.search_space import SearchSpace

MIN_CLEAN_FIT = 5  # networks: intercept, sum, layer count, weights, plus one to spare


def calibration_hashes(predictor: AdditivePredictor) -> set[str]:
    """Hashes of the networks the predictor was calibrated on (from its stored metrics)."""
    rows = (predictor.metrics or {}).get("calibration_set") or []
    return {str(row["arch_hash"]) for row in rows if isinstance(row, dict) and "arch_hash" in row}


@dataclass
class CalibrationReport:
    predictor_id: int
    networks: list[NetMeasurement]
    fit: dict[str, Any]  # in-sample metrics after calibration
    uncalibrated: dict[str, Any]  # the raw layer sums against the same measurements
    calibration: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"predictor_id": self.predictor_id, "samples": len(self.networks),
                "measured": sum(len(n.measurements) - n.reused for n in self.networks),
                "reused": sum(n.reused for n in self.networks), "calibration": self.calibration,
                "fit": self.fit, "uncalibrated": self.uncalibrated}


def calibrate_on_device(predictor: AdditivePredictor, devices: Sequence[Device], store: Store, space: SearchSpace,
                        samples: int, seed: int, config: BenchConfig, *, with_params: bool = True,
                        progress: bool = True, writer: Any = None,
                        guard: ContentionGuard | None = NETWORK_GUARD, repeats: int = 3) -> CalibrationReport:
    """Measure `samples` calibration networks (each in `repeats` processes), fit the calibration,
    store the calibrated predictor.

    `with_params`: the calibration also takes each network's weight count (see `Calibration`).
    """
    archs = sample_archs(space, samples, seed, CALIBRATION)
    kwargs = {} if writer is None else {"writer": writer}
    networks = measure_networks(archs, devices, store, config, predictor.resolution, CALIBRATION,
                                progress=progress, statistic=predictor.statistic, guard=guard, repeats=repeats,
                                **kwargs)
    measured = np.asarray([n.measured_ms for n in networks])
    raw = predictor.raw_sums(archs).latency_ms  # what the predictor says before any calibration
    # a network still contended after every try measured the neighbours as much as itself:
    # fit on the clean ones when at least half (and enough for the coefficients) are clean
    clean = np.asarray([not any(m.extra.get("contended") for m in n.measurements) for n in networks])
    use = clean if clean.sum() >= max(MIN_CLEAN_FIT, len(networks) // 2) else np.ones(len(networks), dtype=bool)
    predictor.calibrate([a for a, u in zip(archs, use, strict=True) if u], measured[use], with_params=with_params)
    fitted = predictor.predict_ms(archs)
    metrics = dict(predictor.metrics or {})
    metrics.pop("last_eval", None)
    metrics.update({
        "calibration_seed": seed, "calibration_samples": samples, "calibration_conditions": config.conditions_key(),
        "calibration_set": [n.to_dict() for n in networks],
        "calibration_fit": evaluate(fitted, measured), "uncalibrated_fit": evaluate(raw, measured),
        "calibration_contended_share": contended_share([m for n in networks for m in n.measurements]),
        "calibration_repeats": repeats,
        "calibration_fitted_on": int(use.sum()),
    })
    predictor_id = save_predictor(store, predictor, predictor.table_id, metrics)
    assert predictor.calibration_ is not None
    return CalibrationReport(predictor_id, networks, metrics["calibration_fit"], metrics["uncalibrated_fit"],
                             predictor.calibration_.to_dict())


@dataclass
class EvalReport:
    eval_id: int
    predictor_id: int | None
    seed: int
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    plot: Path | None
    excluded_calibration: int  # calibration hashes the eval was told to avoid
    overlap: int  # eval hashes found in the calibration set (always 0: checked)
    coverage: dict[str, Any] = field(default_factory=dict)
    networks: list[NetMeasurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"eval_id": self.eval_id, "predictor_id": self.predictor_id, "seed": self.seed,
                "samples": len(self.rows), **self.metrics, "plot": None if self.plot is None else str(self.plot),
                "calibration_hashes_excluded": self.excluded_calibration, "overlap_with_calibration": self.overlap,
                "coverage": self.coverage, "networks": self.rows}


def evaluate_on_device(predictor: AdditivePredictor, devices: Sequence[Device], store: Store, space: SearchSpace,
                       samples: int, seed: int, config: BenchConfig, *, plot: Path | None = None,
                       progress: bool = True, writer: Any = None,
                       guard: ContentionGuard | None = NETWORK_GUARD, repeats: int = 3) -> EvalReport:
    """Measure `samples` held-out networks, compare with the predictions, store and plot the run."""
    banned = calibration_hashes(predictor)
    archs = sample_archs(space, samples, seed, EVALUATION, exclude=banned)
    overlap = len({a.hash for a in archs} & banned)
    if overlap:  # sample_archs excludes them; never report figures on calibration networks
        raise MnasError(f"evaluation: {overlap} networks are in the calibration set: expected held-out networks only")
    kwargs = {} if writer is None else {"writer": writer}
    networks = measure_networks(archs, devices, store, config, predictor.resolution, EVALUATION,
                                progress=progress, statistic=predictor.statistic, guard=guard, repeats=repeats,
                                **kwargs)
    measured = np.asarray([n.measured_ms for n in networks])
    predicted = predictor.predict_ms(archs)
    coverage = predictor.layer_coverage(archs).to_dict() if isinstance(predictor, LookupPredictor) else {}
    metrics = {**evaluate(predicted, measured), "statistic": predictor.statistic,
               "contended_share": contended_share([m for n in networks for m in n.measurements]),
               "repeats": repeats}
    rows = [{**n.to_dict(), "predicted_ms": float(p), "error_pct": float(100.0 * (p - n.measured_ms) / n.measured_ms)}
            for n, p in zip(networks, predicted, strict=True)]
    written = None
    if plot is not None:
        title = (f"predictor {predictor.predictor_id} ({predictor.kind}) on {len(rows)} held-out networks, "
                 f"{', '.join(d.device_id for d in devices)} ({predictor.statistic})")
        written = scatter_png(predicted, measured, plot, title)
    eval_id = save_eval(store, predictor.predictor_id, devices[0].device_id, seed, config, metrics, rows, written,
                        coverage)
    return EvalReport(eval_id, predictor.predictor_id, seed, metrics, rows, written, len(banned), overlap, coverage,
                      networks)


def save_eval(store: Store, predictor_id: int | None, device_id: str, seed: int, config: BenchConfig,
              metrics: dict[str, Any], rows: list[dict[str, Any]], plot: Path | None,
              coverage: dict[str, Any] | None = None) -> int:
    ensure_schema(store)
    with store.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO predictor_evals (predictor_id, device_id, seed, samples, conditions, metrics, rows, plot, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (predictor_id, device_id, seed, len(rows), config.conditions_key(),
             json.dumps(json_safe({**metrics, "coverage": coverage or {}}), sort_keys=True),
             json.dumps(json_safe(rows)), None if plot is None else str(plot), time.time()))
        return int(cursor.lastrowid)


def list_evals(store: ReadStore, predictor_id: int | None = None) -> list[dict[str, Any]]:
    """Stored eval runs (newest last): id, predictor_id, device_id, seed, samples, metrics, plot, created."""
    ensure_schema(store)
    sql = "SELECT id, predictor_id, device_id, seed, samples, conditions, metrics, plot, created FROM predictor_evals"
    args: tuple[Any, ...] = ()
    if predictor_id is not None:
        sql += " WHERE predictor_id = ?"
        args = (predictor_id,)
    return read_records(store, sql + " ORDER BY id", args,
                        ("id", "predictor_id", "device_id", "seed", "samples", "conditions", "metrics", "plot", "created"))


# ------------------------------------------------------------------------------ stored figures

def stored_figures(store: Any, device_name: str, family: str | None = None) -> list[Any]:
    """Every whole-network figure of `device_name` in the store, as `transfer.NetworkFigure`s
    (arch, resolution, latency, family, model name): the published ones (`mnas results import`)
    and the ones measured here (`measured_figures`)."""
    from mnas.bench.published import published_figures
    from mnas.predictor.transfer import NetworkFigure
    from mnas.space.arch import Arch

    published = [NetworkFigure(Arch.parse(f.arch), int(f.resolution), float(f.latency_ms), family=f.family,
                               name=f.model_name)
                 for f in published_figures(store, device_name=device_name, family=family)]
    return published + [f for f in measured_figures(store, device_name) if family is None or f.family == family]


def measured_figures(store: Any, device_name: str) -> list[Any]:
    """Whole networks measured on `device_name` (`mnas bench`, calibrate/eval, measured search),
    under the paper's conditions (one thread, no delegate or extra flags, not throttled), as
    `NetworkFigure`s with the device's headline statistic; the newest figure of each (arch,
    resolution) stands. Only measurements that recorded their input resolution qualify (every
    whole-network measurement does since it was added; older ones and single layers are skipped).
    The family is `measured`, so `--holdout measured` scores a predictor on them alone.
    """
    from mnas.bench.types import headline_statistic
    from mnas.predictor.transfer import NetworkFigure
    from mnas.space.arch import Arch

    frame = store.measurements_frame(device_name=device_name, threads=1, throttled=0)
    statistic = headline_statistic(device_name)
    newest: dict[tuple[str, int], Any] = {}
    for row in frame.itertuples(index=False):
        key = str(row.conditions_key)
        if not isinstance(row.arch, str) or not row.arch or ";delegate=" in key or ";bm_args=" in key:
            continue  # single layers (no arch) are most of a device's rows: their JSON is never read
        resolution = store.get_measurement(int(row.id)).extra.get("resolution")
        value = row.min_ms if statistic == "min" else row.median_ms
        if not isinstance(resolution, int) or value is None or not math.isfinite(value) or value <= 0:
            continue
        try:
            arch = Arch.parse(row.arch)
        except MnasError:
            continue
        newest[(row.arch, resolution)] = NetworkFigure(arch, resolution, float(value), family="measured",
                                                       name=str(row.label or row.arch))
    return list(newest.values())


@dataclass
class _Conditions:
    key: str

    def conditions_key(self) -> str:
        return self.key


def evaluate_against_figures(predictor: AdditivePredictor, figures: Sequence[Any], *, holdout: str | None = None,
                             plot: Path | None = None, store: Store | None = None,
                             device_name: str = "") -> dict[str, Any]:
    """Score `predictor` on stored whole-network figures, measuring nothing.

    Each network is summed layer by layer at its own resolution. Without `holdout` the
    predictor's own calibration is applied, and figures it was calibrated on are counted
    (`seen_in_calibration`) and the metrics also given without them (`unseen`). With
    `holdout` (a family), the network-level calibration is fitted again on every figure of
    the other families only (`transfer.fit_network_calibration`: scale or affine, by
    leave-one-out inside them) and the metrics are computed on the held-out family alone, so
    the reported accuracy never saw its test points.
    """
    from mnas.predictor.calibration import calibrated
    from mnas.predictor.features import layer_mparams
    from mnas.predictor.transfer import fit_network_calibration, network_sums

    if not figures:
        raise MnasError(f"no stored figures for device {device_name!r}: expected some measured here (`mnas bench`) or imported with "
                        "`mnas results import FILE --device NAME --source TEXT`")
    figures = list(figures)
    measured = np.asarray([f.latency_ms for f in figures])
    sums = network_sums(predictor.predict_layers_ms, figures)
    per = [f.arch.layers(f.resolution, f.num_classes) for f in figures]
    counts = np.asarray([len(layers) for layers in per], dtype=np.float64)
    mparams = np.asarray([float(layer_mparams(layers).sum()) for layers in per])
    seen = calibration_hashes(predictor)
    out: dict[str, Any] = {"device": device_name, "figures": len(figures), "holdout": holdout,
                           "families": sorted({f.family for f in figures})}
    if holdout is None:
        predicted = calibrated(predictor.calibration_, sums, counts, mparams)
        test = np.ones(len(figures), dtype=bool)
        out["calibration"] = "the predictor's own" if predictor.calibration_ is not None else "none (raw layer sums)"
    else:
        test = np.asarray([f.family == holdout for f in figures])
        if not test.any():
            raise MnasError(f"--holdout {holdout!r}: no stored figure of that family for {device_name!r}: expected one "
                            f"of {', '.join(out['families'])}")
        train = ~test
        provenance = (predictor.metrics or {}).get("transfer") or {}
        networks = (provenance.get("evidence") or {}).get("networks") or []
        ratio_n = int((provenance.get("ratio_model") or {}).get("n") or 0)
        if ratio_n and any(n.get("family") == holdout for n in networks):
            # the per-layer model's shrink was chosen on these networks: the score would have seen them
            raise MnasError(f"--holdout {holdout!r}: predictor {predictor.predictor_id} was transferred with this "
                            "family's figures among its evidence: expected a transfer that never saw them "
                            f"(`mnas table transfer ... --holdout {holdout}`)")
        if not train.any() and ratio_n == 0 and any(n.get("family") == holdout for n in networks):
            raise MnasError(f"--holdout {holdout!r}: no other family to calibrate on, and the table's global ratio "
                            "was fitted on this family's figures: expected figures of another family")
        calibration, info = fit_network_calibration(sums[train], measured[train])
        predicted = sums if calibration is None else calibration.apply(sums, counts)
        out["calibration"] = {"refitted_on": int(train.sum()), **info,
                              **({} if calibration is None else calibration.to_dict())}
    test_seen = np.asarray([f.arch.hash in seen for f in figures]) & test
    out.update(evaluate(predicted[test], measured[test]))
    out["seen_in_calibration"] = int(test_seen.sum())
    unseen = test & ~test_seen
    out["unseen"] = evaluate(predicted[unseen], measured[unseen]) if holdout is None and unseen.any() and \
        test_seen.any() else None
    out["networks"] = [{"name": f.name, "family": f.family, "arch": str(f.arch), "arch_hash": f.arch.hash,
                        "resolution": f.resolution, "measured_ms": float(m), "predicted_ms": float(p),
                        "error_pct": float(100.0 * (p - m) / m), "layer_sum_ms": float(s),
                        "in_calibration_set": bool(h)}
                       for f, m, p, s, h, t in zip(figures, measured, predicted, sums, test_seen, test, strict=True) if t]
    if plot is not None:
        title = (f"predictor {predictor.predictor_id} on {int(test.sum())} stored figures of {device_name}"
                 + (f" (holdout {holdout})" if holdout else ""))
        out["plot"] = str(scatter_png(predicted[test], measured[test], plot, title))
    if store is not None and predictor.predictor_id is not None:
        metrics = {k: out[k] for k in ("n", "rmse_ms", "mae_ms", "mape_pct", "max_error_pct", "within_5pct_share",
                                       "within_10pct_share", "kendall_tau")}
        metrics.update({"against": "stored", "holdout": holdout})
        out["eval_id"] = save_eval(store, predictor.predictor_id, device_name, 0,
                                   _Conditions(f"stored-figures:holdout={holdout or '-'}"), metrics, out["networks"],
                                   None if plot is None else Path(out["plot"]))
    return out
