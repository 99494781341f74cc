"""`mnas table ...` and `mnas predict` through the real entry point, measuring on this host.

Builds are tiny (`--limit`, three timed runs, no minimum time) so the whole flow — plan,
build, resume, fit, calibrate, eval, predict, list, export/import — runs in seconds against
real LiteRT timings. Every error a user can cause is checked as the exact one line on
stderr with exit code 2. Ctrl-C is a real SIGINT to a `mnas table build` subprocess.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from needs import need, ray_installed

from mnas.bench.contention import ContentionGuard
from mnas.bench.host import HostDevice
from mnas.bench.runtime import load_runtime
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig, LatencyStats, Measurement
from mnas.cli import main
from mnas.predictor.build import build_table
from mnas.predictor.endtoend import CALIBRATION, EVALUATION, sample_archs
from mnas.predictor.fitting import fit_predictor
from mnas.predictor.registry import load_predictor, save_predictor
from mnas.predictor.table import load_table
from mnas.space import zoo
from mnas.space.arch import Arch
from mnas.space.search_space import mnasnet

TINY = ("--runs", "3", "--warmup", "1", "--min-secs", "0", "--tries", "1")  # one try: no waits when contended
TINY_CONFIG = BenchConfig(warmup_runs=1, num_runs=3, min_secs=0.0)
RUNTIME = load_runtime()
TABLE = f"host-r224-{RUNTIME.name}-{RUNTIME.version}"
A1 = "mnasnet-a1"
SMALL_ARCH = "stem32,r1_k3_s11_e1_i32_o16_noskip,head1280"


class Cli:
    """Runs `mnas --db DB ...` in this process through `mnas.cli.main` (exit codes as a user sees them)."""

    def __init__(self, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.db = db
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            main(["--db", str(self.db), *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def error(self, *args: str) -> str:
        """The one stderr line of a command that must fail with exit code 2."""
        code, out, err = self(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (code, out, err)
        assert len(lines) == 1, err
        return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding 6 measured layers of the host table and a fitted lookup predictor."""
    db = tmp_path_factory.mktemp("cli") / "mnas.db"
    with ResultsStore(db) as store:
        build_table(mnasnet(), 224, [HostDevice()], store, TABLE, TINY_CONFIG, limit=6, progress=False,
                    guard=ContentionGuard(tries=1))
        predictor, metrics = fit_predictor(load_table(store, TABLE))
        save_predictor(store, predictor, predictor.table_id, metrics)
    return db


def test_plan_build_resume_fit_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mnas = Cli(tmp_path / "mnas.db", capsys)
    plan = mnas.json("table", "plan", "--space", "mnasnet", "--resolution", "224", "--device", "host")
    assert plan["table"] == TABLE
    assert plan["layers"] == {"block:conv": 624, "block:dsconv": 624, "block:mbconv": 1248, "head": 3, "stem": 1,
                              "total": 2500}
    assert (plan["stored"], plan["remaining"], plan["devices"]) == (0, 2500, 1)
    assert plan["estimate_s"] == pytest.approx(2500 * (0.4 + 0.2))

    # --min-cpu-share 0: nothing is flagged contended, so the resume below is exact whatever the load
    # (flagged entries are measured again: test_table_build_retakes_flagged_entries)
    first = mnas.json("table", "build", "--device", "host", "--limit", "4", *TINY, "--min-cpu-share", "0")
    assert (first["table"], first["measured"], first["already_stored"], first["remaining"]) == (TABLE, 4, 0, 2496)
    assert first["per_device"] == {"host": 4} and first["failures"] == []
    again = mnas.json("table", "build", "--device", "host", "--limit", "2", *TINY,  # resumes: skips the 4 stored
                      "--min-cpu-share", "0")
    assert (again["measured"], again["already_stored"], again["remaining"]) == (2, 4, 2494)

    plan = mnas.json("table", "plan", "--device", "host")
    assert (plan["stored"], plan["remaining"]) == (6, 2494)
    assert plan["per_layer_basis"] == "median wall time of 6 stored layers"

    fit = mnas.json("table", "fit", "--device", "host")
    assert (fit["kind"], fit["table"], fit["table_entries"], fit["statistic"], fit["fallback"]) == (
        "lookup", TABLE, 6, "min", "gbr")
    assert fit["space_coverage"]["in_table"] == 6 and fit["space_coverage"]["from_fallback"] == 2494
    assert fit["learned_holdout"] is None  # too few entries for a held-out fifth

    rows = mnas.json("predict", A1, SMALL_ARCH, "--device", "host")
    with ResultsStore(mnas.db) as store:
        predictor = load_predictor(store, fit["predictor_id"])
        table = load_table(store, TABLE)
    archs = [zoo.get(A1), Arch.parse(SMALL_ARCH)]
    expected = predictor.predict_ms(archs)
    assert [r["input"] for r in rows] == [A1, SMALL_ARCH]
    for row, arch, ms in zip(rows, archs, expected, strict=True):
        layers = arch.layers(224)
        in_table = sum(layer.key in table for layer in layers)
        assert row["predicted_ms"] == pytest.approx(float(ms), rel=1e-12)
        assert (row["layers"], row["layers_from_table"], row["layers_from_learned"]) == (
            len(layers), in_table, len(layers) - in_table)
        assert (row["predictor_id"], row["predictor_kind"], row["table"], row["calibrated"]) == (
            fit["predictor_id"], "lookup", TABLE, False)
        assert row["arch_hash"] == arch.hash and row["resolution"] == 224
    assert rows[0]["layers_from_table"] >= 1  # the stem is the first layer a build measures

    code, out, _ = mnas("predict", A1)
    assert code == 0 and "mnasnet-a1" in out and f"predictor {fit['predictor_id']} (lookup, uncalibrated)" in out


