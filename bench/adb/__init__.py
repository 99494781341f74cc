"""A phone over adb: TFLite's `benchmark_model`, pinned to ONE core, with thermal bookkeeping.

One job per module:

- `server`: where the adb server is, whether it runs, THE client to it, `adb devices`;
- `transport`: deadline-bound calls to one phone (its shell with exit codes, any other call);
- `probe`: what a phone is (getprop, CPU topology) and the device config built from it;
- `thermal`: temperatures, the pinned core's frequency and cap, the cool-down wait;
- `push`: files on the phone (the binary to push, what is there, push, remove);
- `run`: one benchmark_model run (command, kill after a timeout, output to timings);
- `device`: `AdbDevice`, which wires them together under one time bound per call;
- `discovery`: listing phones and opening one with its device config matched.

The names below are the package's public surface; import them from `mnas.bench.adb`.
"""

from __future__ import annotations

from mnas.bench.adb.device import AdbDevice
from mnas.bench.adb.discovery import PhoneInfo, discover_phones, open_phone
from mnas.bench.adb.probe import build_probed_config, parse_cpu_probe, parse_getprop
from mnas.bench.adb.server import (
    adb_client,
    adb_server_address,
    adb_server_running,
    adb_unavailable_reason,
    list_devices,
)
from mnas.bench.adb.thermal import ThermalReading, parse_thermal_output
from mnas.bench.adb.transport import AdbCallError, AdbNoAnswer, ShellResult, ShellTimeout

__all__ = [
    "AdbCallError",
    "AdbDevice",
    "AdbNoAnswer",
    "PhoneInfo",
    "ShellResult",
    "ShellTimeout",
    "ThermalReading",
    "adb_client",
    "adb_server_address",
    "adb_server_running",
    "adb_unavailable_reason",
    "build_probed_config",
    "discover_phones",
    "list_devices",
    "open_phone",
    "parse_cpu_probe",
    "parse_getprop",
    "parse_thermal_output",
]
