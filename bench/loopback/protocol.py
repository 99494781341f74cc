"""The adb wire format spoken between the adb server (host) and adbd (the phone).

Only what a phone's adbd needs to answer a real `adb` server is here, with no I/O policy:
packet headers, the connect banner, service names, the sync sub-protocol's records and the
shell v2 frames. Keeping it pure (bytes in, bytes/objects out) lets the tests check every
encoding against hand-written byte strings, and lets the device side (`server.py`) stay
about streams and flow control only.

Facts this follows (adb's protocol.txt / SYNC.TXT, checked against adb 29 on this host):
- a packet is a 24-byte little-endian header `cmd, arg0, arg1, length, checksum, magic`
  with `magic = cmd ^ 0xFFFFFFFF`, then `length` payload bytes; the checksum is the byte
  sum, except that from protocol version 0x01000001 on it is sent as 0 and not verified;
- a stream is opened by OPEN(host_id, 0, "service\\0"), accepted by OKAY(device_id,
  host_id) or refused by CLSE(0, host_id); each WRTE is acknowledged by one OKAY and a side
  keeps only one WRTE in flight per stream; CLSE ends the stream;
- payloads in either direction are capped by min(host max_payload, device max_payload).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257

COMMAND_NAMES = {
    A_SYNC: "SYNC",
    A_CNXN: "CNXN",
    A_AUTH: "AUTH",
    A_OPEN: "OPEN",
    A_OKAY: "OKAY",
    A_CLSE: "CLSE",
    A_WRTE: "WRTE",
}

# Protocol versions: the first one, and the one from which checksums are neither computed
# nor verified (adb >= 28 / Android 9). The connection uses the lower of the two sides'.
VERSION_MIN = 0x01000000
VERSION_SKIP_CHECKSUM = 0x01000001
VERSION = VERSION_SKIP_CHECKSUM
# adbd's default since Android 9; adb hosts announce 1 MiB.
DEFAULT_MAX_PAYLOAD = 256 * 1024
# Smallest payload adb itself accepts as a connection's maximum.
MIN_MAX_PAYLOAD = 64

HEADER = struct.Struct("<6I")
HEADER_SIZE = HEADER.size  # 24

# AUTH packet types (arg0)
AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3


class ProtocolError(Exception):
    """Bytes that are not a valid adb packet; the connection cannot continue."""


def checksum(payload: bytes) -> int:
    """adb's payload checksum: the unsigned byte sum, modulo 2**32."""
    return sum(payload) & 0xFFFFFFFF


@dataclass(frozen=True)
class Packet:
    """One adb packet: a command, its two arguments and a payload."""

    command: int
    arg0: int
    arg1: int
    payload: bytes = b""

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"0x{self.command:08x}")

    def encode(self, with_checksum: bool = True) -> bytes:
        """Header + payload; peers at VERSION_SKIP_CHECKSUM or later send checksum 0."""
        return (
            HEADER.pack(
                self.command,
                self.arg0,
                self.arg1,
                len(self.payload),
                checksum(self.payload) if with_checksum else 0,
                self.command ^ 0xFFFFFFFF,
            )
            + self.payload
        )

    def __repr__(self) -> str:  # short: payloads can be megabytes
        return f"Packet({self.name}, {self.arg0}, {self.arg1}, {len(self.payload)} bytes)"


