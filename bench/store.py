"""The results store: one SQLite file shared by every mnas process that measures or searches.

Why it is built this way:
- Several processes (one per phone, a search, a table build) write at once, so the file is in
  WAL mode with a busy timeout and every write is one short `BEGIN IMMEDIATE` transaction
  (taking the write lock up front avoids the deadlock-prone read-to-write upgrade); a crash
  loses at most the measurement in flight.
- The schema is versioned per *component*: `bench` owns devices/models/measurements and other
  packages (predictor, search) add their own tables through `ensure_component_schema` with
  their own ordered migrations, without bench knowing about them.
- Every measurement's conditions are columns you can query (device, runtime and version,
  threads, pinned core, run counts, conditions key, temperatures, throttling), and the full
  `Measurement` is kept as JSON so it comes back exactly as it went in.
- A file that is not a mnas store, or one written by a newer mnas, is refused with one line
  rather than modified (`NotAStoreError`).
- A store that cannot be written (disk full, read-only file system, no permission, immutable
  file, locked) fails at the write with ONE line naming the file and the cause
  (`StoreWriteError`, exit 1): sqlite3 errors never leave this module as themselves, and the
  failed transaction is rolled back, so the store holds exactly what it held before. A store
  whose file or folder is not writable is opened read-only (reads work: listing, predicting,
  planning; `read_only=True` asks for that explicitly); it is never migrated then, and a
  component it does not hold yet reads as empty.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mnas.bench.files import os_cause, unwritable_reason
from mnas.bench.types import DeviceProfile, Measurement, OpProfileRow
from mnas.errors import MnasError

if TYPE_CHECKING:
    import pandas as pd

APPLICATION_ID = 0x6D6E6173  # "mnas": marks the file as a mnas results store
SCHEMA_TABLE = "mnas_schema"
DEFAULT_BUSY_TIMEOUT_S = 60.0

BENCH_MIGRATIONS: list[str] = [
    # 1: devices, models, measurements
    """
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        device_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        cpu_model TEXT NOT NULL,
        pinned_core INTEGER NOT NULL,
        max_freq_khz INTEGER,
        runtime TEXT NOT NULL,
        runtime_version TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL,
        profile_json TEXT NOT NULL
    );
    CREATE TABLE models (
        sha256 TEXT PRIMARY KEY,
        label TEXT,
        arch TEXT,
        path TEXT NOT NULL,
        size_bytes INTEGER,
        added_at REAL NOT NULL
    );
    CREATE TABLE measurements (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        device_name TEXT NOT NULL,
        model_sha256 TEXT NOT NULL REFERENCES models(sha256),
        model_path TEXT NOT NULL,
        runtime TEXT NOT NULL,
        runtime_version TEXT NOT NULL,
        threads INTEGER NOT NULL,
        pinned_core INTEGER,
        pinned_cores TEXT NOT NULL,
        requested_core INTEGER,
        warmup_runs INTEGER NOT NULL,
        num_runs INTEGER NOT NULL,
        min_secs REAL NOT NULL,
        profile_ops INTEGER NOT NULL,
        conditions_key TEXT NOT NULL,
        count INTEGER NOT NULL,
        median_ms REAL NOT NULL,
        mean_ms REAL NOT NULL,
        std_ms REAL,
        min_ms REAL,
        max_ms REAL,
        p90_ms REAL,
        cv REAL,
        init_ms REAL,
        first_ms REAL,
        warmup_avg_ms REAL,
        peak_memory_mb REAL,
        throttled INTEGER NOT NULL,
        temp_before_max_c REAL,
        temp_after_max_c REAL,
        temps_before_json TEXT NOT NULL,
        temps_after_json TEXT NOT NULL,
        freq_before_khz INTEGER,
        freq_after_khz INTEGER,
        max_freq_khz INTEGER,
        cpu_model TEXT NOT NULL,
        wall_s REAL,
        timestamp REAL NOT NULL,
        measurement_json TEXT NOT NULL
    );
    CREATE INDEX measurements_lookup ON measurements
        (device_id, model_sha256, runtime, runtime_version, conditions_key, timestamp);
    CREATE INDEX measurements_time ON measurements (timestamp);
    """,
]


def _measurements_without_not_null_median() -> str:
    """Migration 2: `median_ms` may be NULL, for tools that print no median.

    Until then a missing median was stored as the mean, which made a mean pass for a
    median. SQLite cannot drop a NOT NULL in place, so the table is rebuilt with the same
    columns; rows whose JSON has neither a median nor per-run latencies get NULL.
    """
    first = BENCH_MIGRATIONS[0]
    create = first[first.index("CREATE TABLE measurements ("):first.index("CREATE INDEX measurements_lookup")]
    indexes = first[first.index("CREATE INDEX measurements_lookup"):]
    new = create.replace("CREATE TABLE measurements (", "CREATE TABLE measurements_v2 (")
    new = new.replace("median_ms REAL NOT NULL,", "median_ms REAL,")
    return (new + "INSERT INTO measurements_v2 SELECT * FROM measurements;\n"
            "DROP TABLE measurements;\n"
            "ALTER TABLE measurements_v2 RENAME TO measurements;\n"
            "UPDATE measurements SET median_ms = NULL WHERE json_extract(measurement_json, '$.stats.median_us') "
            "IS NULL AND json_extract(measurement_json, '$.runs_us') IS NULL;\n" + indexes)


BENCH_MIGRATIONS.append(_measurements_without_not_null_median())

# Migration 3: the per-op table benchmark_model prints with --enable_op_profiling, one row per
# node in run order, keyed by the measurement it came with. The full Measurement JSON holds the
# same rows; this table makes them queryable (top ops across measurements) and exportable
# without decoding every JSON document. Profiles stored before it are copied from their JSON
# (Python writes a missing [start] as NaN, which SQLite's JSON reader refuses: read as NULL).
BENCH_MIGRATIONS.append("""
    CREATE TABLE op_profiles (
        measurement_id INTEGER NOT NULL REFERENCES measurements(id) ON DELETE CASCADE,
        run_order INTEGER NOT NULL,
        node_type TEXT NOT NULL,
        name TEXT NOT NULL,
        start_ms REAL,
        first_ms REAL NOT NULL,
        avg_ms REAL NOT NULL,
        percent REAL NOT NULL,
        cdf_percent REAL NOT NULL,
        mem_kb REAL NOT NULL,
        times_called INTEGER NOT NULL,
        PRIMARY KEY (measurement_id, run_order)
    );
    INSERT INTO op_profiles (measurement_id, run_order, node_type, name, start_ms, first_ms, avg_ms, percent,
                             cdf_percent, mem_kb, times_called)
        SELECT m.id, CAST(row.key AS INTEGER), json_extract(row.value, '$.node_type'), json_extract(row.value, '$.name'),
               json_extract(row.value, '$.start_ms'), json_extract(row.value, '$.first_ms'),
               json_extract(row.value, '$.avg_ms'), json_extract(row.value, '$.percent'),
               json_extract(row.value, '$.cdf_percent'), json_extract(row.value, '$.mem_kb'),
               json_extract(row.value, '$.times_called')
        FROM (SELECT id, doc FROM (SELECT id, replace(replace(replace(measurement_json, 'NaN', 'null'),
                                                                '-Infinity', 'null'), 'Infinity', 'null') AS doc FROM measurements)
              WHERE json_valid(doc) AND json_type(doc, '$.op_profile') = 'array') m,
             json_each(m.doc, '$.op_profile') row;
