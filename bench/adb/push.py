"""Files on the phone: which local binary to push, what the phone already has, push and remove.

The local binary must be an aarch64/arm ELF file (`check_phone_binary`), checked when the
device is opened and again right before it is pushed.

A push is bounded by the call bound plus 1 s per MB, so a slow USB link is waited for but a
hung one is not. Removal is best effort: a failure is recorded, never raised, because it must
not hide the error of the run it cleans up after.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import NamedTuple

from mnas.bench.adb.transport import PhoneTransport, last_line
from mnas.bench.device_config import DeviceConfig
from mnas.errors import MeasurementError, MnasError

__all__ = [
    "RemoteFile",
    "check_phone_binary",
    "push_file",
    "remote_file",
    "remove_file",
    "resolve_local_binary",
]

ELF_MAGIC = b"\x7fELF"
PHONE_MACHINES = {183: "aarch64", 40: "arm"}  # ELF e_machine values a phone's CPU runs
_OTHER_MACHINES = {3: "x86", 62: "x86-64", 8: "mips", 20: "powerpc", 21: "powerpc64", 243: "riscv"}


class RemoteFile(NamedTuple):
    """What the phone has at one path; `sha256` is None when the phone has no sha256sum."""

    exists: bool
    size: int | None
    sha256: str | None
    executable: bool


def resolve_local_binary(given: Path | str | None, config: DeviceConfig | None) -> Path | None:
    """The benchmark_model binary to push: the one given, else the config's, else none."""
    if given is not None:
        path = Path(given).expanduser()
        origin = "benchmark binary"
    elif config is not None and config.benchmark_binary:
        path = Path(config.benchmark_binary).expanduser()
        if not path.is_absolute() and config.source is not None:
            path = config.source.parent / path
        origin = f"{config.label}: field 'benchmark_binary'"
    else:
        return None
    if not path.is_file():
        raise MnasError(f"{origin}: {path} not found (expected the arm64 benchmark_model "
                        "binary on this host)")
    check_phone_binary(path, origin)
    return path


def check_phone_binary(path: Path, origin: str = "benchmark binary") -> None:
    """Refuse (one MnasError line naming the file) what cannot be a phone's benchmark_model.

    A 0-byte file, a script, an archive or a host (x86) build would be pushed, chmod'ed and
    only fail on the phone, once per model, as an obscure exec error; so before any push the
    file must be an ELF executable for aarch64 or arm.
    """
    expected = "an ELF executable for aarch64 or arm (the arm64 benchmark_model build)"
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise MnasError(f"{origin}: {path}: cannot read it: {exc.strerror}") from None
    if not head:
        raise MnasError(f"{origin}: {path} is empty (0 bytes): expected {expected}")
    if not head.startswith(ELF_MAGIC):
        raise MnasError(f"{origin}: {path} is not an ELF file (starts with {head[:4]!r}, not "
                        f"b'\\x7fELF'): expected {expected}")
    if len(head) < 20 or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise MnasError(f"{origin}: {path} has a truncated or invalid ELF header: expected {expected}")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if machine not in PHONE_MACHINES:
        name = _OTHER_MACHINES.get(machine, f"machine {machine}")
        raise MnasError(f"{origin}: {path} is an ELF file for {name} (e_machine {machine}), not for "
                        f"a phone: expected {expected}")


def remote_file(transport: PhoneTransport, remote: str, timeout_s: float) -> RemoteFile:
    """Stat `remote` and hash it on the phone, so an identical file is never pushed again."""
    info = transport.call(f"stat {remote}", lambda: transport.device.sync.stat(remote), timeout_s)
    if not info.mode and info.mtime is None:
        return RemoteFile(False, None, None, False)
    result = transport.shell(f"sha256sum {shlex.quote(remote)}", timeout_s)
    digest = None
    if result.returncode == 0:
        first = result.output.split()
        if first and re.fullmatch(r"[0-9a-f]{64}", first[0]):
            digest = first[0]
    return RemoteFile(True, int(info.size), digest, bool(info.mode & 0o111))


def push_file(transport: PhoneTransport, local: Path, remote: str, mode: int,
              timeout_s: float) -> None:
    """Push `local` to `remote` with `mode`, allowing 1 MB/s on top of `timeout_s`."""
    timeout = timeout_s + local.stat().st_size / 1e6
    transport.call(f"push {local.name} to {remote}",
                   lambda: transport.device.sync.push(local, remote, mode=mode, check=True), timeout)


def remove_file(transport: PhoneTransport, remote: str, timeout_s: float,
                errors: list[str]) -> None:
    """`rm -f remote`; a failure is appended to `errors` (see the module docstring)."""
    try:
        result = transport.shell(f"rm -f {shlex.quote(remote)}", timeout_s)
        if result.returncode != 0:
            errors.append(f"rm {remote}: {last_line(result.output)}")
    except MeasurementError as exc:
        errors.append(f"rm {remote}: {exc}")
