"""The transfer wired to the results store, the host and shipped files (see `predictor.transfer`).

* `source_latency`: the source device's latency of every layer the transfer needs. The
  source table covers the search space at its resolution; the zoo's other widths and
  resolutions and ReLU6 networks are not in it. The layers of networks with target figures
  (evidence and scoring) and of the target's partial table are **measured on this host**
  when the source is this host's table (a few hundred single-layer models, a few minutes,
  stored as table `<source>-extra`): a learned model is good to ~10% per layer, and the
  evidence is where that error would be multiplied into the ratio model. Every other layer
  of the zoo's range (resolution 96-224, multiplier 0.35-1.4) comes from the learned model
  fitted on the source table (flagged `learned` in each entry).
* `run_transfer` / `save_transfer`: the transfer and a stored, calibrated predictor.
* `write_transfer_file` / `read_transfer_file` / `shipped_predictor`: one gzip JSON in the
  `mnas table export` format plus a `transfer` section (provenance, ratio model, network
  calibration), as shipped in `device_configs/tables/`.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnas.errors import MnasError
from mnas.predictor.calibration import Calibration
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.table import (
    FILE_FORMAT,
    FILE_VERSION,
    LatencyTable,
    find_table,
    import_table,
    load_table,
    save_table,
)
from mnas.predictor.transfer import (
    CALIBRATION_FORMS,
    DEFAULT_FEATURES,
    NetworkFigure,
    SourceLatency,
    TransferResult,
    transfer_table,
    with_resolution,
)
from mnas.space.arch import LayerSig

ZOO_RESOLUTIONS = (96, 128, 160, 192, 224)
ZOO_MULTIPLIERS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "device_configs" / "tables"
TARGET_STATISTIC = "median"  # phones: what published figures and phone tables stand for


def zoo_layers(resolutions: Sequence[int] = ZOO_RESOLUTIONS,
               multipliers: Sequence[float] = ZOO_MULTIPLIERS) -> list[LayerSig]:
    """Every distinct layer of every zoo model at these resolutions and depth multipliers."""
    from mnas.space import zoo

    seen: dict[str, LayerSig] = {}
    for name in zoo.names():
        for multiplier in multipliers:
            try:
                arch = zoo.get(name, multiplier)
            except MnasError:
                continue
            for resolution in resolutions:
                for layer in arch.layers(resolution):
                    seen.setdefault(layer.key, layer)
    return list(seen.values())


def figure_layers(figures: Sequence[NetworkFigure]) -> list[LayerSig]:
    seen: dict[str, LayerSig] = {}
    for figure in figures:
        for layer in figure.arch.layers(figure.resolution, figure.num_classes):
            seen.setdefault(layer.key, layer)
    return list(seen.values())


def extra_table_name(source_name: str) -> str:
    return f"{source_name}-extra"


def source_statistic(table: LatencyTable) -> str:
    from mnas.predictor.fitting import default_statistic

    return default_statistic(table)


def measure_extra(store: Any, source: LatencyTable, layers: Sequence[LayerSig], config: Any = None, *,
                  progress: bool = False) -> int:
    """Measure on this host the `layers` the source table lacks (table `<source>-extra`); how many
    were measured. Only for a source measured on this host with this host's runtime."""
    from mnas.bench.devices import select_devices
    from mnas.bench.types import BenchConfig
    from mnas.predictor.build import build_table
    from mnas.space.search_space import mnasnet

    if source.meta.device_name != "host":
        raise MnasError(f"source table {source.meta.name!r} is of device {source.meta.device_name!r}: expected a "
                        "host table to measure its missing layers on this host (or pass --no-measure)")
    wanted_any = any(layer.key not in source.entries for layer in layers)
    if not wanted_any:
        return 0
    devices = select_devices("host")
    profile = devices[0].profile()
    if (profile.runtime, profile.runtime_version) != (source.meta.runtime, source.meta.runtime_version):
        raise MnasError(f"source table {source.meta.name!r} was measured with {source.meta.runtime} "
                        f"{source.meta.runtime_version}: this host runs {profile.runtime} {profile.runtime_version} "
                        "(pass --no-measure to use the learned model instead)")
    extra = extra_table_name(source.meta.name)
    stored = load_table(store, extra, allow_empty=True).entries if find_table(store, extra) is not None else {}
    wanted = list({layer.key: layer for layer in layers
                   if layer.key not in source.entries and layer.key not in stored}.values())
    if not wanted:
        return 0  # nothing to measure: the host is not even locked
    if config is None:
        config = BenchConfig(warmup_runs=3, num_runs=30, min_secs=0.2, core=None, timeout_s=600.0)
    result = build_table(mnasnet(), source.meta.resolution, devices, store, extra, config, layers=wanted,
                         progress=progress)
    return result.measured


