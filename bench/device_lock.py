"""One run at a time per device, across processes: a `flock` per device for a whole run.

Why: two runs timing models on one phone at once run on the same pinned core, so each
reading comes out up to twice as slow and nothing flags it; and both pass the reuse check
before either stores, so they measure the same pairs twice. Every path that measures takes
the locks of its devices first and only then asks the store what is already measured, so a
second run waits for the first and then reuses its figures instead of re-measuring them.

How:
- One lock file per device in a per-user folder (`MNAS_LOCK_DIR`, else
  `$XDG_RUNTIME_DIR/mnas-locks`, else `<tmp>/mnas-locks-<uid>`), named after the device's
  lock key: `phone-<serial>@<adb host>_<port>` (two adb servers may list the same serial),
  `host` for this machine's CPU. The lock is an exclusive `fcntl.flock` on the open file, so
  the kernel frees it when the holder exits, however it exits (kill -9 included): no stale
  locks. Files are never deleted (deleting a flock'ed file races with its next holder).
- The holder writes who it is into the file (pid, command line, start time, ISO-8601), so a
  waiter says once on stderr whom it waits for, and after `timeout_s` fails with one line
  naming the holder (`DeviceBusy`).
- Several devices are locked in the order of their keys, so two runs asking for overlapping
  sets never deadlock. Within one process a thread that already holds a key takes it again
  (re-entrant); another thread of the same process waits like another process would.
- A device whose `lock_key` attribute is None is not locked here: a Ray actor's phone is
  locked by the actor on the machine the phone is attached to (`bench.ray_devices`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mnas.errors import MnasError

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "DeviceBusy", "DeviceLock", "device_lock_key", "hold_devices", "lock_dir",
           "try_lock"]

LOCK_DIR_ENV = "MNAS_LOCK_DIR"
LOCK_TIMEOUT_ENV = "MNAS_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 3600.0  # a phone busy for longer is probably building a table: say so rather than wait on
_POLL_S = 0.1


class DeviceBusy(MnasError):
    """Another process held a device for longer than the caller would wait."""


def default_lock_timeout() -> float:
    """`$MNAS_LOCK_TIMEOUT` seconds, else DEFAULT_LOCK_TIMEOUT_S."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise MnasError(f"{LOCK_TIMEOUT_ENV} = {raw!r}: expected seconds >= 0")
    return value


def lock_dir() -> Path:
    """The per-user folder of lock files (created on first use, mode 0700)."""
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        folder = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR") and os.access(os.environ["XDG_RUNTIME_DIR"], os.W_OK):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "mnas-locks"
    else:
        folder = Path(tempfile.gettempdir()) / f"mnas-locks-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise MnasError(f"device locks: cannot create the lock folder {folder}: {exc.strerror} "
                        f"(set {LOCK_DIR_ENV} to a writable folder)") from None
    return folder


def device_lock_key(device: Any) -> str | None:
    """The lock key of a device: `host`, `phone-SERIAL@HOST_PORT`, or its own `lock_key` attribute.

    None means "do not lock here" (a device that is locked elsewhere, e.g. by its Ray actor).
    """
    if hasattr(device, "lock_key"):
        key = device.lock_key
        return None if key is None else str(key)
    serial = getattr(device, "serial", None)
    client = getattr(device, "adb", None)
    if serial is not None and client is not None:
        host, port = getattr(client, "host", "127.0.0.1"), getattr(client, "port", 5037)
        return f"phone-{serial}@{host}_{port}"
    return str(device.device_id)


def describe_key(key: str) -> str:
    """`phone-S@h_p` -> `phone S (adb server h:p)`; others unchanged."""
    found = re.fullmatch(r"phone-(.+)@(.+)_(\d+)", key)
    return f"phone {found.group(1)} (adb server {found.group(2)}:{found.group(3)})" if found else key


def _file_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", key)
    return f"{safe}.lock"


def _holder_line(text: str) -> str:
    """`pid 1234 (mnas bench ...) since ISO` from a lock file's content, or a plain fallback."""
    try:
        info = json.loads(text)
        command = " ".join(str(info.get("command", "")).split())
        if len(command) > 120:
            command = command[:117] + "..."
        return f"pid {info['pid']} ({command}) since {info['since']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "another process (it has not said who it is yet)"


def _command_line() -> str:
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
        parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    except OSError:
        parts = list(sys.argv)
    if len(parts) >= 2 and Path(parts[0]).name.startswith("python") and parts[1].endswith("mnas"):
        parts = parts[1:]
    if parts:
        parts[0] = Path(parts[0]).name
    return " ".join(parts)


@dataclass
class _Held:
    handle: IO[str]
    thread: int
    depth: int


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


class DeviceLock:
    """One device's lock file (see the module docstring); use `hold_devices` for whole runs."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.path = lock_dir() / _file_name(key)

    def holder(self) -> str:
        try:
            return _holder_line(self.path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return _holder_line("")

    def _try(self) -> IO[str] | None:
        handle = open(self.path, "a+", encoding="utf-8")  # never truncates another holder's line  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": _command_line(),
                                 "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        handle.flush()
        return handle

    def acquire(self, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting at most `timeout_s` (a `DeviceBusy` naming the holder after that)."""
        me = threading.get_ident()
        with _held_guard:
            held = _held.get(self.key)
            if held is not None and held.thread == me:
                held.depth += 1
                return
        deadline = time.monotonic() + max(0.0, timeout_s)
        said = False
        while True:
            handle = self._try()
            if handle is not None:
                with _held_guard:
                    _held[self.key] = _Held(handle, me, 1)
                return
            if time.monotonic() >= deadline:
                raise DeviceBusy(f"{describe_key(self.key)}: held by {self.holder()}; still busy after "
                                 f"{timeout_s:g} s: wait for that run to finish (or raise the lock timeout, "
                                 f"{LOCK_TIMEOUT_ENV} / --lock-timeout)")
            if not said:
                said = True
                line = f"mnas: waiting for {describe_key(self.key)}: held by {self.holder()}"
                (on_wait or _say)(line)
            time.sleep(_POLL_S)

    def release(self) -> None:
        with _held_guard:
            held = _held.get(self.key)
            if held is None or held.thread != threading.get_ident():
                return
            held.depth -= 1
            if held.depth > 0:
                return
            del _held[self.key]
        with contextlib.suppress(OSError):
            held.handle.seek(0)
            held.handle.truncate()
        held.handle.close()  # closing the file releases the flock


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def try_lock(key: str) -> IO[str] | None:
    """A non-blocking lock on `key` held as long as the returned handle stays open; None when taken."""
    return DeviceLock(key)._try()


@contextlib.contextmanager
def hold_devices(devices: Sequence[Any], timeout_s: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Hold the lock of every device (in key order) for the body; yields the keys held.

    `timeout_s` bounds the wait for each device (None: `default_lock_timeout()`); on a
    `DeviceBusy` the locks already taken are released before it propagates.
    """
    timeout = default_lock_timeout() if timeout_s is None else timeout_s
    keys = sorted({key for key in (device_lock_key(d) for d in devices) if key is not None})
    taken: list[DeviceLock] = []
    try:
        for key in keys:
            lock = DeviceLock(key)
            lock.acquire(timeout, on_wait)
            taken.append(lock)
        yield keys
    finally:
        for lock in reversed(taken):
            lock.release()
