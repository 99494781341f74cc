"""Files on the phone: which local binary to push, what the phone already has, push and remove.

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

__all__ = ["RemoteFile", "push_file", "remote_file", "remove_file", "resolve_local_binary"]


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
    return path


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
