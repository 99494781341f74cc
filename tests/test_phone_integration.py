"""The phone path end to end: `mnas devices`, `probe`, `bench` and AdbDevice through two loopback phones.

Everything here goes through the real Debian adb server (isolated: its own port, HOME and
TMPDIR) and the `mnas` command line run as a subprocess, exactly as a user would run it with
two phones plugged in: a Pixel 4 and a Pixel 6 stand-in, each pinning its benchmarks to its
own host core so the two really run at once. The helpers at the top (`run_cli`, the
counting benchmark runner, the store reader) are shared with `test_phone_faults.py`.

Figures (`FIGURE name=value`) are printed for the report: run with `-s` to see them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elf_fixtures import arm64_binary, elf_header
from loopback_fixtures import IsolatedAdb, isolated_adb_server, loopback_phones, requires_adb

from mnas.bench.adb import open_phone
from mnas.bench.device_config import load_config
from mnas.bench.loopback import manager

pytestmark = [pytest.mark.adb, requires_adb]

CORES = sorted(os.sched_getaffinity(0))
# Bench settings small enough for tests: one warm-up, five timed runs, no minimum time.
QUICK = ("--runs", "5", "--warmup", "1", "--min-secs", "0")

# A benchmark_model stand-in for loopback phones (passed as their --bm-runner): it logs each
# call (time, arguments) next to the phone's root, applies faults "armed" for the moment a
# benchmark starts (ROOT/.loopback/arm_on_benchmark -> the live control file), then runs the
# real host runner. So tests count benchmark invocations on the phone side, and can make a
# phone fail exactly while a benchmark runs.
COUNTING_RUNNER = '''\
import os, runpy, sys, time
from pathlib import Path

root = Path(os.environ["MNAS_LB_ROOT"])
with open(root.parent / "bm_calls.log", "a") as log:
    log.write(f"{time.time():.6f} {' '.join(sys.argv[1:])}\\n")
armed = root / ".loopback" / "arm_on_benchmark"
if armed.exists():
    control = root / ".loopback" / "faults"
    tmp = control.with_name(".faults-armed")
    tmp.write_text(armed.read_text())
    os.replace(tmp, control)
    armed.unlink()
sys.argv = ["benchmark_model", *sys.argv[1:]]
runpy.run_module("mnas.bench.bm_runner", run_name="__main__")
'''


def figure(name: str, value: float, unit: str) -> None:
    print(f"FIGURE {name}={value:.3f} {unit}")


def write_runner(folder: Path) -> Path:
    path = folder / "counting_runner.py"
    path.write_text(COUNTING_RUNNER)
    return path


def bm_calls(phone: manager.LoopbackPhone) -> list[tuple[float, str]]:
    """(start time, arguments) of every benchmark_model run on the phone so far."""
    path = Path(phone.root).parent / "bm_calls.log"
    if not path.exists():
        return []
    return [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in path.read_text().splitlines()]


def arm_on_benchmark(phone: manager.LoopbackPhone, *faults: str) -> None:
    """Switch these faults on the moment the phone's next benchmark_model starts."""
    (Path(phone.root) / ".loopback" / "arm_on_benchmark").write_text("".join(f + "\n" for f in faults))


def fake_binary(folder: Path, size: int = 512) -> Path:
    """The host file `--benchmark-binary` pushes (never executed: the phone runs the host runner)."""
    path = folder / "benchmark_model"
    if not path.exists():
        arm64_binary(path, size)  # mnas refuses to push anything but an arm/aarch64 ELF file
    return path


def cli_env(adb: IsolatedAdb, loopback_dir: Path, configs_dir: Path | None = None) -> dict[str, str]:
    """The environment of a `mnas` subprocess: only the isolated adb server, nothing of the user's."""
    env = dict(adb.env)
    env.pop("PYTHONPATH", None)
    env.pop("MNAS_DB", None)
    env["MNAS_LOOPBACK_DIR"] = str(loopback_dir)
    if configs_dir is not None:
        env["MNAS_DEVICE_CONFIGS"] = str(configs_dir)
    else:
        env.pop("MNAS_DEVICE_CONFIGS", None)
    return env


@dataclasses.dataclass
class CliRun:
    """A finished `mnas` run: exit code, stdout, and stderr lines stamped with their arrival time."""

    rc: int
    stdout: str
    stderr: list[tuple[float, str]]  # (seconds since start, line)
    elapsed_s: float

    @property
    def errors(self) -> list[str]:
        return [line for _, line in self.stderr if line.startswith("mnas: error:")]

    def first_error_s(self) -> float:
        return next(t for t, line in self.stderr if line.startswith("mnas: error:"))

    def json(self) -> Any:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return f"rc={self.rc}\nstdout:\n{self.stdout}\nstderr:\n" + "\n".join(line for _, line in self.stderr)


