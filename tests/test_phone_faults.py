"""Reliability of `mnas bench` on phones that fail, through the real adb server and loopback faults.

Each test runs `mnas bench` (a subprocess, on an isolated adb server) on a healthy Pixel 6
stand-in plus one Pixel 4 stand-in showing one fault, and checks what a user relies on in
a long campaign: the failure is detected within a bound, retried the configured number of
times (counted on the phone's side: benchmark_model runs, or the connections the fault
killed), a dead phone is marked offline so its remaining models are skipped, no partial or
wrong figure is stored, the healthy phone's work is all stored, and every failed pair is
reported as ONE `mnas: error:` line naming the serial and the model. Thermal faults must
give a stored measurement flagged `throttled`, slow or old (shell v1) links a correct one.
A kill of the phone mid-run, a restart and a re-run must resume without duplicates.

Detection times are printed as `FIGURE name=value` lines (run with `-s`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback_fixtures import (
    IsolatedAdb,
    isolated_adb_server,
    loopback_phones,
    requires_adb,
    wait_until,
)
from test_phone_integration import (
    CORES,
    QUICK,
    CliProcess,
    CliRun,
    arm_on_benchmark,
    bm_calls,
    cli_env,
    fake_binary,
    figure,
    run_cli,
    sha256,
    stored_rows,
    write_runner,
)
from tflite_fixtures import conv_model_bytes

from mnas.bench.adb import open_phone
from mnas.bench.device_config import default_config_dir, load_config
from mnas.bench.harness import run_benchmarks
from mnas.bench.loopback import manager
from mnas.bench.loopback.faults import write_control_file
from mnas.bench.models import PreparedModel
from mnas.bench.types import BenchConfig

pytestmark = [pytest.mark.adb, requires_adb]
StartFaulty = Callable[..., manager.LoopbackPhone]

COOLDOWN_TIMEOUT_S = 3.0  # the test configs' thermal.cooldown_timeout_s (shipped: 120)
RETRY_DELAY_S = 2.0  # AdbDevice's default pause before a retry (the CLI keeps it)
CLI_START_S = 6.0  # allowance for the CLI's start-up, device opening and a healthy model or two


def _short_cooldown_configs(folder: Path) -> Path:
    """Copies of the shipped pixel4/pixel6 configs whose cooldown gives up after 3 s."""
    folder.mkdir()
    for name in ("pixel4", "pixel6"):
        doc = yaml.safe_load((default_config_dir() / f"{name}.yaml").read_text())
        doc["thermal"]["cooldown_timeout_s"] = COOLDOWN_TIMEOUT_S
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return folder


@pytest.fixture(scope="module")
def adb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedAdb]:
    with isolated_adb_server(tmp_path_factory.mktemp("adb")) as server:
        yield server


@pytest.fixture(scope="module")
def lab(adb: IsolatedAdb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The healthy Pixel 6, the configs, three tiny models and the binary every test shares."""
    folder = tmp_path_factory.mktemp("faults")
    configs = _short_cooldown_configs(folder / "configs")
    runner = write_runner(folder)
    models = []
    for layers in (1, 2, 3):
        path = folder / f"m{layers}.tflite"
        path.write_bytes(conv_model_bytes(size=16, channels=8, layers=layers))
        models.append(path)
    with loopback_phones(adb, folder / "healthy", str(configs / "pixel6.yaml"), host_core=CORES[0],
                         bm_runner=str(runner)) as healthy:
        yield {"adb": adb, "folder": folder, "configs": configs, "runner": runner, "models": models,
               "binary": fake_binary(folder), "healthy": healthy[0]}


@pytest.fixture()
def start_faulty(adb: IsolatedAdb, lab: dict[str, Any], tmp_path: Path
                 ) -> Iterator[StartFaulty]:
    """`start_faulty(*faults)`: a Pixel 4 stand-in showing those faults, stopped after the test."""
    with contextlib.ExitStack() as stack:
        def start(*faults: str) -> manager.LoopbackPhone:
            return stack.enter_context(loopback_phones(
                adb, tmp_path / "faulty", str(lab["configs"] / "pixel4.yaml"), faults=faults,
                host_core=CORES[-1], bm_runner=str(lab["runner"])))[0]

        yield start