def decode_header(header: bytes, max_payload: int) -> tuple[int, int, int, int]:
    """Check a 24-byte header; return (command, arg0, arg1, payload length)."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"header is {len(header)} bytes, expected {HEADER_SIZE}")
    command, arg0, arg1, length, _checksum, magic = HEADER.unpack(header)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad magic 0x{magic:08x} for command 0x{command:08x}")
    if command not in COMMAND_NAMES:
        raise ProtocolError(f"unknown command 0x{command:08x}")
    if length > max_payload:
        raise ProtocolError(f"{COMMAND_NAMES[command]} payload of {length} bytes exceeds {max_payload}")
    return command, arg0, arg1, length


def device_banner(properties: Mapping[str, str], features: Iterable[str]) -> bytes:
    """The CNXN payload of a device: `device::ro.product.name=..;...;features=a,b`.

    adb splits the banner on ':' and ';' and each pair on '=', so those characters are
    replaced in values (a real phone never has them in these three properties).
    """
    parts = []
    for key in ("ro.product.name", "ro.product.model", "ro.product.device"):
        value = properties.get(key, "")
        for bad in (":", ";", "="):
            value = value.replace(bad, "_")
        parts.append(f"{key}={value}")
    parts.append("features=" + ",".join(features))
    return ("device::" + ";".join(parts)).encode()


def parse_banner(payload: bytes) -> tuple[str, dict[str, str]]:
    """Split a CNXN banner into its system type ("host", "device") and its key=value pairs."""
    text = payload.rstrip(b"\0").decode("utf-8", errors="replace")
    system, _, rest = text.partition(":")
    _serial, _, props = rest.partition(":")
    pairs: dict[str, str] = {}
    for item in props.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            pairs[key] = value
    return system, pairs


@dataclass(frozen=True)
class ShellService:
    """A parsed `shell[,v2][,args]:command` or `exec:command` service name."""

    v2: bool
    command: str
    args: tuple[str, ...] = ()
    raw: bool = False  # exec: never merges nor translates anything


def parse_service(name: str) -> ShellService | str:
    """Shell-like services become `ShellService`; every other service comes back unchanged."""
    if name.startswith("exec:"):
        return ShellService(v2=False, command=name[len("exec:") :], raw=True)
    if name.startswith("shell:") or name.startswith("shell,"):
        head, _, command = name.partition(":")
        args = tuple(a for a in head.split(",")[1:] if a)
        return ShellService(v2="v2" in args, command=command, args=args)
    return name


# ---------------------------------------------------------------- shell protocol v2


class ShellId(IntEnum):
    """Packet ids of adb's shell protocol (v2): `[id u8][length u32le][data]`."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2
    EXIT = 3
    CLOSE_STDIN = 4
    WINDOW_SIZE_CHANGE = 5


_SHELL_HEADER = struct.Struct("<BI")


def shell_frame(frame_id: int, data: bytes) -> bytes:
    return _SHELL_HEADER.pack(frame_id, len(data)) + data


class ShellFrameParser:
    """Incremental parser of shell v2 frames (the host may split a frame over WRTEs)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= _SHELL_HEADER.size:
            frame_id, length = _SHELL_HEADER.unpack_from(self._buffer)
            end = _SHELL_HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((frame_id, bytes(self._buffer[_SHELL_HEADER.size : end])))
            del self._buffer[:end]
        return frames


# ---------------------------------------------------------------- sync protocol (v1)

SYNC_DATA_MAX = 64 * 1024  # largest DATA chunk a sync peer sends
SYNC_PATH_MAX = 1024
_SYNC_REQUEST = struct.Struct("<4sI")
SYNC_REQUEST_SIZE = _SYNC_REQUEST.size  # 8


def sync_request(request_id: bytes, length: int) -> bytes:
    """A sync request/record header (`STAT`, `DATA`, `DONE`...): 4-byte id + u32 length."""
    return _SYNC_REQUEST.pack(request_id, length)


def parse_sync_request(header: bytes) -> tuple[bytes, int]:
    request_id, length = _SYNC_REQUEST.unpack(header)
    return request_id, length


def sync_stat(mode: int, size: int, mtime: int) -> bytes:
    """A STAT reply; a missing file is all zeros."""
    return struct.pack("<4sIII", b"STAT", mode, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF)


def sync_dent(mode: int, size: int, mtime: int, name: bytes) -> bytes:
    """One LIST entry."""
    return struct.pack("<4sIIII", b"DENT", mode, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF, len(name)) + name


SYNC_LIST_DONE = struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0)


def sync_data(chunk: bytes) -> bytes:
    return sync_request(b"DATA", len(chunk)) + chunk


SYNC_DONE = sync_request(b"DONE", 0)
SYNC_OKAY = sync_request(b"OKAY", 0)


def sync_fail(message: str) -> bytes:
    data = message.encode("utf-8", errors="replace")
    return sync_request(b"FAIL", len(data)) + data
