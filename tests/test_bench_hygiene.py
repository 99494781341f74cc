"""What a run leaves behind and what it refuses: issue 11 points 6 and 7.

- a device config's `thermal.throttle_above_c` (the hot-after-the-run limit) is read and checked;
- a benchmark binary that is not an arm/aarch64 ELF file is refused before any push;
- host temp folders of a dead mnas process are removed by the next run, a live one's never;
- a host benchmark worker whose parent died exits (PR_SET_PDEATHSIG, and a pipe watch);
- model files a killed run left in a phone's model folder are removed by the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from elf_fixtures import EM_AARCH64, EM_ARM, EM_X86_64, arm64_binary, elf_header
from fake_adb import FakeAdbClient, FakePhone
from loopback_fixtures import wait_until
from test_phone_integration import figure
from tflite_fixtures import conv_model_bytes

from mnas.bench.adb import AdbDevice
from mnas.bench.adb.push import check_phone_binary
from mnas.bench.device_config import default_config_dir, load_all, parse_config
from mnas.bench.devices import select_devices
from mnas.bench.host_worker import watch_parent_pipe
from mnas.bench.tempdirs import OWNER_FILE, sweep_stale_temp_dirs
from mnas.bench.types import BenchConfig
from mnas.errors import MnasError

CONFIGS = load_all()


def _pixel4(**thermal: object) -> dict:
    doc = yaml.safe_load((default_config_dir() / "pixel4.yaml").read_text())
    doc["thermal"].update(thermal)
    return doc


def test_throttle_above_c_defaults_reads_and_must_be_above_the_cooldown_threshold() -> None:
    assert parse_config(_pixel4(), "pixel4.yaml").thermal.throttle_above_c == 85.0
    assert parse_config(_pixel4(throttle_above_c=70), "pixel4.yaml").thermal.throttle_above_c == 70.0
    with pytest.raises(MnasError, match=r"field 'thermal.throttle_above_c' = 40: expected a temperature above "
                                        r"thermal.cooldown_below_c \(45\)"):
        parse_config(_pixel4(throttle_above_c=40), "pixel4.yaml")


# ---------------------------------------------------------------- the benchmark binary

BAD_BINARIES = [
    (b"", "is empty (0 bytes)"),
    (b"#!/system/bin/sh\nexec true\n", "is not an ELF file (starts with b'#!/s', not b'\\x7fELF')"),
    (b"PK\x03\x04zip", "is not an ELF file (starts with b'PK\\x03\\x04', not b'\\x7fELF')"),
    (elf_header(EM_X86_64) + b"host build", "is an ELF file for x86-64 (e_machine 62), not for a phone"),
    (b"\x7fELF\x02", "has a truncated or invalid ELF header"),
]


@pytest.mark.parametrize(("data", "problem"), BAD_BINARIES)
def test_a_binary_that_is_not_a_phone_executable_is_refused_before_any_push(
        tmp_path: Path, data: bytes, problem: str) -> None:
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(data)
    phone = FakePhone(serial="SER1", props=dict(CONFIGS["pixel4"].properties), root=tmp_path / "phone")
    with pytest.raises(MnasError) as info:
        AdbDevice(phone.serial, CONFIGS["pixel4"], FakeAdbClient(phone), benchmark_binary=binary)
    message = str(info.value)
    assert message == (f"benchmark binary: {binary} {problem}: expected an ELF executable for aarch64 or arm "
                       "(the arm64 benchmark_model build)")
    assert "\n" not in message and phone.pushes == [] and phone.commands == []


def test_phone_executables_pass_and_a_binary_spoiled_after_opening_is_not_pushed(tmp_path: Path) -> None:
    for machine, bits in ((EM_AARCH64, 64), (EM_ARM, 32)):
        path = tmp_path / f"bm-{machine}"
        path.write_bytes(elf_header(machine, bits) + b"code")
        check_phone_binary(path)
    binary = arm64_binary(tmp_path / "benchmark_model")
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 fake model bytes")
    phone = FakePhone(serial="SER1", props=dict(CONFIGS["pixel4"].properties), root=tmp_path / "phone")
    device = AdbDevice(phone.serial, CONFIGS["pixel4"], FakeAdbClient(phone), benchmark_binary=binary,
                       retry_delay_s=0.0, poll_s=0.0)
    binary.write_bytes(b"")  # overwritten (a failed download) after the device was opened
    with pytest.raises(MnasError, match=r"benchmark_model is empty \(0 bytes\)"):
        device.benchmark(model, BenchConfig(warmup_runs=1, num_runs=5, min_secs=0, timeout_s=5))
    assert phone.pushes == []


# ---------------------------------------------------------------- host workers and temp folders

PARENT = """
import sys
from pathlib import Path
from mnas.bench.host import HostDevice
from mnas.bench.types import BenchConfig
HostDevice().benchmark(Path(sys.argv[1]), BenchConfig(warmup_runs=1, num_runs=5, min_secs=60, timeout_s=120))
"""

HOLDER = """
import sys, time
from mnas.bench.tempdirs import owned_temp_dir
with owned_temp_dir(sys.argv[1]) as folder:
    print(folder, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, TMPDIR=str(tmp))