def bench(lab: dict[str, Any], db: Path, devices: str, models: list[Path], *, timeout_s: float = 3.0,
          retries: int = 1, wait_s: float = 120.0) -> CliRun:
    """`mnas bench MODELS --device DEVICES --json` with quick settings; waits at most wait_s."""
    return run_cli(cli_env_for(lab), "--db", str(db), "bench", *map(str, models), "--device", devices, *QUICK,
                   "--benchmark-binary", str(lab["binary"]), "--timeout", f"{timeout_s:g}",
                   "--retries", str(retries), "--json", timeout_s=wait_s)


def cli_env_for(lab: dict[str, Any]) -> dict[str, str]:
    return cli_env(lab["adb"], lab["folder"] / "healthy", lab["configs"])


def rows_for(db: Path, serial: str) -> list[dict[str, Any]]:
    return [row for row in stored_rows(db) if row["device_id"] == serial]


def deaths(phone: manager.LoopbackPhone, fault: str) -> int:
    """How many connections the phone dropped because of `fault` (its log says so each time)."""
    return Path(phone.log).read_text().count(f"dying: {fault} fault")


def assert_healthy_work_all_stored(lab: dict[str, Any], db: Path, run, models: list[Path]) -> None:
    healthy = lab["healthy"].serial
    rows = rows_for(db, healthy)
    assert sorted(row["model_sha256"] for row in rows) == sorted(sha256(m) for m in models), run.describe()
    assert all(row["throttled"] == 0 and row["device_name"] == "pixel6" for row in rows)
    out = [row for row in run.json() if row["device_id"] == healthy]
    assert [row["error"] for row in out] == [None] * len(models)


def assert_one_line_per_failed_model(run, serial: str, models: list[Path]) -> None:
    """Exactly one `mnas: error:` line per model of the failed phone, naming serial and model."""
    assert len(run.errors) == len(models), run.describe()
    for line, model in zip(run.errors, models, strict=True):
        assert line.startswith(f"mnas: error: {serial}") and model.name in line, line
    failed = [row for row in run.json() if row["device_id"] == serial and row["error"]]
    assert [row["model_name"] for row in failed] == [m.name for m in models]
    assert all(row["stored_id"] is None and "median_ms" not in row for row in failed)


def attempts_bound(attempts: int, per_attempt_s: float) -> float:
    """Upper bound of a failing benchmark: every attempt, the pauses between them, start-up."""
    return attempts * per_attempt_s + (attempts - 1) * (RETRY_DELAY_S + 1.0) + CLI_START_S


# ============================================================================ connection faults


def test_die_mid_push_retries_then_offline_and_nothing_stored(lab: dict[str, Any], start_faulty: StartFaulty,
                                                              tmp_path: Path) -> None:
    faulty = start_faulty("die_mid_push=2000")  # the 512-byte binary gets through, model pushes die
    db = tmp_path / "mnas.db"
    run = bench(lab, db, f"{lab['healthy'].serial},{faulty.serial}", lab["models"], retries=2)
    assert run.rc == 1, run.describe()
    assert_one_line_per_failed_model(run, faulty.serial, lab["models"])
    first, *skipped = run.errors
    assert f"benchmark of {lab['models'][0].name} failed after 3 attempt(s): push {lab['models'][0].name}" in first
    assert first.endswith("; phone marked offline")
    assert all(line.endswith("not measured: device offline after an earlier failure") for line in skipped)
    assert deaths(faulty, "die_mid_push") == 3  # the phone saw 1 try + 2 retries, then no more
    assert bm_calls(faulty) == []
    assert rows_for(db, faulty.serial) == []
    assert_healthy_work_all_stored(lab, db, run, lab["models"])
    assert run.first_error_s() < attempts_bound(3, 3.0)
    figure("die_mid_push_3_attempts_detected_s", run.first_error_s(), "s")


def test_die_mid_shell_during_a_benchmark(
        lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path
) -> None:
    faulty = start_faulty()
    db = tmp_path / "mnas.db"
    arm_on_benchmark(faulty, "die_mid_shell")  # the phone dies once benchmark_model has started
    run = bench(lab, db, f"{lab['healthy'].serial},{faulty.serial}", lab["models"], retries=1)
    assert run.rc == 1, run.describe()
    assert_one_line_per_failed_model(run, faulty.serial, lab["models"])
    assert "failed after 2 attempt(s)" in run.errors[0]
    assert "connection closed before the exit status" in run.errors[0]
    assert run.errors[0].endswith("; phone marked offline")
    assert len(bm_calls(faulty)) == 1  # the first attempt ran the benchmark; the retry died before it
    assert deaths(faulty, "die_mid_shell") == 2
    assert rows_for(db, faulty.serial) == []
    assert_healthy_work_all_stored(lab, db, run, lab["models"])
    assert run.first_error_s() < attempts_bound(2, 3.0)
    figure("die_mid_shell_2_attempts_detected_s", run.first_error_s(), "s")


