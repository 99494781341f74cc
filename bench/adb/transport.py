"""Deadline-bound calls to one phone: its shell (with exit codes) and any other adbutils call.

adbutils blocks forever on a hung phone unless every socket has a timeout, and a socket
timeout only bounds *silence*, not a phone that trickles bytes; so every shell call here
reads against a deadline and every other call (sync stat/push, `adb devices`) runs in a
thread waited for at most its bound.

A phone that dies mid-command can look like a normal short output, so commands use the shell
protocol that reports exit codes: shell v2 where the phone advertises `shell_v2`, else an
exit-code marker appended to the command (v1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from adbutils.errors import AdbError, AdbTimeout

from mnas.errors import MeasurementError, MnasError

__all__ = [
    "RC_MARKER",
    "AdbCallError",
    "AdbNoAnswer",
    "CallTimeout",
    "PhoneTransport",
    "ShellResult",
    "ShellTimeout",
    "bounded",
    "last_line",
    "one_line",
]

RC_MARKER = "__MNAS_RC="

T = TypeVar("T")


class AdbCallError(MeasurementError):
    """An adb call failed (connection lost, timeout, phone gone); worth a retry."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ShellTimeout(AdbCallError):
    """A shell command ran past its deadline; `output` holds what arrived before it."""


class AdbNoAnswer(AdbCallError):
    """An adb call got no answer within its bound: the phone (or its link) is hung."""


@dataclass
class ShellResult:
    """One finished shell command: exit code and output (stdout + stderr in arrival order)."""

    command: str
    returncode: int
    output: str
    stdout: str
    stderr: str
    protocol: str  # "v2" or "v1"


def one_line(text: str, limit: int = 240) -> str:
    """`text` flattened to one line of at most `limit` characters (for error messages)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def last_line(text: str) -> str:
    """The last non-blank line of a command's output: usually the one saying what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else "(no output)"


class CallTimeout(Exception):
    """A bounded call did not return in time (its thread is left to its socket timeout)."""


