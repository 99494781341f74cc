"""Latency tables: per-layer median latencies with the conditions they were measured under.

A table is only meaningful for one device model, runtime (name + version), pinned core,
timing conditions and input resolution, so all of those are its metadata and loading a
table for another resolution or runtime than asked is an error, not a silent mismatch.

Tables live in the results store (the "predictor" component schema); each entry is its own
short transaction, so a build killed at any point keeps every finished layer and a re-run
skips them. A table also travels as one portable file (`.json` or `.json.gz`) that
round-trips exactly.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from mnas.bench.measure import reuse_blocker
from mnas.bench.types import BenchConfig, DeviceProfile, Measurement, check_statistic, latency_ms
from mnas.errors import MnasError
from mnas.space.quantize import DTYPES

FILE_FORMAT = "mnas-latency-table"
FILE_VERSION = 1
# The most bytes a table file may hold once decompressed. A table of every distinct layer of
# the MnasNet space at one resolution (2,500 entries of under 2 KB each with their measurement
# conditions; 313 KiB as .json.gz, README) is a few MB of JSON, so 64 MiB is over ten times
# that; what it stops is a gzip bomb (a few hundred KB that inflate to gigabytes) exhausting
# memory on `mnas table import`.
MAX_TABLE_FILE_BYTES = 64 * 1024 * 1024

SCHEMA_COMPONENT = "predictor"
# One statement per migration: each is applied once, in order (see ResultsStore).
SCHEMA_MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS latency_tables (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        device TEXT NOT NULL,
        runtime TEXT NOT NULL,
        version TEXT NOT NULL,
        resolution INTEGER NOT NULL,
        conditions TEXT NOT NULL,
        meta TEXT NOT NULL,
        created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS table_entries (
        table_id INTEGER NOT NULL REFERENCES latency_tables(id) ON DELETE CASCADE,
        layer_key TEXT NOT NULL,
        median_ms REAL NOT NULL,
        mean_ms REAL,
        std_ms REAL,
        runs INTEGER NOT NULL,
        measurement_id INTEGER,
        measurement TEXT,
        measured_at REAL NOT NULL,
        UNIQUE (table_id, layer_key))""",
    """CREATE TABLE IF NOT EXISTS predictors (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        table_id INTEGER REFERENCES latency_tables(id),
        kind TEXT NOT NULL,
        params BLOB NOT NULL,
        metrics TEXT NOT NULL,
        created REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS predictors_table ON predictors (table_id, created)",
    """CREATE TABLE IF NOT EXISTS predictor_evals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        predictor_id INTEGER REFERENCES predictors(id),
        device_id TEXT NOT NULL,
        seed INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        conditions TEXT NOT NULL,
        metrics TEXT NOT NULL,
        rows TEXT NOT NULL,
        plot TEXT,
        created REAL NOT NULL)""",
]


class Store(Protocol):
    """What this module needs of `mnas.bench.store.ResultsStore`."""

    def transaction(self) -> Any: ...

    def read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]: ...

    def ensure_component_schema(self, component: str, migrations: list[str]) -> Any: ...


def ensure_schema(store: Store) -> None:
    store.ensure_component_schema(SCHEMA_COMPONENT, SCHEMA_MIGRATIONS)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def entry_ms(entry: TableEntry, statistic: str, table_name: str = "?") -> float:
    check_statistic(statistic)
    if statistic == "median":
        return entry.median_ms
    value = (entry.measurement or {}).get("min_ms")
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise MnasError(f"latency table {table_name!r}: entry {entry.layer_key!r} has no minimum latency: "
                        "expected a table built by `mnas table build` (or use the median)")
    return float(value)


@dataclass(frozen=True)
class TableEntry:
    """One measured layer: median latency (what predictions use) plus spread and provenance."""

    layer_key: str
    median_ms: float
    mean_ms: float | None
    std_ms: float | None
    runs: int
    measured_at: float
    measurement_id: int | None = None
    measurement: dict[str, Any] | None = None  # conditions of the measurement (JSON-native)

    @classmethod
    def from_measurement(cls, layer_key: str, m: Measurement, measurement_id: int | None = None) -> TableEntry:
        conditions = {
            "device_id": m.device_id,
            "device_name": m.device_name,
            "model_sha256": m.model_sha256,
            "runtime": m.runtime,
            "runtime_version": m.runtime_version,
            "conditions": m.config.conditions_key(),
            "pinned_cores": [int(c) for c in m.pinned_cores],
            "min_ms": _finite(m.stats.min_us / 1000.0),
            "max_ms": _finite(m.stats.max_us / 1000.0),
            "p90_ms": _finite(m.stats.p90_us / 1000.0) if m.stats.p90_us is not None else None,
            "temps_before_c": {str(k): float(v) for k, v in m.temps_before_c.items()},
            "temps_after_c": {str(k): float(v) for k, v in m.temps_after_c.items()},
            "freq_before_khz": m.freq_before_khz,
            "freq_after_khz": m.freq_after_khz,
            "throttled": bool(m.throttled),
            "wall_s": _finite(m.wall_s),
        }
        for name in ("child_cpu_share", "contended", "attempt"):  # set by predictor.contention (host only)
            if name in m.extra:
                conditions[name] = m.extra[name]
        return cls(
            layer_key=layer_key,
            median_ms=latency_ms(m, "median"),
            mean_ms=_finite(m.mean_ms),
            std_ms=_finite(m.stats.std_us / 1000.0),
            runs=int(m.stats.count),
            measured_at=float(m.timestamp),
            measurement_id=measurement_id,
            measurement=conditions,
        )


# Where a table's figures come from: "measured" here by `mnas table build`, "published" by
# others and imported (`mnas table import --format proxylessnas`), or "transferred" from
# another device's table by a model. Only measured tables may be extended by a build.
TABLE_KINDS: tuple[str, ...] = ("measured", "published", "transferred")


@dataclass(frozen=True)
class TableMeta:
    """What a table is valid for, and where its figures come from.

    `kind` is one of `TABLE_KINDS`; `provenance` (JSON-native) says where a table that was
    not measured here came from: source file and text, what its statistics mean, and the
    source's keys that have no mnas layer. Tables stored before these fields existed read
    back as kind "measured" with no provenance (the metadata is JSON: no migration needed).
    `dtype` is the type of the single-layer models the table timed (`space.quantize.DTYPES`):
    an int8 layer runs other kernels than its float32 twin, so the two never share a table,
    and a table stored before the field existed reads back as float32 (what was built then).
    """

    name: str
    device_name: str
    runtime: str
    runtime_version: str
    resolution: int
    conditions: str  # BenchConfig.conditions_key(); a published table: "published:<format>"
    pinned_core: int | None = None
    device_ids: tuple[str, ...] = ()
    space: str = "mnasnet"
    num_classes: int = 1000
    created: float = field(default_factory=time.time)
    kind: str = "measured"
    provenance: dict[str, Any] = field(default_factory=dict, hash=False)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise MnasError(f"latency table {self.name!r}: dtype {self.dtype!r}: expected one of {list(DTYPES)}")
        if self.kind not in TABLE_KINDS:
            raise MnasError(f"latency table {self.name!r}: kind {self.kind!r}: expected one of {list(TABLE_KINDS)}")
        if not isinstance(self.provenance, dict):
            raise MnasError(f"latency table {self.name!r}: provenance is {type(self.provenance).__name__}: "
                            "expected an object")

    @classmethod
    def from_profile(cls, name: str, profile: DeviceProfile, resolution: int, config: BenchConfig,
                     space: str = "mnasnet", num_classes: int = 1000, dtype: str = "float32") -> TableMeta:
        return cls(name=name, device_name=profile.device_name, runtime=profile.runtime,
                   runtime_version=profile.runtime_version, resolution=resolution,
                   conditions=config.conditions_key(), pinned_core=profile.pinned_core,
                   device_ids=(profile.device_id,), space=space, num_classes=num_classes, dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["device_ids"] = list(self.device_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "table metadata") -> TableMeta:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise MnasError(f"{source}: unknown field {unknown[0]!r}: expected fields {sorted(known)}")
        try:
            values = dict(data)
            values["device_ids"] = tuple(values.get("device_ids") or ())
            values["provenance"] = dict(values.get("provenance") or {})
            return cls(**values)
        except TypeError as exc:
            raise MnasError(f"{source}: {exc}: expected fields {sorted(known)}") from None

    def mismatch(self, other: TableMeta) -> str | None:
        """The first field on which a build under `other` may not extend this table, or None."""
        for name in ("kind", "dtype", "device_name", "runtime", "runtime_version", "resolution", "conditions",
                     "pinned_core", "space", "num_classes"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"latency table {self.name!r}: {name} is {mine!r}: expected {theirs!r} (choose another table name)"
        return None


@dataclass
class LatencyTable:
    """Entries keyed by `LayerSig.key`, plus the metadata saying what they are valid for."""

    meta: TableMeta
    entries: dict[str, TableEntry]
    table_id: int | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def latency_ms(self, key: str) -> float:
        return self.entries[key].median_ms

    def medians(self) -> dict[str, float]:
        return {key: entry.median_ms for key, entry in self.entries.items()}

    def latencies(self, statistic: str = "median") -> dict[str, float]:
        """Per-layer latency in ms by `statistic` (see `STATISTICS`)."""
        if statistic == "median":
            return self.medians()
        return {key: entry_ms(entry, statistic, self.meta.name) for key, entry in self.entries.items()}

    def check(self, resolution: int | None = None, runtime: str | None = None,
              runtime_version: str | None = None, device_name: str | None = None,
              dtype: str | None = None) -> LatencyTable:
        """Raise a one-line MnasError unless the table is non-empty and matches what is asked."""
        name = self.meta.name
        if not self.entries:
            raise MnasError(f"latency table {name!r} has no entries: expected a built table (run `mnas table build`)")
        asked = {"resolution": resolution, "runtime": runtime, "runtime_version": runtime_version,
                 "device_name": device_name, "dtype": dtype}
        for field_name, want in asked.items():
            have = getattr(self.meta, field_name)
            if want is not None and have != want:
                raise MnasError(f"latency table {name!r} was measured with {field_name} {have!r}: expected {want!r}")
        return self


# ---------------------------------------------------------------------------------- store I/O

def _row_to_meta(row: tuple) -> tuple[int, TableMeta]:
    table_id, meta_json = row
    return int(table_id), TableMeta.from_dict(json.loads(meta_json))


def _insert_table(conn: Any, meta: TableMeta) -> int:
    cursor = conn.execute(
        "INSERT INTO latency_tables (name, device, runtime, version, resolution, conditions, meta, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (meta.name, meta.device_name, meta.runtime, meta.runtime_version, meta.resolution,
         meta.conditions, json.dumps(meta.to_dict(), sort_keys=True), meta.created),
    )
    return int(cursor.lastrowid)


def find_table(store: Store, name: str) -> tuple[int, TableMeta] | None:
    ensure_schema(store)
    rows = store.read("SELECT id, meta FROM latency_tables WHERE name = ?", (name,))
    return _row_to_meta(rows[0]) if rows else None


def open_table(store: Store, meta: TableMeta) -> int:
    """Id of the table named `meta.name`, created if absent; an existing one must match `meta`.

    Device ids in `meta` that the stored table does not list yet are added to it (several
    phones of one model may contribute to one table).
    """
    ensure_schema(store)
    with store.transaction() as conn:
        row = conn.execute("SELECT id, meta FROM latency_tables WHERE name = ?", (meta.name,)).fetchone()
        if row is None:
            return _insert_table(conn, meta)
        table_id, stored = _row_to_meta(row)
        problem = stored.mismatch(meta)
        if problem:
            raise MnasError(problem)
        new_ids = [d for d in meta.device_ids if d not in stored.device_ids]
        if new_ids:
            merged = replace(stored, device_ids=stored.device_ids + tuple(new_ids))
            conn.execute("UPDATE latency_tables SET meta = ? WHERE id = ?",
                         (json.dumps(merged.to_dict(), sort_keys=True), table_id))
        return table_id


def add_entry(store: Store, table_id: int, entry: TableEntry, *, replace: bool = False) -> bool:
    """Store one entry in its own transaction; False when the key was already stored.

    `replace` overwrites a stored entry of the same key: a layer re-taken because its
    earlier figure may not be reused (`retake_reasons`).
    """
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    with store.transaction() as conn:
        cursor = conn.execute(
            f"{verb} INTO table_entries (table_id, layer_key, median_ms, mean_ms, std_ms, runs, "
            "measurement_id, measurement, measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (table_id, entry.layer_key, entry.median_ms, entry.mean_ms, entry.std_ms, entry.runs,
             entry.measurement_id, None if entry.measurement is None else json.dumps(entry.measurement, sort_keys=True),
             entry.measured_at),
        )
        return cursor.rowcount >= 1


def stored_keys(store: Store, table_id: int) -> set[str]:
    """Every layer key the table holds."""
    return {row[0] for row in store.read("SELECT layer_key FROM table_entries WHERE table_id = ?", (table_id,))}


def retake_reasons(store: Store, table_id: int) -> dict[str, str | None]:
    """Every stored layer key, with why its entry must be measured again (None: it may be reused).

    The reason is the one reuse rule's (`bench.measure.reuse_blocker`): an entry taken
    throttled or while another process shared the core is measured again by the next build.
    """
    rows = store.read("SELECT layer_key, measurement FROM table_entries WHERE table_id = ?", (table_id,))
    return {key: conditions_blocker(json.loads(text) if text else None) for key, text in rows}


def conditions_blocker(conditions: Mapping[str, Any] | None) -> str | None:
    """The one reuse rule (`bench.measure.reuse_blocker`) on a table entry's stored conditions."""
    return reuse_blocker((conditions or {}).get("throttled"), conditions)