def test_hang_during_a_benchmark_is_bounded_by_timeout(lab: dict[str, Any], start_faulty: StartFaulty,
                                                       tmp_path: Path) -> None:
    faulty = start_faulty()
    db = tmp_path / "mnas.db"
    arm_on_benchmark(faulty, "hang")  # output stops mid-benchmark, the socket stays open
    timeout = 3.0
    launched = time.time()  # the CLI's stderr lines are stamped in seconds since its launch
    run = bench(lab, db, f"{lab['healthy'].serial},{faulty.serial}", lab["models"], timeout_s=timeout, retries=1)
    assert run.rc == 1, run.describe()
    assert_one_line_per_failed_model(run, faulty.serial, lab["models"])
    assert "failed after 1 attempt(s)" in run.errors[0] and "timed out after 3.0 s" in run.errors[0]
    assert run.errors[0].endswith("; phone marked offline")
    (bm_started, _), = bm_calls(faulty)  # no retry of a phone that does not answer
    assert rows_for(db, faulty.serial) == []
    assert_healthy_work_all_stored(lab, db, run, lab["models"])
    # the benchmark's timeout, then a kill that gets no answer within 0.15 x the timeout;
    # nothing else waits (no clean-up rm, no retry): lost within 1.2x --timeout of its start
    detected = launched + run.first_error_s() - bm_started
    assert 0.8 * timeout <= detected <= 1.2 * timeout, detected  # its start is logged after the shell starts
    figure("hang_mid_benchmark_timeout_3s_declared_lost_s", detected, "s")


def test_hang_bounds_every_adb_call_by_the_benchmark_timeout(lab: dict[str, Any], adb: IsolatedAdb,
                                                             tmp_path: Path) -> None:
    """H3's case: device timeout 30 s, BenchConfig.timeout_s 2 s, a phone that hangs before a push.

    Before the fix the push waited the device's 30 s and the clean-up `rm` another 30 s; a
    phone that gets no answer is then marked offline at once (no retry, no clean-up call).
    """
    with loopback_phones(adb, tmp_path / "hung", str(lab["configs"] / "pixel4.yaml"), host_core=CORES[-1],
                         bm_runner=str(lab["runner"])) as started:
        phone = started[0]
        device = open_phone(phone.serial, benchmark_binary=lab["binary"], timeout_s=30.0, retries=1,
                            retry_delay_s=0.2)
        device.ensure_binary()  # while healthy
        write_control_file(Path(phone.control_file), ["hang"])
        models = [PreparedModel(m, m.name, sha256(m)) for m in lab["models"][:2]]
        config = BenchConfig(warmup_runs=1, num_runs=5, min_secs=0, timeout_s=2.0)
        seen: list[tuple[float, str]] = []
        start = time.monotonic()
        outcomes = run_benchmarks([device], models, config,
                                  on_result=lambda o: seen.append((time.monotonic() - start, o.error or "")))
        elapsed = time.monotonic() - start
    assert device.offline
    assert [o.measurement for o in outcomes] == [None, None]
    assert "failed after 1 attempt(s): push m1.tflite to " in seen[0][1] and "timed out after 2.0 s" in seen[0][1]
    assert seen[1][1] == f"{phone.serial}: m2.tflite: not measured: device offline after an earlier failure"
    assert any("skipped, the phone is not answering" in e for e in device.cleanup_errors)
    # one push of 2 s (+1 s per MB: the model is 3 kB); nothing waits 30 s, nothing is retried
    assert 2.0 <= elapsed < 1.2 * 2.0 + 0.5, seen
    figure("hang_before_push_timeout_2s_detected_s", seen[0][0], "s")


