"""Stand-ins for the arm64 `benchmark_model` binary: a valid ELF header, then filler.

Loopback phones never execute the pushed binary (they run the host runner), but mnas checks
that what it pushes looks like a phone executable (ELF, machine aarch64 or arm) before any
push, so a test binary needs a real header.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

EM_ARM, EM_X86_64, EM_AARCH64 = 40, 62, 183


def elf_header(machine: int = EM_AARCH64, bits: int = 64) -> bytes:
    """A little-endian ELF header (ET_DYN) for `machine`: 64 bytes (ELF64) or 52 (ELF32)."""
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1, 1, 0]) + bytes(8)
    head = ident + struct.pack("<HHI", 3, machine, 1)
    return head + bytes((64 if bits == 64 else 52) - len(head))


def arm64_binary(path: Path, size: int = 512) -> Path:
    """Write an aarch64 ELF header plus random filler (`size` bytes in all) at `path`."""
    header = elf_header()
    path.write_bytes(header + os.urandom(max(0, size - len(header))))
    return path