def test_calibrate_then_eval_on_held_out_networks(built: Path, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    mnas = Cli(built, capsys)
    calibrated = mnas.json("table", "calibrate", "--device", "host", "--samples", "4", "--seed", "4", "--repeats", "2",
                           *TINY)
    assert (calibrated["samples"], calibrated["measured"], calibrated["reused"]) == (4, 8, 0)  # 2 processes each
    calibration_hashes = [n["arch_hash"] for n in calibrated["networks"]]
    assert calibration_hashes == [a.hash for a in sample_archs(mnasnet(), 4, 4, CALIBRATION)]
    assert calibrated["calibration"]["n"] == 4
    for network in calibrated["networks"]:
        assert len(network["repeats_ms"]) == 2 and network["measured_ms"] == pytest.approx(np.median(network["repeats_ms"]))
        assert len(set(network["measurement_ids"])) == 2
    again = mnas.json("table", "calibrate", "--device", "host", "--samples", "4", "--seed", "4", "--repeats", "2",
                      *TINY)
    # stored measurements are reused (resumable), except any the contention guard flagged: a
    # measurement taken while other processes shared the core is never reused, it is retaken
    with ResultsStore(built) as store:
        flagged = sum(bool(store.get_measurement(i).extra.get("contended"))
                      for n in calibrated["networks"] for i in n["measurement_ids"])
    assert (again["measured"], again["reused"]) == (flagged, 8 - flagged)

    plot = tmp_path / "scatter.png"
    report = mnas.json("table", "eval", "--device", "host", "--samples", "2", "--seed", "4", "--plot", str(plot),
                       "--repeats", "1", *TINY)
    assert report["predictor_id"] == again["predictor_id"] and report["calibrated"] is True
    for key in ("rmse_ms", "mape_pct", "within_5pct_share", "within_10pct_share", "kendall_tau"):
        assert key in report
    eval_hashes = [n["arch_hash"] for n in report["networks"]]
    assert eval_hashes == [a.hash for a in sample_archs(mnasnet(), 2, 4, EVALUATION, exclude=calibration_hashes)]
    assert not set(eval_hashes) & set(calibration_hashes)
    assert (report["overlap_with_calibration"], report["calibration_hashes_excluded"]) == (0, 4)
    measured = np.asarray([n["measured_ms"] for n in report["networks"]])
    predicted = np.asarray([n["predicted_ms"] for n in report["networks"]])
    assert report["rmse_ms"] == pytest.approx(float(np.sqrt(np.mean((predicted - measured) ** 2))))
    assert [n["measured_ms"] for n in report["networks"]] == [n["min_ms"] for n in report["networks"]]
    assert report["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = mnas("table", "eval", "--device", "host", "--samples", "2", "--seed", "4", "--plot", str(plot),
                        "--repeats", "1", *TINY)
    assert code == 0 and f"plot: {plot}" in out

    listed = mnas.json("table", "list")
    assert [t["table"] for t in listed["tables"]] == [TABLE] and listed["tables"][0]["entries"] == 6
    latest = listed["predictors"][-1]
    assert (latest["id"], latest["calibration_samples"], latest["eval_samples"]) == (report["predictor_id"], 4, 2)


def test_export_import_round_trip(built: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mnas = Cli(built, capsys)
    path = tmp_path / "table.json.gz"
    exported = mnas.json("table", "export", TABLE, "-o", str(path))
    assert exported["entries"] == 6 and exported["size_bytes"] == path.stat().st_size
    imported = mnas.json("table", "import", str(path), "--name", "copy")
    assert (imported["table"], imported["entries"], imported["resolution"]) == ("copy", 6, 224)
    with ResultsStore(built) as store:
        original, copy = load_table(store, TABLE), load_table(store, "copy")
    assert copy.entries == original.entries
    assert copy.meta == dataclasses.replace(original.meta, name="copy")
    assert mnas.error("table", "import", str(path)) == (
        f"mnas: error: latency table {TABLE!r} already exists in the store: expected a new name")


def test_user_errors_are_one_line_with_exit_2(built: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mnas = Cli(built, capsys)
    runtime = RUNTIME.name
    assert mnas.error("predict", A1, "--device", "nosuchphone") == (
        "mnas: error: unknown device 'nosuchphone': expected host, or a device or serial with a latency table "
        "(known: host)")
    assert mnas.error("table", "build", "--device", "host", "--name", TABLE, "--resolution", "192", *TINY) == (
        f"mnas: error: latency table {TABLE!r}: resolution is 224: expected 192 (choose another table name)")
    assert mnas.error("table", "fit", "--device", "host", "--table", TABLE, "--resolution", "192") == (
        f"mnas: error: latency table {TABLE!r} was measured with resolution 224: expected 192")
    assert mnas.error("table", "fit", "--device", "host", "--resolution", "192") == (
        "mnas: error: no latency table for device 'host' at resolution 192: its tables are for resolution 224 "
        "(pass --resolution, or build one for this resolution)")
    assert mnas.error("predict", A1, "--resolution", "192") == (
        f"mnas: error: no stored predictor matches device=host, resolution=192, runtime={runtime}: "
        "expected one fitted with `mnas table fit`")

    # a table measured with another runtime (an edited export) is refused, never mixed
    path = tmp_path / "t.json"
    mnas.json("table", "export", TABLE, "-o", str(path))
    data = json.loads(path.read_text())
    data["meta"]["runtime"] = "tflite-runtime"
    path.write_text(json.dumps(data))
    mnas.json("table", "import", str(path), "--name", "other-runtime")
    assert mnas.error("table", "fit", "--device", "host", "--table", "other-runtime") == (
        f"mnas: error: latency table 'other-runtime' was measured with runtime 'tflite-runtime': expected {runtime!r}")

    empty = mnas.json("table", "build", "--device", "host", "--name", "empty", "--limit", "0", *TINY)
    assert (empty["measured"], empty["remaining"]) == (0, 2500)
    assert mnas.error("table", "fit", "--device", "host", "--table", "empty") == (
        "mnas: error: latency table 'empty' has no entries: expected a built table (run `mnas table build`)")
    assert mnas.error("table", "export", "nosuch", "-o", str(tmp_path / "x.json")).startswith(
        "mnas: error: latency table 'nosuch' not found: expected one of [")
    assert mnas.error("predict", "nosuchmodel") == (
        f"mnas: error: unknown zoo model 'nosuchmodel': expected one of {', '.join(zoo.names())} or an arch string")
    assert mnas.error("table", "calibrate", "--device", "host", "--samples", "4", "--runs", "0") == (
        "mnas: error: invalid benchmark settings: num_runs=0 warmup_runs=3 num_threads=1 min_secs=0.4: "
        "expected num_runs >= 1, warmup_runs >= 0, num_threads >= 1, min_secs >= 0")
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(b'{"format": "something-else"}'))
    assert mnas.error("table", "import", str(bad)) == (
        f"mnas: error: latency table file {str(bad)!r}: field 'format' is 'something-else': "
        "expected 'mnas-latency-table'")


def test_no_table_and_no_predictor_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mnas = Cli(tmp_path / "fresh.db", capsys)
    assert mnas.error("table", "fit", "--device", "host") == (
        "mnas: error: no latency table for device 'host': expected one built with "
        "`mnas table build --device host --resolution 224`")
    mnas.json("table", "build", "--device", "host", "--limit", "1", *TINY)
    assert mnas.error("predict", A1) == (
        f"mnas: error: no stored predictor matches device=host, resolution=224, runtime={RUNTIME.name}: "
        "expected one fitted with `mnas table fit`")
    assert mnas.error("table", "calibrate", "--device", "host", "--samples", "4", *TINY) == (
        f"mnas: error: no stored predictor matches device=host, resolution=224, runtime={RUNTIME.name}: "
        "expected one fitted with `mnas table fit`")
    assert mnas.error("table", "fit", "--device", "host", "--kind", "learned") == (
        f"mnas: error: latency table {TABLE!r} has 1 entry: expected at least 2 to fit a learned predictor")


def test_build_on_ray_runs_the_same_build_on_a_host_actor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--executor ray` through the command line: a one-node cluster started for the command, the host
    measured inside a device actor, the same table a local build resumes."""
    need("RAY", ray_installed(), "the ray extra is not installed (pip install -e '.[ray]')")
    mnas = Cli(tmp_path / "mnas.db", capsys)
    # --min-cpu-share 0: nothing is flagged contended (the guard runs in the actor), so the resume is exact
    on_ray = mnas.json("table", "build", "--executor", "ray", "--address", "local", "--device", "host",
                       "--limit", "2", *TINY, "--min-cpu-share", "0")
    assert (on_ray["executor"], on_ray["table"], on_ray["measured"], on_ray["remaining"]) == ("ray", TABLE, 2, 2498)
    assert on_ray["per_device"] == {"host": 2} and on_ray["failures"] == []
    with ResultsStore(mnas.db) as store:
        entries = list(load_table(store, TABLE).entries.values())
    assert len(entries) == 2 and {e.measurement["device_id"] for e in entries} == {"host"}
    local = mnas.json("table", "build", "--device", "host", "--limit", "1", *TINY, "--min-cpu-share", "0")
    assert (local["executor"], local["table"], local["already_stored"], local["measured"]) == (
        "local", TABLE, 2, 1)


def _entries(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM table_entries").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def test_ctrl_c_keeps_stored_layers_and_the_next_run_resumes(tmp_path: Path) -> None:
    db = tmp_path / "mnas.db"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MNAS_DB")}
    # --min-cpu-share 0: no entry is flagged contended (flagged ones would be retaken, not counted as stored)
    command = [sys.executable, "-m", "mnas.cli", "--db", str(db), "table", "build", "--device", "host",
               "--min-cpu-share", "0", "--limit", "40", *TINY]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (not db.exists() or _entries(db) < 2) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = _entries(db)
    assert proc.returncode == 130, err
    assert 2 <= stored < 40
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last == (f"mnas: interrupted: table {TABLE!r} holds {stored} layers; every stored layer is kept: "
                    "run the same command again to resume")
    resumed = subprocess.run([*command[:-len(TINY) - 2], "--limit", "1", *TINY, "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    payload = json.loads(resumed.stdout)
    assert (payload["already_stored"], payload["measured"]) == (stored, 1)


# ------------------------------------------------------------------ the contention guard


class ChildDevice:
    """A device of `kind` whose benchmark runs a child process that computes (it had the core)
    or sleeps (as a preempted child does), and reports the given median and minimum."""

    device_id = "host"

    def __init__(self, kind: str, plan: list[tuple[bool, float]]) -> None:
        self.kind = kind
        self.plan = list(plan)
        self.calls = 0

    def benchmark(self, path: Path, config: BenchConfig) -> Measurement:
        busy, ms = self.plan[self.calls]
        self.calls += 1
        code = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass" if busy
                else "import time; time.sleep(1.0)")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        stats = LatencyStats(count=10, mean_us=ms * 1000, std_us=0.0, min_us=ms * 1000, max_us=ms * 1000,
                             median_us=ms * 1000)
        return Measurement(device_id="host", device_name="host", model_sha256="0" * 64, model_path=str(path),
                           runtime="r", runtime_version="1", config=config, stats=stats)


def test_contention_guard_retries_contended_host_runs_and_keeps_a_clean_one(tmp_path: Path) -> None:
    naps: list[float] = []
    guard = ContentionGuard(min_cpu_share=0.15, tries=3, pause_s=0.5)
    device = ChildDevice("host", [(False, 12.0), (False, 10.0), (True, 11.0)])
    m = guard.benchmark(device, tmp_path / "m.tflite", TINY_CONFIG, "min", sleep=naps.append)
    assert device.calls == 3 and naps == [0.5, 0.5]
    assert (m.median_ms, m.extra["attempt"], m.extra["contended"]) == (11.0, 3, False)  # the clean one
    assert m.extra["child_cpu_share"] >= 0.15

    device = ChildDevice("host", [(False, 12.0), (False, 10.0), (False, 11.0)])
    m = guard.benchmark(device, tmp_path / "m.tflite", TINY_CONFIG, "min", sleep=naps.append)
    assert device.calls == 3 and (m.median_ms, m.extra["attempt"], m.extra["contended"]) == (10.0, 2, True)
    assert m.extra["child_cpu_share"] < 0.15  # slept through its "benchmark": flagged, the fastest kept

    device = ChildDevice("host", [(False, 0.5)])  # fits in a scheduler slice: never re-measured
    m = guard.benchmark(device, tmp_path / "m.tflite", TINY_CONFIG, "min", sleep=naps.append)
    assert device.calls == 1 and m.extra["contended"] is True

    device = ChildDevice("adb", [(False, 12.0)])  # phones pass through untouched
    m = guard.benchmark(device, tmp_path / "m.tflite", TINY_CONFIG, "min", sleep=naps.append)
    assert device.calls == 1 and "contended" not in m.extra and len(naps) == 4