class CliProcess:
    """`python -m mnas.cli ARGS` in the background; killed (its whole group) if still running at exit."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "mnas.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self._stderr: list[tuple[float, str]] = []
        self._stdout = b""
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            for piece in raw.decode(errors="replace").replace("\r", "\n").split("\n"):
                if piece.strip():
                    self._stderr.append((time.monotonic() - self.started, piece.strip()))

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self._stdout = self.proc.stdout.read()

    def wait(self, timeout_s: float) -> CliRun:
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mnas did not finish within {timeout_s:g} s; stderr so far: "
                                 + " | ".join(line for _, line in self._stderr[-5:])) from None
        elapsed = time.monotonic() - self.started
        for thread in self._threads:
            thread.join(5)
        return CliRun(rc, self._stdout.decode(errors="replace"), list(self._stderr), elapsed)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_cli(env: dict[str, str], *args: str, timeout_s: float = 120.0) -> CliRun:
    with CliProcess(env, *args) as proc:
        return proc.wait(timeout_s)


def stored_rows(db: Path) -> list[dict[str, Any]]:
    """Every stored measurement (queryable columns plus the parsed full JSON), oldest first."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute("SELECT * FROM measurements ORDER BY id")]
    for row in rows:
        row["measurement"] = json.loads(row.pop("measurement_json"))
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def adb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedAdb]:
    with isolated_adb_server(tmp_path_factory.mktemp("adb")) as server:
        yield server