def bounded(fn: Callable[[], T], timeout_s: float) -> T:
    """`fn()` in a daemon thread, waited for at most `timeout_s`; its exception re-raised.

    adbutils calls that take no timeout argument (sync stat/push, `adb devices`) are bounded
    this way; the thread itself ends when the client's socket timeout fires.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="mnas-adb-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise CallTimeout()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class PhoneTransport:
    """Bounded calls to one adbutils device; every failure is one line naming `label`."""

    def __init__(self, device: Any, label: str, timeout_s: float) -> None:
        self.device = device  # the adbutils device (tests swap its open_transport)
        self.label = label
        self.timeout_s = float(timeout_s)
        self.known_features: set[str] | None = None

    def bound(self, timeout_s: float | None) -> float:
        """`timeout_s`, or this transport's own timeout when None (every call has a bound)."""
        return self.timeout_s if timeout_s is None else float(timeout_s)

    def call(self, what: str, fn: Callable[[], T], timeout_s: float) -> T:
        """Run one adbutils call with a hard deadline; adb failures become AdbCallError."""
        try:
            return bounded(fn, timeout_s)
        except CallTimeout:
            raise AdbNoAnswer(f"{self.label}: {what} timed out after {timeout_s:.1f} s") from None
        except MnasError:
            raise
        except (AdbTimeout, TimeoutError):
            # the client's socket timeout fired first: the same silence as the bound above,
            # so the same verdict (a call error would be retried and cleaned up after)
            raise AdbNoAnswer(f"{self.label}: {what}: no answer from the phone within "
                              f"{timeout_s:.1f} s") from None
        except (AdbError, OSError, EOFError) as exc:
            detail = one_line(str(exc)) or (f"the connection closed without a reply "
                                             f"({type(exc).__name__}; phone disconnected?)")
            raise AdbCallError(f"{self.label}: {what} failed: {detail}") from None

    def features(self, timeout_s: float | None = None) -> set[str]:
        """The adb features the phone advertises (cached); `shell_v2` selects the protocol."""
        if self.known_features is None:
            timeout = self.bound(timeout_s)

            def fetch() -> str:
                with self.device.open_transport("features", timeout=timeout) as conn:
                    return conn.read_string_block()

            text = self.call("reading adb features", fetch, timeout)
            self.known_features = {f.strip() for f in text.split(",") if f.strip()}
        return self.known_features

    def shell(self, command: str, timeout_s: float | None = None) -> ShellResult:
        """Run `command` (already shell-quoted) and return its exit code and output.

        The whole call, however slowly the phone answers, ends by `timeout_s` (default: the
        transport's timeout) with ShellTimeout; a connection that ends before the exit status
        raises AdbCallError.
        """
        timeout = self.bound(timeout_s)
        deadline = time.monotonic() + timeout
        v2 = "shell_v2" in self.features(timeout)
        sent = command if v2 else f"{command}; echo {RC_MARKER}$?"
        what = f"`{one_line(command, 80)}`"
        try:
            conn = self.device.open_transport(timeout=timeout)
        except (AdbTimeout, TimeoutError):
            raise AdbNoAnswer(f"{self.label}: {what}: no answer from the adb server or phone "
                              f"within {timeout:.1f} s") from None
        except (AdbError, OSError) as exc:
            raise AdbCallError(f"{self.label}: {what}: cannot reach the phone: "
                               f"{one_line(str(exc))}") from None
        try:
            conn.send_command(("shell,v2:" if v2 else "shell:") + sent)
            conn.conn.settimeout(max(0.001, deadline - time.monotonic()))
            conn.check_okay()
            if v2:
                return self._read_v2(conn, command, deadline, what)
            return self._read_v1(conn, command, deadline, what)
        except ShellTimeout as exc:
            raise ShellTimeout(f"{self.label}: {what} timed out after {timeout:.1f} s",
                               exc.output) from None
        except (AdbTimeout, TimeoutError):
            raise AdbNoAnswer(f"{self.label}: {what}: no answer from the phone within "
                              f"{timeout:.1f} s") from None
        except (AdbError, OSError, EOFError) as exc:
            raise AdbCallError(f"{self.label}: {what} failed: {one_line(str(exc))}") from None
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def run(self, command: str, timeout_s: float | None = None) -> str:
        """`shell`, but a non-zero exit code is an AdbCallError; returns the output."""
        result = self.shell(command, timeout_s)
        if result.returncode != 0:
            raise AdbCallError(f"{self.label}: `{one_line(command, 80)}` exited with code "
                               f"{result.returncode}: {last_line(result.output)}", result.output)
        return result.output

    def _recv(self, conn: Any, deadline: float, partial: bytes, what: str) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ShellTimeout(f"{self.label}: {what} timed out", _decode(partial))
        sock = conn.conn
        sock.settimeout(remaining)
        try:
            return sock.recv(65536)
        except TimeoutError:
            raise ShellTimeout(f"{self.label}: {what} timed out", _decode(partial)) from None

    def _read_v2(self, conn: Any, command: str, deadline: float, what: str) -> ShellResult:
        buffer = b""
        stdout, stderr, merged = bytearray(), bytearray(), bytearray()
        while True:
            while len(buffer) >= 5:
                kind, length = buffer[0], int.from_bytes(buffer[1:5], "little")
                if len(buffer) < 5 + length:
                    break
                data, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if kind == 1:
                    stdout += data
                    merged += data
                elif kind == 2:
                    stderr += data
                    merged += data
                elif kind == 3:
                    rc = data[0] if data else 255
                    return ShellResult(command, rc, _decode(merged), _decode(stdout),
                                       _decode(stderr), "v2")
            chunk = self._recv(conn, deadline, bytes(merged), what)
            if not chunk:
                raise AdbCallError(f"{self.label}: {what}: connection closed before the exit "
                                   "status (phone disconnected or adbd died)", _decode(merged))
            buffer += chunk

    def _read_v1(self, conn: Any, command: str, deadline: float, what: str) -> ShellResult:
        data = bytearray()
        while True:
            chunk = self._recv(conn, deadline, bytes(data), what)
            if not chunk:
                break
            data += chunk
        text = _decode(data).replace("\r\n", "\n")
        index = text.rfind(RC_MARKER)
        tail = text[index + len(RC_MARKER):].strip() if index >= 0 else ""
        if index < 0 or not tail.isdigit():
            raise AdbCallError(f"{self.label}: {what}: output ended without the exit status "
                               "(phone disconnected or adbd died)", text)
        output = text[:index]
        return ShellResult(command, int(tail), output, output, "", "v1")
