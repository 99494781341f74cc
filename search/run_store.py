"""The search's tables in the results store: runs, samples, controller updates, checkpoints,
and the final re-trainings of the best children (`mnas search finalize`).

`bench` owns the database file; the search adds its own versioned tables through
`ResultsStore.ensure_component_schema`. A sample and the searcher checkpoint taken right
after it are written in ONE transaction, so after a crash the store holds every finished
sample exactly once and the checkpoint always matches the last stored sample.

The search loop sees a `SampleStore`: `RunStore` (SQLite, resumable) or `MemoryRunStore`
(a benchmark's many short runs, which nobody resumes: serialising a PPO checkpoint after
every child would cost more than the rest of the loop). Checkpoints travel as state dicts;
turning them into bytes is the store's business.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mnas.errors import MnasError
from mnas.search.types import state_from_bytes, state_to_bytes

__all__ = ["COMPONENT", "MIGRATIONS", "FinalRow", "MemoryRunStore", "RunStore", "SampleRow", "SampleStore"]

COMPONENT = "search"
MIGRATIONS = [
    """
    CREATE TABLE search_runs (
        run_id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        algorithm TEXT NOT NULL,
        config TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'running',
        updated REAL
    );
    CREATE TABLE search_samples (
        run_id TEXT NOT NULL REFERENCES search_runs(run_id),
        idx INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        arch TEXT NOT NULL,
        arch_hash TEXT NOT NULL,
        accuracy REAL NOT NULL,
        accuracy_task TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        latency_source TEXT NOT NULL,
        predicted_ms REAL,
        measured_ms REAL,
        reward REAL NOT NULL,
        train_s REAL,
        latency_s REAL,
        created REAL NOT NULL,
        extra TEXT,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE search_updates (
        run_id TEXT NOT NULL REFERENCES search_runs(run_id),
        update_idx INTEGER NOT NULL,
        after_sample INTEGER NOT NULL,
        stats TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (run_id, update_idx)
    );
    CREATE TABLE search_checkpoints (
        run_id TEXT PRIMARY KEY REFERENCES search_runs(run_id),
        next_idx INTEGER NOT NULL,
        state BLOB NOT NULL,
        created REAL NOT NULL
    );
    """,
    # 2: one row per final re-training of a child (`mnas search finalize`): the key is the
    # run, the child's network, the task (its seed and schedule are in it) and the steps, so
    # a re-run after a kill trains only what is missing and never the same training twice
    """
    CREATE TABLE search_finals (
        run_id TEXT NOT NULL REFERENCES search_runs(run_id),
        arch_hash TEXT NOT NULL,
        arch TEXT NOT NULL,
        seed INTEGER NOT NULL,
        steps INTEGER NOT NULL,
        accuracy_task TEXT NOT NULL,
        accuracy REAL NOT NULL,
        train_s REAL,
        final_loss REAL,
        diverged INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        PRIMARY KEY (run_id, arch_hash, accuracy_task, steps)
    );
    """,
]


@dataclass
class SampleRow:
    idx: int
    tokens: list[int]
    arch: str
    arch_hash: str
    accuracy: float
    accuracy_task: str
    latency_ms: float
    latency_source: str
    reward: float
    predicted_ms: float | None = None
    measured_ms: float | None = None
    train_s: float | None = None
    latency_s: float | None = None
    created: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinalRow:
    """One final re-training of a child: its network, seed, schedule and accuracy."""

    arch_hash: str
    arch: str
    seed: int
    steps: int
    accuracy_task: str
    accuracy: float
    train_s: float | None = None
    final_loss: float | None = None
    diverged: bool = False
    created: float = field(default_factory=time.time)


class SampleStore(Protocol):
    """What the search loop needs from a store: the run's samples, its checkpoint, its status."""

    def checkpoint(self, run_id: str) -> tuple[int, dict[str, Any]] | None: ...

    def samples(self, run_id: str) -> list[SampleRow]: ...

    def add_sample(self, run_id: str, sample: SampleRow, state: dict[str, Any],
                   update_stats: list[dict[str, Any]]) -> None: ...

    def set_status(self, run_id: str, status: str) -> None: ...


class RunStore:
    """Search-run persistence on top of a `ResultsStore`."""

    def __init__(self, store) -> None:  # mnas.bench.store.ResultsStore
        self.store = store
        store.ensure_component_schema(COMPONENT, MIGRATIONS)

    def create_run(self, run_id: str, algorithm: str, config: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM search_runs WHERE run_id = ?", (run_id,)).fetchone():
                raise MnasError(f"search run {run_id!r}: already exists: expected a new name, or --resume {run_id}")
            conn.execute("INSERT INTO search_runs (run_id, created, algorithm, config, status, updated) VALUES (?, ?, ?, ?, 'running', ?)",
                         (run_id, time.time(), algorithm, json.dumps(config, sort_keys=True), time.time()))

    def run_config(self, run_id: str) -> dict[str, Any]:
        rows = self.store.read("SELECT config FROM search_runs WHERE run_id = ?", (run_id,))
        row = rows[0] if rows else None
        if row is None:
            raise MnasError(f"search run {run_id!r}: not in the results store: expected one of {self.run_ids()[-5:] or 'none yet'}")
        return json.loads(row[0])

    def update_config(self, run_id: str, config: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE search_runs SET config = ?, updated = ? WHERE run_id = ?",
                         (json.dumps(config, sort_keys=True), time.time(), run_id))

    def set_status(self, run_id: str, status: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE search_runs SET status = ?, updated = ? WHERE run_id = ?", (status, time.time(), run_id))

    def run_ids(self) -> list[str]:
        return [r[0] for r in self.store.read("SELECT run_id FROM search_runs ORDER BY created")]

    def runs(self) -> list[dict[str, Any]]:
        rows = self.store.read(
            "SELECT r.run_id, r.created, r.algorithm, r.status, COUNT(s.idx), MAX(s.reward) FROM search_runs r "
            "LEFT JOIN search_samples s ON s.run_id = r.run_id GROUP BY r.run_id ORDER BY r.created")
        return [{"run_id": r[0], "created": r[1], "algorithm": r[2], "status": r[3], "samples": r[4], "best_reward": r[5]}
                for r in rows]

    def add_sample(self, run_id: str, sample: SampleRow, state: dict[str, Any],
                   update_stats: list[dict[str, Any]]) -> None:
        """Store one sample, the checkpoint `state` taken after it and any controller update, atomically."""
        checkpoint = state_to_bytes(state)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO search_samples (run_id, idx, tokens, arch, arch_hash, accuracy, accuracy_task, latency_ms, "
                "latency_source, predicted_ms, measured_ms, reward, train_s, latency_s, created, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, sample.idx, json.dumps(sample.tokens), sample.arch, sample.arch_hash, sample.accuracy,
                 sample.accuracy_task, sample.latency_ms, sample.latency_source, sample.predicted_ms,
                 sample.measured_ms, sample.reward, sample.train_s, sample.latency_s, sample.created,
                 json.dumps(sample.extra)))
            count = conn.execute("SELECT COUNT(*) FROM search_updates WHERE run_id = ?", (run_id,)).fetchone()[0]
            for offset, stats in enumerate(update_stats):
                conn.execute("INSERT INTO search_updates (run_id, update_idx, after_sample, stats, created) VALUES (?, ?, ?, ?, ?)",
                             (run_id, count + offset, sample.idx, json.dumps(stats), time.time()))
            conn.execute(
                "INSERT INTO search_checkpoints (run_id, next_idx, state, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET next_idx = excluded.next_idx, state = excluded.state, created = excluded.created",
                (run_id, sample.idx + 1, checkpoint, time.time()))
            conn.execute("UPDATE search_runs SET updated = ? WHERE run_id = ?", (time.time(), run_id))

    def checkpoint(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        """(index of the next sample, state right after the last stored one), or None before the first."""
        rows = self.store.read("SELECT next_idx, state FROM search_checkpoints WHERE run_id = ?", (run_id,))
        row = rows[0] if rows else None
        return (int(row[0]), state_from_bytes(bytes(row[1]))) if row else None

    def samples(self, run_id: str) -> list[SampleRow]:
        rows = self.store.read(
            "SELECT idx, tokens, arch, arch_hash, accuracy, accuracy_task, latency_ms, latency_source, reward, "
            "predicted_ms, measured_ms, train_s, latency_s, created, extra FROM search_samples WHERE run_id = ? ORDER BY idx",
            (run_id,))
        return [SampleRow(idx=r[0], tokens=json.loads(r[1]), arch=r[2], arch_hash=r[3], accuracy=r[4], accuracy_task=r[5],
                          latency_ms=r[6], latency_source=r[7], reward=r[8], predicted_ms=r[9], measured_ms=r[10],
                          train_s=r[11], latency_s=r[12], created=r[13], extra=json.loads(r[14] or "{}")) for r in rows]

    def updates(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.store.read("SELECT update_idx, after_sample, stats FROM search_updates WHERE run_id = ? ORDER BY update_idx",
                               (run_id,))
        return [{"update_idx": r[0], "after_sample": r[1], **json.loads(r[2])} for r in rows]

    def add_final(self, run_id: str, row: FinalRow) -> bool:
        """Store one final training; False (and nothing written) when the same one is already stored."""
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO search_finals (run_id, arch_hash, arch, seed, steps, accuracy_task, accuracy, train_s, "
                "final_loss, diverged, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id, arch_hash, accuracy_task, steps) DO NOTHING",
                (run_id, row.arch_hash, row.arch, row.seed, row.steps, row.accuracy_task, row.accuracy, row.train_s,
                 row.final_loss, int(row.diverged), row.created))
            return cursor.rowcount == 1

    def finals(self, run_id: str) -> list[FinalRow]:
        """The run's final trainings, oldest first."""
        rows = self.store.read(
            "SELECT arch_hash, arch, seed, steps, accuracy_task, accuracy, train_s, final_loss, diverged, created "
            "FROM search_finals WHERE run_id = ? ORDER BY created, rowid", (run_id,))
        return [FinalRow(arch_hash=r[0], arch=r[1], seed=int(r[2]), steps=int(r[3]), accuracy_task=r[4], accuracy=r[5],
                         train_s=r[6], final_loss=r[7], diverged=bool(r[8]), created=r[9]) for r in rows]

    def samples_frame(self, run_id: str):
        import pandas as pd

        return pd.DataFrame([asdict(s) for s in self.samples(run_id)])


class MemoryRunStore:
    """A `SampleStore` in this process's memory, for runs that are never resumed (benchmarks).

    It keeps samples and controller updates, not checkpoints: a run that cannot outlive the
    process has nothing to resume from, and serialising the searcher after every child is
    the loop's most expensive step.
    """

    def __init__(self) -> None:
        self._samples: dict[str, list[SampleRow]] = {}
        self._updates: dict[str, list[dict[str, Any]]] = {}
        self.status: dict[str, str] = {}

    def checkpoint(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        if self._samples.get(run_id):
            raise MnasError(f"search run {run_id!r}: resumed from memory: expected a RunStore to resume runs")
        return None

    def samples(self, run_id: str) -> list[SampleRow]:
        return list(self._samples.get(run_id, []))

    def add_sample(self, run_id: str, sample: SampleRow, state: dict[str, Any],
                   update_stats: list[dict[str, Any]]) -> None:
        self._samples.setdefault(run_id, []).append(sample)
        updates = self._updates.setdefault(run_id, [])
        updates.extend({"update_idx": len(updates) + i, "after_sample": sample.idx, **stats}
                       for i, stats in enumerate(update_stats))

    def set_status(self, run_id: str, status: str) -> None:
        self.status[run_id] = status

    def updates(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._updates.get(run_id, []))