def source_latency(store: Any, source: LatencyTable, *, model: str = "gbr", seed: int = 0) -> SourceLatency:
    """The source table, its `-extra` table when stored, then a learned model fitted on the source."""
    statistic = source_statistic(source)
    tables: list[tuple[str, dict[str, float]]] = [(source.meta.name, source.latencies(statistic))]
    extra_name = extra_table_name(source.meta.name)
    if store is not None and find_table(store, extra_name) is not None:
        extra = load_table(store, extra_name, allow_empty=True)
        if extra.entries:
            tables.append((extra_name, extra.latencies(statistic)))
    fallback = LearnedPredictor.from_table(source, model=model, seed=seed, statistic=statistic)
    return SourceLatency(tables, fallback)


def run_transfer(source: SourceLatency, source_table: LatencyTable, device_name: str, *, name: str | None = None,
                 layer_evidence: dict[str, float] | None = None, figures: Sequence[NetworkFigure] = (),
                 coverage: Sequence[LayerSig] | None = None, evidence_label: str = "",
                 calibration_forms: Sequence[str] = CALIBRATION_FORMS, prior_evidence: dict[str, float] | None = None,
                 prior_label: str = "", ratio_features_set: str = DEFAULT_FEATURES) -> TransferResult:
    """Transfer the source table plus `coverage` (default: the zoo's range) and the figures' layers."""
    layers = [LayerSig.from_key(key) for key in source_table.entries]
    layers += list(zoo_layers() if coverage is None else coverage)
    layers += figure_layers(figures)
    name = name or f"{device_name}-r{source_table.meta.resolution}-transfer"
    return transfer_table(source, layers, device_name=device_name, name=name, source_meta=source_table.meta,
                          layer_evidence=layer_evidence, figures=figures, evidence_label=evidence_label,
                          calibration_forms=calibration_forms, prior_evidence=prior_evidence,
                          prior_label=prior_label, ratio_features_set=ratio_features_set)


# ------------------------------------------------------------------------------ predictors