def _mnas_dirs(tmp: Path) -> set[str]:
    return {p.name for p in tmp.iterdir() if p.name.startswith("mnas-")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_mnas_ends_its_host_worker_and_the_next_run_removes_its_temp_folder(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    model = tmp_path / "model.tflite"
    model.write_bytes(conv_model_bytes(size=16, channels=8, layers=1))
    legacy = tmp / "mnas-table-legacy"  # no owner file: whose it is cannot be told, so it stays
    legacy.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(model)], env=_env(tmp),
                              stdin=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        worker = wait_until(lambda: next(iter(_children(parent.pid)), None), 30)
        wait_until(lambda: any(n.startswith("mnas-host-") for n in _mnas_dirs(tmp)), 10)
        time.sleep(1.0)  # the worker is past its start-up, timing
        assert _running(worker)
        os.kill(parent.pid, signal.SIGKILL)
        killed = time.monotonic()
        parent.wait(10)
        wait_until(lambda: not _running(worker), 5)  # before the fix it timed on for a minute
        figure("orphaned_host_worker_gone_s", time.monotonic() - killed, "s")
    finally:
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
    (stale,) = [n for n in _mnas_dirs(tmp) if n.startswith("mnas-host-")]
    assert stale.startswith(f"mnas-host-{parent.pid}-")  # the owner's pid in the name (and in .mnas-owner)
    # a live process's folder is never touched; the next run sweeps the dead one's
    with subprocess.Popen([sys.executable, "-c", HOLDER, "live", "30"], env=_env(tmp), stdout=subprocess.PIPE,
                          text=True) as live:
        try:
            assert live.stdout is not None
            live_folder = Path(live.stdout.readline().strip())
            assert live_folder.is_dir()  # the holder swept already, as the first folder it made
            assert not (tmp / stale).exists()
            next_run = subprocess.run([sys.executable, "-c", HOLDER, "next", "0"], env=_env(tmp),
                                      capture_output=True, text=True, timeout=60, check=True)
            assert live_folder.is_dir() and legacy.is_dir()
            assert not Path(next_run.stdout.strip()).exists()  # removed as its own block ended
        finally:
            live.kill()
    assert _mnas_dirs(tmp) == {legacy.name, live_folder.name}  # killed: its folder is the next run's to sweep
    assert sweep_stale_temp_dirs(tmp) == [live_folder] and _mnas_dirs(tmp) == {legacy.name}


def test_sweep_keeps_live_owners_and_recycled_pids_count_as_dead(tmp_path: Path) -> None:
    mine = tmp_path / "mnas-host-mine"
    mine.mkdir()
    (mine / OWNER_FILE).write_text(f"{os.getpid()} -\n")
    recycled = tmp_path / "mnas-host-recycled"
    recycled.mkdir()
    (recycled / OWNER_FILE).write_text(f"{os.getpid()} 1\n")  # this pid, but another start time
    half = tmp_path / "mnas-host-half"
    half.mkdir()
    (half / OWNER_FILE).write_text("")  # an owner still writing it: left alone
    other = tmp_path / "other-tool-dead"
    other.mkdir()
    (other / OWNER_FILE).write_text("999999999 -\n")
    assert sweep_stale_temp_dirs(tmp_path) == [recycled]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnas-host-half", "mnas-host-mine", "other-tool-dead"]


def test_the_pipe_watch_notices_the_parent_going_away() -> None:
    read_end, write_end = os.pipe()
    gone = threading.Event()
    try:
        watch_parent_pipe(read_end, gone.set)
        assert not gone.wait(0.2)  # the parent (the write end) is alive
        os.close(write_end)
        assert gone.wait(2.0)
    finally:
        os.close(read_end)


def test_select_devices_refuses_a_bad_binary_once_before_asking_any_phone(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "1")  # nothing is asked: the check comes first
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"")
    with pytest.raises(MnasError) as info:
        select_devices("all", benchmark_binary=binary, unusable=[])
    assert str(info.value) == (f"benchmark binary: {binary} is empty (0 bytes): expected an ELF executable "
                               "for aarch64 or arm (the arm64 benchmark_model build)")
