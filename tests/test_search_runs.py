"""Search runs survive SIGKILL and Ctrl-C exactly, store each child once, and reject bad input up front.

The crash tests run the real `mnas search` command line in a subprocess (cheap accuracy,
predicted latency from a predictor stored in the test's database), kill it mid-run, resume it
with `--resume` and compare every stored child (tokens, arch, accuracy, latency, reward and,
for PPO, every controller update) with an uninterrupted run of the same config and seed, for
PPO, random search and regularized evolution. The in-process tests inject failures at each
stage of one child (training, latency, the controller, the store transaction) to show that a
sample and the checkpoint taken after it are stored together or not at all.

Helpers at the top (`make_predictor_db`, `Cli`, `stored`, `cli_env`) are shared with
`test_search_cli.py` and `test_search_loopback.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from predictor_fakes import synthetic_layer_ms

from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.registry import load_predictor, save_predictor
from mnas.predictor.table import (
    TableEntry,
    TableMeta,
    add_entry,
    load_table,
    open_table,
)
from mnas.search.accuracy import CheapAccuracy
from mnas.search.latency import PredictedLatency
from mnas.search.loop import run_search
from mnas.search.reward import Reward
from mnas.search.run_store import RunStore
from mnas.search.runs import SearchSetup
from mnas.search.setup import build_searcher
from mnas.search.synthetic_latency import synthetic_predictor
from mnas.space.search_space import mnasnet

RES = 32  # latency resolution of the test predictors: synthetic networks take 0.19-0.50 ms here
TARGET_MS = 0.3  # about the 35th percentile of random networks at RES on the synthetic device
SEED = 11
# samples per run, and how many must be stored before the kill: PPO mid-minibatch (an update
# ran at 20, the buffer holds 7+), evolution past its 50 random founders (mutating); the rest
# of the budget is a margin of seconds so the kill lands before the run ends
ALGORITHMS = {"ppo": (60, 27), "random": (1000, 150), "evolution": (1000, 150)}


# ============================================================================ shared helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env() -> dict[str, str]:
    """The environment of a `mnas` subprocess: nothing of the user's, and no adb server to reach."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MNAS_DB", "ANDROID_SERIAL", "MNAS_DEVICE_CONFIGS", "MNAS_DEBUG")}
    env["ANDROID_ADB_SERVER_PORT"] = str(free_port())  # a closed port: phones cannot be found
    env["MPLBACKEND"] = "Agg"
    return env


def make_predictor_db(db: Path, resolution: int = RES, device: str = "host", every: int = 10) -> int:
    """Store a lookup predictor with a learned fallback for `device` at `resolution`; return its id.

    The table holds every `every`-th distinct layer of the space with its synthetic-device
    latency; a random forest fitted on those entries predicts the others, so every network of
    the space is predictable (lookup where the table has the layer, fallback elsewhere).
    """
    store = ResultsStore(db)
    try:
        layers = enumerate_layers(mnasnet(), resolution, 1000)
        meta = TableMeta(name=f"synthetic-{device}-{resolution}", device_name=device, runtime="synthetic",
                         runtime_version="1.0", resolution=resolution, conditions=BenchConfig().conditions_key())
        table_id = open_table(store, meta)
        for layer in layers[::every]:
            add_entry(store, table_id, TableEntry(layer.key, synthetic_layer_ms(layer), None, None, 1, time.time()))
        table = load_table(store, table_id)
        predictor = LookupPredictor(table, fallback=LearnedPredictor.from_table(table, model="rf"))
        coverage = predictor.space_coverage()
        assert coverage["unpredictable"] == 0 and coverage["from_fallback"] > 0 and coverage["in_table"] > 0
        return save_predictor(store, predictor, table_id, {"source": "synthetic device (tests)"})
    finally:
        store.close()


def copy_db(source: Path, target: Path) -> Path:
    """A consistent copy of a WAL database (sqlite's online backup)."""
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


@dataclass(frozen=True)
class Row:
    idx: int
    tokens: list[int]
    arch: str
    accuracy: float
    accuracy_task: str
    latency_ms: float
    latency_source: str
    predicted_ms: float | None
    measured_ms: float | None
    reward: float