""")
# Migration 4: names are labels, not identities. A model (a sha256) may be benchmarked under
# several names (two file names of one .tflite); `model_labels` keeps every name it was given,
# and each measurement keeps the name given in ITS run (`measurements.model_label`), so listing
# shows what the user called it then rather than the last name used. Measurements stored before
# keep the only name the store held for their model (earlier names were overwritten then).
BENCH_MIGRATIONS.append("""
    CREATE TABLE model_labels (
        model_sha256 TEXT NOT NULL REFERENCES models(sha256),
        label TEXT NOT NULL,
        first_used_at REAL NOT NULL,
        last_used_at REAL NOT NULL,
        PRIMARY KEY (model_sha256, label)
    );
    INSERT INTO model_labels (model_sha256, label, first_used_at, last_used_at)
        SELECT sha256, label, added_at, added_at FROM models WHERE label IS NOT NULL;
    ALTER TABLE measurements ADD COLUMN model_label TEXT;
    UPDATE measurements SET model_label = (SELECT label FROM models WHERE models.sha256 = measurements.model_sha256);
""")
OP_PROFILE_COLUMNS = ("node_type", "name", "start_ms", "first_ms", "avg_ms", "percent", "cdf_percent", "mem_kb",
                      "times_called")


class StoreError(MnasError):
    """The results store cannot be opened or read (exit 2: the user fixes the file or the path)."""


class NotAStoreError(StoreError):
    """The file is not a mnas results store (not SQLite, a foreign application id or foreign tables)."""


class StoreWriteError(StoreError):
    """A write to the results store failed; what it was writing is lost (exit 1).

    `cause` is a few words ("disk full", "read-only (...)", "locked"); the message is one
    line: `<store>: cannot write: <cause> (sqlite: <its text>)`. The transaction was rolled
    back: the store is unchanged.
    """

    exit_code = 1

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


_SQLITE_CAUSES = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_PERM: "read-only",
    sqlite3.SQLITE_AUTH: "read-only",
    sqlite3.SQLITE_BUSY: "locked",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_CANTOPEN: "cannot open the file",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "not a database",
    sqlite3.SQLITE_NOMEM: "out of memory",
}
_TEXT_CAUSES = (("disk is full", "disk full"), ("readonly", "read-only"), ("read-only", "read-only"),
                ("locked", "locked"), ("disk i/o error", "I/O error"), ("unable to open", "cannot open the file"),
                ("not a database", "not a database"), ("malformed", "corrupt"))


def sqlite_cause(exc: sqlite3.Error) -> str | None:
    """What an sqlite3 error says about the file, in a few words; None for errors in the SQL itself.

    By the error code (Python 3.11+ has it); by the message only where there is no code.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return _SQLITE_CAUSES.get(int(code) & 0xFF)
    text = str(exc).lower()
    return next((cause for needle, cause in _TEXT_CAUSES if needle in text), None)


