"""A hung phone is declared lost within the documented bound, through the real adb server.

A loopback phone that hangs mid-benchmark (output stops, the socket stays open) must be
marked offline within 1.2x the benchmark's timeout: no retry, no clean-up call waiting out
another bound. Opening phones (`select_devices`) asks them all at once, so one hung phone
does not hold up the healthy ones by a whole bound.

Detection times are printed as `FIGURE name=value` lines (run with `-s`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elf_fixtures import arm64_binary
from loopback_fixtures import IsolatedAdb, isolated_adb_server, loopback_phones, requires_adb
from test_phone_integration import CORES, arm_on_benchmark, bm_calls, figure, write_runner
from tflite_fixtures import conv_model_bytes

import mnas.bench.adb as adb_package
from mnas.bench.adb import list_devices, open_phone
from mnas.bench.devices import select_devices
from mnas.bench.loopback.faults import write_control_file
from mnas.bench.types import BenchConfig

pytestmark = [pytest.mark.adb, requires_adb]


@pytest.fixture(scope="module")
def adb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedAdb]:
    with isolated_adb_server(tmp_path_factory.mktemp("adb")) as server:
        yield server


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "m1.tflite"
    model.write_bytes(conv_model_bytes(size=16, channels=8, layers=1))
    return {"runner": write_runner(tmp_path), "binary": arm64_binary(tmp_path / "benchmark_model"),
            "model": model}


@pytest.mark.parametrize("timeout_s", [3.0])
def test_phone_hung_mid_run_is_declared_lost_within_1_2x_timeout(
        adb: IsolatedAdb, files: dict[str, Path], tmp_path: Path, timeout_s: float) -> None:
    with loopback_phones(adb, tmp_path / "phone", "pixel4", host_core=CORES[-1],
                         bm_runner=str(files["runner"])) as (phone,):
        # the device's own call timeout (30 s) is larger: the benchmark's bound must rule
        device = open_phone(phone.serial, benchmark_binary=files["binary"], timeout_s=30.0, retries=2,
                            retry_delay_s=0.2)
        arm_on_benchmark(phone, "hang")  # output stops once benchmark_model has started
        config = BenchConfig(warmup_runs=1, num_runs=5, min_secs=0, timeout_s=timeout_s)
        with pytest.raises(Exception) as caught:
            device.benchmark(files["model"], config)
        lost_at = time.time()
        (started_at, _), = bm_calls(phone)  # one run: no retry of a phone that does not answer
    message = str(caught.value)
    assert device.offline and message.endswith("; phone marked offline"), message
    assert "failed after 1 attempt(s)" in message and f"timed out after {timeout_s:.1f} s" in message
    assert any("skipped, the phone is not answering" in e for e in device.cleanup_errors)
    detected = lost_at - started_at
    assert 0.8 * timeout_s <= detected <= 1.2 * timeout_s, detected  # its start is logged after the shell starts
    figure(f"hung_mid_run_declared_lost_timeout_{timeout_s:g}s", detected, "s")


def test_one_hung_phone_does_not_delay_opening_the_healthy_ones(
        adb: IsolatedAdb, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timeout_s = 3.0
    with loopback_phones(adb, tmp_path / "phones", "pixel4", count=3, host_core=CORES[-1],
                         bm_runner=str(files["runner"])) as phones:
        by_serial = {phone.serial: phone for phone in phones}
        listed = [e.serial for e in list_devices(adb.client(), 10) if e.serial in by_serial]
        hung = by_serial[listed[0]]  # the first one `all` opens: the case a sequential open waits on
        write_control_file(Path(hung.control_file), ["hang"])
        real_open = adb_package.open_phone
        opened: dict[str, float] = {}
        lock = threading.Lock()
        start = time.monotonic()

        def timed_open(serial: str, *args: Any, **kwargs: Any) -> Any:
            device = real_open(serial, *args, **kwargs)
            with lock:
                opened[serial] = time.monotonic() - start
            return device

        monkeypatch.setattr(adb_package, "open_phone", timed_open)
        unusable: list[str] = []
        devices = select_devices("all", timeout_s=timeout_s, unusable=unusable)
        elapsed = time.monotonic() - start
    assert sorted(d.serial for d in devices) == sorted(listed[1:])
    assert len(unusable) == 1 and unusable[0].startswith(f"device {hung.serial}: not measured: ")
    assert "no answer" in unusable[0] or "timed out" in unusable[0], unusable
    healthy = [opened[serial] for serial in listed[1:]]
    assert max(healthy) < 0.5 * timeout_s, opened  # not behind the hung phone's bound
    assert elapsed < 1.5 * timeout_s, elapsed  # the hung phone's one bound, once
    figure("healthy_phones_opened_beside_a_hung_one_s", max(healthy), "s")
    figure("selection_with_one_hung_phone_s", elapsed, "s")