@pytest.fixture(scope="module")
def lab(adb: IsolatedAdb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Pixel 4 and a Pixel 6 on loopback, each pinned to its own host core, healthy."""
    folder = tmp_path_factory.mktemp("lab")
    runner = write_runner(folder)
    with loopback_phones(adb, folder / "phones", "pixel4", host_core=CORES[0], bm_runner=str(runner)) as four, \
            loopback_phones(adb, folder / "phones", "pixel6", host_core=CORES[-1], bm_runner=str(runner)) as six:
        yield {"folder": folder, "env": cli_env(adb, folder / "phones"),
               "phones": {"pixel4": four[0], "pixel6": six[0]}}


# ============================================================================ mnas devices


def test_devices_json_lists_host_and_both_phones_with_their_configs(lab: dict[str, Any]) -> None:
    run = run_cli(lab["env"], "devices", "--json", timeout_s=60)
    assert run.rc == 0, run.describe()
    payload = run.json()
    assert payload["notes"] == []
    rows = {row["device_id"]: row for row in payload["devices"]}
    expected = {phone.serial: name for name, phone in lab["phones"].items()}
    assert set(rows) == {"host", *expected}
    assert rows["host"]["kind"] == "host"
    for serial, name in expected.items():
        config = load_config(Path(lab["phones"][name].config_path))
        assert rows[serial] == {
            "device_id": serial, "kind": "adb", "state": "device", "phone_model": config.properties["ro.product.model"],
            "cpu_model": None, "device_config": name, "pinned_cores": [config.pin_core],
            "max_freq_khz": config.max_freq_khz(config.pin_core), "runtime": "benchmark_model",
        }


@pytest.mark.parametrize("name", ["pixel4", "pixel6"])
def test_probe_writes_the_config_the_phone_was_started_from(lab: dict[str, Any], tmp_path: Path, name: str) -> None:
    phone = lab["phones"][name]
    output = tmp_path / f"{name}.yaml"
    run = run_cli(lab["env"], "devices", "probe", phone.serial, "-o", str(output), "--json", timeout_s=60)
    assert run.rc == 0, run.describe()
    assert run.json()["also_matched_by"] == [name]  # the shipped config matches the same phone
    probed, original = load_config(output), load_config(Path(phone.config_path))
    # What probe reads from the phone: getprop values, the match keys, the clusters (cores and
    # cpuinfo_max_freq from sysfs) and the pinned core (the fastest, highest id); plus the
    # phone's serial, recorded and matched on so the probed config wins over the shipped one.
    serial = f"loopback-{name}"
    assert probed.properties == {**original.properties, "ro.serialno": serial}
    assert probed.match == {**original.match, "ro.serialno": (serial,)}
    assert probed.clusters == original.clusters
    assert probed.pin_core == original.pin_core
    # Not read from the phone, by design: the thermal policy (probe writes the defaults, which the
    # shipped Pixel configs use too), the description ("probed from SERIAL"), the name (the file
    # stem given to -o, chosen equal here) and benchmark_binary (a host path; none in either).
    assert probed.thermal == original.thermal
    assert probed.description == f"probed from {phone.serial}" != original.description
    assert dataclasses.replace(probed, description=original.description, properties=original.properties,
                               match=original.match) == original


# ============================================================================ mnas bench --device all


def test_bench_all_measures_both_phones_at_once_and_stores_both(lab: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "mnas.db"
    binary = fake_binary(tmp_path)
    phones = lab["phones"]
    calls_before = {name: len(bm_calls(phone)) for name, phone in phones.items()}
    run = run_cli(lab["env"], "--db", str(db), "bench", "mnasnet-a1", "--resolution", "96", "--device", "all",
                  *QUICK, "--benchmark-binary", str(binary), "--json", timeout_s=180)
    assert run.rc == 0, run.describe()
    assert run.errors == []
    by_serial = {row["device_id"]: row for row in run.json()}
    assert set(by_serial) == {phone.serial for phone in phones.values()}  # `all` = both phones, not the host
    rows = {row["device_id"]: row for row in stored_rows(db)}
    assert set(rows) == set(by_serial)
    intervals = {}
    for name, phone in phones.items():
        config = load_config(Path(phone.config_path))
        out, row = by_serial[phone.serial], rows[phone.serial]
        assert (out["error"], out["reused"], out["stored_id"]) == (None, False, row["id"])
        assert (row["runtime"], row["device_name"], row["pinned_core"]) == ("benchmark_model", name, config.pin_core)
        assert row["pinned_cores"] == str(config.pin_core)
        assert row["count"] == 5 and row["num_runs"] == 5 and row["warmup_runs"] == 1 and row["threads"] == 1
        assert row["median_ms"] > 0 and row["throttled"] == 0
        assert row["model_sha256"] == out["model_sha256"] and row["runtime_version"] == f"sha256:{sha256(binary)[:12]}"
        extra = row["measurement"]["extra"]
        assert extra["taskset_mask"] == format(1 << config.pin_core, "x") and extra["attempts"] == 1
        calls = bm_calls(phone)[calls_before[name]:]
        assert len(calls) == 1 and "--num_runs=5" in calls[0][1]
        intervals[name] = (calls[0][0], row["timestamp"])  # benchmark_model start .. measurement done
    (start4, end4), (start6, end6) = intervals["pixel4"], intervals["pixel6"]
    assert start4 < end6 and start6 < end4, f"the two benchmarks did not overlap: {intervals}"
    figure("bench_all_start_gap_s", abs(start4 - start6), "s")
    figure("bench_all_overlap_s", min(end4, end6) - max(start4, start6), "s")
    figure("bench_all_cli_wall_s", run.elapsed_s, "s")


# ============================================================================ AdbDevice push


def test_adb_device_pushes_a_20mb_binary_byte_identical_and_only_once(lab: dict[str, Any], tmp_path: Path,
                                                                     adb: IsolatedAdb) -> None:
    phone = lab["phones"]["pixel6"]
    data = elf_header() + os.urandom(20 * 1024 * 1024 - 64)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(data)
    device = open_phone(phone.serial, benchmark_binary=binary, timeout_s=30, retries=0)
    pushes: list[str] = []
    real_push = device.push

    def counting_push(local: Path, remote: str, mode: int = 0o644, timeout_s: float | None = None) -> None:
        pushes.append(remote)
        real_push(local, remote, mode, timeout_s)

    device.push = counting_push  # type: ignore[method-assign]
    start = time.perf_counter()
    assert device.ensure_binary() == hashlib.sha256(data).hexdigest()
    figure("adb_device_push_20MB_MBps", len(data) / (time.perf_counter() - start) / 1e6, "MB/s")
    assert pushes == [device.remote_binary]
    back = adb.client(30).device(phone.serial).sync.read_bytes(device.remote_binary)
    assert back == data
    assert device.run(f"sha256sum {device.remote_binary}").split()[0] == hashlib.sha256(data).hexdigest()
    assert device.run(f"stat -c %a {device.remote_binary}").strip() == "755"
    # a second session finds the same hash on the phone and pushes nothing
    again = open_phone(phone.serial, benchmark_binary=binary, timeout_s=30, retries=0)
    again_pushes: list[str] = []
    again.push = lambda *a, **k: again_pushes.append(a[1])  # type: ignore[method-assign]
    assert again.ensure_binary() == hashlib.sha256(data).hexdigest()
    assert again_pushes == []