def test_refuse_auth_is_one_clear_error_line(lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path,
                                             adb: IsolatedAdb) -> None:
    faulty = start_faulty("refuse_auth")
    wait_until(lambda: adb.server.states().get(faulty.serial) == "unauthorized", 10)
    db = tmp_path / "mnas.db"
    named = bench(lab, db, faulty.serial, lab["models"][:1])
    assert named.rc == 2, named.describe()
    assert named.errors == [f"mnas: error: device {faulty.serial}: state 'unauthorized': expected 'device' "
                            "(online); unlock the phone and accept the USB debugging prompt"]
    assert [line for _, line in named.stderr] == named.errors
    figure("refuse_auth_cli_reported_s", named.first_error_s(), "s")
    # `--device all`: the healthy phone is measured, the unauthorized one is one error line
    run = bench(lab, db, "all", lab["models"][:1])
    assert run.rc == 1, run.describe()
    assert run.errors == named.errors
    assert_healthy_work_all_stored(lab, db, run, lab["models"][:1])
    assert rows_for(db, faulty.serial) == []


# ============================================================================ wrong output


@pytest.mark.slow
def test_truncated_output_is_a_failure_not_a_short_measurement(lab: dict[str, Any], start_faulty: StartFaulty,
                                                                tmp_path: Path) -> None:
    faulty = start_faulty("truncated_output")
    db = tmp_path / "mnas.db"
    models = lab["models"][:2]
    run = bench(lab, db, f"{lab['healthy'].serial},{faulty.serial}", models, retries=1)
    assert run.rc == 1, run.describe()
    assert_one_line_per_failed_model(run, faulty.serial, models)
    for line, model in zip(run.errors, models, strict=True):
        assert f"benchmark of {model.name} failed after 2 attempt(s): benchmark output ends before the final " \
               "timing line" in line
        assert "offline" not in line  # the phone answers: its next model is still tried
    calls = bm_calls(faulty)
    assert len(calls) == 4  # 2 models x (1 try + 1 retry), counted on the phone
    assert [sum(1 for _, args in calls if f"/{sha256(m)[:16]}.tflite" in args) for m in models] == [2, 2]
    assert rows_for(db, faulty.serial) == []
    assert_healthy_work_all_stored(lab, db, run, models)
    figure("truncated_output_2_attempts_detected_s", run.first_error_s(), "s")


# ============================================================================ thermal faults


def test_overheat_waits_a_bounded_cooldown_and_flags_the_measurement(
        lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path
) -> None:
    faulty = start_faulty("overheat=80")
    db = tmp_path / "mnas.db"
    run = bench(lab, db, faulty.serial, lab["models"][:1])
    assert run.rc == 0, run.describe()
    (out,) = run.json()
    (row,) = rows_for(db, faulty.serial)
    assert out["throttled"] is True and row["throttled"] == 1 and out["stored_id"] == row["id"]
    extra = row["measurement"]["extra"]
    assert extra["cooldown_timed_out"] is True
    assert COOLDOWN_TIMEOUT_S <= extra["cooldown_waited_s"] < COOLDOWN_TIMEOUT_S + 1.0
    assert set(row["measurement"]["temps_before_c"].values()) == {80.0}
    assert row["temp_before_max_c"] == 80.0 and row["count"] == 5
    assert run.elapsed_s < COOLDOWN_TIMEOUT_S + CLI_START_S
    figure("overheat_cooldown_waited_s", extra["cooldown_waited_s"], "s")


def test_throttle_flags_the_measurement(
        lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path
) -> None:
    faulty = start_faulty("throttle=0.5")
    config = load_config(lab["configs"] / "pixel4.yaml")
    capped = config.max_freq_khz(config.pin_core) // 2 // 1000 * 1000
    db = tmp_path / "mnas.db"
    run = bench(lab, db, faulty.serial, lab["models"][:1])
    assert run.rc == 0, run.describe()
    (row,) = rows_for(db, faulty.serial)
    assert row["throttled"] == 1 and run.json()[0]["throttled"] is True
    extra = row["measurement"]["extra"]
    assert (extra["freq_cap_before_khz"], extra["freq_cap_after_khz"], extra["cooldown_timed_out"]) == (capped, capped, False)
    assert row["freq_after_khz"] == capped and row["max_freq_khz"] == config.max_freq_khz(config.pin_core)