def _entries(store: Store, table_id: int) -> Iterator[TableEntry]:
    rows = store.read(
        "SELECT layer_key, median_ms, mean_ms, std_ms, runs, measured_at, measurement_id, measurement "
        "FROM table_entries WHERE table_id = ? ORDER BY rowid", (table_id,))
    for key, median, mean, std, runs, at, mid, measurement in rows:
        yield TableEntry(layer_key=key, median_ms=median, mean_ms=mean, std_ms=std, runs=runs, measured_at=at,
                         measurement_id=mid, measurement=None if measurement is None else json.loads(measurement))


def load_table(store: Store, table: str | int, *, resolution: int | None = None, runtime: str | None = None,
               allow_empty: bool = False) -> LatencyTable:
    """Load a table by name or id; checks it is non-empty and matches `resolution` / `runtime`."""
    ensure_schema(store)
    column = "id" if isinstance(table, int) else "name"
    rows = store.read(f"SELECT id, meta FROM latency_tables WHERE {column} = ?", (table,))
    if not rows:
        names = [r[0] for r in store.read("SELECT name FROM latency_tables ORDER BY id")]
        raise MnasError(f"latency table {table!r} not found: expected one of {names or '(none built yet)'}")
    table_id, meta = _row_to_meta(rows[0])
    entries = {e.layer_key: e for e in _entries(store, table_id)}
    loaded = LatencyTable(meta=meta, entries=entries, table_id=table_id)
    if not (allow_empty and not entries):
        loaded.check(resolution=resolution, runtime=runtime)
    return loaded