def _temp_schema(statement: str) -> str:
    """A migration statement that creates its tables in the connection's TEMP schema (read-only stores)."""
    return re.sub(r"^\s*CREATE\s+TABLE\b", "CREATE TEMP TABLE", statement, flags=re.IGNORECASE)


# measurement columns a caller may filter on, besides the joined model label/arch
_FILTER_EXTRA = {"label": "models.label", "arch": "models.arch"}


MAX_STORED_RUNS = 2000


def _capped_runs(data: dict) -> dict:
    """Keep at most the first MAX_STORED_RUNS per-run latencies (in time order).

    A microsecond-scale layer gives ~100k runs a second; the aggregates (stats) are computed
    from every run before storing, so the store keeps them exact while the per-run list,
    kept for drift plots, stays bounded. `extra` records how many runs there were.
    """
    runs = data.get("runs_us")
    if runs is not None and len(runs) > MAX_STORED_RUNS:
        data = {**data, "runs_us": runs[:MAX_STORED_RUNS],
                "extra": {**(data.get("extra") or {}), "runs_us_total": len(runs), "runs_us_stored": MAX_STORED_RUNS}}
    return data

def _op_values(op: OpProfileRow) -> tuple[Any, ...]:
    """One op row's column values; a missing start (builds without a [start] column) is NULL."""
    return tuple(_finite(getattr(op, name)) if name == "start_ms" else getattr(op, name)
                 for name in OP_PROFILE_COLUMNS)


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ms(us: float | None) -> float | None:
    return None if us is None else _finite(us / 1000.0)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (triggers and quoted ';' stay whole)."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        raise MnasError(f"migration ends with an incomplete SQL statement: {current.strip()[:80]!r}")
    return statements


def measurement_row(m: Measurement) -> dict[str, Any]:
    """The queryable columns of one measurement (plus its full JSON)."""
    stats = m.stats
    before = [t for t in m.temps_before_c.values() if math.isfinite(t)]
    after = [t for t in m.temps_after_c.values() if math.isfinite(t)]
    return {
        "device_id": m.device_id,
        "device_name": m.device_name,
        "model_sha256": m.model_sha256,
        "model_path": m.model_path,
        "runtime": m.runtime,
        "runtime_version": m.runtime_version,
        "threads": m.config.num_threads,
        "pinned_core": m.pinned_cores[0] if len(m.pinned_cores) == 1 else None,
        "pinned_cores": ",".join(str(c) for c in m.pinned_cores),
        "requested_core": m.config.core,
        "warmup_runs": m.config.warmup_runs,
        "num_runs": m.config.num_runs,
        "min_secs": m.config.min_secs,
        "profile_ops": int(m.config.profile_ops),
        "conditions_key": m.config.conditions_key(),
        "count": stats.count,
        "median_ms": _finite(m.median_ms),
        "mean_ms": _ms(stats.mean_us),
        "std_ms": _ms(stats.std_us),
        "min_ms": _ms(stats.min_us),
        "max_ms": _ms(stats.max_us),
        "p90_ms": _ms(stats.p90_us),
        "cv": _finite(stats.cv),
        "init_ms": _ms(m.init_us),
        "first_ms": _ms(m.first_us),
        "warmup_avg_ms": _ms(m.warmup_avg_us),
        "peak_memory_mb": _finite(m.peak_memory_mb),
        "throttled": int(bool(m.throttled)),
        "temp_before_max_c": max(before) if before else None,
        "temp_after_max_c": max(after) if after else None,
        "temps_before_json": json.dumps(m.temps_before_c, sort_keys=True),
        "temps_after_json": json.dumps(m.temps_after_c, sort_keys=True),
        "freq_before_khz": m.freq_before_khz,
        "freq_after_khz": m.freq_after_khz,
        "max_freq_khz": m.max_freq_khz,
        "cpu_model": m.cpu_model,
        "wall_s": _finite(m.wall_s),
        "timestamp": m.timestamp,
        "measurement_json": json.dumps(_capped_runs(m.to_dict())),
    }


