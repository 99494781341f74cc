"""A results store that cannot be written (disk full, read-only, immutable) or is not a store.

Each failure is ONE line naming the store and the cause, never a traceback; a failed write
leaves the store exactly as it was, reads keep working on a read-only store, and a re-run
after the cause is fixed does exactly what is missing. A full disk is made by SQLite itself:
`PRAGMA max_page_count` on the store's connection (set by the test, after VACUUM packed the
pages) makes the next write that needs a page fail with SQLITE_FULL, as a full disk does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_store import make_measurement

from mnas.bench.store import (
    NotAStoreError,
    ResultsStore,
    StoreError,
    StoreWriteError,
    sqlite_cause,
)

# --min-cpu-share 0: the contention guard flags nothing, so reuse is exact whatever the load
# (flagging is tested in tests/test_bench_contention_flag.py)
FAST = ["--runs", "3", "--warmup", "1", "--min-secs", "0", "--min-cpu-share", "0"]
SEVEN = ["mnasnet-a1", "mnasnet-b1", "mnasnet-small", "mnasnet-d1", "mnasnet-d1-320", "mobilenet-v2",
         "stem16,r1_k3_s11_e1_i16_o16_noskip,head64"]


def fill_disk(store: ResultsStore) -> None:
    """From now on this connection's file cannot grow: the next write needing a page is SQLITE_FULL."""
    store._conn.execute("VACUUM")  # pack the pages, so no new row fits in their free space
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]


# ------------------------------------------------------------------------------ the store itself

def test_sqlite_errors_are_named_by_their_code() -> None:
    def error(code: int, text: str) -> sqlite3.OperationalError:
        exc = sqlite3.OperationalError(text)
        exc.sqlite_errorcode = code
        return exc

    assert sqlite_cause(error(sqlite3.SQLITE_FULL, "database or disk is full")) == "disk full"
    assert sqlite_cause(error(sqlite3.SQLITE_READONLY_DBMOVED, "attempt to write a readonly database")) == "read-only"
    assert sqlite_cause(error(sqlite3.SQLITE_BUSY, "database is locked")) == "locked"
    assert sqlite_cause(error(sqlite3.SQLITE_NOTADB, "file is not a database")) == "not a database"
    assert sqlite_cause(error(sqlite3.SQLITE_ERROR, "no such table: x")) is None  # a bug in the SQL, not the file


def test_a_full_disk_is_one_store_error_and_the_store_is_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    store = ResultsStore(db)
    store.add_measurement(make_measurement(1))
    fill_disk(store)
    with pytest.raises(StoreWriteError) as info:
        for i in range(2, 50):
            store.add_measurement(make_measurement(i))
    assert str(info.value).startswith(f"{db}: cannot write: disk full (sqlite: database or disk is full)")
    assert info.value.exit_code == 1 and info.value.cause == "disk full"
    stored = len(store.recent_measurements(None))
    with pytest.raises(StoreWriteError, match="disk full"):  # the connection stays usable, and refuses again
        store.add_measurement(make_measurement(99))
    assert len(store.recent_measurements(None)) == stored
    store.close()
    assert stored_count(db) == stored
    with ResultsStore(db) as freed:  # space is back: writes work again
        freed.add_measurement(make_measurement(100))
    assert stored_count(db) == stored + 1


def test_read_only_open_reads_everything_and_refuses_every_write_in_one_line(tmp_path: Path) -> None:
    from mnas.predictor.table import list_tables
    from mnas.search.run_store import RunStore

    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        store.add_measurement(make_measurement(1))
    before = digest(db)
    with ResultsStore(db, read_only=True) as store:
        assert store.read_only
        assert [r["model_sha256"] for r in store.recent_measurements()] == [f"{1:064x}"]
        assert list_tables(store) == []  # components the file does not hold read as empty
        assert RunStore(store).runs() == []
        with pytest.raises(StoreWriteError, match=rf"^{db}: cannot write: read-only \(opened read-only\)$"):
            store.add_measurement(make_measurement(2))
        with pytest.raises(StoreWriteError, match="read-only"):
            store.require_writable()
    assert digest(db) == before
    with pytest.raises(StoreError, match="no results database here"):
        ResultsStore(tmp_path / "none.db", read_only=True)
    assert not (tmp_path / "none.db").exists()


