"""Turn `--device host|SERIAL|all` into Device objects (the one place that does it).

`all` means every phone the adb server lists; one phone that cannot be used (unauthorized,
offline, not answering) must not stop the others, so with `unusable` given such phones are
described there (one line each, naming the serial) and left out. A serial named explicitly
that cannot be used is an error.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mnas.bench.types import Device
from mnas.errors import MnasError

_STATE_HINTS = {
    "unauthorized": "unlock the phone and accept the USB debugging prompt",
    "offline": "reconnect the phone or restart adbd",
}


def _state_problem(serial: str, state: str) -> str:
    hint = _STATE_HINTS.get(state)
    return f"device {serial}: state {state!r}: expected 'device' (online)" + (f"; {hint}" if hint else "")


def select_devices(spec: str, *, core: int | None = None, benchmark_binary: Path | None = None,
                   timeout_s: float = 600.0, retries: int = 1,
                   unusable: list[str] | None = None) -> list[Device]:
    """`host` (this CPU), a phone serial, `all` (every attached, online phone), or a comma list.

    With `unusable` (a list), phones that `all` finds but cannot use are reported there,
    one line each, instead of stopping the selection. Phones are opened in parallel (each
    open is bounded by one adb call bound), so one hung phone does not hold up the others.
    """
    from mnas.bench.host import HostDevice

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise MnasError(f"--device {spec!r}: expected host, a phone serial or all")
    if benchmark_binary is not None and any(name != "host" for name in names):
        from mnas.bench.adb.push import resolve_local_binary

        resolve_local_binary(benchmark_binary, None)  # a bad binary is one line, not one per phone
    devices: list[Device] = []
    phones: dict[str, bool] = {}  # serial -> named explicitly
    for name in names:
        if name == "host":
            devices.append(HostDevice(core=core))
        elif name == "all":
            for serial in _online_phones(timeout_s, unusable):
                phones.setdefault(serial, False)
        else:
            phones[name] = True
    if phones:
        from mnas.bench.adb import (
            adb_client,
            adb_unavailable_reason,
            list_devices,
            open_phone,
        )

        call_timeout = min(timeout_s, 30.0)
        client = adb_client(call_timeout)
        reason = adb_unavailable_reason(client)
        if reason:
            raise MnasError(f"--device {spec!r}: {reason}")
        attached = {info.serial: info.state for info in list_devices(client, call_timeout)}
        for serial in phones:
            if serial not in attached:
                known = ", ".join(attached) or "none attached"
                raise MnasError(f"unknown device {serial!r}: expected host, all or an attached serial ({known})")

        def one(serial: str) -> Device | tuple[MnasError, str]:
            """The opened phone, or (the error to raise, the line for `unusable`)."""
            if attached[serial] != "device":
                problem = MnasError(_state_problem(serial, attached[serial]))
                return problem, str(problem)
            try:
                # timeout_s bounds a benchmark run; one adb call (push, stat, rm) gets at
                # most 30 s of it, so a hung phone is not waited on for the benchmark bound
                return open_phone(serial, client, benchmark_binary=benchmark_binary,
                                  timeout_s=call_timeout, retries=retries)
            except MnasError as exc:
                return exc, f"device {serial}: not measured: {exc}"

        # opened at once: a hung phone costs one call bound in all, not one per phone after it
        serials = list(phones)
        if len(serials) <= 1:
            opened = [one(serial) for serial in serials]
        else:
            with ThreadPoolExecutor(max_workers=min(len(serials), 16),
                                    thread_name_prefix="mnas-open-phone") as pool:
                opened = list(pool.map(one, serials))
        for serial, result in zip(serials, opened, strict=True):
            if isinstance(result, tuple):
                error, line = result
                if phones[serial] or unusable is None:
                    raise error
                unusable.append(line)
            else:
                devices.append(result)
    if not devices:
        raise MnasError(f"--device {spec!r}: no usable device" + (f" ({'; '.join(unusable)})" if unusable else ""))
    return devices


def _online_phones(timeout_s: float, unusable: list[str] | None = None) -> list[str]:
    from mnas.bench.adb import adb_client, adb_unavailable_reason, list_devices

    client = adb_client(min(timeout_s, 30.0))
    reason = adb_unavailable_reason(client)
    if reason:
        raise MnasError(f"--device all: {reason}")
    listed = {info.serial: info.state for info in list_devices(client, min(timeout_s, 30.0))}
    online = [serial for serial, state in listed.items() if state == "device"]
    others = [_state_problem(serial, state) for serial, state in listed.items() if state != "device"]
    if not online:
        detail = f" ({'; '.join(others)})" if others else ""
        raise MnasError(f"--device all: no phone attached and online: expected at least one (see `mnas devices`){detail}")
    if unusable is not None:
        unusable.extend(others)
    return online
