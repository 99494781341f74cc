"""Published end-to-end latencies: figures others measured on real phones, with provenance.

A published figure (`PublishedFigure`) is one whole network's latency on a named phone as a
paper, README or benchmark printed it: the device name, the model as the source wrote it, the
mnas arch it maps onto (canonical string, depth multiplier applied), the input resolution, the
latency in milliseconds, the source, and the runtime and thread count when the source states
them; every other column of the source file is kept as `metadata`.

Published figures are NOT measurements. They were not taken here, so they have no timing
conditions, no runs, no statistic, no model file: they live in their own table
(`published_figures`, component "published") and never in `measurements`. The one reuse rule
(`bench.measure.find_reusable`) reads `measurements` only, so no path that measures (`mnas
bench`, table builds, calibration, the search) can ever take a published figure as if this
host, or a phone attached here, had measured it. They are read only through
`published_figures()` (e.g. to transfer a latency predictor to a phone) and listed by
`mnas results list`.

`import_published` reads a CSV: column `model` (a zoo name, an arch string, or a published
name mnas maps: TF's `mobilenet_v2_1.0_224` / `Mobilenet_V1_0.25_128`, pytorchcv's
`mobilenetv2_w1`, `proxylessnas_mobile`, ... see `resolve_model`), `multiplier` (or
`depth_multiplier`), `resolution` and the latency column (`latency_ms`, or the one `column`
names). Multiplier and resolution may be left out where the name carries them. The import is
all or nothing:

* a structural error (missing column, empty model name, a latency that is not a positive
  finite number, a multiplier or resolution that is not a number, a row that contradicts its
  own name, two rows or a stored figure giving different latencies for the same key) stores
  nothing and raises one `MnasError` line naming the row and what was expected (exit 2);
* a model mnas cannot express, or a row with no figure in the chosen column, is reported by
  name in `ImportReport.skipped` and the rest is imported;
* a figure already stored under the same key (device, arch, resolution, source, runtime,
  threads, column) with the same latency counts as `already_stored`, so a re-import adds
  nothing. The whole import is one transaction.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.arch import Arch

SCHEMA_COMPONENT = "published"
# One statement per migration, applied once each, in order (ResultsStore.ensure_component_schema).
# runtime '' / threads 0 / column '' stand for "not stated": SQLite's UNIQUE treats NULLs as
# distinct, which would let a re-import of a figure without runtime add a duplicate.
MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS published_figures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_name TEXT NOT NULL,
        model_name TEXT NOT NULL,
        family TEXT NOT NULL,
        arch TEXT NOT NULL,
        arch_hash TEXT NOT NULL,
        resolution INTEGER NOT NULL,
        multiplier REAL NOT NULL,
        latency_ms REAL NOT NULL,
        source TEXT NOT NULL,
        runtime TEXT NOT NULL DEFAULT '',
        threads INTEGER NOT NULL DEFAULT 0,
        column_name TEXT NOT NULL DEFAULT '',
        unit TEXT NOT NULL,
        file_name TEXT NOT NULL,
        metadata TEXT NOT NULL,
        imported_at TEXT NOT NULL,
        UNIQUE (device_name, arch, resolution, source, runtime, threads, column_name))""",
    "CREATE INDEX IF NOT EXISTS published_figures_device ON published_figures (device_name, family)",
]

DEFAULT_COLUMN = "latency_ms"
MULTIPLIER_COLUMNS = ("multiplier", "depth_multiplier")
UNITS = {"ms": 1.0, "us": 1000.0}  # divisor to milliseconds
# mobile-ml-benchmark's columns: <phone>|<cores>|<float|quant>|<statistic>, in microseconds
_PIPE_COLUMN = re.compile(r"^[^|]+\|[^|]+\|[^|]+\|(mean|median|min|max|std)$")
_TF_MOBILENET = re.compile(r"^mobilenet_v([12])_(\d+(?:\.\d+)?)_(\d+)$", re.IGNORECASE)
_REL_SAME = 1e-9


class Store(Protocol):
    """What this module needs of `mnas.bench.store.ResultsStore`."""

    def transaction(self) -> Any: ...

    def read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]: ...

    def ensure_component_schema(self, component: str, migrations: Sequence[str]) -> Any: ...


def ensure_schema(store: Store) -> None:
    store.ensure_component_schema(SCHEMA_COMPONENT, MIGRATIONS)