def test_a_store_needing_an_upgrade_opened_read_only_says_so(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    ResultsStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE mnas_schema SET version = 1 WHERE component = 'bench'")
    from mnas.bench.store import BENCH_MIGRATIONS

    needed = len(BENCH_MIGRATIONS)  # the version this mnas needs grows with each migration
    with pytest.raises(StoreError, match=rf"schema of 'bench' is version 1, older than this mnas needs \({needed}\), "
                                         r"and the store cannot be upgraded: opened read-only"):
        ResultsStore(db, read_only=True)


def test_not_a_store_is_told_apart_from_cannot_write(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(NotAStoreError, match="not a mnas results store"):
        ResultsStore(junk)
    with pytest.raises(NotAStoreError, match="not a mnas results store"):
        ResultsStore(junk, read_only=True)


def _immutable(path: Path) -> bool:
    """chattr +i (stops root too); False where the file system or the container does not allow it."""
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.fixture(params=["file", "folder"])
def unwritable_store(tmp_path: Path, request: pytest.FixtureRequest):
    """A store holding one measurement whose file, or folder, this process cannot write: chmod for
    users, immutable (chattr +i) for root. A read-only folder also means no -shm file can be made."""
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "r.db"
    with ResultsStore(db) as store:
        store.add_measurement(make_measurement(1))
    target = db if request.param == "file" else folder
    if os.geteuid() != 0:
        target.chmod(0o444 if target is db else 0o555)
        yield db
        target.chmod(0o644 if target is db else 0o755)
        return
    if not _immutable(target):
        pytest.skip("running as root, where chmod does not stop writes, and chattr +i is not allowed here")
    try:
        yield db
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False)


def mnas(db: Path, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nfrom mnas.cli import main\nmain(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "--db", str(db), *args], capture_output=True, text=True,
                          timeout=300, cwd=next(p for p in db.parents if p.exists()))


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("mnas: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_unwritable_store_is_listed_and_refuses_bench_in_one_line(unwritable_store: Path) -> None:
    db = unwritable_store
    before = digest(db)
    listed = mnas(db, "results", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["model_sha256"] for r in json.loads(listed.stdout)] == [f"{1:064x}"]
    out = db.parent.parent / "export.csv"
    exported = mnas(db, "results", "export", "-o", str(out))
    assert exported.returncode == 0 and out.read_text().count("\n") == 2, exported.stderr
    from tflite_fixtures import small_conv

    model = small_conv(db.parent.parent)  # a file: nothing is written next to the store before the bench
    bench = mnas(db, "bench", str(model), *FAST)
    assert bench.returncode == 1, bench.stderr
    line = one_error_line(bench.stderr)
    assert line.startswith(f"mnas: error: {db}: cannot write: read-only ("), line
    assert digest(db) == before


# ------------------------------------------------------------------------------ mnas bench

FULL_AFTER_3 = """
from mnas.bench.store import ResultsStore
_add = ResultsStore.add_measurement
def add(self, *args, **kwargs):
    self._writes = getattr(self, "_writes", 0) + 1
    if self._writes >= 4:  # the disk fills up after three stored models
        self._conn.execute("VACUUM")
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages}")
    return _add(self, *args, **kwargs)
ResultsStore.add_measurement = add
"""


@pytest.mark.slow
def test_full_disk_during_a_seven_model_bench_then_a_rerun_measures_exactly_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    args = ["bench", *SEVEN, "--resolution", "96", *FAST, "--json"]
    full = mnas(db, *args, prelude=FULL_AFTER_3)
    assert full.returncode == 1, full.stderr
    line = one_error_line(full.stderr)
    assert line == f"mnas: error: {db}: cannot write: disk full (sqlite: database or disk is full)"
    rows = json.loads(full.stdout)
    assert [r["model_name"] for r in rows][:6] == SEVEN[:6] and len(rows) == 7
    # the first write that needed a new page after the third model failed: that model's figure is shown
    k = next(i for i, r in enumerate(rows) if r["error"])
    assert 3 <= k <= 5, rows
    assert all(r["error"] is None and r["stored_id"] is not None for r in rows[:k])
    assert rows[k]["error"] == f"{rows[k]['device_id']}: {rows[k]['model_name']}: measured but not stored: {line[13:]}"
    assert rows[k]["median_ms"] > 0 and rows[k]["stored_id"] is None
    for row in rows[k + 1:]:  # one may have been in flight; nothing more is sent to the device
        assert row["stored_id"] is None
        assert row["error"].endswith(("measured but not stored: store unwritable", "not measured: store unwritable"))
    assert sum(r["error"].endswith("not measured: store unwritable") for r in rows[k + 1:]) >= 5 - k
    assert stored_count(db) == k  # intact: what was stored before the disk filled up

    again = mnas(db, *args)  # space freed
    assert again.returncode == 0, again.stderr
    rows = json.loads(again.stdout)
    assert [r["reused"] for r in rows] == [True] * k + [False] * (7 - k)
    assert stored_count(db) == 7


# ------------------------------------------------------------------------------ mnas table plan / build

def test_table_plan_creates_no_database_and_leaves_a_store_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "r.db"
    out = mnas(db, "table", "plan", "--resolution", "96", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stored"] == 0
    assert not db.parent.exists()  # neither the database nor its folder
    with ResultsStore(db) as store:
        store.add_measurement(make_measurement(1))
    before = sorted(p.name for p in db.parent.iterdir()), digest(db)
    out = mnas(db, "table", "plan", "--resolution", "96", "--name", "t", "--json")
    assert out.returncode == 0, out.stderr
    assert (sorted(p.name for p in db.parent.iterdir()), digest(db)) == before


@pytest.mark.parametrize("command", [("results", "list"), ("search", "list"), ("search", "report", "r1"),
                                     ("table", "list"), ("predict", "mnasnet-a1")])
def test_commands_that_only_read_create_no_database(tmp_path: Path, command: tuple[str, ...]) -> None:
    db = tmp_path / "sub" / "r.db"
    out = mnas(db, *command)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"mnas: error: {db}: no results database here (nothing measured yet, "
                                               "or pass --db / set MNAS_DB)"]
    assert not db.parent.exists()



class FullAfter:
    """A results store whose disk fills up when the `at`-th write transaction (0-based) begins."""

    def __init__(self, store: ResultsStore, at: int) -> None:
        self.store, self.at, self.writes = store, at, 0

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def transaction(self):
        if self.store._depth == 0:
            if self.writes == self.at:
                pages = self.store._conn.execute("PRAGMA page_count").fetchone()[0]
                self.store._conn.execute(f"PRAGMA max_page_count = {pages}")
            self.writes += 1
        return self.store.transaction()

    def add_measurement(self, *args, **kwargs):
        with self.transaction():
            return self.store.add_measurement(*args, **kwargs)


def test_table_build_stops_on_a_full_disk_in_one_line_and_a_rerun_completes_it(tmp_path: Path) -> None:
    from predictor_fakes import SyntheticDevice, write_key

    from mnas.bench.types import BenchConfig
    from mnas.predictor.build import build_table
    from mnas.predictor.layers import enumerate_layers
    from mnas.predictor.table import find_table, stored_keys
    from mnas.space.search_space import mnasnet

    layers = enumerate_layers(mnasnet(), 32)[:12]
    config = BenchConfig(warmup_runs=1, num_runs=3, min_secs=0.0)
    db = tmp_path / "r.db"
    store = ResultsStore(db)
    full = FullAfter(store, at=5)  # the table's creation, then layers
    with pytest.raises(StoreWriteError) as info:
        build_table(mnasnet(), 32, [SyntheticDevice()], full, "t", config, writer=write_key, progress=False,
                    layers=layers)
    message = str(info.value)
    assert message.startswith(f"{db}: cannot write: disk full (sqlite: database or disk is full); table 't': ")
    assert message.endswith("remaining: fix the cause and re-run to resume")
    store.close()
    with ResultsStore(db) as store:  # space freed
        table_id = find_table(store, "t")[0]
        kept = stored_keys(store, table_id)
        assert 4 <= len(kept) < 12
        # every stored entry has its measurement and no measurement lacks its entry
        assert len(store.recent_measurements(None)) == len(kept)
        result = build_table(mnasnet(), 32, [SyntheticDevice()], store, "t", config, writer=write_key,
                             progress=False, layers=layers)
        assert (result.already_stored, result.measured, result.remaining) == (len(kept), 12 - len(kept), 0)
        assert len(store.recent_measurements(None)) == 12


# ------------------------------------------------------------------------------ mnas search

def test_search_stops_on_a_full_disk_and_resume_continues_exactly(tmp_path: Path) -> None:
    import torch
    from test_search_runs import RES, make_setup

    from mnas.search.loop import run_search
    from mnas.search.run_store import RunStore
    from mnas.search.synthetic_latency import synthetic_predictor

    torch.set_num_threads(1)
    predictor = synthetic_predictor(RES)
    total, at = 12, 5
    reference = RunStore(ResultsStore(tmp_path / "reference.db"))
    reference.create_run("r", "ppo", {})
    run_search(reference, "r", make_setup("ppo", predictor), total, progress=False)

    results = ResultsStore(tmp_path / "mnas.db")
    runs = RunStore(results)
    runs.create_run("r", "ppo", {})
    full = RunStore(FullAfter(results, at=at))  # the disk is full from sample `at` on
    with pytest.raises(StoreWriteError, match=r"cannot write: disk full \(sqlite: database or disk is full\)"):
        run_search(full, "r", make_setup("ppo", predictor), total, progress=False)
    results.close()
    runs = RunStore(ResultsStore(tmp_path / "mnas.db"))  # space freed
    kept = len(runs.samples("r"))  # the first sample that needed a new page was not stored, nor its checkpoint
    assert at <= kept < total
    assert [s.idx for s in runs.samples("r")] == list(range(kept))
    assert runs.checkpoint("r")[0] == kept
    summary = run_search(runs, "r", make_setup("ppo", predictor), total, progress=False)
    assert (summary.samples, summary.new_samples) == (total, total - kept)
    assert [(s.idx, s.tokens, s.reward) for s in runs.samples("r")] == \
        [(s.idx, s.tokens, s.reward) for s in reference.samples("r")]


FULL_AT_SAMPLE_4 = """
from mnas.search.run_store import RunStore
_add = RunStore.add_sample
def add(self, run_id, sample, *args, **kwargs):
    if sample.idx == 4:  # the disk fills up as the fifth child is stored (its checkpoint needs pages)
        pages = self.store._conn.execute("PRAGMA page_count").fetchone()[0]
        self.store._conn.execute(f"PRAGMA max_page_count = {pages}")
    return _add(self, run_id, sample, *args, **kwargs)
RunStore.add_sample = add
"""


@pytest.mark.slow
def test_mnas_search_on_a_full_disk_is_one_line_and_resume_completes_it(tmp_path: Path) -> None:
    import shutil

    from test_search_runs import make_predictor_db, search_args

    source = tmp_path / "predictor.db"
    make_predictor_db(source)
    db = tmp_path / "mnas.db"
    shutil.copy(source, db)
    args = search_args(db, "r", "ppo", 8)[2:]  # without --db: `mnas` adds it
    full = mnas(db, *args, prelude=FULL_AT_SAMPLE_4)
    assert full.returncode == 1, full.stderr
    line = one_error_line(full.stderr)
    match = re.fullmatch(rf"mnas: error: {re.escape(str(db))}: cannot write: disk full \(sqlite: database or disk is "
                         r"full\); search r: (\d) of 8 children stored: fix the cause and resume with "
                         r"`mnas search --resume r`", line)
    assert match, line
    kept = int(match.group(1))  # the first child whose sample or checkpoint needed a page after the fourth
    assert 4 <= kept < 8
    resumed = mnas(db, "search", "--resume", "r", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert (json.loads(resumed.stdout)["samples"], json.loads(resumed.stdout)["new_samples"]) == (8, 8 - kept)