def list_tables(store: Store) -> list[dict[str, Any]]:
    """One row per table: id, name, device, runtime, version, resolution, conditions, entries,
    created, kind ("measured", "published", "transferred"), provenance (an object; empty
    for a measured table) and dtype (float32 for tables stored before it was recorded)."""
    ensure_schema(store)
    rows = store.read(
        "SELECT t.id, t.name, t.device, t.runtime, t.version, t.resolution, t.conditions, t.created, "
        "(SELECT COUNT(*) FROM table_entries e WHERE e.table_id = t.id), t.meta FROM latency_tables t ORDER BY t.id")
    keys = ("id", "name", "device", "runtime", "runtime_version", "resolution", "conditions", "created", "entries")
    out = []
    for row in rows:
        item = dict(zip(keys, row[:-1], strict=True))
        meta = json.loads(row[-1])
        item["kind"] = meta.get("kind", "measured")
        item["provenance"] = meta.get("provenance") or {}
        item["dtype"] = meta.get("dtype", "float32")
        out.append(item)
    return out


def store_table(store: Store, meta: TableMeta, entries: Iterable[TableEntry]) -> int:
    """Insert a new table named `meta.name` and all its entries in ONE transaction; returns its id.

    Nothing is stored unless everything is: a name already taken, a repeated layer key or a
    failed write leaves the store as it was.
    """
    ensure_schema(store)
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM latency_tables WHERE name = ?", (meta.name,)).fetchone() is not None:
            raise MnasError(f"latency table {meta.name!r} already exists in the store: expected a new name")
        table_id = _insert_table(conn, meta)
        for entry in entries:
            if not add_entry(store, table_id, entry):  # joins this transaction
                raise MnasError(f"latency table {meta.name!r}: layer key {entry.layer_key!r} repeated: "
                                "expected each key once")
    return table_id


