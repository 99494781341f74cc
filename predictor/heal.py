"""A table that heals itself: after a build, re-measure the entries that look wrong until the table is stable.

A layer timed while another process held the core (or on a throttled phone) is slower than
the layer is; one such entry inside a network makes the whole prediction too high. Two kinds
of entry are suspect:

1. **flagged** entries: the one reuse rule (`bench.measure.reuse_blocker`, through
   `table.retake_reasons`) says they were taken contended or throttled;
2. **outliers**: the learned layer model (`LearnedPredictor`, on `features`) fitted on the
   table predicts each entry *out of fold* (K-fold: an entry never vouches for itself); an
   entry whose log-space residual lies beyond `outlier_sd` robust standard deviations
   (1.4826 x the median absolute deviation) of all residuals is suspect, and so is one
   more than `max_dev` away (a relative error no statistic should excuse); one within
   `min_dev` never is. Only entries *slower* than predicted, by default: interference only
   ever adds time, and an entry faster than the model expects is the model's miss.

Each suspect is measured again through the build's own path (the device pool, the device
lock, the contention guard). What is kept (`settle`): a clean figure beats a flagged one;
between two equally clean (or equally flagged) figures the faster one (interference only ever
adds time: the same reason the host keeps the minimum of its runs). When the re-take agrees
with the stored figure within `agree`, the entry is *confirmed* and the healing pass does
not re-take it again (its flag, if any, stays: the reuse rule still judges it). Rounds go
on — refit, find suspects, re-take — until no suspect is left, a round changed no figure,
or `max_rounds`.

Every re-taken entry carries a `heal` record in its conditions (`HEAL_KEY`): how many times
it was re-taken and why, whether it is confirmed, and its first figure (so the table as
first built can be rebuilt for comparison: `unhealed_table`). Each re-take is stored in its
own transaction the moment it arrives, so an interrupted healing pass keeps what it did and
a re-run of the build resumes it (confirmed entries are skipped).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mnas.bench.types import check_statistic, headline_statistic
from mnas.errors import MnasError
from mnas.predictor.table import LatencyTable, TableEntry, conditions_blocker, entry_ms
from mnas.space.arch import LayerSig

__all__ = ["HEAL_KEY", "HealPolicy", "HealReport", "entry_flag", "heal_record", "outlier_scores", "settle",
           "suspects", "unhealed_table"]

HEAL_KEY = "heal"
MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample times this is its standard deviation


@dataclass(frozen=True)
class HealPolicy:
    """How the healing pass judges entries (see the module docstring)."""

    max_rounds: int = 3
    outlier_sd: float = 4.0  # robust standard deviations of the out-of-fold log residuals
    max_dev: float = 0.5  # an entry this far (relative) from its out-of-fold prediction is an outlier anyway
    min_dev: float = 0.1  # ... and one closer than this never is (a near-perfect model has a tiny sd)
    two_sided: bool = False  # True: entries faster than predicted are suspect too (interference only adds time)
    folds: int = 5
    agree: float = 0.05  # a re-take within this (relative) of the stored figure confirms it
    model: str = "gbr"
    seed: int = 0
    min_entries: int = 20  # fewer entries: no outlier model (flagged entries are still re-taken)
    outliers: bool = True  # False: re-take flagged entries only

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise MnasError(f"heal rounds = {self.max_rounds}: expected a round count >= 0")
        if self.outlier_sd <= 0:
            raise MnasError(f"outlier sd = {self.outlier_sd}: expected a number of robust sd > 0")
        if self.folds < 2:
            raise MnasError(f"folds = {self.folds}: expected at least 2 (out-of-fold predictions)")
        if not 0 <= self.agree < 1 or not 0 <= self.min_dev < self.max_dev:
            raise MnasError(f"agree = {self.agree}, min_dev = {self.min_dev}, max_dev = {self.max_dev}: "
                            "expected 0 <= agree < 1 and 0 <= min_dev < max_dev")


@dataclass
class HealReport:
    """What one healing pass did."""

    rounds: int = 0  # rounds that re-took something
    retaken: int = 0  # re-takes (an entry re-taken in two rounds counts twice)
    entries: int = 0  # distinct entries re-taken
    by_reason: dict[str, int] = field(default_factory=dict)  # contended / throttled / outlier -> re-takes
    replaced: int = 0  # re-takes whose figure replaced the stored one
    confirmed: int = 0  # re-takes that agreed with the stored figure (not re-taken again)
    stable: bool = True  # False: the round cap stopped it with suspects left
    left: int = 0  # suspects left when it stopped
    per_round: list[dict[str, Any]] = field(default_factory=list)
    robust_sd: float | None = None  # of the out-of-fold log residuals, first round
    table_entries: int = 0
    elapsed_s: float = 0.0

    @property
    def share(self) -> float | None:
        """Distinct entries re-taken over the table's entries."""
        return self.entries / self.table_entries if self.table_entries else None

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "retaken": self.retaken, "entries": self.entries,
                "by_reason": dict(self.by_reason), "replaced": self.replaced, "confirmed": self.confirmed,
                "stable": self.stable, "left": self.left, "per_round": list(self.per_round),
                "robust_sd": self.robust_sd, "table_entries": self.table_entries, "share": self.share,
                "elapsed_s": self.elapsed_s}


