"""Faults a loopback phone can be told to show, and the control file that switches them live.

Every failure a real phone shows during long measurement campaigns has a switch here, so
the adb device code, the harness and the CLI can be tested against it through the real adb
server: a phone that dies during a push or a shell, hangs with its socket open, never
authorizes, has a slow link, runs hot or throttled, prints a benchmark output cut short
(exit 0: the case a parser must catch), or lacks the shell v2 protocol.

A fault is written `NAME` or `NAME=VALUE`. A device starts with the faults given on its
command line; it writes them to its control file at start and from then on the control
file rules (one fault per line, `#` comments, empty = healthy). The file is re-read
whenever its size, inode or mtime changes, on every packet the device handles, so a
test can rewrite it (atomically, see `write_control_file`) and the very next adb command
sees the new state. Faults read at handshake time (`refuse_auth`, `slow_link`,
`no_shell_v2`) apply to the next connection: reconnect (`adb disconnect` + `adb connect`)
after switching them.

`slow_link` shrinks every packet, which is what makes a link slow for adb (one packet in
flight per stream). No real adbd announces less than 4096 bytes, and adb 29's server
assumes it: it aborts (`Check failed: p->msg.data_length <= s->get_max_payload()`) when a
client opens a service, e.g. a shell command, longer than the announced payload. The
default (256) suits protocol tests that send short commands only; for `mnas bench`, whose
shell commands run to ~300 bytes, use `slow_link=1024` (a 4 MB push then takes ~7x longer).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from mnas.errors import MnasError

FaultValue = int | float | None


@dataclass(frozen=True)
class FaultSpec:
    """One kind of fault: its parameter (if any), default and meaning."""

    name: str
    help: str
    kind: type | None = None  # int, float, or None for a plain switch
    default: FaultValue = None
    minimum: float | None = None
    maximum: float | None = None


FAULTS: Mapping[str, FaultSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            FaultSpec("die_mid_push", "close the connection after BYTES bytes of a push", int, 65536, 0),
            FaultSpec("die_mid_shell", "close the connection right after a shell's first output"),
            FaultSpec("hang", "stop answering anything; the connection stays open"),
            FaultSpec("refuse_auth", "answer the host's CNXN with AUTH and never accept a key"),
            FaultSpec("slow_link", "announce a max payload of BYTES bytes (next connection); keep BYTES above the "
                      "longest shell command sent: adb 29's server aborts on a longer one", int, 256, 64, 1 << 20),
            FaultSpec("overheat", "every thermal zone reads TEMP_C degrees", float, 95.0, -40.0, 200.0),
            FaultSpec("throttle", "scaling_cur_freq and scaling_max_freq read RATIO x cpuinfo_max_freq", float, 0.3, 0.01, 1.0),
            FaultSpec("truncated_output", "benchmark_model output stops before its final timings; exit 0"),
            FaultSpec("no_shell_v2", "do not advertise (nor serve) shell v2: clients fall back to v1"),
        )
    }
)


def parse_fault(text: str, where: str = "fault") -> tuple[str, FaultValue]:
    """`NAME` or `NAME=VALUE` -> (name, value); the error names the text and what is valid."""
    name, sep, raw = text.strip().partition("=")
    name = name.strip().replace("-", "_")
    spec = FAULTS.get(name)
    if spec is None:
        raise MnasError(f"{where} {text.strip()!r}: unknown fault; expected one of {', '.join(FAULTS)}")
    if spec.kind is None:
        if sep:
            raise MnasError(f"{where} {text.strip()!r}: fault {name!r} takes no value")
        return name, None
    if not sep:
        return name, spec.default
    try:
        value: int | float = spec.kind(raw.strip())
    except ValueError:
        raise MnasError(
            f"{where} {text.strip()!r}: value {raw.strip()!r} is not a{'n integer' if spec.kind is int else ' number'}"
        ) from None
    if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
        bounds = f"{spec.minimum:g}..{spec.maximum:g}" if spec.maximum is not None else f">= {spec.minimum:g}"
        raise MnasError(f"{where} {text.strip()!r}: value {value:g} out of range; expected {bounds}")
    return name, value


@dataclass(frozen=True)
class FaultSet:
    """The faults in force: name -> value (None for plain switches)."""

    active: Mapping[str, FaultValue]

    @classmethod
    def parse(cls, specs: Iterable[str], where: str = "fault") -> FaultSet:
        return cls(MappingProxyType(dict(parse_fault(s, where) for s in specs if s.strip())))

    @classmethod
    def none(cls) -> FaultSet:
        return cls(MappingProxyType({}))

    def __contains__(self, name: object) -> bool:
        return name in self.active

    def value(self, name: str) -> FaultValue:
        return self.active[name]

    def specs(self) -> list[str]:
        """Back to `NAME[=VALUE]` texts (the control file's lines)."""
        return [name if value is None else f"{name}={value:g}" for name, value in self.active.items()]


def write_control_file(path: Path, specs: Iterable[str]) -> None:
    """Replace a device's control file atomically (validating every line first)."""
    lines = FaultSet.parse(specs, where=f"{path}:").specs()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".faults-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_control_file(path: Path) -> FaultSet:
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            parse_fault(text, where=f"{path}:{number}:")
            lines.append(text)
    return FaultSet.parse(lines, where=f"{path}:")


class FaultControl:
    """The live fault state of one device, backed by its control file.

    `current()` is cheap (one `stat`) and is called on every packet, so a rewrite of the
    file takes effect at the next packet. A file that does not parse is reported on
    stderr once and the previous state is kept: a typo must not crash the device.
    """

    def __init__(self, path: Path, initial: FaultSet) -> None:
        self.path = path
        write_control_file(path, initial.specs())
        self._state = initial
        self._signature = self._stat()
        self._bad_signature: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> FaultSet:
        signature = self._stat()
        if signature == self._signature:
            return self._state
        if signature is None:
            self._state, self._signature = FaultSet.none(), None
            return self._state
        try:
            state = read_control_file(self.path)
        except (MnasError, OSError) as exc:
            if signature != self._bad_signature:
                print(f"loopback: ignoring control file: {exc}", file=sys.stderr, flush=True)
                self._bad_signature = signature
            return self._state
        self._state, self._signature = state, signature
        return state