def test_hot_after_the_run_flags_the_measurement_and_it_is_not_reused(
        lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path
) -> None:
    """Cool before (no cool-down wait), full frequency cap, but 95 °C right after the run."""
    faulty = start_faulty()
    arm_on_benchmark(faulty, "overheat=95")  # every zone reads 95 °C once benchmark_model starts
    db = tmp_path / "mnas.db"
    run = bench(lab, db, faulty.serial, lab["models"][:1])
    assert run.rc == 0, run.describe()
    (row,) = rows_for(db, faulty.serial)
    assert row["throttled"] == 1 and run.json()[0]["throttled"] is True
    extra = row["measurement"]["extra"]
    assert extra["cooldown_timed_out"] is False and extra["hottest_after_c"] == 95.0
    assert extra["throttle_reasons"] == ["hottest zone 95 °C after the run is above the limit 85 °C"]
    assert max(row["measurement"]["temps_before_c"].values()) < 45.0
    # the reuse rule refuses it: a cool re-run measures again instead of reusing the hot figure
    write_control_file(Path(faulty.control_file), [])
    again = bench(lab, db, faulty.serial, lab["models"][:1])
    assert again.rc == 0, again.describe()
    assert [r["reused"] for r in again.json()] == [False]
    assert [r["throttled"] for r in rows_for(db, faulty.serial)] == [1, 0]


# ============================================================================ degraded links


def test_no_shell_v2_falls_back_to_v1_with_exit_codes(lab: dict[str, Any], start_faulty: StartFaulty,
                                                      tmp_path: Path) -> None:
    faulty = start_faulty("no_shell_v2")
    device = open_phone(faulty.serial, timeout_s=10, retries=0)
    assert "shell_v2" not in device.features()
    # v1 appends `; echo MARK$?` to the command, so the status is the last command's (a
    # command that ends the shell itself with `exit` would lose it: mnas sends none)
    result = device.shell("echo out; echo err >&2; sh -c 'exit 7'")
    assert (result.protocol, result.returncode, result.output) == ("v1", 7, "out\nerr\n")
    assert device.shell("true").returncode == 0
    assert device.shell("false").returncode == 1
    assert device.shell("sh -c 'kill -9 $$'").returncode == 137  # killed by a signal: 128 + 9
    db = tmp_path / "mnas.db"
    run = bench(lab, db, faulty.serial, lab["models"][:1])
    assert run.rc == 0, run.describe()
    (row,) = rows_for(db, faulty.serial)
    assert row["measurement"]["extra"]["shell_protocol"] == "v1" and row["count"] == 5 and row["throttled"] == 0
    # a benchmark_model that fails keeps its exit code (1) and its error line through v1
    missing = device.shell(f"{device.remote_binary} --graph=/data/local/tmp/none.tflite")
    assert missing.returncode == 1 and "no such model file" in missing.output


def test_slow_link_is_slower_but_correct(lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path,
                                         adb: IsolatedAdb) -> None:
    faulty = start_faulty("slow_link=1024")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4_000_000))
    best: dict[str, float] = {}
    for name, phone in (("healthy", lab["healthy"]), ("slow", faulty)):
        device = open_phone(phone.serial, timeout_s=30, retries=0)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            device.push(payload, "/data/local/tmp/payload.bin")
            times.append(time.perf_counter() - start)
        best[name] = min(times)
        assert adb.client(30).device(phone.serial).sync.read_bytes("/data/local/tmp/payload.bin") == payload.read_bytes()
    # 1 KiB packets, one in flight: ~4000 round trips for 4 MB (the ratio swings 2-10x with load)
    assert best["slow"] > best["healthy"], best
    figure("slow_link_1024_push_4MB_s", best["slow"], "s")
    figure("healthy_push_4MB_s", best["healthy"], "s")
    db = tmp_path / "mnas.db"
    run = bench(lab, db, f"{lab['healthy'].serial},{faulty.serial}", lab["models"], retries=0)
    assert run.rc == 0, run.describe()
    assert sorted(r["model_sha256"] for r in rows_for(db, faulty.serial)) == sorted(sha256(m) for m in lab["models"])
    assert "max payload 1024," in Path(faulty.log).read_text()


# ============================================================================ kill mid-run, resume