def entry_flag(entry: TableEntry) -> str | None:
    """The reuse rule's verdict on a stored entry ("contended", "throttled" or None)."""
    return conditions_blocker(entry.measurement)


def heal_record(entry: TableEntry) -> dict[str, Any]:
    record = (entry.measurement or {}).get(HEAL_KEY)
    return dict(record) if isinstance(record, Mapping) else {}


def _ms(entry: TableEntry, statistic: str) -> float:
    return entry_ms(entry, statistic) if statistic == "min" and (entry.measurement or {}).get("min_ms") else entry.median_ms


def outlier_scores(table: LatencyTable, policy: HealPolicy, statistic: str) -> tuple[dict[str, float], float | None]:
    """Each entry's out-of-fold log residual (measured over predicted) and their robust sd.

    Empty (and None) below `policy.min_entries` entries.
    """
    from mnas.predictor.learned import LearnedPredictor

    keys = list(table.entries)
    if len(keys) < max(policy.min_entries, policy.folds):
        return {}, None
    layers = [LayerSig.from_key(key) for key in keys]
    ms = np.asarray([_ms(table.entries[key], statistic) for key in keys], dtype=np.float64)
    order = np.random.default_rng(policy.seed).permutation(len(keys))
    predicted = np.empty(len(keys))
    for fold in range(policy.folds):
        test = order[fold::policy.folds]
        train = np.setdiff1d(order, test)
        model = LearnedPredictor(policy.model, seed=policy.seed, resolution=table.meta.resolution,
                                 num_classes=table.meta.num_classes, statistic=statistic)
        model.fit([layers[i] for i in train], ms[train])
        predicted[test] = model.predict_layers_ms([layers[i] for i in test])
    residual = np.log(ms) - np.log(predicted)
    centre = float(np.median(residual))
    sd = MAD_TO_SD * float(np.median(np.abs(residual - centre)))
    return {key: float(r - centre) for key, r in zip(keys, residual, strict=True)}, sd


def suspects(table: LatencyTable, policy: HealPolicy, statistic: str,
             scores: Mapping[str, float] | None = None, sd: float | None = None) -> dict[str, str]:
    """Entries to re-take now, with why: flagged ones (contended, throttled), then outliers; confirmed ones never."""
    if scores is None:
        scores, sd = outlier_scores(table, policy, statistic) if policy.outliers else ({}, None)
    found: dict[str, str] = {}
    limit = None if sd is None else min(max(policy.outlier_sd * sd, math.log1p(policy.min_dev)),
                                        math.log1p(policy.max_dev))
    for key, entry in table.entries.items():
        if heal_record(entry).get("confirmed"):
            continue
        flag = entry_flag(entry)
        if flag is not None:
            found[key] = flag
        elif limit is not None and key in scores and (abs(scores[key]) if policy.two_sided else scores[key]) > limit:
            found[key] = "outlier"
    return found


def settle(old: TableEntry, new: TableEntry, reason: str, statistic: str, agree: float) -> tuple[TableEntry, bool, bool]:
    """Which of a stored entry and its re-take is kept, with its `heal` record: (entry, replaced, confirmed).

    A clean figure beats a flagged one; otherwise the faster wins. The re-take confirms the
    entry when the two agree within `agree` (relative).
    """
    old_flag, new_flag = entry_flag(old), entry_flag(new)
    old_ms, new_ms = _ms(old, statistic), _ms(new, statistic)
    if (old_flag is None) != (new_flag is None):
        take_new = old_flag is not None
    else:
        take_new = new_ms < old_ms
    confirmed = abs(math.log(new_ms / old_ms)) <= math.log1p(agree)
    record = heal_record(old)
    first = record.get("first") or {"median_ms": old.median_ms, "min_ms": (old.measurement or {}).get("min_ms"),
                                    "flag": old_flag}
    reasons = list(record.get("reasons") or [])
    record = {"retakes": int(record.get("retakes") or 0) + 1, "reasons": reasons + [reason], "confirmed": confirmed,
              "first": first}
    kept = new if take_new else old
    return replace(kept, measurement={**(kept.measurement or {}), HEAL_KEY: record}), take_new, confirmed


def unhealed_table(table: LatencyTable, name: str | None = None) -> LatencyTable:
    """The table as its build stored it, before any healing re-take (each healed entry back at its first figure)."""
    entries = {}
    for key, entry in table.entries.items():
        first = heal_record(entry).get("first")
        if first:
            conditions = {k: v for k, v in (entry.measurement or {}).items() if k != HEAL_KEY}
            conditions["min_ms"] = first.get("min_ms")
            conditions["contended"] = first.get("flag") == "contended"
            conditions["throttled"] = first.get("flag") == "throttled"
            entry = replace(entry, median_ms=float(first["median_ms"]), measurement=conditions)
        entries[key] = entry
    meta = replace(table.meta, name=name) if name else table.meta
    return LatencyTable(meta=meta, entries=entries, table_id=None)


def count_reasons(found: Mapping[str, str]) -> dict[str, int]:
    return dict(Counter(found.values()))


def table_statistic(table: LatencyTable, statistic: str | None = None) -> str:
    """The statistic residuals are judged on: the table's headline one (min on the host, median on phones)."""
    return check_statistic(statistic or headline_statistic(table.meta.device_name))
