"""Turn `--device host|SERIAL|all` into Device objects (the one place that does it)."""

from __future__ import annotations

from pathlib import Path

from mnas.bench.types import Device
from mnas.errors import MnasError


def select_devices(spec: str, *, core: int | None = None, benchmark_binary: Path | None = None,
                   timeout_s: float = 600.0, retries: int = 1) -> list[Device]:
    """`host` (this CPU), a phone serial, `all` (every attached, online phone), or a comma list."""
    from mnas.bench.host import HostDevice

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise MnasError(f"--device {spec!r}: expected host, a phone serial or all")
    devices: list[Device] = []
    phones: list[str] = []
    for name in names:
        if name == "host":
            devices.append(HostDevice(core=core))
        elif name == "all":
            phones.extend(_online_phones(timeout_s))
        else:
            phones.append(name)
    if phones:
        from mnas.bench.adb_device import adb_client, adb_unavailable_reason, list_devices, open_phone

        call_timeout = min(timeout_s, 30.0)
        client = adb_client(call_timeout)
        reason = adb_unavailable_reason(client)
        if reason:
            raise MnasError(f"--device {spec!r}: {reason}")
        attached = {info.serial: info.state for info in list_devices(client, call_timeout)}
        for serial in dict.fromkeys(phones):
            if serial not in attached:
                known = ", ".join(attached) or "none attached"
                raise MnasError(f"unknown device {serial!r}: expected host, all or an attached serial ({known})")
            if attached[serial] != "device":
                raise MnasError(f"device {serial}: state {attached[serial]!r}: expected 'device' (online)")
            devices.append(open_phone(serial, client, benchmark_binary=benchmark_binary, timeout_s=timeout_s,
                                      retries=retries))
    return devices


def _online_phones(timeout_s: float) -> list[str]:
    from mnas.bench.adb_device import adb_client, adb_unavailable_reason, list_devices

    client = adb_client(min(timeout_s, 30.0))
    reason = adb_unavailable_reason(client)
    if reason:
        raise MnasError(f"--device all: {reason}")
    online = [info.serial for info in list_devices(client, min(timeout_s, 30.0)) if info.state == "device"]
    if not online:
        raise MnasError("--device all: no phone attached and online: expected at least one (see `mnas devices`)")
    return online