def save_table(store: Store, table: LatencyTable, name: str | None = None) -> int:
    """Insert a whole table (e.g. an imported file) under `name` (default: its own), in one
    transaction (`store_table`); returns its id."""
    meta = replace(table.meta, name=name) if name else table.meta
    return store_table(store, meta, table.entries.values())


# ----------------------------------------------------------------------------------- file I/O

def _entry_to_json(entry: TableEntry) -> dict[str, Any]:
    return asdict(entry)


def export_table(table: LatencyTable, path: str | Path) -> Path:
    """Write the table as one JSON file (gzip-compressed when the name ends in .gz), atomically."""
    path = Path(path)
    payload = {"format": FILE_FORMAT, "version": FILE_VERSION, "meta": table.meta.to_dict(),
               "entries": [_entry_to_json(e) for e in table.entries.values()]}
    data = json.dumps(payload, sort_keys=True, allow_nan=False).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_json(path: Path) -> Any:
    """The file's JSON, gzip-decompressed when it starts with the gzip magic; either way at most
    `MAX_TABLE_FILE_BYTES` are read (streaming, so a gzip bomb stops at the cap)."""
    source = f"latency table file {str(path)!r}"
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            reader = gzip.GzipFile(fileobj=handle, mode="rb") if gzipped else handle
            raw = reader.read(MAX_TABLE_FILE_BYTES + 1)
    except OSError as exc:
        if exc.strerror is None:  # gzip.BadGzipFile and friends: the data, not the file system
            raise MnasError(f"{source}: not valid (gzipped) JSON ({exc}): expected a file written by `mnas table export`") from None
        raise MnasError(f"{source}: {exc.strerror}: expected a readable .json or .json.gz file") from None
    except (EOFError, zlib.error) as exc:
        raise MnasError(f"{source}: not valid (gzipped) JSON ({exc}): expected a file written by `mnas table export`") from None
    if len(raw) > MAX_TABLE_FILE_BYTES:
        raise MnasError(f"{source}: more than {MAX_TABLE_FILE_BYTES // (1024 * 1024)} MiB"
                        f"{' once decompressed' if gzipped else ''}: expected a latency table "
                        f"(a full space's table is a few MB)")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MnasError(f"{source}: not valid (gzipped) JSON ({exc}): expected a file written by `mnas table export`") from None


