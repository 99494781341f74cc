"""One run at a time per device (`bench.device_lock`) and the store's refusal of duplicates.

The end-to-end check is the one from issue 11: two `mnas bench --device all` started at the
same moment on one store with three loopback phones measure every (phone, model) pair
exactly once, and no two measurements overlap in time on one phone (before the locks both
runs passed the reuse check, measured every pair on the same core at once, and stored both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mnas.bench.device_lock import DeviceBusy, DeviceLock, device_lock_key, hold_devices, lock_dir
from mnas.bench.harness import run_benchmarks
from mnas.bench.measure import PreparedModel
from mnas.bench.store import DuplicateMeasurement, ResultsStore
from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement

# --------------------------------------------------------------------------- the lock itself

HOLDER = textwrap.dedent("""
    import sys, time
    from mnas.bench.device_lock import hold_devices

    class Dev:
        device_id = sys.argv[1]

    with hold_devices([Dev()], timeout_s=5):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


class _Dev:
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id


def _holder(device_id: str, seconds: float) -> subprocess.Popen[str]:
    """A process holding `device_id`'s lock for `seconds` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, device_id, str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def key() -> Iterator[str]:
    yield f"dev{os.getpid()}-{time.monotonic_ns()}"


def test_second_acquirer_waits_for_the_holder_then_proceeds(key: str) -> None:
    holder = _holder(key, 1.5)
    said: list[str] = []
    started = time.monotonic()
    try:
        with hold_devices([_Dev(key)], timeout_s=30, on_wait=said.append) as keys:
            waited = time.monotonic() - started
            assert keys == [key]
    finally:
        holder.wait(10)
    assert waited >= 0.8, waited  # it waited for the holder's sleep
    assert len(said) == 1 and said[0].startswith(f"mnas: waiting for {key}: held by pid {holder.pid} (")
    assert " since 20" in said[0]


def test_timeout_names_the_holder(key: str) -> None:
    holder = _holder(key, 30)
    try:
        with pytest.raises(DeviceBusy, match=rf"^{key}: held by pid {holder.pid} \(.*-c .*\) since \S+T\S+; "
                                             r"still busy after 0.3 s: wait for that run to finish"):
            with hold_devices([_Dev(key)], timeout_s=0.3, on_wait=lambda line: None):
                pass
    finally:
        holder.kill()
        holder.wait(10)


def test_a_killed_holder_leaves_no_stale_lock(key: str) -> None:
    holder = _holder(key, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    started = time.monotonic()
    with hold_devices([_Dev(key)], timeout_s=5, on_wait=lambda line: pytest.fail(line)):
        assert time.monotonic() - started < 1.0
    assert (lock_dir() / f"{key}.lock").exists()  # the file stays; the kernel released its flock


def test_reentrant_in_one_thread_exclusive_across_threads(key: str) -> None:
    lock = DeviceLock(key)
    events: list[str] = []
    with hold_devices([_Dev(key)], timeout_s=1):
        with hold_devices([_Dev(key)], timeout_s=0):  # the same thread again: no wait
            events.append("nested")

        def other() -> None:
            try:
                with hold_devices([_Dev(key)], timeout_s=0.2, on_wait=lambda line: None):
                    events.append("other got it")
            except DeviceBusy as exc:
                events.append(f"busy: {exc}")

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(10)
        assert events[0] == "nested" and events[1].startswith(f"busy: {key}: held by pid {os.getpid()}")
    lock.acquire(0)  # released by the outer block
    lock.release()


def test_lock_keys_phone_host_and_remote() -> None:
    class Client:
        host, port = "127.0.0.1", 15123

    class Phone:
        device_id = serial = "SER1"
        adb = Client()

    class Remote:
        device_id = "SER1"
        lock_key = None

    assert device_lock_key(Phone()) == "phone-SER1@127.0.0.1_15123"
    assert device_lock_key(_Dev("host")) == "host"
    assert device_lock_key(Remote()) is None
    with hold_devices([Remote()], timeout_s=0) as keys:
        assert keys == []


# --------------------------------------------------------------------------- the store refuses duplicates


def _measurement(sha: str = "ab" * 32, device_id: str = "dev0", **overrides: Any) -> Measurement:
    fields: dict[str, Any] = dict(
        device_id=device_id, device_name="fake", model_sha256=sha, model_path="/models/m.tflite", runtime="rt",
        runtime_version="1", config=BenchConfig(warmup_runs=1, num_runs=3, min_secs=0.0),
        stats=LatencyStats(count=3, mean_us=1000.0, std_us=1.0, min_us=990.0, max_us=1010.0, median_us=1000.0),
        pinned_cores=(0,), cpu_model="cpu", wall_s=0.1)
    fields.update(overrides)
    return Measurement(**fields)


def test_store_refuses_a_reusable_duplicate_unless_forced(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    first = store.add_measurement(_measurement(), label="m")
    with pytest.raises(DuplicateMeasurement, match=rf"measurement {first} already holds m on dev0 \(rt 1\) under the "
                                                   r"same conditions: not stored again \(pass --force") as refused:
        store.add_measurement(_measurement(), label="m")
    assert refused.value.existing_id == first
    forced = store.add_measurement(_measurement(), force=True)
    assert forced != first
    # other conditions, device or model are not duplicates
    store.add_measurement(_measurement(config=BenchConfig(warmup_runs=1, num_runs=4, min_secs=0.0)))
    store.add_measurement(_measurement(device_id="dev1"))
    store.add_measurement(_measurement(sha="cd" * 32))
    assert len(store.recent_measurements(None)) == 5


def test_flagged_measurements_do_not_block_and_repeats_may_be_allowed(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    store.add_measurement(_measurement(throttled=True))
    store.add_measurement(_measurement(extra={"contended": True}))
    kept = store.add_measurement(_measurement())  # the flagged ones are re-taken
    store.add_measurement(_measurement(), max_reusable=2)  # a second repeat, asked for
    with pytest.raises(DuplicateMeasurement) as refused:
        store.add_measurement(_measurement(), max_reusable=2)
    assert refused.value.existing_id == kept + 1  # the newest reusable one


class _RacingDevice:
    """A device whose measurement is stored by 'another process' while it runs."""

    device_id = "dev0"

    def __init__(self, db: Path) -> None:
        self.db = db

    def profile(self) -> DeviceProfile:
        return DeviceProfile("dev0", "fake", "host", "fake", "cpu", 0, None, "rt", "1")

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        m = _measurement(config=config, model_path=str(model_path))
        with ResultsStore(self.db) as other:
            other.add_measurement(m, label="other run", force=True)
        return m


def test_bench_turns_a_duplicate_into_a_reused_outcome(tmp_path: Path) -> None:
    db = tmp_path / "mnas.db"
    config = BenchConfig(warmup_runs=1, num_runs=3, min_secs=0.0)
    model = PreparedModel(tmp_path / "m.tflite", "m", "ab" * 32)
    with ResultsStore(db) as store:
        outcomes = run_benchmarks([_RacingDevice(db)], [model], config, store=store)
        assert [(o.reused, o.error, o.stored_id) for o in outcomes] == [(True, None, None)]
        assert outcomes[0].measurement is not None
        assert len(store.recent_measurements(None)) == 1
        forced = run_benchmarks([_RacingDevice(db)], [model], config, store=store, force=True)
        assert [(o.reused, o.error) for o in forced] == [(False, None)]
        assert len(store.recent_measurements(None)) == 3  # --force: the racer's and ours


# --------------------------------------------------------------------------- issue 11: two runs, three phones


@pytest.mark.adb
@pytest.mark.slow
def test_two_concurrent_bench_runs_measure_each_pair_once_without_overlap(tmp_path: Path) -> None:
    from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb
    from needs import need
    from test_phone_integration import CliProcess, cli_env, fake_binary, stored_rows

    need(*requires_adb.args)
    db = tmp_path / "mnas.db"
    with isolated_adb_server(tmp_path / "adb") as adb, \
            loopback_phones(adb, tmp_path / "phones", "pixel4", count=3) as phones:
        env = cli_env(adb, tmp_path / "phones")
        args = ("--db", str(db), "bench", "mnasnet-small", "mobilenet-v2", "--resolution", "96", "--device", "all",
                "--runs", "5", "--warmup", "1", "--min-secs", "0.3", "--benchmark-binary", str(fake_binary(tmp_path)),
                "--json")
        with CliProcess(env, *args) as one, CliProcess(env, *args) as two:
            runs = [one.wait(300), two.wait(300)]
        serials = sorted(p.serial for p in phones)
    for run in runs:
        assert run.rc == 0, run.describe()
        assert sorted({row["device_id"] for row in run.json()}) == serials
    rows = stored_rows(db)
    pairs = sorted((row["device_id"], row["model_sha256"]) for row in rows)
    assert len(pairs) == 6 and len(set(pairs)) == 6, pairs  # each (phone, model) pair stored exactly once
    for serial in serials:
        spans = sorted((row["timestamp"] - row["wall_s"], row["timestamp"]) for row in rows if row["device_id"] == serial)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{serial}: measurements overlap: {spans}"
    # one run measured everything; the other waited for it and reused every figure
    reused = sorted(tuple(sorted({row["reused"] for row in run.json()})) for run in runs)
    assert reused == [(False,), (True,)], [run.describe() for run in runs]
