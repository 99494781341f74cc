"""Phones compared: the models measured on each of several devices, side by side (`mnas results compare`).

Why it is built this way:
- A device is named as the user names it elsewhere (`pixel4` or a serial, `host`); two
  phones of one model under one name are one column.
- Each device's figure is its headline statistic (`bench.types.headline_statistic`: the
  minimum on the host, the median on phones), the same number tables and predictors use;
  the statistic is shown with it, since a host minimum beside a phone median is a
  difference of method, not only of speed.
- Of several stored figures of one model on one device, the newest that passes the one
  reuse rule (`bench.measure.reuse_blocker`: not throttled, not contended) stands for it;
  only when none does is a flagged one shown, with its flag.
- The conditions that differ between a model's figures (runtime, statistic, threads,
  runs, delegate, flags) are listed with the row, so a ratio is never read without them.
- A model measured on only one of the devices cannot be compared: it is counted, not
  listed (unless asked), so single-layer table entries on one device do not flood the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnas.bench.measure import reuse_blocker
from mnas.bench.types import headline_statistic
from mnas.errors import MnasError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mnas.bench.store import ResultsStore

# conditions_key parts that are not conditions to compare: the pinned core is each device's own
_NOT_COMPARED = frozenset({"core"})


@dataclass(frozen=True)
class DeviceFigure:
    """One device's figure for one model: its headline latency and the conditions it was taken under."""

    measurement_id: int
    device_id: str
    device_name: str
    latency_ms: float
    statistic: str
    measured_at: float
    model_label: str | None
    runtime: str
    runtime_version: str
    conditions_key: str
    flag: str | None  # "throttled" / "contended": no unflagged figure was stored

    def to_dict(self) -> dict[str, Any]:
        import datetime as dt

        return {"measurement_id": self.measurement_id, "device_id": self.device_id,
                "device_config": None if self.device_name == "host" else self.device_name,
                "headline_ms": self.latency_ms, "headline_statistic": self.statistic,
                "measured_at": dt.datetime.fromtimestamp(self.measured_at, dt.timezone.utc).isoformat(
                    timespec="seconds"),
                "model_name": self.model_label, "runtime": self.runtime, "runtime_version": self.runtime_version,
                "conditions": self.conditions_key, "flags": [self.flag] if self.flag else []}


@dataclass
class ModelRow:
    """One model across the devices: a figure per device (None where it was not measured)."""

    model_sha256: str
    model_name: str
    arch: str | None
    figures: list[DeviceFigure | None]

    def ratios(self) -> list[float | None]:
        """Each device's latency over the first device's (None where either is missing)."""
        first = self.figures[0]
        return [None if f is None or first is None or not first.latency_ms else f.latency_ms / first.latency_ms
                for f in self.figures]

    def differences(self) -> dict[str, list[str | None]]:
        """Condition -> its value per device, for the conditions that are not the same on every measured device."""
        present = [f for f in self.figures if f is not None]
        if len(present) < 2:
            return {}
        facts: list[dict[str, str] | None] = [None if f is None else _facts(f) for f in self.figures]
        names = list(dict.fromkeys(name for fact in facts if fact is not None for name in fact))
        differing = {}
        for name in names:
            values = [None if fact is None else fact.get(name, "-") for fact in facts]
            if len({v for v in values if v is not None}) > 1:
                differing[name] = values
        return differing


def _facts(figure: DeviceFigure) -> dict[str, str]:
    facts = {"statistic": figure.statistic, "runtime": figure.runtime}
    facts.update({k: v for k, v in _conditions(figure.conditions_key).items() if k not in _NOT_COMPARED})
    facts["flag"] = figure.flag or "none"
    return facts


def _conditions(key: str) -> dict[str, str]:
    """`threads=1;warmup=5;...` as a dict (defaults filled in: a missing delegate is the default one)."""
    parts = dict(part.split("=", 1) for part in key.split(";") if "=" in part)
    parts.setdefault("delegate", "default")
    return parts


@dataclass
class Comparison:
    """Models measured on at least two of `devices` (or all, with `include_single`)."""

    devices: list[str]
    device_ids: list[list[str]]
    device_names: list[list[str]]
    rows: list[ModelRow]
    single_device_models: int = 0
    statistics: list[str] = field(default_factory=list)

    def timestamps(self) -> list[float]:
        return [f.measured_at for row in self.rows for f in row.figures if f is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": [{"device_spec": d, "device_ids": ids,
                         "device_configs": [None if n == "host" else n for n in names], "headline_statistic": stat}
                        for d, ids, names, stat in zip(self.devices, self.device_ids, self.device_names,
                                                       self.statistics, strict=True)],
            "models": [{"model_name": r.model_name, "model_sha256": r.model_sha256, "arch": r.arch,
                        "figures": [None if f is None else {"device_spec": d, **f.to_dict()}
                                    for d, f in zip(self.devices, r.figures, strict=True)],
                        "ratio_to_first": r.ratios(), "differing_conditions": r.differences()}
                       for r in self.rows],
            "single_device_models": self.single_device_models,
        }


