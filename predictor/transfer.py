"""Cross-device transfer: a complete latency table for a device that has only partial evidence.

A phone rarely has a full table (hours of measuring per resolution), but it often has some
evidence: a partial layer table (e.g. the ProxylessNAS Pixel-1 lookup table) and/or a few
networks measured end to end (published figures). This module turns a *complete* table of
another device (the source, e.g. this host's) plus that evidence into a table of the target:

1. **Per layer**: target_ms = source_ms x ratio(layer), where log ratio is a ridge regression
   on a few layer features (op kind, kernel, stride, expansion, squeeze-excite, log FLOPs,
   log bytes moved, arithmetic intensity, log spatial size, log channels), fitted on the
   layers both devices have (the target's partial table against the source's figures for the
   same layers). The features are standardised and the intercept is not penalised, so the
   regulariser pulls every feature's effect toward zero, i.e. toward ONE global ratio: a kind
   of layer the evidence never shows (squeeze-excite, when the target table has none) gets
   the global ratio, not an extrapolation. The strength is chosen by cross-validation inside
   the evidence (leave one input size out: the table is used at sizes it never measured),
   never by looking at held-out figures, and each feature is clipped to the range the
   evidence spans, so a layer smaller or wider than any measured one is not extrapolated.
   Without layer evidence the ratio is one global constant (the network-level step sets it).
   When K >= 3 end-to-end figures are given, which features to use (all, or only the kind of
   layer: op, kernel, stride, SE, skip) and how much of the per-layer deviation from the
   global ratio to keep (`shrink`, 0..1) are chosen by leave-one-network-out error on them:
   layer evidence at one resolution and a few widths may not carry over to other networks.
   A target with no layer table may borrow the ratio *shape* of another phone's table
   (`prior_evidence`); its level and the shrink then come from its own networks.
2. **Per network**: the existing calibration idea (measured ~ a + b x layer sum) fitted on the
   K end-to-end figures given. With K = 6 the four-parameter calibration would fit noise, so
   only `scale` (b) and `affine` (a + b) are candidates, chosen by leave-one-out error inside
   those K networks (ties go to the one with fewer parameters).

Entries of the result are marked as transferred (their `measurement` says `transferred`,
the source latency, the ratio and which evidence key if any), the table-level provenance
(source table, evidence, the fitted ratio model and calibration as plain JSON) travels with
it (`TransferResult.provenance`), and `write_transfer_file` ships it all as one gzip JSON in
the `mnas table export` format plus a `transfer` section.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mnas.errors import MnasError
from mnas.predictor.calibration import Calibration
from mnas.predictor.features import memory_bytes, op_name
from mnas.predictor.table import LatencyTable, TableEntry, TableMeta
from mnas.space.arch import Arch, LayerSig
from mnas.space.cost import layer_cost

__all__ = ["RATIO_FEATURES", "NetworkFigure", "RatioModel", "SourceLatency", "TransferResult",
           "fit_network_calibration", "power_law_baseline", "ratio_features", "transfer_table"]

TRANSFER_FORMAT = "mnas-transfer"
# Blend of a layer's own target evidence with the model's prediction for it, in log space.
# Two copies of the Pixel-1 table disagree per key by 0.64-3.0x, so one key's figure is noisy:
# half the weight on it, half on what every other key says (fixed up front, not tuned).
EVIDENCE_WEIGHT = 0.5
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 25))
CALIBRATION_FORMS = ("scale", "affine")
SHRINK_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_SHRINK_NETWORKS = 3  # below this a leave-one-out choice on networks is noise: keep the layer model

RATIO_FEATURES: tuple[str, ...] = (
    "log_mult_adds", "log_memory_bytes", "log_intensity", "log_hw", "log_cin", "log_cout", "log_mid",
    "kernel3", "kernel5", "kernel7", "stride2", "log_expand", "se",
    "op_stem", "op_head", "op_conv", "op_dsconv", "op_mbconv", "skip_identity",
    "log_mult_adds_per_source_ms", "log_memory_bytes_per_source_ms",
)

KIND_FEATURES = ("kernel3", "kernel5", "kernel7", "stride2", "se", "op_stem", "op_head", "op_conv", "op_dsconv",
                 "op_mbconv", "skip_identity")
# The source's speed on the layer, as work per source-ms: the rate at which the source does the
# layer's arithmetic and moves its bytes. With these, log(target/source) = c + g1 log(MACs/src)
# + g2 log(bytes/src) says target ~ MACs^g1 x bytes^g2 x src^(1-g1-g2): a geometric blend of the
# source's measured cost and the two roofline costs, weighted by the target's own evidence (a
# phone whose runtime differs from the source's, e.g. no XNNPACK, follows the work more than the
# source's timings). They are rates, not sizes, so they do not grow with the resolution.
RATE_FEATURES = ("log_mult_adds_per_source_ms", "log_memory_bytes_per_source_ms")

# The per-layer model's feature sets. `kind_rates` (the default) is the kind of layer (op, kernel,
# stride, squeeze-excite, skip) plus the two rates: no size or width, because a partial table
# measured at one input size confounds size with width and stage, and a model that uses them
# extrapolates badly to other resolutions and multipliers (docs/architecture.md, "Transfer").
# `kind` and `all` are kept to compare with (`mnas table transfer --ratio-features`).
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "kind_rates": KIND_FEATURES + RATE_FEATURES,
    "kind": KIND_FEATURES,
    "all": tuple(name for name in RATIO_FEATURES if name not in RATE_FEATURES),
}
DEFAULT_FEATURES = "kind_rates"


def _ratio_row(layer: LayerSig, source_ms: float) -> list[float]:
    cost = layer_cost(layer)
    flops = max(float(cost.mult_adds), 1.0)
    mem = max(float(memory_bytes(layer)), 1.0)
    op = op_name(layer)
    src = max(float(source_ms), 1e-9)
    return [
        math.log(flops), math.log(mem), math.log(flops / mem), math.log(max(layer.h * layer.w, 1)),
        math.log(max(layer.cin, 1)), math.log(max(layer.cout, 1)), math.log(max(layer.mid, 1)),
        float(layer.kernel == 3), float(layer.kernel == 5), float(layer.kernel == 7), float(layer.stride >= 2),
        math.log(max(layer.expand, 1)), float(layer.se > 0),
        float(op == "stem"), float(op == "head"), float(op == "conv"), float(op == "dsconv"), float(op == "mbconv"),
        float(layer.skip == "identity"),
        math.log(flops / src), math.log(mem / src),
    ]


def ratio_features(layers: Sequence[LayerSig], source_ms: Sequence[float] | np.ndarray) -> np.ndarray:
    """[len(layers), len(RATIO_FEATURES)] float64: what the per-layer ratio depends on.

    `source_ms`: the source's latency of each layer (the rate features divide by it).
    """
    if not layers:
        return np.zeros((0, len(RATIO_FEATURES)))
    src = np.asarray(source_ms, dtype=np.float64)
    if src.shape != (len(layers),):
        raise MnasError(f"transfer: {len(layers)} layers but {src.size} source latencies: expected one per layer")
    return np.asarray([_ratio_row(layer, s) for layer, s in zip(layers, src, strict=True)], dtype=np.float64)


@dataclass(frozen=True)
class RatioModel:
    """log(target_ms / source_ms) = intercept + coef . (features - mean) / scale.

    Plain numbers only (stored as JSON with the table, never pickled). A feature constant in
    the evidence has coefficient 0: layers that differ in it get the global ratio.
    """

    intercept: float
    coef: tuple[float, ...] = ()
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    alpha: float | None = None
    n: int = 0  # layers it was fitted on
    loo_rmse_log: float | None = None  # cross-validated RMSE of the log ratio (the score that chose alpha)
    low: tuple[float, ...] = ()  # each feature's range in the evidence: features are clipped to it
    high: tuple[float, ...] = ()
    shrink: float = 1.0  # share of the per-layer deviation from the global ratio kept (chosen on networks)
    features: str = DEFAULT_FEATURES  # the `FEATURE_SETS` entry it was fitted on (the others have coefficient 0)
    feature_names: tuple[str, ...] = RATIO_FEATURES

    @classmethod
    def constant(cls, log_ratio: float, n: int = 0) -> RatioModel:
        return cls(intercept=float(log_ratio), n=n)

    def log_ratio(self, layers: Sequence[LayerSig], source_ms: Sequence[float] | np.ndarray) -> np.ndarray:
        """log(target/source) of each layer; `source_ms`: the source's latency of each."""
        out = np.full(len(layers), self.intercept, dtype=np.float64)
        if self.coef and layers:
            if tuple(self.feature_names) != RATIO_FEATURES:
                raise MnasError("transfer ratio model: its features differ from this version's: expected one "
                                "fitted by this mnas version (run `mnas table transfer` again)")
            x = ratio_features(layers, source_ms)
            if self.low and self.high:  # never extrapolate past what the evidence showed
                x = np.clip(x, np.asarray(self.low), np.asarray(self.high))
            x = (x - np.asarray(self.mean)) / np.asarray(self.scale)
            out = out + self.shrink * (x @ np.asarray(self.coef))
        return out

    def ratio(self, layers: Sequence[LayerSig], source_ms: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.exp(self.log_ratio(layers, source_ms))

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "coef": list(self.coef), "mean": list(self.mean),
                "scale": list(self.scale), "low": list(self.low), "high": list(self.high), "alpha": self.alpha, "shrink": self.shrink, "features": self.features, "n": self.n, "loo_rmse_log": self.loo_rmse_log,
                "feature_names": list(self.feature_names), "global_ratio": math.exp(self.intercept)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RatioModel:
        try:
            return cls(intercept=float(data["intercept"]), coef=tuple(float(c) for c in data.get("coef") or ()),
                       mean=tuple(float(c) for c in data.get("mean") or ()),
                       scale=tuple(float(c) for c in data.get("scale") or ()),
                       low=tuple(float(c) for c in data.get("low") or ()),
                       high=tuple(float(c) for c in data.get("high") or ()),
                       alpha=None if data.get("alpha") is None else float(data["alpha"]), n=int(data.get("n", 0)),
                       loo_rmse_log=None if data.get("loo_rmse_log") is None else float(data["loo_rmse_log"]),
                       shrink=float(data.get("shrink", 1.0)), features=str(data.get("features", DEFAULT_FEATURES)),
                       feature_names=tuple(data.get("feature_names") or RATIO_FEATURES))
        except (KeyError, TypeError, ValueError) as exc:
            raise MnasError(f"transfer ratio model: malformed ({type(exc).__name__}: {exc}): expected one written "
                            "by `mnas table transfer`") from None

    @classmethod
    def fit(cls, layers: Sequence[LayerSig], source_ms: Sequence[float] | np.ndarray,
            target_ms: Sequence[float] | np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS,
            features: str = DEFAULT_FEATURES) -> RatioModel:
        """Ridge on standardised features (intercept unpenalised); alpha by leave-one-group-out CV.

        The groups are the layers' input spatial sizes: the table is used at sizes it never
        measured (other resolutions), so the CV asks how well a size left out is predicted
        (plain leave-one-out, where every left-out key has near-twins, shrinks too little).
        """
        from sklearn.linear_model import Ridge

        src = np.asarray(source_ms, dtype=np.float64)
        tgt = np.asarray(target_ms, dtype=np.float64)
        if len(layers) != src.size or src.size != tgt.size:
            raise MnasError(f"transfer: {len(layers)} layers, {src.size} source and {tgt.size} target latencies: "
                            "expected one of each per layer")
        if not (np.all(np.isfinite(src)) and np.all(src > 0) and np.all(np.isfinite(tgt)) and np.all(tgt > 0)):
            raise MnasError("transfer: layer latencies must be finite and > 0 ms")
        y = np.log(tgt / src)
        if src.size < 3:
            return cls.constant(float(np.mean(y)) if y.size else 0.0, int(y.size))
        if features not in FEATURE_SETS:
            raise MnasError(f"transfer: feature set {features!r}: expected one of {sorted(FEATURE_SETS)}")
        x = ratio_features(layers, src)
        x[:, [i for i, name in enumerate(RATIO_FEATURES) if name not in FEATURE_SETS[features]]] = 0.0
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0  # a constant feature: centred to 0, so its coefficient is 0
        low, high = x.min(axis=0), x.max(axis=0)
        z = (x - mean) / scale
        groups = np.asarray([layer.h for layer in layers])
        folds = [groups == g for g in np.unique(groups)] if len(np.unique(groups)) >= 3 else \
            [np.arange(y.size) == i for i in range(y.size)]
        cv = np.zeros(len(alphas))
        for a, alpha in enumerate(alphas):
            errors = []
            for test in folds:
                model = Ridge(alpha=alpha).fit(z[~test], y[~test])
                errors.append((model.predict(z[test]) - y[test]) ** 2)
            cv[a] = float(np.mean(np.concatenate(errors)))
        best = int(np.argmin(cv))
        model = Ridge(alpha=alphas[best]).fit(z, y)
        return cls(intercept=float(model.intercept_), coef=tuple(float(c) for c in model.coef_),
                   mean=tuple(float(m) for m in mean), scale=tuple(float(s) for s in scale),
                   alpha=float(alphas[best]), n=int(y.size), loo_rmse_log=float(math.sqrt(cv[best])),
                   low=tuple(float(v) for v in low), high=tuple(float(v) for v in high), features=features)


# ------------------------------------------------------------------------------ source side

@dataclass
class SourceLatency:
    """The source device's latency of any layer: its tables first (in order), then a learned model.

    `tables`: (label, {layer key: ms}) pairs, e.g. the complete host table of the space and a
    table of the extra layers (other widths, resolutions, ReLU6) measured on the same host.
    `fallback`: anything with `predict_layers_ms` (a `LearnedPredictor` fitted on the source).
    """

    tables: Sequence[tuple[str, Mapping[str, float]]]
    fallback: Any = None

    def layers_ms(self, layers: Sequence[LayerSig]) -> tuple[np.ndarray, list[str]]:
        """(ms per layer, where each came from: a table label or "learned")."""
        out = np.full(len(layers), math.nan)
        where = [""] * len(layers)
        missing = []
        for i, layer in enumerate(layers):
            for label, values in self.tables:
                value = values.get(layer.key)
                if value is not None:
                    out[i], where[i] = float(value), label
                    break
            else:
                missing.append(i)
        if missing:
            if self.fallback is None:
                raise MnasError(f"transfer: layer {layers[missing[0]].key!r} is in no source table: expected a "
                                "complete source table or a learned fallback")
            out[missing] = self.fallback.predict_layers_ms([layers[i] for i in missing])
            for i in missing:
                where[i] = "learned"
        return out, where


# ------------------------------------------------------------------------------ network level

@dataclass(frozen=True)
class NetworkFigure:
    """One whole network's latency on the target (published or measured)."""

    arch: Arch
    resolution: int
    latency_ms: float
    family: str = ""
    name: str = ""
    num_classes: int = 1000


def _fit_form(form: str, sums: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) minimising the squared *relative* error (what ±10% counts)."""
    w = 1.0 / measured
    if form == "scale":
        return 0.0, float(np.sum(sums * w * w * measured) / np.sum((sums * w) ** 2))
    a = np.column_stack([w, sums * w])
    coef, *_ = np.linalg.lstsq(a, np.ones_like(measured), rcond=None)
    return float(coef[0]), float(coef[1])


def fit_network_calibration(sums: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray,
                            forms: Sequence[str] = CALIBRATION_FORMS) -> tuple[Calibration | None, dict[str, Any]]:
    """measured ~ b x sum (`scale`) or a + b x sum (`affine`), chosen by leave-one-out relative error.

    Returns (None, ...) for no networks. `affine` needs at least 3 networks to be a candidate.
    """
    s = np.asarray(sums, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    if s.size == 0:
        return None, {"form": None, "n": 0}
    if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.isfinite(y)) and np.all(y > 0)):
        raise MnasError("transfer calibration: sums and measured latencies must be finite and > 0 ms")
    scores: dict[str, float] = {}
    for form in forms:
        if form not in CALIBRATION_FORMS:
            raise MnasError(f"calibration form {form!r}: expected one of {CALIBRATION_FORMS}")
        if form == "affine" and s.size < 3:
            continue
        if s.size < 2:
            scores[form] = math.nan
            continue
        errors = []
        for i in range(s.size):
            keep = np.arange(s.size) != i
            a, b = _fit_form(form, s[keep], y[keep])
            errors.append(abs(a + b * s[i] - y[i]) / y[i])
        scores[form] = float(100.0 * np.mean(errors))
    order = [f for f in CALIBRATION_FORMS if f in scores]
    if not order:
        raise MnasError(f"transfer calibration: no form of {list(forms)} can be fitted on {s.size} networks")
    valid = [f for f in order if math.isfinite(scores[f])]
    chosen = min(valid, key=lambda f: (round(scores[f], 6), order.index(f))) if valid else order[0]
    a, b = _fit_form(chosen, s, y)
    calibration = Calibration(coef_sum=b, coef_layers=0.0, intercept_ms=a, n=int(s.size))
    return calibration, {"form": chosen, "n": int(s.size), "loo_mape_pct": {k: v for k, v in scores.items()}}


def power_law_baseline(source_ms: Sequence[float] | np.ndarray,
                       target_ms: Sequence[float] | np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """target ~ c x source^p (least squares in log-log): the baseline from whole-network latency."""
    x = np.log(np.asarray(source_ms, dtype=np.float64))
    y = np.log(np.asarray(target_ms, dtype=np.float64))
    if x.size == 0:
        raise MnasError("power law: no networks: expected at least one")
    if x.size == 1 or np.ptp(x) == 0:
        c, p = float(np.mean(y - x)), 1.0
    else:
        p, c = (float(v) for v in np.polyfit(x, y, 1))
    return lambda s: np.exp(c + p * np.log(np.asarray(s, dtype=np.float64)))


# ------------------------------------------------------------------------------ the transfer

@dataclass
class TransferResult:
    table: LatencyTable
    ratio_model: RatioModel
    calibration: Calibration | None
    provenance: dict[str, Any] = field(default_factory=dict)

    def layer_ms(self, layers: Sequence[LayerSig], source: SourceLatency) -> np.ndarray:
        """Target ms of any layers: the table's entry, else source x ratio (what the fallback stands for)."""
        values = [self.table.entries.get(layer.key) for layer in layers]
        missing = [i for i, v in enumerate(values) if v is None]
        out = np.asarray([math.nan if v is None else v.median_ms for v in values], dtype=np.float64)
        if missing:
            sub = [layers[i] for i in missing]
            sub_ms = source.layers_ms(sub)[0]
            out[missing] = sub_ms * self.ratio_model.ratio(sub, sub_ms)
        return out


def network_sums(layer_ms: Callable[[Sequence[LayerSig]], np.ndarray],
                 figures: Sequence[NetworkFigure]) -> np.ndarray:
    """Sum of per-layer latencies of each network at its own resolution."""
    per = [f.arch.layers(f.resolution, f.num_classes) for f in figures]
    flat = [layer for layers in per for layer in layers]
    if not flat:
        return np.zeros(0)
    values = layer_ms(flat)
    starts = np.cumsum([0] + [len(layers) for layers in per[:-1]])
    return np.add.reduceat(values, starts)


def _target_ms(model: RatioModel, layers: Sequence[LayerSig], src: np.ndarray, evidence: Mapping[str, float],
               evidence_weight: float) -> np.ndarray:
    """source x ratio, blended with a layer's own evidence where there is some (log space)."""
    out = src * np.exp(model.log_ratio(layers, src))
    for i, layer in enumerate(layers):
        seen = evidence.get(layer.key)
        if seen is not None:
            out[i] = math.exp(evidence_weight * math.log(seen) + (1.0 - evidence_weight) * math.log(out[i]))
    return out


def choose_shrink(model: RatioModel, source: SourceLatency, figures: Sequence[NetworkFigure],
                  evidence: Mapping[str, float], evidence_weight: float = EVIDENCE_WEIGHT,
                  forms: Sequence[str] = CALIBRATION_FORMS) -> tuple[RatioModel, dict[str, float]]:
    """How much of the per-layer model to keep (`shrink` in `SHRINK_GRID`: 0 = one global ratio),
    by leave-one-network-out error of the calibrated sums on the given figures only.

    The layer evidence says how layers differ at the sizes and widths it covers; whether that
    carries over to the networks at hand (other resolutions, widths) is a question only the
    networks can answer, so the K calibration networks answer it (with the calibration refitted
    inside each fold, as `fit_network_calibration` does). Ties go to the smaller shrink.
    """
    sums = sums_by_shrink(model, source, figures, evidence, evidence_weight)
    best, scores = select_shrink(sums, [f.latency_ms for f in figures], forms)
    return replace(model, shrink=best), scores


def sums_by_shrink(model: RatioModel, source: SourceLatency, figures: Sequence[NetworkFigure],
                   evidence: Mapping[str, float], evidence_weight: float = EVIDENCE_WEIGHT) -> dict[float, np.ndarray]:
    """Each figure network's target layer sum under `model` at every shrink of `SHRINK_GRID`
    (the source latencies looked up once for all of them)."""
    per = [f.arch.layers(f.resolution, f.num_classes) for f in figures]
    flat = [layer for layers in per for layer in layers]
    src, _ = source.layers_ms(flat)
    starts = np.cumsum([0] + [len(layers) for layers in per[:-1]])
    return {shrink: np.add.reduceat(_target_ms(replace(model, shrink=shrink), flat, src, evidence, evidence_weight),
                                    starts) for shrink in SHRINK_GRID}


def select_shrink(sums_by_shrink: Mapping[float, np.ndarray], measured: Sequence[float] | np.ndarray,
                  forms: Sequence[str] = CALIBRATION_FORMS) -> tuple[float, dict[str, float]]:
    """The shrink whose network sums calibrate best by leave-one-out (see `choose_shrink`)."""
    scores: dict[str, float] = {}
    for shrink, sums in sums_by_shrink.items():
        _, info = fit_network_calibration(sums, measured, forms)
        loo = info.get("loo_mape_pct") or {}
        scores[f"{shrink:g}"] = float(min((v for v in loo.values() if math.isfinite(v)), default=math.inf))
    best = min(sums_by_shrink, key=lambda v: (round(scores[f"{v:g}"], 6), v))
    return float(best), scores


def transfer_table(source: SourceLatency, layers: Sequence[LayerSig], *, device_name: str, name: str,
                   source_meta: TableMeta, layer_evidence: Mapping[str, float] | None = None,
                   figures: Sequence[NetworkFigure] = (), evidence_weight: float = EVIDENCE_WEIGHT,
                   resolution: int | None = None, evidence_label: str = "",
                   calibration_forms: Sequence[str] = CALIBRATION_FORMS,
                   prior_evidence: Mapping[str, float] | None = None, prior_label: str = "",
                   ratio_features_set: str = DEFAULT_FEATURES) -> TransferResult:
    """A table of `layers` for `device_name` from the source's latencies and the target's evidence.

    `prior_evidence`: a partial table of ANOTHER device (e.g. Pixel 1's for a Pixel 4 that has
    only whole-network figures): used only when the target has no layer evidence, for the
    shape of the per-layer ratio (how kernels, strides, op kinds differ between the source and
    a phone), its level and how much of the shape to keep set by the target's own networks.

    `layer_evidence`: target ms by layer key (a partial table); `figures`: whole networks on
    the target. Every entry is marked transferred; keys with evidence blend it with the model
    (`evidence_weight`, in log space).
    """
    evidence = dict(layer_evidence or {})
    if not 0.0 <= evidence_weight <= 1.0:
        raise MnasError(f"evidence weight {evidence_weight}: expected a value in [0, 1]")
    ev_layers = [LayerSig.from_key(key) for key in evidence]
    prior = dict(prior_evidence or {})
    # the layers whose ratio shape is learned: the target's own, else another device's (a prior)
    shape = evidence if ev_layers else prior
    shape_layers = [LayerSig.from_key(key) for key in shape]
    if shape_layers:
        shape_src, _ = source.layers_ms(shape_layers)
        model = RatioModel.fit(shape_layers, shape_src, [shape[k] for k in shape], features=ratio_features_set)
    else:
        model = RatioModel.constant(0.0)
    shrink_scores: dict[str, float] = {}
    if shape_layers and len(figures) >= MIN_SHRINK_NETWORKS:
        model, shrink_scores = choose_shrink(model, source, figures, evidence, evidence_weight, calibration_forms)
    if not ev_layers and figures:
        # no layer evidence of the target: its global ratio comes from the networks (measured vs source x shape)
        shaped = replace(model, intercept=0.0)
        def shaped_ms(ls: Sequence[LayerSig]) -> np.ndarray:
            ms = source.layers_ms(ls)[0]
            return ms * shaped.ratio(ls, ms)

        sums = network_sums(shaped_ms, figures)
        measured = np.asarray([f.latency_ms for f in figures])
        model = replace(shaped, intercept=float(np.median(np.log(measured / sums))))

    all_layers = list({layer.key: layer for layer in [*layers, *ev_layers]}.values())
    src_ms, where = source.layers_ms(all_layers)
    log_ratio = model.log_ratio(all_layers, src_ms)
    created = time.time()
    entries: dict[str, TableEntry] = {}
    for layer, s, w, lr in zip(all_layers, src_ms, where, log_ratio, strict=True):
        predicted = float(s * math.exp(lr))
        value, seen = predicted, evidence.get(layer.key)
        if seen is not None:
            value = math.exp(evidence_weight * math.log(seen) + (1.0 - evidence_weight) * math.log(predicted))
        entries[layer.key] = TableEntry(
            layer_key=layer.key, median_ms=value, mean_ms=None, std_ms=None, runs=0, measured_at=created,
            measurement={"transferred": True, "source": w, "source_ms": float(s), "ratio": float(math.exp(lr)),
                         "evidence_ms": None if seen is None else float(seen)})
    meta = TableMeta(name=name, device_name=device_name, runtime="transfer",
                     runtime_version=f"{source_meta.runtime}-{source_meta.runtime_version}",
                     resolution=resolution or source_meta.resolution,
                     conditions=f"transferred from {source_meta.name} ({source_meta.conditions})",
                     pinned_core=None, device_ids=(), space=source_meta.space, num_classes=source_meta.num_classes,
                     created=created, kind="transferred")
    table = LatencyTable(meta=meta, entries=entries)
    result = TransferResult(table=table, ratio_model=model, calibration=None)
    calibration_info: dict[str, Any] = {"form": None, "n": 0}
    if figures:
        sums = network_sums(lambda ls: result.layer_ms(ls, source), figures)
        result.calibration, calibration_info = fit_network_calibration(
            sums, [f.latency_ms for f in figures], calibration_forms)
    by_source: dict[str, int] = {}
    for w in where:
        by_source[w] = by_source.get(w, 0) + 1
    result.provenance = {
        "format": TRANSFER_FORMAT, "source_table": source_meta.name, "source_meta": source_meta.to_dict(),
        "source_tables": [label for label, _ in source.tables], "source_of_entries": by_source,
        "evidence": {"label": evidence_label, "layers": len(evidence), "evidence_weight": evidence_weight,
                     "prior": {"label": prior_label, "layers": len(prior)} if prior and not ev_layers else None,
                     "networks": [{"name": f.name, "family": f.family, "arch": str(f.arch), "resolution": f.resolution,
                                   "latency_ms": f.latency_ms} for f in figures]},
        "ratio_model": model.to_dict(), "shrink_choice_loo_mape_pct": shrink_scores, "calibration": None if result.calibration is None else {
            **result.calibration.to_dict(), **calibration_info},
        "created": created,
    }
    # the table carries its provenance too (the stored predictor and a shipped file keep all of it)
    table.meta = replace(meta, provenance={k: v for k, v in result.provenance.items() if k != "source_meta"})
    return result


def with_resolution(table: LatencyTable, resolution: int) -> LatencyTable:
    """The same entries labelled for another input resolution (a transferred table holds layers of many)."""
    return LatencyTable(meta=replace(table.meta, resolution=resolution), entries=table.entries,
                        table_id=table.table_id if table.meta.resolution == resolution else None)