class LazyLearned(LearnedPredictor):
    """A learned fallback fitted on a table the first time a layer outside it is asked for.

    A shipped table holds every layer of the space at 224 and of the zoo's range, so most
    uses never fit it; an arbitrary arch at another resolution pays the fit (seconds) once.
    """

    def __init__(self, table: LatencyTable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._table = table

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> Any:
        if self.model_ is None:
            self.fit([LayerSig.from_key(k) for k in self._table.entries],
                     list(self._table.latencies(self.statistic).values()),
                     trained_on={"table": self._table.meta.name, "table_id": self._table.table_id})
        return super().predict_layers_ms(layers)


def transferred_predictor(table: LatencyTable, calibration: Calibration | None, resolution: int | None = None,
                          *, lazy: bool = True, model: str = "gbr", seed: int = 0) -> LookupPredictor:
    """A lookup predictor on a transferred table (at `resolution`), its calibration set, with a learned fallback."""
    table = with_resolution(table, resolution or table.meta.resolution)
    if lazy:
        fallback: LearnedPredictor = LazyLearned(table, model=model, seed=seed, resolution=table.meta.resolution,
                                                 num_classes=table.meta.num_classes, statistic=TARGET_STATISTIC)
    else:
        fallback = LearnedPredictor.from_table(table, model=model, seed=seed, statistic=TARGET_STATISTIC)
    predictor = LookupPredictor(table, fallback=fallback, statistic=TARGET_STATISTIC)
    predictor.calibration_ = calibration
    return predictor


def save_transfer(store: Any, result: TransferResult, *, resolutions: Sequence[int] = (),
                  only: int | None = None) -> list[dict[str, Any]]:
    """Store the transferred table and a calibrated predictor on it (also one per extra resolution:
    the same entries under `<name>@r<res>`; `only`: just that resolution); returns
    [{table, table_id, predictor_id, resolution}]."""
    from mnas.predictor.registry import save_predictor

    out = []
    base = result.table
    wanted = [base.meta.resolution, *[r for r in resolutions if r != base.meta.resolution]]
    fallback = None  # one learned fallback (fitted once, on the transferred entries) for every resolution
    for resolution in wanted if only is None else [only]:
        name = base.meta.name if resolution == base.meta.resolution else f"{base.meta.name}@r{resolution}"
        table = with_resolution(base, resolution)
        table_id = save_table(store, table, name)
        table = load_table(store, table_id)
        predictor = transferred_predictor(table, result.calibration, lazy=fallback is not None)
        if fallback is None:
            fallback = predictor.fallback
        else:
            predictor.fallback = fallback
        metrics = {"statistic": TARGET_STATISTIC, "table": name, "table_entries": len(table), "transfer": result.provenance,
                   "calibration_samples": None if result.calibration is None else result.calibration.n,
                   "calibration_set": [{"arch_hash": _hash(f["arch"]), **f}
                                       for f in (result.provenance.get("evidence") or {}).get("networks") or []]}
        predictor_id = save_predictor(store, predictor, table_id, metrics)
        out.append({"table": name, "table_id": table_id, "predictor_id": predictor_id, "resolution": resolution})
    return out


def _hash(arch_text: str) -> str:
    from mnas.space.arch import Arch

    return Arch.parse(arch_text).hash


# ------------------------------------------------------------------------------ shipped files

def write_transfer_file(result: TransferResult, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """The table in the `mnas table export` format plus a `transfer` section; gzip when `.gz`; atomic."""
    path = Path(path)
    entries = []
    for entry in result.table.entries.values():
        item = asdict(entry)
        item["median_ms"] = float(f"{entry.median_ms:.6g}")
        m = dict(entry.measurement or {})
        for key in ("source_ms", "ratio", "evidence_ms"):
            if isinstance(m.get(key), float):
                m[key] = float(f"{m[key]:.6g}")
        item["measurement"] = m
        entries.append(item)
    payload = {"format": FILE_FORMAT, "version": FILE_VERSION, "meta": result.table.meta.to_dict(),
               "entries": entries,
               "transfer": {**result.provenance, **(extra or {}),
                            "calibration_coefficients": None if result.calibration is None
                            else asdict(result.calibration)}}
    data = json.dumps(payload, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # a file to ship and share, not a private temp file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class ShippedTable:
    table: LatencyTable
    calibration: Calibration | None
    transfer: dict[str, Any]
    path: Path


def read_transfer_file(path: str | Path) -> ShippedTable:
    """A file `write_transfer_file` wrote (also a plain `mnas table export` file: no calibration)."""
    from mnas.predictor.table import _read_json

    path = Path(path)
    table = import_table(path)
    data = _read_json(path)
    transfer = data.get("transfer") or {}
    coefficients = transfer.get("calibration_coefficients")
    try:
        calibration = Calibration(**coefficients) if coefficients else None
    except TypeError as exc:
        raise MnasError(f"transferred table {str(path)!r}: calibration is malformed ({exc}): expected one written "
                        "by `mnas table transfer`") from None
    return ShippedTable(table, calibration, transfer, path)


_SHIPPED_CACHE: dict[Path, ShippedTable] = {}


def shipped_path(device_name: str, directory: Path | None = None) -> Path | None:
    path = (directory or SHIPPED_DIR) / f"{device_name}.json.gz"
    return path if path.is_file() else None


def shipped_table(device_name: str, directory: Path | None = None) -> ShippedTable | None:
    path = shipped_path(device_name, directory)
    if path is None:
        return None
    if path not in _SHIPPED_CACHE:
        _SHIPPED_CACHE[path] = read_transfer_file(path)
    return _SHIPPED_CACHE[path]


def shipped_predictor(device_name: str, resolution: int, directory: Path | None = None) -> LookupPredictor | None:
    """The calibrated predictor of the table shipped for `device_name` at `resolution`, or None."""
    shipped = shipped_table(device_name, directory)
    if shipped is None:
        return None
    predictor = transferred_predictor(shipped.table, shipped.calibration, resolution)
    predictor.metrics = {"transfer": {k: v for k, v in shipped.transfer.items() if k != "source_meta"},
                         "shipped_file": str(shipped.path),
                         "calibration_samples": None if shipped.calibration is None else shipped.calibration.n}
    return predictor