def compare_devices(store: ResultsStore, devices: Sequence[str], *, model: str | None = None,
                    since: float | None = None, include_single: bool = False) -> Comparison:
    """The models measured on each of `devices` (names or ids), one headline figure per device.

    MnasError (exit 2) for fewer than two devices, a device named twice, or a device with no
    stored measurement (naming the devices that have some).
    """
    devices = list(devices)
    if len(devices) < 2:
        raise MnasError(f"results compare: expected at least two devices, got {len(devices)} ({', '.join(devices)})")
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise MnasError(f"results compare: device {repeated[0]!r} given twice: expected distinct devices")
    rows = store.recent_measurements(None, device=devices, model=model, since=since)
    by_device: list[list[dict[str, Any]]] = [[r for r in rows if spec in (r["device_name"], r["device_id"])]
                                             for spec in devices]
    for spec, found in zip(devices, by_device, strict=True):
        if not found:
            known = sorted({name for (name,) in store.read("SELECT DISTINCT device_name FROM measurements")})
            what = " matching the filters" if model is not None or since is not None else ""
            raise MnasError(f"results compare: no measurements{what} on device {spec!r} "
                            f"(stored devices: {', '.join(known) or 'none'})")
    shas = list(dict.fromkeys(r["model_sha256"] for r in rows))
    per_device = [{r["model_sha256"] for r in found} for found in by_device]
    measured_on = {sha: sum(sha in seen for seen in per_device) for sha in shas}
    kept = [sha for sha in shas if include_single or measured_on[sha] >= 2]
    extras = _extras(store, [r["id"] for r in rows if r["model_sha256"] in set(kept)])
    grouped: list[dict[str, list[dict[str, Any]]]] = []
    for found in by_device:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in found:
            groups.setdefault(r["model_sha256"], []).append(r)
        grouped.append(groups)
    model_rows = []
    for sha in kept:
        figures = [_best(groups.get(sha, []), extras) for groups in grouped]
        present = [f for f in figures if f is not None]
        if not present:  # measured, but with no figure of the headline statistic (a tool without a median)
            continue
        newest = max(present, key=lambda f: f.measured_at)
        arch = next(r["arch"] for groups in grouped for r in groups.get(sha, []))
        model_rows.append(ModelRow(sha, newest.model_label or sha[:12], arch, figures))
    model_rows.sort(key=lambda r: (r.model_name, r.model_sha256))
    names = [sorted({r["device_name"] for r in found}) for found in by_device]
    return Comparison(
        devices=devices, device_ids=[sorted({r["device_id"] for r in found}) for found in by_device],
        device_names=names, rows=model_rows, single_device_models=sum(1 for sha in shas if measured_on[sha] < 2),
        statistics=[headline_statistic(n[0]) for n in names])


def _extras(store: ResultsStore, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """`extra` of each measurement (decoded in Python: SQLite's JSON reader refuses the NaN Python writes)."""
    extras: dict[int, dict[str, Any]] = {}
    ids = list(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for i, doc in store.read(f"SELECT id, measurement_json FROM measurements WHERE id IN "
                                 f"({', '.join('?' * len(chunk))})", chunk):
            extras[int(i)] = json.loads(doc).get("extra") or {}
    return extras


def _best(found: list[dict[str, Any]], extras: dict[int, dict[str, Any]]) -> DeviceFigure | None:
    """The newest unflagged figure among one device's rows of one model (newest first), else the newest flagged one."""
    candidates = []
    for row in found:
        statistic = headline_statistic(row["device_name"])
        value = row["min_ms"] if statistic == "min" else row["median_ms"]
        if value is None or not math.isfinite(value):
            continue
        flag = reuse_blocker(row["throttled"], extras.get(int(row["id"])))
        candidates.append(DeviceFigure(
            measurement_id=int(row["id"]), device_id=row["device_id"], device_name=row["device_name"],
            latency_ms=float(value), statistic=statistic, measured_at=float(row["timestamp"]),
            model_label=row["model_label"], runtime=row["runtime"], runtime_version=row["runtime_version"],
            conditions_key=row["conditions_key"], flag=flag))
    unflagged = [c for c in candidates if c.flag is None]
    return (unflagged or candidates or [None])[0]


def comparison_figure(comparison: Comparison) -> Figure:
    """A grouped bar chart: one cluster per model, one bar per device, titled with the devices, the
    measurement times and the unit; the legend says each device's statistic."""
    from mnas.bench.plots import describe_run, grouped_bars

    labels = [f"{d} ({stat})" for d, stat in zip(comparison.devices, comparison.statistics, strict=True)]
    series = {label: [None if row.figures[i] is None else row.figures[i].latency_ms for row in comparison.rows]
              for i, label in enumerate(labels)}
    marks = {label: ["*" if row.figures[i] is not None and row.figures[i].flag else "" for row in comparison.rows]
             for i, label in enumerate(labels)}
    flagged = any("*" in mark for column in marks.values() for mark in column)
    return grouped_bars([row.model_name for row in comparison.rows], series, marks=marks,
                        title=f"latency by device: {' vs '.join(comparison.devices)}",
                        subtitle=f"{len(comparison.rows)} models, {describe_run(comparison.timestamps())}"
                                 + ("; * throttled or contended" if flagged else ""))