def query_db(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def stored(db: Path, run_id: str) -> list[Row]:
    """The run's samples straight from SQLite (not through RunStore), in idx order."""
    rows = query_db(db, "SELECT idx, tokens, arch, accuracy, accuracy_task, latency_ms, latency_source, predicted_ms, "
                      "measured_ms, reward FROM search_samples WHERE run_id = ? ORDER BY idx", (run_id,))
    return [Row(r[0], json.loads(r[1]), *r[2:]) for r in rows]


def sample_count(db: Path, run_id: str) -> int:
    rows = query_db(db, "SELECT COUNT(*) FROM search_samples WHERE run_id = ?", (run_id,))
    return int(rows[0][0]) if rows else 0


def run_row(db: Path, run_id: str) -> dict[str, Any] | None:
    rows = query_db(db, "SELECT status, algorithm, config FROM search_runs WHERE run_id = ?", (run_id,))
    if not rows:
        return None
    return {"status": rows[0][0], "algorithm": rows[0][1], "config": json.loads(rows[0][2])}


def checkpoint_next(db: Path, run_id: str) -> int | None:
    rows = query_db(db, "SELECT next_idx FROM search_checkpoints WHERE run_id = ?", (run_id,))
    return int(rows[0][0]) if rows else None


def updates(db: Path, run_id: str) -> list[tuple[int, int, dict]]:
    rows = query_db(db, "SELECT update_idx, after_sample, stats FROM search_updates WHERE run_id = ? ORDER BY update_idx",
                  (run_id,))
    return [(r[0], r[1], json.loads(r[2])) for r in rows]


def assert_each_sample_once(db: Path, run_id: str, count: int) -> None:
    """idx 0..count-1, each exactly once, and the checkpoint right after the last one."""
    indices = [r[0] for r in query_db(db, "SELECT idx FROM search_samples WHERE run_id = ? ORDER BY idx", (run_id,))]
    assert indices == list(range(count))
    assert checkpoint_next(db, run_id) == count


@dataclass
class CliRun:
    rc: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def json(self) -> Any:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return f"rc={self.rc} after {self.elapsed_s:.1f} s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class Cli:
    """`python -m mnas.cli ARGS` in the background, in its own session; SIGKILLed at exit if still running."""

    def __init__(self, env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "mnas.cli", *args], env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def wait(self, timeout_s: float) -> CliRun:
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"mnas did not finish within {timeout_s:g} s; stderr: {err.decode()[-2000:]}") from None
        return CliRun(self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                      time.monotonic() - self.started)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Cli:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def run_cli(env: dict[str, str], *args: str, timeout_s: float = 240.0, cwd: Path | None = None) -> CliRun:
    with Cli(env, *args, cwd=cwd) as proc:
        return proc.wait(timeout_s)


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> CliRun:
    """`mnas ARGS` through the console-script entry (`mnas.cli.main`) in this process."""
    from mnas.cli import main

    capsys.readouterr()
    start = time.monotonic()
    rc = 0
    try:
        main(list(args))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    return CliRun(rc, captured.out, captured.err, time.monotonic() - start)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


def search_args(db: Path, name: str, algorithm: str, samples: int, *extra: str) -> list[str]:
    return ["--db", str(db), "search", "--algorithm", algorithm, "--samples", str(samples), "--accuracy", "cheap",
            "--latency", "predicted", "--device", "host", "--latency-resolution", str(RES),
            "--target-ms", str(TARGET_MS), "--seed", str(SEED), "--name", name, "--json", *extra]


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def predictor_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("predictor") / "mnas.db"
    make_predictor_db(db)
    return db