@dataclass(frozen=True)
class PublishedFigure:
    """One published whole-network latency (not measured here: no conditions, no runs)."""

    figure_id: int
    device_name: str       # e.g. "pixel1"
    model_name: str        # as written in the source, e.g. "mobilenet_v2_1.0_224" or "mobilenetv2_w1"
    family: str            # zoo family: "mobilenet-v2", "mobilenet-v1", "proxylessnas", "mnasnet", "spnasnet"; "arch" for arch strings
    arch: str              # canonical mnas arch string (multiplier applied), parseable by Arch.parse
    resolution: int
    multiplier: float      # the width multiplier the source names (the arch is authoritative)
    latency_ms: float
    source: str
    runtime: str | None
    threads: int | None
    metadata: dict         # the other CSV columns, as written
    imported_at: str       # ISO-8601 (UTC)
    column: str = ""       # the source column the latency came from
    unit: str = "ms"       # that column's unit (latency_ms is always milliseconds)

    def to_arch(self) -> Arch:
        return Arch.parse(self.arch)


@dataclass
class ImportReport:
    """What an import did: figures added, figures already stored, rows skipped (by model name)."""

    path: str
    device: str
    column: str
    unit: str
    rows: int = 0
    imported: int = 0
    already_stored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model_name, reason)
    skipped_rows: list[int] = field(default_factory=list)  # the file line of each skipped row

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "device_config": self.device, "column": self.column, "unit": self.unit,
                "rows": self.rows, "imported": self.imported, "already_stored": self.already_stored,
                "skipped": [{"row": row, "model_name": name, "reason": reason}
                            for row, (name, reason) in zip(self.skipped_rows, self.skipped, strict=True)]}


class Unexpressible(MnasError):
    """A model name mnas cannot turn into an arch: the row is skipped, not the file refused."""


@dataclass(frozen=True)
class ResolvedModel:
    family: str
    multiplier: float
    resolution: int
    arch: Arch


# --------------------------------------------------------------------------- model names

def _check_zoo(name: str, multiplier: float, resolution: int) -> Arch:
    try:
        zoo.check_resolution(resolution)
        return zoo.get(name, multiplier)
    except MnasError as exc:
        raise Unexpressible(str(exc)) from None


def resolve_model(name: str, multiplier: float | None, resolution: int | None) -> ResolvedModel:
    """The arch a published model name stands for, at its multiplier and resolution.

    `multiplier` / `resolution` are the row's columns (None where the file has none or the
    cell is empty). Names understood:

    * a zoo name (`mobilenet-v2`, `mnasnet-a1`, ...): the columns, else x1.0 at its default;
    * TF's `mobilenet_v1_<m>_<res>` / `mobilenet_v2_<m>_<res>` (any case): MobileNetV1/V2 with
      the official depth rules (`zoo.get`);
    * pytorchcv names (`zoo.pytorchcv_arch`), at pytorchcv's fixed 224x224;
    * an arch string (`stem32,r1_k3_s11_e1_i32_o16,...`): multiplier 1, resolution from the
      column or 224.

    MnasError (a structural error) when the columns contradict the name; `Unexpressible`
    when mnas cannot express the model.
    """

    def agree(what: str, column: float | None, named: float) -> None:
        if column is not None and abs(column - named) > 1e-6:
            raise MnasError(f"{what} column {column:g} disagrees with the name's {named:g}: expected the same value")

    text = name.strip()
    if text in zoo.names():
        mult = 1.0 if multiplier is None else multiplier
        res = zoo.entry(text).default_resolution if resolution is None else resolution
        return ResolvedModel(zoo.family(text), mult, res, _check_zoo(text, mult, res))
    match = _TF_MOBILENET.match(text)
    if match is not None:
        version, mult_text, res_text = match.groups()
        mult, res = float(mult_text), int(res_text)
        agree("multiplier", multiplier, mult)
        agree("resolution", resolution, res)
        zoo_name = f"mobilenet-v{version}"
        return ResolvedModel(zoo_name, mult, res, _check_zoo(zoo_name, mult, res))
    try:
        family, mult, arch = zoo.pytorchcv_arch(text)
    except MnasError as exc:
        pytorchcv_error: str | None = str(exc)
    else:
        if multiplier is not None:
            agree("multiplier", multiplier, mult)
        agree("resolution", resolution, 224)
        return ResolvedModel(family, mult, 224, arch)
    if re.match(r"^(stem\d+|r\d+_)", text):
        if multiplier is not None and multiplier != 1.0:
            raise MnasError(f"multiplier column {multiplier:g} for an arch string: expected 1 (or empty); "
                            "write the scaled filters into the arch string")
        try:
            arch = Arch.parse(text)
        except MnasError as exc:
            raise Unexpressible(f"not an arch mnas can express: {exc}") from None
        return ResolvedModel("arch", 1.0, 224 if resolution is None else resolution, arch)
    if pytorchcv_error is not None and "not expressible" not in pytorchcv_error:
        raise Unexpressible(pytorchcv_error)  # a known pytorchcv family with its own reason
    raise Unexpressible("unknown model: not a zoo name (mnas arch list), mobilenet_v1/v2_<multiplier>_<resolution>, "
                        "a mapped pytorchcv name or an arch string")


