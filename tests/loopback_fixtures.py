"""An isolated adb server and loopback phones for tests, always stopped afterwards.

`isolated_adb_server(tmp)` starts Debian's adb server on its own port in 15000-16000 (never
5037 nor the emulator range 5555-5585) with its own HOME (so its own RSA key) and TMPDIR,
points adbutils at it (ANDROID_ADB_SERVER_PORT, ADBUTILS_ADB_PATH) for the duration, and at
the end runs `adb kill-server` and SIGKILLs any server process of that port still alive.
`loopback_phones(adb, folder, ...)` starts phones through `bench.loopback.manager` (the
same code as `mnas devices loopback start`) and stops every phone recorded in `folder`
however the test ends. Both are context managers so module- and function-scoped fixtures
in any test file can use them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from needs import needs

from mnas.bench.loopback import manager

ADB_PATH = Path("/usr/bin/adb")
ADB_PORT_RANGE = (15000, 16000)
requires_adb = needs("ADB", ADB_PATH.exists(), "Debian's adb is not installed at /usr/bin/adb (apt-get install adb)")


@dataclass(frozen=True)
class IsolatedAdb:
    port: int
    env: dict[str, str]
    server: manager.AdbServer

    def client(self, timeout_s: float | None = 10.0) -> Any:
        import adbutils

        return adbutils.AdbClient(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)

    def run(self, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run the adb command line against this server."""
        return subprocess.run([str(ADB_PATH), "-P", str(self.port), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _server_pids(port: int) -> list[int]:
    """Pids of adb server processes listening on tcp:PORT (`adb -L tcp:PORT fork-server ...`)."""
    pids = []
    needle = f"tcp:{port}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"fork-server" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def isolated_adb_server(tmp: Path, attempts: int = 3) -> Iterator[IsolatedAdb]:
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    rng = random.Random()
    adb: IsolatedAdb | None = None
    for _ in range(attempts):
        port = rng.randrange(*ADB_PORT_RANGE)
        if not _port_free(port):
            continue
        env = {k: v for k, v in os.environ.items() if k not in ("ANDROID_SERIAL", "ADB_VENDOR_KEYS")}
        env.update(HOME=str(tmp / "home"), TMPDIR=str(tmp / "tmp"), ANDROID_ADB_SERVER_PORT=str(port),
                   ADBUTILS_ADB_PATH=str(ADB_PATH))
        candidate = IsolatedAdb(port, env, manager.AdbServer(str(ADB_PATH), port))
        if candidate.run("start-server").returncode == 0 and candidate.server.is_running():
            adb = candidate
            break
        _kill_server(candidate)
    if adb is None:
        raise RuntimeError(f"could not start an isolated adb server in ports {ADB_PORT_RANGE}")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ANDROID_ADB_SERVER_PORT", str(adb.port))
            patch.setenv("ADBUTILS_ADB_PATH", str(ADB_PATH))
            yield adb
    finally:
        _kill_server(adb)


def _kill_server(adb: IsolatedAdb) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        adb.run("kill-server", timeout_s=10)
    deadline = time.monotonic() + 5
    while _server_pids(adb.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _server_pids(adb.port):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def loopback_phones(adb: IsolatedAdb, folder: Path, config: str = "pixel4", count: int = 1,
                    faults: Sequence[str] = (), **kwargs: Any) -> Iterator[list[manager.LoopbackPhone]]:
    """Start phones recorded in `folder`; on exit stop every phone recorded there."""
    try:
        yield manager.start(config, count, faults, folder=folder, adb=adb.server, timeout_s=15, **kwargs)
    finally:
        stop_all(folder)


def stop_all(folder: Path) -> None:
    """Stop every phone recorded in `folder`, then SIGKILL any that survived."""
    phones = manager.load_phones(folder)
    with contextlib.suppress(Exception):
        manager.stop(folder=folder, timeout_s=5)
    for phone in phones:
        if phone.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(phone.pid, signal.SIGKILL)


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll until predicate() is truthy (returning it) or raise after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled conditions may fail transiently
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s:g} s (last error: {last_error!r})")