@pytest.fixture(scope="module")
def uninterrupted(predictor_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One uninterrupted CLI run per algorithm (all three at once), as the reference."""
    db = copy_db(predictor_db, tmp_path_factory.mktemp("reference") / "mnas.db")
    env = cli_env()
    procs = {alg: Cli(env, *search_args(db, f"whole-{alg}", alg, total)) for alg, (total, _) in ALGORITHMS.items()}
    out = {}
    try:
        for alg, proc in procs.items():
            run = proc.wait(300)
            assert run.rc == 0, run.describe()
            assert run.json()["samples"] == ALGORITHMS[alg][0]
            out[alg] = {"rows": stored(db, f"whole-{alg}"), "updates": updates(db, f"whole-{alg}")}
    finally:
        for proc in procs.values():
            proc.kill()
    return out


# ============================================================================ crash and resume


def assert_same_run(rows: list[Row], reference: list[Row]) -> None:
    assert len(rows) == len(reference)
    assert [r.tokens for r in rows] == [r.tokens for r in reference]
    assert [r.arch for r in rows] == [r.arch for r in reference]
    assert [(r.accuracy, r.latency_ms, r.reward) for r in rows] == [(r.accuracy, r.latency_ms, r.reward) for r in reference]
    assert len({tuple(r.tokens) for r in rows}) > 1  # the searcher really explored


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_sigkill_then_resume_stores_exactly_the_uninterrupted_run(algorithm: str, uninterrupted: dict[str, Any],
                                                                 predictor_db: Path, tmp_path: Path) -> None:
    total, kill_at = ALGORITHMS[algorithm]
    db = copy_db(predictor_db, tmp_path / "mnas.db")
    env = cli_env()
    with Cli(env, *search_args(db, "killed", algorithm, total)) as proc:
        wait_for(lambda: sample_count(db, "killed") >= kill_at or proc.proc.poll() is not None, 120,
                 f"{kill_at} stored samples")
        proc.kill()
        run = proc.wait(30)
    assert run.rc == -signal.SIGKILL, run.describe()
    count = sample_count(db, "killed")
    assert kill_at <= count < total
    assert_each_sample_once(db, "killed", count)  # the child in flight left nothing behind
    assert run_row(db, "killed")["status"] == "running"  # killed: nobody could say otherwise

    resumed = run_cli(env, "--db", str(db), "search", "--resume", "killed", "--json")
    assert resumed.rc == 0, resumed.describe()
    payload = resumed.json()
    assert (payload["run_id"], payload["samples"], payload["new_samples"]) == ("killed", total, total - count)
    assert_each_sample_once(db, "killed", total)
    rows = stored(db, "killed")
    reference = uninterrupted[algorithm]
    assert_same_run(rows, reference["rows"])
    assert payload["best_reward"] == max(r.reward for r in reference["rows"])
    assert run_row(db, "killed")["status"] == "done"
    if algorithm == "ppo":  # the controller learned exactly as in the uninterrupted run
        done = updates(db, "killed")
        assert [(u, after) for u, after, _ in done] == [(0, 19), (1, 39), (2, 59)]
        assert [stats for _, _, stats in done] == [stats for _, _, stats in reference["updates"]]


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_and_leaves_a_consistent_store(uninterrupted: dict[str, Any],
                                                                       predictor_db: Path, tmp_path: Path) -> None:
    total, _ = ALGORITHMS["ppo"]
    db = copy_db(predictor_db, tmp_path / "mnas.db")
    env = cli_env()
    with Cli(env, *search_args(db, "sigint", "ppo", total)) as proc:
        wait_for(lambda: sample_count(db, "sigint") >= 25, 120, "25 stored samples")
        proc.proc.send_signal(signal.SIGINT)
        run = proc.wait(60)
    assert run.rc == 130, run.describe()
    count = sample_count(db, "sigint")
    assert 25 <= count < total
    assert_each_sample_once(db, "sigint", count)
    assert run_row(db, "sigint")["status"] == "interrupted"
    command = f"mnas --db {db} search --resume sigint"
    assert run.stderr_lines == [f"mnas: search sigint interrupted with {count} of {total} children stored "
                                f"(every finished child is kept): resume with `{command}`"]

    resumed = run_cli(env, *shlex.split(command)[1:], "--json")  # exactly the printed command
    assert resumed.rc == 0, resumed.describe()
    assert resumed.json()["new_samples"] == total - count
    assert_each_sample_once(db, "sigint", total)
    assert_same_run(stored(db, "sigint"), uninterrupted["ppo"]["rows"])
    assert run_row(db, "sigint")["status"] == "done"


@pytest.mark.slow
def test_resume_extends_the_budget_and_refuses_options_it_would_ignore(
        uninterrupted: dict[str, Any], predictor_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = copy_db(predictor_db, tmp_path / "mnas.db")
    env = cli_env()
    first = run_cli(env, *search_args(db, "grow", "random", 30))
    assert first.rc == 0, first.describe()
    again = run_in_process(capsys, "--db", str(db), "search", "--resume", "grow", "--json")
    assert again.rc == 0 and again.json()["new_samples"] == 0, again.describe()  # budget reached: nothing new
    grown = run_cli(env, "--db", str(db), "search", "--resume", "grow", "--samples", "45", "--json")
    assert grown.rc == 0, grown.describe()
    assert (grown.json()["samples"], grown.json()["new_samples"]) == (45, 15)
    assert_each_sample_once(db, "grow", 45)
    assert run_row(db, "grow")["config"]["samples"] == 45
    # random search draws the same children whatever the budget: the 600-sample reference starts alike
    assert [r.tokens for r in stored(db, "grow")] == [r.tokens for r in uninterrupted["random"]["rows"][:45]]

    refused = run_in_process(capsys, "--db", str(db), "search", "--resume", "grow", "--algorithm", "ppo")
    assert (refused.rc, refused.stderr_lines) == (2, ["mnas: error: --algorithm: given with --resume grow: expected "
                                                      "only --samples, --threads or executor options (a resumed run "
                                                      "keeps its stored settings)"])
    unknown = run_in_process(capsys, "--db", str(db), "search", "--resume", "nosuch")
    assert (unknown.rc, unknown.stderr_lines) == (2, ["mnas: error: search run 'nosuch': not in the results store: "
                                                      "expected one of ['grow']"])
    assert sample_count(db, "grow") == 45


# ============================================================================ bad input fails first


def bad_input_cases(tmp_path: Path, port: str) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty-dataset"
    empty.mkdir(exist_ok=True)
    no_adb = f"no adb server on 127.0.0.1:{port} (start one with `adb start-server`)"
    configs = "pixel1, pixel2, pixel3, pixel4, pixel5, pixel6, pixel7, pixel8"
    absent = str(tmp_path / "absent")
    return [
        (["--latency", "measured", "--device", "nosuch"],
         f"unknown device 'nosuch': expected host, all, or the serial of an attached phone; {no_adb}"),
        (["--latency", "predicted", "--latency-resolution", str(RES), "--dataset", str(empty)],
         f"{empty}: no class folders: expected an ImageFolder tree (one sub-folder per class, images inside)"),
        (["--latency", "predicted", "--device", "nosuch"],
         f"unknown device 'nosuch': expected host, a device config name ({configs}) or the serial of an attached "
         f"phone; {no_adb}"),
        (["--latency", "predicted", "--device", "host", "--latency-resolution", "48"],
         "no stored predictor matches device=host, resolution=48: expected one fitted with `mnas table fit`"),
        # pixel5: no table is shipped for it (device_configs/tables/ has pixel1 and pixel4)
        (["--latency", "hybrid", "--device", "pixel5", "--latency-resolution", str(RES)],
         f"no stored predictor matches device=pixel5, resolution={RES}: expected one fitted with `mnas table fit`"),
        (["--latency", "predicted", "--latency-resolution", str(RES), "--target-ms", "0"],
         "--target-ms 0: expected a latency target > 0 ms"),
        (["--latency", "predicted", "--latency-resolution", str(RES), "--target-ms", "-75"],
         "--target-ms -75: expected a latency target > 0 ms"),
        (["--latency", "predicted", "--latency-resolution", str(RES), "--samples", "0"],
         "--samples 0: expected a budget >= 1"),
        (["--latency", "predicted", "--latency-resolution", str(RES), "--dataset", absent],
         f"dataset {absent!r}: no such file or folder: expected 'fashion-mnist', 'digits', or a path to an "
         "ImageFolder tree, a CIFAR-10 python folder, a folder of IDX files or an .npz file"),
    ]


def assert_failed_first(run: CliRun, message: str, db: Path, measurements_before: list) -> None:
    assert (run.rc, run.stderr_lines, run.stdout) == (2, [f"mnas: error: {message}"], ""), run.describe()
    assert run_row(db, "bad") is None and sample_count(db, "bad") == 0
    assert not (db.parent / "runs" / "bad").exists()  # no model written, no weights kept
    assert query_db(db, "SELECT COUNT(*) FROM measurements") == measurements_before


@pytest.mark.slow
def test_bad_input_fails_in_one_line_before_any_training(predictor_db: Path, tmp_path: Path) -> None:
    """As a user sees it: a fresh process, exit code 2, one line, quickly, nothing stored."""
    env = cli_env()
    db = copy_db(predictor_db, tmp_path / "mnas.db")
    before = query_db(db, "SELECT COUNT(*) FROM measurements")
    for args, message in bad_input_cases(tmp_path, env["ANDROID_ADB_SERVER_PORT"])[:2]:
        run = run_cli(env, "--db", str(db), "search", *args, "--name", "bad", timeout_s=60, cwd=tmp_path)
        assert_failed_first(run, message, db, before)
        # quick: one child of the default proxy task (32 steps at 32 px) alone trains for a minute here
        assert run.elapsed_s < 20, f"{args}: {run.elapsed_s:.1f} s"


def test_every_bad_input_fails_before_the_run_is_created(predictor_db: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    port = str(free_port())
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    monkeypatch.delenv("MNAS_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    db = copy_db(predictor_db, tmp_path / "mnas.db")
    before = query_db(db, "SELECT COUNT(*) FROM measurements")
    threads = torch.get_num_threads()
    try:
        for args, message in bad_input_cases(tmp_path, port):
            run = run_in_process(capsys, "--db", str(db), "search", *args, "--name", "bad")
            assert_failed_first(run, message, db, before)
            assert run.elapsed_s < 5, f"{args}: {run.elapsed_s:.1f} s"
    finally:
        torch.set_num_threads(threads)


# ============================================================================ in-process: one transaction


@pytest.fixture(scope="module")
def exact_predictor() -> LookupPredictor:
    """Every layer of the space at RES in an in-memory table: the synthetic device, predicted exactly."""
    return synthetic_predictor(RES)


class Boom(KeyboardInterrupt):
    """Ctrl-C at a chosen point of one child."""


class Failing:
    """Wraps a component and raises Boom on the `at`-th call of `method` (0-based)."""

    def __init__(self, inner: Any, method: str, at: int) -> None:
        self.inner, self.method, self.at, self.calls = inner, method, at, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls - 1 == self.at:
                raise Boom(f"{name} #{self.at}")
            return attr(*args, **kwargs)

        return wrapped


class CheckpointFails:
    """A results store whose `at`-th search checkpoint write raises inside the sample's transaction."""

    def __init__(self, store: ResultsStore, at: int) -> None:
        self.store, self.at, self.writes = store, at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.store.transaction() as conn:
            yield _Conn(conn, self)


class _Conn:
    def __init__(self, conn: sqlite3.Connection, owner: CheckpointFails) -> None:
        self.conn, self.owner = conn, owner

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO search_checkpoints"):
            self.owner.writes += 1
            if self.owner.writes - 1 == self.owner.at:
                raise Boom("while writing the checkpoint")
        return self.conn.execute(sql, *args)


def make_setup(algorithm: str, predictor: LookupPredictor) -> SearchSetup:
    space = mnasnet()
    return SearchSetup(space=space, searcher=build_searcher(space, algorithm, SEED),
                       accuracy=CheapAccuracy(seed=SEED), latency=PredictedLatency(predictor, "exact"),
                       reward=Reward.hard(TARGET_MS), weights_dir=None)


@pytest.mark.parametrize("stage", ["accuracy", "latency", "controller", "transaction"])
def test_interrupt_at_any_stage_of_a_child_keeps_sample_and_checkpoint_together(
        stage: str, exact_predictor: LookupPredictor, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    total, at = 26, 23  # PPO: interrupted after its first update, with 3 samples in the buffer
    reference_store = RunStore(ResultsStore(tmp_path / "reference.db"))
    reference_store.create_run("r", "ppo", {})
    run_search(reference_store, "r", make_setup("ppo", exact_predictor), total, progress=False)
    expected = reference_store.samples("r")

    results = ResultsStore(tmp_path / "mnas.db")
    setup = make_setup("ppo", exact_predictor)
    runs = RunStore(results)
    if stage == "accuracy":
        setup.accuracy = Failing(setup.accuracy, "accuracy", at)
    elif stage == "latency":
        setup.latency = Failing(setup.latency, "latency_ms", at)
    elif stage == "controller":
        setup.searcher = Failing(setup.searcher, "tell", at)
    else:
        runs = RunStore(CheckpointFails(results, at))
    runs.create_run("r", "ppo", {})
    with pytest.raises(Boom):
        run_search(runs, "r", setup, total, progress=False)
    runs = RunStore(results)
    assert [s.idx for s in runs.samples("r")] == list(range(at))  # child `at` left no trace
    next_idx, _ = runs.checkpoint("r")
    assert next_idx == at
    summary = run_search(runs, "r", make_setup("ppo", exact_predictor), total, progress=False)
    assert (summary.samples, summary.new_samples) == (total, total - at)
    got = runs.samples("r")
    assert [(s.idx, s.tokens, s.reward) for s in got] == [(s.idx, s.tokens, s.reward) for s in expected]
    assert [u["loss"] for u in runs.updates("r")] == [u["loss"] for u in reference_store.updates("r")]


def test_consistency_exact_predictor_matches_the_stored_predictor_where_the_table_has_the_layers(
        exact_predictor: LookupPredictor, predictor_db: Path) -> None:
    """The stored test predictor is exact on table layers and close elsewhere (its fallback)."""
    store = ResultsStore(predictor_db)
    stored_predictor = load_predictor(store, device="host", resolution=RES)
    store.close()
    space = mnasnet()
    rng = np.random.default_rng(0)
    tokens = np.asarray([space.sample_tokens(rng) for _ in range(300)])
    exact = exact_predictor.predict_tokens(tokens)
    approx = stored_predictor.predict_tokens(tokens)
    assert np.all(approx > 0)
    relative = np.abs(approx - exact) / exact
    assert float(np.median(relative)) < 0.15  # a random forest on 1 in 10 layers
    assert 0.15 < float(np.quantile(exact, 0.25)) and float(np.quantile(exact, 0.5)) < 0.45  # TARGET_MS sits inside
