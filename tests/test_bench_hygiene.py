"""What a run leaves behind and what it refuses: issue 11 points 6 and 7.

- a device config's `thermal.throttle_above_c` (the hot-after-the-run limit) is read and checked;
- a benchmark binary that is not an arm/aarch64 ELF file is refused before any push;
- host temp folders of a dead mnas process are removed by the next run, a live one's never;
- a host benchmark worker whose parent died exits (PR_SET_PDEATHSIG, and a pipe watch);
- model files a killed run left in a phone's model folder are removed by the next run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from elf_fixtures import EM_AARCH64, EM_ARM, EM_X86_64, arm64_binary, elf_header
from fake_adb import FakeAdbClient, FakePhone

from mnas.bench.adb import AdbDevice
from mnas.bench.adb.push import check_phone_binary
from mnas.bench.device_config import default_config_dir, load_all, parse_config
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