def _restart_same_serial(phone: manager.LoopbackPhone, adb: IsolatedAdb, runner: Path) -> subprocess.Popen[bytes]:
    """The same phone back on the same port and root (what was pushed is still there)."""
    ready = Path(phone.folder) / "ready-again.json"
    with open(Path(phone.folder) / "server-again.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", manager.SERVER_MODULE, "--config", phone.config_path, "--root", phone.root,
             "--port", str(phone.port), "--ready-file", str(ready), "--host-core", str(phone.host_core),
             "--bm-runner", str(runner)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(ready.exists, 15)
        adb.client(10).connect(phone.serial, timeout=10)
        wait_until(lambda: adb.server.states().get(phone.serial) == "device", 15)
    except BaseException:
        _end(proc)
        raise
    return proc


def _end(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_models_a_killed_run_left_on_the_phone_are_removed_by_the_next_run(
        lab: dict[str, Any], start_faulty: StartFaulty, tmp_path: Path, adb: IsolatedAdb) -> None:
    """A `kill -9` of mnas mid-run leaves its pushed model in the model folder; the next run removes it."""
    phone = start_faulty()
    models_dir = "/data/local/tmp/mnas/models"
    sync = adb.client(10).device(phone.serial).sync
    stale = f"{models_dir}/0123456789abcdef.tflite"  # mnas's naming scheme: 16 hex digits of the sha256
    kept = [f"{models_dir}/mine.tflite", f"{models_dir}/0123456789abcdef.tflite.bak", f"{models_dir}/notes.txt"]
    for path in (stale, *kept):
        sync.push(b"left over", path)
    # the same thing for real: a run killed while its model is on the phone
    db = tmp_path / "mnas.db"
    with CliProcess(cli_env_for(lab), "--db", str(db), "bench", str(lab["models"][0]), "--device", phone.serial,
                    "--runs", "5", "--warmup", "1", "--min-secs", "4", "--benchmark-binary", str(lab["binary"]),
                    "--timeout", "60") as cli:
        wait_until(lambda: bm_calls(phone), 60, 0.05)  # benchmark_model runs: its model is on the phone
        cli.kill()
    killed_model = f"{models_dir}/{sha256(lab['models'][0])[:16]}.tflite"
    listing = {entry.path for entry in sync.list(models_dir)}
    assert killed_model.rsplit("/", 1)[1] in listing
    run = bench(lab, db, phone.serial, lab["models"][1:2])
    assert run.rc == 0, run.describe()
    left = sorted(entry.path for entry in sync.list(models_dir) if entry.path not in (".", ".."))
    assert left == sorted(p.rsplit("/", 1)[1] for p in kept)


@pytest.mark.slow
def test_kill_mid_run_keeps_what_was_stored_and_a_rerun_completes_without_duplicates(
        lab: dict[str, Any], adb: IsolatedAdb, tmp_path: Path) -> None:
    models = [*lab["models"], tmp_path / "m4.tflite"]
    models[3].write_bytes(conv_model_bytes(size=16, channels=8, layers=4))
    db = tmp_path / "mnas.db"
    env = cli_env_for(lab)
    args = ["--db", str(db), "bench", *map(str, models), "--device", "", *QUICK, "--benchmark-binary",
            str(lab["binary"]), "--timeout", "3", "--retries", "1", "--json"]
    restarted: subprocess.Popen[bytes] | None = None
    with loopback_phones(adb, tmp_path / "victim", str(lab["configs"] / "pixel4.yaml"), host_core=CORES[-1],
                         bm_runner=str(lab["runner"])) as started:
        phone = started[0]
        args[args.index("--device") + 1] = phone.serial
        try:
            with CliProcess(env, *args) as cli:
                wait_until(lambda: len(rows_for(db, phone.serial)) >= 2, 60, 0.02)
                os.kill(phone.pid, signal.SIGKILL)
                killed_at = time.monotonic() - cli.started
                before = rows_for(db, phone.serial)
                first = cli.wait(60)
            assert first.rc == 1, first.describe()
            done = len(before)
            assert 2 <= done < 4
            assert rows_for(db, phone.serial) == before  # nothing lost, nothing half-written after the kill
            assert_one_line_per_failed_model(first, phone.serial, models[done:])
            figure("kill_to_cli_exit_s", first.elapsed_s - killed_at, "s")

            restarted = _restart_same_serial(phone, adb, lab["runner"])
            calls_before = len(bm_calls(phone))
            second = run_cli(env, *args, timeout_s=120)
            assert second.rc == 0, second.describe()
            assert [(r["model_name"], r["reused"], r["error"]) for r in second.json()] == [
                (m.name, i < done, None) for i, m in enumerate(models)]
            assert len(bm_calls(phone)) - calls_before == 4 - done  # only the missing ones ran
            rows = rows_for(db, phone.serial)
            assert sorted(r["model_sha256"] for r in rows) == sorted(sha256(m) for m in models)  # each once
            assert rows[:done] == before
            assert len({r["conditions_key"] for r in rows}) == 1
        finally:
            if restarted is not None:
                _end(restarted)
