"""Which phones the adb server knows, and opening one with its device config matched.

A phone is matched to a config by its getprop values, so a phone is asked for them once,
through a throw-away `AdbDevice` without config, before the real one is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mnas.bench.adb.device import AdbDevice
from mnas.bench.adb.server import DEFAULT_TIMEOUT_S, adb_client, list_devices
from mnas.bench.adb.transport import one_line
from mnas.bench.device_config import DeviceConfig, load_all, match_config
from mnas.errors import MnasError

__all__ = ["PhoneInfo", "discover_phones", "open_phone"]


@dataclass
class PhoneInfo:
    """One entry of `adb devices`: serial, state, properties and the matching config."""

    serial: str
    state: str
    props: dict[str, str] = field(default_factory=dict)
    config: DeviceConfig | None = None
    error: str | None = None

    @property
    def model(self) -> str:
        return self.props.get("ro.product.model", "")


def discover_phones(client: Any, configs: Mapping[str, DeviceConfig] | None = None,
                    timeout_s: float = 10.0) -> list[PhoneInfo]:
    """Every phone the adb server knows, with getprop values and matched device config.

    Phones that are not in state `device` (unauthorized, offline) are listed without
    properties; a phone that fails to answer is listed with its error.
    """
    if configs is None:
        configs = load_all()
    entries = list_devices(client, timeout_s)

    def one(entry: Any) -> PhoneInfo:
        phone = PhoneInfo(serial=entry.serial, state=entry.state)
        if entry.state == "device":
            try:
                device = AdbDevice(entry.serial, None, client, timeout_s=timeout_s, retries=0)
                phone.props = device.getprops()
                phone.config = match_config(phone.props, configs)
            except MnasError as exc:
                phone.error = one_line(str(exc))
        return phone

    if len(entries) <= 1:
        return [one(entry) for entry in entries]
    # asked at once: a hung phone costs one bound in all, not one per phone listed after it
    with ThreadPoolExecutor(max_workers=min(len(entries), 16),
                            thread_name_prefix="mnas-discover") as pool:
        return list(pool.map(one, entries))


def open_phone(serial: str, client: Any | None = None,
               configs: Mapping[str, DeviceConfig] | None = None, **kwargs: Any) -> AdbDevice:
    """An AdbDevice for `serial` with its device config matched from getprop (if any)."""
    timeout_s = float(kwargs.get("timeout_s", DEFAULT_TIMEOUT_S))
    client = client if client is not None else adb_client(timeout_s)
    probe = AdbDevice(serial, None, client, timeout_s=timeout_s, retries=0)
    props = probe.getprops()
    config = match_config(props, load_all() if configs is None else configs)
    device = AdbDevice(serial, config, client, **kwargs)
    device.adopt(probe)
    return device
