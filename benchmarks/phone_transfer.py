"""How well this host's latency table transfers to real phones (issue 12 point 7).

For Pixel 1 and Pixel 4 it prints the accuracy (within ±10%, MAPE, Kendall tau) of
(a) the baseline: one power law from this host's whole-network latency (measured end to end
    here), fitted on the same calibration networks, and
(b) the transfer predictor (`mnas.predictor.transfer`): this host's table x a per-layer ratio
    learned from the phone's partial table (Pixel 1: the ProxylessNAS lookup table; Pixel 4:
    none) x a network-level calibration on K end-to-end figures,
on figures the predictor never saw:

* Pixel 1 acceptance split: K = 6 of the 22 published MobileNetV2 networks (a seeded random
  choice; mean over `--choices` choices) plus the Pixel-1 lookup table, scored on the other 16.
* Leave-one-family-out: calibrate on every other family's figures, score the held-out family
  (for Pixel 1 with MobileNetV2 its only family, that is the lookup table alone, K = 0).
* The learning curve: accuracy on the held-out networks against K.

Host side: the layers of every figure network and of the lookup table are measured on this
host (`--measure`, stored as `<source>-extra`), and every figure network end to end (for
the baseline); both are reused from `--db` on later runs. The published figures are read from
/work/shared/data/phones (unchanged), never used to set a constant by hand.

    python benchmarks/phone_transfer.py --db results/transfer.db [--measure] [--choices 20] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mnas.predictor.metrics import evaluate
from mnas.predictor.transfer import (
    DEFAULT_FEATURES,
    EVIDENCE_WEIGHT,
    FEATURE_SETS,
    MIN_SHRINK_NETWORKS,
    NetworkFigure,
    RatioModel,
    SourceLatency,
    fit_network_calibration,
    network_sums,
    power_law_baseline,
    select_shrink,
    sums_by_shrink,
)
from mnas.predictor.transfer_store import figure_layers, measure_extra, source_latency
from mnas.space import zoo
from mnas.space.arch import LayerSig

PHONES = Path("/work/shared/data/phones")
PIXEL4_COLUMN = "pixel4|1large|float|mean"  # microseconds, one thread on the prime core


# ------------------------------------------------------------------------------ figures

def pixel1_figures(path: Path = PHONES / "mobilenet_v2_pixel1.csv") -> list[NetworkFigure]:
    out = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            multiplier, resolution = float(row["depth_multiplier"]), int(row["resolution"])
            out.append(NetworkFigure(zoo.get("mobilenet-v2", multiplier), resolution, float(row["latency_ms_pixel1"]),
                                     family="mobilenet-v2", name=row["model"]))
    return out


def pixel4_figures(path: Path = PHONES / "mobile_ml_benchmark_tflite_e2e.csv",
                   column: str = PIXEL4_COLUMN) -> list[NetworkFigure]:
    out = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                family, _, arch = zoo.pytorchcv_arch(row["model"])
            except Exception:
                continue
            value = row.get(column) or ""
            if not value:
                continue
            family = "proxylessnas" if family.startswith("proxylessnas") else family
            out.append(NetworkFigure(arch, 224, float(value) / 1000.0, family=family, name=row["model"]))
    return out


def pixel1_lut(path: Path = PHONES / "proxylessnas_pixel1_lut.yaml") -> dict[str, float]:
    from mnas.predictor.published_lut import parse_proxylessnas_lut

    return {entry.layer.key: entry.mean_ms for entry in parse_proxylessnas_lut(path).entries}


# ------------------------------------------------------------------------------ host side

def host_network_ms(store: Any, figures: list[NetworkFigure], measure: bool, repeats: int = 3) -> np.ndarray:
    """This host's whole-network latency (min statistic, median of `repeats` processes) of each figure."""
    from mnas.bench.devices import select_devices
    from mnas.bench.types import BenchConfig
    from mnas.predictor.endtoend import measure_networks

    config = BenchConfig(warmup_runs=3, num_runs=30, min_secs=0.2, core=None, timeout_s=600.0)
    devices = select_devices("host")
    out = np.full(len(figures), math.nan)
    by_res: dict[int, list[int]] = {}
    for i, figure in enumerate(figures):
        by_res.setdefault(figure.resolution, []).append(i)
    for resolution, idx in sorted(by_res.items()):
        archs = list({str(figures[i].arch): figures[i].arch for i in idx}.values())
        if not measure:
            raise SystemExit("host whole-network latencies are needed for the baseline: pass --measure")
        nets = measure_networks(archs, devices, store, config, resolution, "phone-transfer", progress=False,
                                statistic="min", repeats=repeats)
        ms = {str(n.arch): n.measured_ms for n in nets}
        for i in idx:
            out[i] = ms[str(figures[i].arch)]
    return out


# ------------------------------------------------------------------------------ scoring