# --------------------------------------------------------------------------- the CSV

def column_unit(column: str, unit: str | None) -> str:
    """The unit of a latency column: `unit` if given, else from the column's name."""
    if unit is not None:
        if unit not in UNITS:
            raise MnasError(f"unit {unit!r}: expected one of {', '.join(UNITS)}")
        return unit
    if _PIPE_COLUMN.match(column):
        return "us"  # mobile-ml-benchmark states its figures in microseconds
    lowered = column.lower()
    if lowered == DEFAULT_COLUMN or lowered.endswith("_ms") or "_ms_" in lowered:
        return "ms"
    if lowered.endswith("_us") or "_us_" in lowered:
        return "us"
    raise MnasError(f"column {column!r}: cannot tell its unit from its name: expected a name ending in _ms or "
                    "_us, or pass --unit ms|us")


@dataclass
class _Row:
    line: int
    model_name: str
    resolved: ResolvedModel | None
    latency_ms: float | None
    metadata: dict[str, str]
    skip_reason: str | None = None


def _number(text: str, what: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise MnasError(f"{where}: {what} {text!r}: expected a number") from None
    if not math.isfinite(value):
        raise MnasError(f"{where}: {what} {text!r}: expected a finite number")
    return value


def _read_rows(path: Path, column: str, divisor: float) -> list[_Row]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise MnasError(f"{path}: no such file: expected a CSV of published figures") from None
    except OSError as exc:
        raise MnasError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if not header:
                raise MnasError(f"{path}: empty file: expected a header line with columns model and {column}")
            header = [h.strip() for h in header]
            reader.fieldnames = header
            if len(set(header)) != len(header):
                dupes = sorted({h for h in header if header.count(h) > 1})
                raise MnasError(f"{path}: header: column {dupes[0]!r} appears twice: expected unique column names")
            for required in ("model", column):
                if required not in header:
                    hint = "" if column != DEFAULT_COLUMN else " (or --column NAME for the latency column)"
                    raise MnasError(f"{path}: header: no column {required!r}: expected columns model, multiplier, "
                                    f"resolution and {column}{hint}; the file has {', '.join(header)}")
            if column.endswith("|std") or column.endswith("_std"):
                raise MnasError(f"{path}: column {column!r} holds a spread, not a latency: expected a mean or "
                                "median column")
            mult_column = next((c for c in MULTIPLIER_COLUMNS if c in header), None)
            used = {"model", column, "resolution", *([mult_column] if mult_column else [])}
            rows: list[_Row] = []
            for record in reader:
                line = reader.line_num
                if None in record:
                    raise MnasError(f"{path}: row {line}: {len(header) + len(record[None])} fields: expected "
                                    f"{len(header)} as in the header")
                if any(value is None for value in record.values()):
                    raise MnasError(f"{path}: row {line}: fewer fields than the header's {len(header)}")
                name = record["model"].strip()
                where = f"{path}: row {line}" + (f" (model {name!r})" if name else "")
                if not name:
                    if not any(v.strip() for v in record.values()):
                        continue  # a blank line
                    raise MnasError(f"{where}: column 'model' is empty: expected a model name")
                latency = _number(record[column], f"{column} =", where)
                if latency is not None and latency <= 0:
                    raise MnasError(f"{where}: {column} = {record[column].strip()}: expected a positive latency")
                multiplier = _number(record[mult_column], f"{mult_column} =", where) if mult_column else None
                if multiplier is not None and multiplier <= 0:
                    raise MnasError(f"{where}: {mult_column} = {multiplier:g}: expected a positive multiplier")
                res_value = _number(record["resolution"], "resolution =", where) if "resolution" in header else None
                resolution = None
                if res_value is not None:
                    if res_value != int(res_value) or res_value < 8:
                        raise MnasError(f"{where}: resolution = {record['resolution'].strip()}: expected an "
                                        "integer number of pixels >= 8")
                    resolution = int(res_value)
                metadata = {k: v for k, v in record.items() if k not in used}
                row = _Row(line, name, None, None if latency is None else latency / divisor, metadata)
                try:
                    row.resolved = resolve_model(name, multiplier, resolution)
                except Unexpressible as exc:
                    row.skip_reason = str(exc)
                except MnasError as exc:
                    raise MnasError(f"{where}: {exc}") from None
                if row.skip_reason is None and row.latency_ms is None:
                    row.skip_reason = f"no figure in column {column!r}"
                rows.append(row)
        except csv.Error as exc:
            raise MnasError(f"{path}: not a readable CSV ({exc}): expected comma-separated values") from None
        except UnicodeDecodeError as exc:
            raise MnasError(f"{path}: not UTF-8 text ({exc.reason}): expected a CSV file") from None
    return rows


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MnasError(f"{what} {value!r}: expected a non-empty name")
    return value.strip()


def import_published(store: Store, path: str | Path, *, device: str, source: str, runtime: str | None = None,
                     threads: int | None = None, column: str | None = None,
                     unit: str | None = None) -> ImportReport:
    """Import a CSV of published figures for `device` (one transaction; see the module docstring)."""
    device = _check_text(device, "--device")
    source = _check_text(source, "--source")
    if runtime is not None:
        runtime = _check_text(runtime, "--runtime")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise MnasError(f"--threads {threads!r}: expected a thread count >= 1")
    column = _check_text(column, "--column") if column is not None else DEFAULT_COLUMN
    chosen_unit = column_unit(column, unit)
    path = Path(path)
    rows = _read_rows(path, column, UNITS[chosen_unit])
    report = ImportReport(path=str(path), device=device, column=column, unit=chosen_unit, rows=len(rows))
    keyed: dict[tuple[str, int], _Row] = {}
    for row in rows:
        if row.skip_reason is not None:
            report.skipped.append((row.model_name, row.skip_reason))
            report.skipped_rows.append(row.line)
            continue
        assert row.resolved is not None and row.latency_ms is not None
        key = (str(row.resolved.arch), row.resolved.resolution)
        first = keyed.get(key)
        if first is None:
            keyed[key] = row
        elif not _same(first.latency_ms, row.latency_ms):
            raise MnasError(f"{path}: row {row.line} (model {row.model_name!r}): {row.latency_ms:g} ms for the same "
                            f"network and resolution as row {first.line} ({first.model_name!r}, "
                            f"{first.latency_ms:g} ms): expected one figure per network and resolution")
    ensure_schema(store)
    imported_at = _now()
    with store.transaction() as conn:
        for row in keyed.values():
            resolved = row.resolved
            assert resolved is not None and row.latency_ms is not None
            arch_text = str(resolved.arch)
            found = conn.execute(
                "SELECT id, latency_ms FROM published_figures WHERE device_name = ? AND arch = ? AND resolution = ? "
                "AND source = ? AND runtime = ? AND threads = ? AND column_name = ?",
                (device, arch_text, resolved.resolution, source, runtime or "", threads or 0, column)).fetchone()
            if found is not None:
                if not _same(found[1], row.latency_ms):
                    raise MnasError(f"{path}: row {row.line} (model {row.model_name!r}): {row.latency_ms:g} ms, but "
                                    f"figure #{found[0]} from the same source, device, runtime, threads and column "
                                    f"holds {found[1]:g} ms: expected the same figure (a re-import), or another "
                                    "--source for a different publication")
                report.already_stored += 1
                continue
            conn.execute(
                "INSERT INTO published_figures (device_name, model_name, family, arch, arch_hash, resolution, "
                "multiplier, latency_ms, source, runtime, threads, column_name, unit, file_name, metadata, "
                "imported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (device, row.model_name, resolved.family, arch_text, resolved.arch.hash, resolved.resolution,
                 resolved.multiplier, row.latency_ms, source, runtime or "", threads or 0, column, chosen_unit,
                 path.name, json.dumps(row.metadata, sort_keys=True), imported_at))
            report.imported += 1
    return report


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_SAME * max(abs(a), abs(b))


_SELECT = ("SELECT id, device_name, model_name, family, arch, resolution, multiplier, latency_ms, source, runtime, "
           "threads, metadata, imported_at, column_name, unit FROM published_figures")


def published_figures(store: Store, device_name: str | None = None, family: str | None = None) -> list[PublishedFigure]:
    """Stored published figures, optionally of one device and/or one family.

    Ordered by device, family, multiplier, resolution, id. Never measurements: see the
    module docstring.
    """
    ensure_schema(store)
    clauses, params = [], []
    if device_name is not None:
        clauses.append("device_name = ?")
        params.append(device_name)
    if family is not None:
        clauses.append("family = ?")
        params.append(family)
    sql = _SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "") + \
        " ORDER BY device_name, family, multiplier, resolution, id"
    return [
        PublishedFigure(figure_id=int(r[0]), device_name=r[1], model_name=r[2], family=r[3], arch=r[4],
                        resolution=int(r[5]), multiplier=float(r[6]), latency_ms=float(r[7]), source=r[8],
                        runtime=r[9] or None, threads=int(r[10]) or None, metadata=json.loads(r[11]),
                        imported_at=r[12], column=r[13], unit=r[14])
        for r in store.read(sql, params)
    ]