def import_table(path: str | Path) -> LatencyTable:
    """Read a file written by `export_table`; the result equals the exported table (table_id None)."""
    path = Path(path)
    data = _read_json(path)
    source = f"latency table file {str(path)!r}"
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise MnasError(f"{source}: field 'format' is {data.get('format') if isinstance(data, dict) else None!r}: expected {FILE_FORMAT!r}")
    if data.get("version") != FILE_VERSION:
        raise MnasError(f"{source}: field 'version' is {data.get('version')!r}: expected {FILE_VERSION}")
    meta = TableMeta.from_dict(data.get("meta") or {}, source=f"{source} field 'meta'")
    entries: dict[str, TableEntry] = {}
    fields = set(TableEntry.__dataclass_fields__)
    for index, item in enumerate(_as_list(data.get("entries"), source)):
        if not isinstance(item, dict) or set(item) != fields:
            raise MnasError(f"{source}: entries[{index}]: expected an object with fields {sorted(fields)}")
        entry = TableEntry(**item)
        if entry.layer_key in entries:
            raise MnasError(f"{source}: entries[{index}]: layer key {entry.layer_key!r} repeated: expected each key once")
        entries[entry.layer_key] = entry
    return LatencyTable(meta=meta, entries=entries)


def _as_list(value: Any, source: str) -> Iterable[Any]:
    if not isinstance(value, list):
        raise MnasError(f"{source}: field 'entries' is {type(value).__name__}: expected a list")
    return value
