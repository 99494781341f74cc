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
  rather than modified.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnas.bench.types import DeviceProfile, Measurement
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
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        if not self.path.exists():
            if not create:
                raise MnasError(f"{self.path}: no results database here (nothing measured yet, "
                                "or pass --db / set MNAS_DB)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise MnasError(f"{self.path}: is a folder, expected a results database file")
        self._lock = threading.RLock()
        self._depth = 0
        self._ensured: dict[str, int] = {}
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise MnasError(f"{self.path}: cannot open results database: {exc}") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._check_identity()
            self._set_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self.ensure_component_schema("bench", BENCH_MIGRATIONS)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise MnasError(f"{self.path}: not a mnas results store ({exc})") from None
        except BaseException:
            self._conn.close()
            raise

    # ---- opening

    def _check_identity(self) -> None:
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return
        if app_id != 0:
            raise MnasError(f"{self.path}: not a mnas results store (SQLite application_id "
                            f"{app_id:#x}, expected {APPLICATION_ID:#x})")
        tables = [row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        if tables and SCHEMA_TABLE not in tables:
            raise MnasError(f"{self.path}: not a mnas results store (an SQLite database with "
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
            raise MnasError(f"{self.path}: cannot switch the database to WAL mode (got {mode!r}); "
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
        """A short write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise MnasError(f"{self.path}: database stayed locked for "
                                    f"{self.busy_timeout_s:g} s (another process holds it)") from None
                raise
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

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
            raise MnasError(f"{self.path}: schema of '{component}' is version {current}, newer than "
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

        row = measurement_row(m)
        columns = ", ".join(row)
        placeholders = ", ".join(f":{name}" for name in row)
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
                    raise DuplicateMeasurement(
                        f"{self.path}: measurement {reusable[0]} already holds {label or m.model_path} on "
                        f"{m.device_id} ({m.runtime} {m.runtime_version}) under the same conditions: not stored "
                        "again (pass --force to store another)", reusable[0])
            self._upsert_model(conn, m.model_sha256, m.model_path, label, arch)
            cursor = conn.execute(f"INSERT INTO measurements ({columns}) VALUES ({placeholders})", row)
            return int(cursor.lastrowid)

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

    def recent_measurements(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """One summary row per measurement, newest first."""
        sql = (
            "SELECT m.id, m.timestamp, m.device_id, m.device_name, m.model_sha256, "
            "models.label AS model_label, m.runtime, m.runtime_version, m.median_ms, m.cv, "
            "m.throttled FROM measurements m LEFT JOIN models ON models.sha256 = m.model_sha256 "
            "ORDER BY m.timestamp DESC, m.id DESC"
        )
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
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
            return self._conn.execute(sql, tuple(params)).fetchall()