class DuplicateMeasurement(MnasError):
    """`add_measurement` refused: a reusable measurement under the same conditions is stored (`existing_id`)."""

    def __init__(self, message: str, existing_id: int) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class ResultsStore:
    """The SQLite results database (default `results/mnas.db`); safe for many processes."""

    def __init__(self, path: str | Path, *, create: bool = True,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, read_only: bool = False) -> None:
        """Open (or, with `create` and not `read_only`, create) the store at `path`.

        `read_only`: never write, not even the WAL switch or a migration; also chosen when the
        file or its folder cannot be written (`read_only_reason` says why). Every write of a
        read-only store raises StoreWriteError; `require_writable` checks before work starts.
        """
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.read_only_reason: str | None = "opened read-only" if read_only else None
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, expected a results database file")
        if not self.path.exists():
            if not create or read_only:
                raise StoreError(f"{self.path}: no results database here (nothing measured yet, "
                                 "or pass --db / set MNAS_DB)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreWriteError(f"{self.path}: cannot create the results database: {os_cause(exc)}",
                                      os_cause(exc)) from None
            reason = unwritable_reason(self.path)
            if reason is not None:
                raise StoreWriteError(f"{self.path}: cannot create the results database: {reason}", reason)
        unwritable = unwritable_reason(self.path)
        # read-only by request on a writable file: an ordinary connection with `query_only`, so the
        # last one to close still tidies the -wal/-shm files away; SQLite's read-only mode otherwise
        self._ro_file = unwritable is not None
        if self.read_only_reason is None:
            self.read_only_reason = unwritable
        self._lock = threading.RLock()
        self._depth = 0
        self._ensured: dict[str, int] = {}
        self._conn = self._connect()
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if self.read_only_reason is not None or sqlite_cause(exc) not in ("read-only", "cannot open the file"):
                raise self._open_error(exc) from None
            # the access checks passed but SQLite may not write here after all: read what it can
            self.read_only_reason = f"read-only (sqlite: {exc})"
            self._ro_file = True
            self._conn = self._connect()
            try:
                self._setup()
            except sqlite3.DatabaseError as again:
                self._conn.close()
                raise self._open_error(again) from None
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            self._conn.close()
            raise

    # ---- opening

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    def _connect(self) -> sqlite3.Connection:
        kwargs: dict[str, Any] = {"timeout": self.busy_timeout_s, "isolation_level": None,
                                  "check_same_thread": False}
        try:
            if self.read_only_reason is None or not self._ro_file:
                return sqlite3.connect(str(self.path), **kwargs)
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            wal = Path(f"{self.path}-wal")
            if not os.access(self.path.parent, os.W_OK) and not (wal.exists() and wal.stat().st_size):
                # WAL readers need a -shm file beside the store; where none can be created and no
                # -wal holds uncheckpointed pages, nobody can be writing: read the file as it is
                uri += "&immutable=1"
            return sqlite3.connect(uri, uri=True, **kwargs)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from None

    def _setup(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        self._check_identity()
        if self.read_only_reason is None:
            self._set_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
        else:
            self._conn.execute("PRAGMA query_only = ON")  # every write fails, whatever the connection mode
        self._conn.execute("PRAGMA foreign_keys = ON")
        self.ensure_component_schema("bench", BENCH_MIGRATIONS)

    def _open_error(self, exc: sqlite3.Error) -> StoreError:
        """One line for an sqlite3 error while opening: not a store, or why the file cannot be used."""
        cause = sqlite_cause(exc)
        if cause in (None, "not a database", "corrupt"):
            return NotAStoreError(f"{self.path}: not a mnas results store ({exc})")
        if cause in ("disk full", "read-only", "locked"):
            return self._write_error(exc)
        return StoreError(f"{self.path}: cannot open the results database: {cause} (sqlite: {exc})")

    def _write_error(self, exc: sqlite3.Error) -> StoreWriteError:
        cause = sqlite_cause(exc) or "error"
        if cause == "read-only" and self.read_only_reason is not None:
            cause = self.read_only_reason if self.read_only_reason.startswith("read-only") else \
                f"read-only ({self.read_only_reason})"
        return StoreWriteError(f"{self.path}: cannot write: {cause} (sqlite: {exc})", cause)

    def require_writable(self) -> None:
        """StoreWriteError now, before any work, when this store was opened read-only."""
        if self.read_only_reason is not None:
            reason = self.read_only_reason
            cause = reason if reason.startswith("read-only") else f"read-only ({reason})"
            raise StoreWriteError(f"{self.path}: cannot write: {cause}", cause)

    def _check_identity(self) -> None:
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return
        if app_id != 0:
            raise NotAStoreError(f"{self.path}: not a mnas results store (SQLite application_id "
                                 f"{app_id:#x}, expected {APPLICATION_ID:#x})")
        tables = [row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        if tables and SCHEMA_TABLE not in tables:
            raise NotAStoreError(f"{self.path}: not a mnas results store (an SQLite database with "
                                 f"tables {', '.join(sorted(tables)[:5])} and no {SCHEMA_TABLE} table)")

    def _set_wal(self) -> None:
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:  # another process is switching it right now
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode!r}); "
                             "is it on a network file system?")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions and schema

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (BEGIN IMMEDIATE); nested calls join the outer one.

        A write the file refuses (disk full, read-only, locked) rolls the whole transaction
        back and raises StoreWriteError; errors in the SQL itself propagate as they are.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self.require_writable()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if sqlite_cause(exc) == "locked":
                    raise StoreWriteError(f"{self.path}: cannot write: locked (another process held the "
                                          f"database for {self.busy_timeout_s:g} s)", "locked") from None
                raise self._translated(exc) from None
            self._depth = 1
            try:
                yield self._conn
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error) and sqlite_cause(exc) is not None:
                    raise self._translated(exc) from None
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback()
                    raise self._translated(exc) from None
            finally:
                self._depth = 0

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (it rolls back itself on a full disk)."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection is unusable anyway; the file keeps its last commit

    def _translated(self, exc: sqlite3.Error) -> Exception:
        return self._write_error(exc) if sqlite_cause(exc) is not None else exc

    def schema_version(self, component: str) -> int:
        """The applied migration count of `component` (0 when it has none)."""
        try:
            row = self._conn.execute(f"SELECT version FROM {SCHEMA_TABLE} WHERE component = ?",
                                     (component,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        return int(row[0]) if row else 0

    def ensure_component_schema(self, component: str, migrations: Sequence[str]) -> int:
        """Apply `component`'s migrations not yet in the file, in order; return its version.

        Migration i (1-based) is `migrations[i - 1]`; applied migrations are never edited,
        only appended to. A file whose version is newer than `len(migrations)` was written by a
        newer mnas: refused.
        """
        target = len(migrations)
        if self._ensured.get(component) == target:
            return target
        current = self.schema_version(component)
        if self.read_only_reason is not None:
            self._refuse_newer(component, current, target)
            if 0 < current < target:
                raise StoreError(f"{self.path}: schema of '{component}' is version {current}, older than this "
                                 f"mnas needs ({target}), and the store cannot be upgraded: {self.read_only_reason}; "
                                 "open it once where it can be written")
            if current == 0:  # nothing of this component in the file: read it as empty tables
                with self._lock:
                    self._conn.execute("PRAGMA query_only = OFF")  # TEMP only: the file is never touched
                    try:
                        for migration in migrations:
                            for statement in _split_sql(migration):
                                self._conn.execute(_temp_schema(statement))
                    finally:
                        self._conn.execute("PRAGMA query_only = ON")
            self._ensured[component] = target
            return target
        if current < target or self._conn.execute("PRAGMA application_id").fetchone()[0] == 0:
            with self.transaction() as conn:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (component TEXT PRIMARY "
                             "KEY, version INTEGER NOT NULL, updated_at REAL NOT NULL)")
                if conn.execute("PRAGMA application_id").fetchone()[0] == 0:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                current = self.schema_version(component)  # re-read under the write lock
                self._refuse_newer(component, current, target)
                for version in range(current + 1, target + 1):
                    for statement in _split_sql(migrations[version - 1]):
                        conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {SCHEMA_TABLE} (component, version, updated_at) "
                        "VALUES (?, ?, ?) ON CONFLICT(component) DO UPDATE SET "
                        "version = excluded.version, updated_at = excluded.updated_at",
                        (component, version, time.time()),
                    )
                current = max(current, target)
        self._refuse_newer(component, current, target)
        self._ensured[component] = target
        return target

    def _refuse_newer(self, component: str, current: int, target: int) -> None:
        if current > target:
            raise StoreError(f"{self.path}: schema of '{component}' is version {current}, newer than "
                            f"this mnas knows ({target}); upgrade mnas to read it")

    # ---- devices and models

    def upsert_device(self, profile: DeviceProfile) -> None:
        data = dict(profile.__dict__)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO devices (device_id, device_name, kind, model, cpu_model, pinned_core, "
                "max_freq_khz, runtime, runtime_version, state, updated_at, profile_json) "
                "VALUES (:device_id, :device_name, :kind, :model, :cpu_model, :pinned_core, "
                ":max_freq_khz, :runtime, :runtime_version, :state, :updated_at, :profile_json) "
                "ON CONFLICT(device_id) DO UPDATE SET device_name = excluded.device_name, "
                "kind = excluded.kind, model = excluded.model, cpu_model = excluded.cpu_model, "
                "pinned_core = excluded.pinned_core, max_freq_khz = excluded.max_freq_khz, "
                "runtime = excluded.runtime, runtime_version = excluded.runtime_version, "
                "state = excluded.state, updated_at = excluded.updated_at, "
                "profile_json = excluded.profile_json",
                {**data, "updated_at": time.time(), "profile_json": json.dumps(data)},
            )

    def get_device(self, device_id: str) -> DeviceProfile | None:
        row = self.read("SELECT profile_json FROM devices WHERE device_id = ?", (device_id,))
        return DeviceProfile(**json.loads(row[0][0])) if row else None

    def _upsert_model(self, conn: sqlite3.Connection, sha256: str, path: str,
                      label: str | None, arch: str | None) -> None:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        conn.execute(
            "INSERT INTO models (sha256, label, arch, path, size_bytes, added_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET "
            "label = COALESCE(excluded.label, models.label), "
            "arch = COALESCE(excluded.arch, models.arch), path = excluded.path, "
            "size_bytes = COALESCE(excluded.size_bytes, models.size_bytes)",
            (sha256, label, arch, path, size, time.time()),
        )

    # ---- measurements

    def add_measurement(self, m: Measurement, label: str | None = None,
                        arch: str | None = None, *, force: bool = False, max_reusable: int = 1) -> int:
        """Store one measurement (and its model); return its id.

        Refused with `DuplicateMeasurement` (naming the stored one) when `max_reusable`
        measurements of the same device, model, runtime, runtime version and conditions that
        pass the one reuse rule (`bench.measure.reuse_blocker`: not throttled, not contended)
        are stored already, unless `force`: two runs that both measured a pair keep one figure.
        The check and the insert are one `BEGIN IMMEDIATE` transaction, so two processes
        cannot both pass it. Flagged measurements never block a new one (they are re-taken).
        `max_reusable` > 1 is for callers that want several (end-to-end repeats).
        """
        from mnas.bench.measure import reuse_blocker

        row = {**measurement_row(m), "model_label": label}
        columns = ", ".join(row)
        placeholders = ", ".join(f":{name}" for name in row)
        duplicate: DuplicateMeasurement | None = None
        with self.transaction() as conn:
            if not force:
                stored = conn.execute(
                    "SELECT id, throttled, json_extract(measurement_json, '$.extra') FROM measurements "
                    "WHERE device_id = ? AND model_sha256 = ? AND runtime = ? AND runtime_version = ? "
                    "AND conditions_key = ? ORDER BY timestamp DESC, id DESC",
                    (row["device_id"], row["model_sha256"], row["runtime"], row["runtime_version"],
                     row["conditions_key"])).fetchall()
                reusable = [int(i) for i, throttled, extra in stored
                            if reuse_blocker(throttled, json.loads(extra) if extra else None) is None]
                if len(reusable) >= max(1, max_reusable):
                    duplicate = DuplicateMeasurement(
                        f"{self.path}: measurement {reusable[0]} already holds {label or m.model_path} on "
                        f"{m.device_id} ({m.runtime} {m.runtime_version}) under the same conditions: not stored "
                        "again (pass --force to store another)", reusable[0])
                    if label:  # not stored again, but the name it was given this time is kept
                        self._add_label(conn, m.model_sha256, label)
            if duplicate is None:
                measurement_id = self._insert_measurement(conn, m, row, columns, placeholders, label, arch)
        if duplicate is not None:
            raise duplicate
        return measurement_id

    def _insert_measurement(self, conn: sqlite3.Connection, m: Measurement, row: dict[str, Any], columns: str,
                            placeholders: str, label: str | None, arch: str | None) -> int:
        """Insert the model (and its label), the measurement and its op table; the new id."""
        self._upsert_model(conn, m.model_sha256, m.model_path, label, arch)
        if label:
            self._add_label(conn, m.model_sha256, label)
        cursor = conn.execute(f"INSERT INTO measurements ({columns}) VALUES ({placeholders})", row)
        measurement_id = int(cursor.lastrowid)
        if m.op_profile is not None:
            conn.executemany(
                f"INSERT INTO op_profiles (measurement_id, run_order, {', '.join(OP_PROFILE_COLUMNS)}) "
                f"VALUES (?, ?, {', '.join('?' * len(OP_PROFILE_COLUMNS))})",
                [(measurement_id, index, *_op_values(op)) for index, op in enumerate(m.op_profile)])
        return measurement_id

    # ---- model labels (names are labels, not identities)

    @staticmethod
    def _add_label(conn: sqlite3.Connection, sha256: str, label: str) -> None:
        now = time.time()
        conn.execute("INSERT INTO model_labels (model_sha256, label, first_used_at, last_used_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT(model_sha256, label) DO UPDATE SET last_used_at = excluded.last_used_at",
                     (sha256, label, now, now))

    def add_model_label(self, sha256: str, label: str) -> None:
        """Keep `label` as one of the names of the stored model `sha256` (a run that reused its figure).

        A model the store does not hold yet gets nothing here: its label is kept when its first
        measurement is stored (`add_measurement`).
        """
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM models WHERE sha256 = ?", (sha256,)).fetchone():
                self._add_label(conn, sha256, label)

    def model_labels(self, sha256s: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Every name each model was benchmarked under, first used first: {sha256: [label, ...]}."""
        sql = "SELECT model_sha256, label FROM model_labels"
        params: list[Any] = []
        if sha256s is not None:
            sha256s = list(dict.fromkeys(sha256s))
            if not sha256s:
                return {}
            sql += f" WHERE model_sha256 IN ({', '.join('?' * len(sha256s))})"
            params = sha256s
        labels: dict[str, list[str]] = {}
        for sha, label in self.read(sql + " ORDER BY first_used_at, label", params):
            labels.setdefault(sha, []).append(label)
        return labels

    def op_profile(self, measurement_id: int) -> list[OpProfileRow] | None:
        """The per-op table stored with a measurement, in run order; None when it was taken without one.

        MnasError (exit 2) when no measurement has that id.
        """
        if not self.read("SELECT 1 FROM measurements WHERE id = ?", (int(measurement_id),)):
            raise MnasError(f"{self.path}: no measurement with id {measurement_id}")
        rows = self.read(f"SELECT {', '.join(OP_PROFILE_COLUMNS)} FROM op_profiles WHERE measurement_id = ? "
                         "ORDER BY run_order", (int(measurement_id),))
        if not rows:
            return None
        return [OpProfileRow(**{**dict(zip(OP_PROFILE_COLUMNS, row, strict=True)),
                                "start_ms": math.nan if row[2] is None else row[2]}) for row in rows]

    def get_measurement(self, measurement_id: int) -> Measurement:
        rows = self.read("SELECT measurement_json FROM measurements WHERE id = ?",
                          (int(measurement_id),))
        if not rows:
            raise MnasError(f"{self.path}: no measurement with id {measurement_id}")
        return Measurement.from_dict(json.loads(rows[0][0]))

    def find_measurement(self, device_id: str, model_sha256: str, runtime: str,
                         runtime_version: str, conditions_key: str) -> Measurement | None:
        """The latest measurement taken under exactly these conditions, or None."""
        found = self.find_measurements(device_id, model_sha256, runtime, runtime_version, conditions_key)
        return found[-1][1] if found else None

    def find_measurements(self, device_id: str, model_sha256: str, runtime: str, runtime_version: str,
                          conditions_key: str) -> list[tuple[int, Measurement]]:
        """Every measurement taken under exactly these conditions, oldest first, with its id.

        Which of them may be reused is not decided here but by `bench.measure.find_reusable`.
        """
        rows = self.read(
            "SELECT id, measurement_json FROM measurements WHERE device_id = ? AND model_sha256 = ? "
            "AND runtime = ? AND runtime_version = ? AND conditions_key = ? ORDER BY timestamp, id",
            (device_id, model_sha256, runtime, runtime_version, conditions_key),
        )
        return [(int(row[0]), Measurement.from_dict(json.loads(row[1]))) for row in rows]

    def measurements_with_extra(self, key: str, value: str) -> list[int]:
        """Ids of the measurements whose `extra[key]` is the text `value`, oldest first.

        The JSON text is searched first (SQLite's JSON functions refuse the NaN Python writes
        for missing figures), then each candidate is decoded and compared exactly.
        """
        pattern = "%" + json.dumps({key: value})[1:-1].replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.read("SELECT id, measurement_json FROM measurements WHERE measurement_json LIKE ? ESCAPE '\\' "
                         "ORDER BY id", (pattern,))
        return [int(i) for i, doc in rows if (json.loads(doc).get("extra") or {}).get(key) == value]

    def recent_measurements(self, limit: int | None = 50, *, device: str | Sequence[str] | None = None,
                            model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """One summary row per measurement, newest first; `model_label` is the name given in its run.

        Filters: `device` is a device name (pixel4) or id (serial, host), or several; `model` is any name the
        model was benchmarked under, its arch string or a sha256 prefix; `since` an epoch time
        (measurements taken at or after it).
        """
        where: list[str] = []
        params: list[Any] = []
        if device is not None:
            names = [device] if isinstance(device, str) else list(device)
            marks = ", ".join("?" * len(names))
            where.append(f"(m.device_name IN ({marks}) OR m.device_id IN ({marks}))" if names else "0")
            params += names + names
        if model is not None:
            clause = ("(m.model_label = ? OR models.arch = ? OR EXISTS (SELECT 1 FROM model_labels l WHERE "
                      "l.model_sha256 = m.model_sha256 AND l.label = ?)")
            params += [model, model, model]
            if re.fullmatch(r"[0-9a-f]{6,64}", model.lower()):  # a sha256 (prefix), as `results list` shows it
                clause += " OR m.model_sha256 LIKE ?"
                params.append(model.lower() + "%")
            where.append(clause + ")")
        if since is not None:
            where.append("m.timestamp >= ?")
            params.append(float(since))
        sql = (
            "SELECT m.id, m.timestamp, m.device_id, m.device_name, m.model_sha256, "
            "COALESCE(m.model_label, models.label) AS model_label, models.arch AS arch, m.runtime, "
            "m.runtime_version, m.median_ms, m.min_ms, m.cv, m.throttled, m.threads, m.pinned_cores, "
            "m.conditions_key FROM measurements m "
            "LEFT JOIN models ON models.sha256 = m.model_sha256"
            + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.timestamp DESC, m.id DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._lock:
            cursor = self._conn.execute(sql, params)
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def measurement_columns(self) -> list[str]:
        with self._lock:
            return [row[1] for row in self._conn.execute("PRAGMA table_info(measurements)")]

    def measurements_frame(self, *, include_json: bool = False, **filters: Any) -> pd.DataFrame:
        """Measurements as a pandas DataFrame (one row each, with the model's label and arch).

        Filters are column=value (a list/tuple/set means IN, None means IS NULL), e.g.
        `measurements_frame(device_name="pixel4", runtime="benchmark_model", throttled=0)`.
        """
        import pandas as pd

        columns = self.measurement_columns()
        where: list[str] = []
        params: list[Any] = []
        for key, value in filters.items():
            if key in columns:
                column = f"m.{key}"
            elif key in _FILTER_EXTRA:
                column = _FILTER_EXTRA[key]
            else:
                known = ", ".join([*columns, *_FILTER_EXTRA])
                raise MnasError(f"unknown measurements filter {key!r} (known: {known})")
            if value is None:
                where.append(f"{column} IS NULL")
            elif isinstance(value, list | tuple | set | frozenset):
                values = list(value)
                if not values:
                    where.append("0")
                    continue
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
            else:
                where.append(f"{column} = ?")
                params.append(int(value) if isinstance(value, bool) else value)
        selected = [f"m.{c}" for c in columns if include_json or c != "measurement_json"]
        sql = (f"SELECT {', '.join(selected)}, models.label AS label, models.arch AS arch "
               "FROM measurements m LEFT JOIN models ON models.sha256 = m.model_sha256")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.id"
        with self._lock:
            frame = pd.read_sql_query(sql, self._conn, params=params)
        for flag in ("throttled", "profile_ops"):
            frame[flag] = frame[flag].astype(bool)
        return frame

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query, outside any write transaction: under WAL it neither waits for nor
        blocks a writer in another process."""
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                if sqlite_cause(exc) is None:
                    raise
                raise StoreError(f"{self.path}: cannot read: {sqlite_cause(exc)} (sqlite: {exc})") from None