def score(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    m = evaluate(predicted, measured)
    return {"within_10pct": m["within_10pct_share"], "mape_pct": m["mape_pct"], "kendall_tau": m["kendall_tau"],
            "n": m["n"]}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = ("within_10pct", "mape_pct", "kendall_tau")
    return {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys} | {"choices": len(rows)}


class Phone:
    """One phone's evidence and the precomputed per-network sums of its ratio model at every
    shrink (the model is fitted on layer evidence only, so it does not depend on the split)."""

    def __init__(self, name: str, figures: list[NetworkFigure], source: SourceLatency, source_meta: Any,
                 host_ms: np.ndarray, lut: dict[str, float] | None, prior: dict[str, float] | None = None,
                 features: str = DEFAULT_FEATURES, evidence_weight: float = EVIDENCE_WEIGHT) -> None:
        self.name, self.figures, self.host_ms, self.lut, self.prior = name, figures, host_ms, lut, prior
        self.measured = np.asarray([f.latency_ms for f in figures])
        self.source, self.source_meta = source, source_meta
        shape = lut or prior or {}
        layers = [LayerSig.from_key(k) for k in shape]
        self.model = RatioModel.fit(layers, source.layers_ms(layers)[0], [shape[k] for k in shape],
                                    features=features) if shape else None
        if self.model is not None and not lut:  # a prior gives the shape only: the level comes from the networks
            self.model = replace(self.model, intercept=0.0)
        self.sums_by_shrink = ({} if self.model is None else
                               sums_by_shrink(self.model, source, figures, lut or {}, evidence_weight))
        self.host_sums = network_sums(lambda ls: source.layers_ms(ls)[0], figures)
        self.chosen: list[str] = []

    def transfer_predict(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """What `transfer_table` does with the `train` networks as figures, scored on `test`."""
        if self.model is not None:
            shrink = 1.0
            if train.size >= MIN_SHRINK_NETWORKS:
                shrink, _ = select_shrink({k: v[train] for k, v in self.sums_by_shrink.items()}, self.measured[train])
                self.chosen.append(f"shrink {shrink:g}")
            sums = self.sums_by_shrink[shrink]
        else:
            sums = self.host_sums
        if train.size == 0:
            return sums[test]
        if not self.lut:  # no layer evidence of its own: one level from the training networks
            sums = sums * float(np.exp(np.median(np.log(self.measured[train] / sums[train]))))
        calibration, _ = fit_network_calibration(sums[train], self.measured[train])
        assert calibration is not None
        return calibration.apply(sums[test], np.zeros(test.size))

    def baseline_predict(self, train: np.ndarray, test: np.ndarray) -> np.ndarray | None:
        if train.size == 0:
            return None
        return power_law_baseline(self.host_ms[train], self.measured[train])(self.host_ms[test])

    def split_scores(self, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"transfer": score(self.transfer_predict(train, test), self.measured[test])}
        base = self.baseline_predict(train, test)
        out["baseline"] = None if base is None else score(base, self.measured[test])
        return out


def random_splits(phone: Phone, k: int, choices: int, seed: int, pool: np.ndarray | None = None):
    pool = np.arange(len(phone.figures)) if pool is None else pool
    for c in range(choices):
        rng = np.random.default_rng([seed, k, c])
        train = np.sort(rng.choice(pool, size=k, replace=False)) if k else np.zeros(0, dtype=int)
        test = np.setdiff1d(pool, train)
        yield train, test


def repeated(phone: Phone, k: int, choices: int, seed: int, pool: np.ndarray | None = None) -> dict[str, Any]:
    rows = [phone.split_scores(train, test) for train, test in random_splits(phone, k, choices, seed, pool)]
    base = [r["baseline"] for r in rows if r["baseline"] is not None]
    return {"k": k, "transfer": mean_scores([r["transfer"] for r in rows]),
            "baseline": mean_scores(base) if base else None}


def leave_one_family_out(phone: Phone) -> dict[str, Any]:
    families = sorted({f.family for f in phone.figures})
    out = {}
    for family in families:
        test = np.asarray([i for i, f in enumerate(phone.figures) if f.family == family])
        train = np.asarray([i for i, f in enumerate(phone.figures) if f.family != family], dtype=int)
        out[family] = {"calibrated_on": int(train.size), **phone.split_scores(train, test)}
    return out


def fmt(s: dict[str, Any] | None) -> str:
    if s is None:
        return "n/a (no calibration network)"
    tau = s.get("kendall_tau")
    return (f"within ±10% {100 * s['within_10pct']:5.1f}%  MAPE {s['mape_pct']:5.1f}%  "
            f"tau {'-' if tau is None or (isinstance(tau, float) and math.isnan(tau)) else f'{tau:.3f}'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="results/transfer.db")
    parser.add_argument("--source", default=None, help="host table (default: the host's largest at 224)")
    parser.add_argument("--measure", action="store_true", help="measure missing host layers and networks")
    parser.add_argument("--choices", type=int, default=20)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve", default="0,1,2,3,4,6,8,11")
    parser.add_argument("--host-networks", choices=("measured", "layer-sums"), default="measured",
                        help="the baseline's host whole-network latency: measured end to end here (needs --measure "
                             "once), or the sum of this host's measured layer latencies (when the host is busy)")
    parser.add_argument("--ratio-features", choices=sorted(FEATURE_SETS), default=DEFAULT_FEATURES,
                        help="the per-layer ratio model's feature set (the default is what `mnas table transfer` uses)")
    parser.add_argument("--evidence-weight", type=float, default=EVIDENCE_WEIGHT,
                        help="weight of a layer's own lookup-table figure against the model's, in log space")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from mnas.bench.store import ResultsStore
    from mnas.predictor.selection import choose_table

    store = ResultsStore(Path(args.db))
    source_table = choose_table(store, "host", 224, args.source)
    # Pixel 4 has no layer table: it borrows the shape of Pixel 1's (its level and shrink from its own networks)
    phones = {"pixel1": (pixel1_figures(), pixel1_lut(), None), "pixel4": (pixel4_figures(), None, pixel1_lut())}
    if args.measure:
        layers = [layer for figures, _, _ in phones.values() for layer in figure_layers(figures)]
        layers += [LayerSig.from_key(k) for k in phones["pixel1"][1]]
        for name in ("mnasnet-a1", "mnasnet-b1"):
            layers += figure_layers([NetworkFigure(zoo.get(name), 224, 1.0),
                                     NetworkFigure(zoo.get(name, 0.75), 192, 1.0)])
        measured = measure_extra(store, source_table, layers, progress=not args.json)
        print(f"measured {measured} extra host layers", file=sys.stderr)
    source = source_latency(store, source_table)
    report: dict[str, Any] = {"source_table": source_table.meta.name, "baseline_host_latency": args.host_networks,
                              "ratio_features": args.ratio_features, "evidence_weight": args.evidence_weight,
                              "choices": args.choices, "k": args.k, "seed": args.seed, "phones": {}}
    for name, (figures, lut, prior) in phones.items():
        if args.host_networks == "measured":
            host_ms = host_network_ms(store, figures, args.measure)
        else:
            host_ms = network_sums(lambda ls: source.layers_ms(ls)[0], figures)
        phone = Phone(name, figures, source, source_table.meta, host_ms, lut, prior, args.ratio_features,
                      args.evidence_weight)
        entry: dict[str, Any] = {"figures": len(figures), "families": sorted({f.family for f in figures}),
                                 "lut_layers": len(lut or {}), "prior_layers": len(prior or {}),
                                 "ratio_model": None if phone.model is None else phone.model.to_dict(),
                                 "leave_one_family_out": leave_one_family_out(phone)}
        if name == "pixel1":
            phone.chosen = []
            entry["acceptance"] = repeated(phone, args.k, args.choices, args.seed)
            entry["acceptance"]["chosen_models"] = {c: phone.chosen.count(c) for c in sorted(set(phone.chosen))}
        ks = [int(k) for k in args.curve.split(",") if int(k) < len(figures)]
        entry["learning_curve"] = [repeated(phone, k, args.choices, args.seed) for k in ks]
        report["phones"][name] = entry
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print(f"source table: {report['source_table']}; baseline from host whole networks {args.host_networks}; "
          f"ratio features {args.ratio_features}, evidence weight {args.evidence_weight:g}")
    for name, entry in report["phones"].items():
        print(f"\n== {name}: {entry['figures']} published figures, families {', '.join(entry['families'])}, "
              f"{entry['lut_layers']} lookup-table layers of its own, {entry['prior_layers']} of another phone")
        if "acceptance" in entry:
            acc = entry["acceptance"]
            print(f"acceptance (K={acc['k']} MobileNetV2 + LUT, mean of {acc['transfer']['choices']} choices):")
            print(f"  transfer: {fmt(acc['transfer'])}")
            print(f"  baseline: {fmt(acc['baseline'])}")
            print(f"  shrink chosen on the K networks: {acc['chosen_models']}")
        print("leave one family out:")
        for family, row in entry["leave_one_family_out"].items():
            print(f"  {family:14s} (calibrated on {row['calibrated_on']:2d}) transfer: {fmt(row['transfer'])}")
            print(f"  {'':14s}                    baseline: {fmt(row['baseline'])}")
        print("learning curve (held-out networks, mean over choices):")
        for row in entry["learning_curve"]:
            print(f"  K={row['k']:2d} transfer: {fmt(row['transfer'])} | baseline: {fmt(row['baseline'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
