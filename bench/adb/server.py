"""The adb server: where it is, whether it runs, THE client to it, and its device list.

`mnas` never starts an adb server behind the user's back: a missing server is a fact to
report ("start one with `adb start-server`"), not a daemon to spawn.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import adbutils
from adbutils.errors import AdbConnectionError, AdbError

from mnas.bench.adb.transport import CallTimeout, bounded, one_line
from mnas.errors import MnasError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "adb_client",
    "adb_server_address",
    "adb_server_running",
    "adb_unavailable_reason",
    "list_devices",
]

DEFAULT_TIMEOUT_S = 30.0


def adb_server_address() -> tuple[str, int]:
    """Host and port of the adb server: $ANDROID_ADB_SERVER_HOST/PORT, else 127.0.0.1:5037."""
    host = os.environ.get("ANDROID_ADB_SERVER_HOST") or "127.0.0.1"
    raw = os.environ.get("ANDROID_ADB_SERVER_PORT") or "5037"
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise MnasError(f"ANDROID_ADB_SERVER_PORT = {raw!r}: expected a TCP port number (1..65535)")
    return host, port


def adb_server_running(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts connections on the adb server's port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class _NoAutoStartClient(adbutils.AdbClient):
    """An AdbClient that never starts an adb server (adbutils runs `adb start-server` on failure)."""

    def make_connection(self, timeout: float | None = None) -> adbutils.AdbConnection:
        if not adb_server_running(self.host, self.port):
            raise AdbConnectionError(f"no adb server on {self.host}:{self.port}")
        return super().make_connection(timeout=timeout)


def adb_client(timeout_s: float = DEFAULT_TIMEOUT_S) -> adbutils.AdbClient:
    """THE way to get an adb client in mnas: server from the environment, socket timeouts set.

    Honours ANDROID_ADB_SERVER_PORT (default 5037), ANDROID_ADB_SERVER_HOST and, for the `adb`
    binary adbutils may run, ADBUTILS_ADB_PATH. No network traffic happens here.
    """
    host, port = adb_server_address()
    return _NoAutoStartClient(host=host, port=port, socket_timeout=timeout_s)


def adb_unavailable_reason(client: Any) -> str | None:
    """None when the client's adb server answers; else one line saying what is missing."""
    host, port = getattr(client, "host", "127.0.0.1"), getattr(client, "port", 5037)
    if adb_server_running(host, port):
        return None
    try:
        binary = adbutils.adb_path()
    except AdbError:
        binary = None
    if binary is None or not os.access(binary, os.X_OK):
        where = f" (ADBUTILS_ADB_PATH={binary})" if binary else ""
        return (f"no adb server on {host}:{port} and no adb binary found{where} "
                "(install adb or set ADBUTILS_ADB_PATH)")
    return f"no adb server on {host}:{port} (start one with `adb start-server`)"


def list_devices(client: Any, timeout_s: float) -> list[Any]:
    """`adb devices` through the client, bounded; failures are one MnasError line."""
    try:
        return list(bounded(lambda: client.list(), timeout_s))
    except CallTimeout:
        raise MnasError(f"adb server: listing devices timed out after {timeout_s:.1f} s") from None
    except (AdbError, OSError) as exc:
        raise MnasError(f"adb server: cannot list devices: {one_line(str(exc))}") from None
