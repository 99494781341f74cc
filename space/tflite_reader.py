"""Check that bytes are a loadable `.tflite` flatbuffer before anything is timed.

Why this exists: a corrupt or truncated model is bad input, not a failed measurement. Pushed
to every phone it would fail there once per phone and retry; checked here once, when the
model is prepared, it is one clear error (exit 2) before any device is touched.

What is checked (the structure LiteRT's loader relies on, nothing about the ops' semantics):

* the file identifier "TFL3" at bytes 4..8 and a root `Model` table inside the file;
* the model's schema `version` is present and is 3 (`tflite_schema.SCHEMA_VERSION`, the
  only one the loader accepts);
* at least one subgraph, and the main (first) subgraph has tensors and operators;
* every table and vector the checks visit (operator codes, subgraphs, tensors, operators,
  buffers, shapes, tensor index lists) lies inside the file, and every buffer's data does
  too, including data stored after the flatbuffer (`Buffer.offset`/`size`, large models);
* indices point at something: a tensor's buffer index < the number of buffers, an
  operator's opcode index < the number of operator codes, tensor indices in [-1, tensors).

The reads go through the `flatbuffers` runtime's `Table` (vtable lookups) at the schema's
field slots, the same ones the generated `tflite` classes read (the tests hold the two
equal on real models); this module adds the bounds checks those accessors do not make, so
a corrupt offset is a reason, never an IndexError or a silently wrong number.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import flatbuffers

from mnas.errors import MnasError
from mnas.space.tflite_schema import FILE_IDENTIFIER, SCHEMA_VERSION

__all__ = ["ModelSummary", "TfliteFormatError", "check_model_bytes", "check_model_file"]


class TfliteFormatError(MnasError):
    """The bytes are not a loadable TFLite flatbuffer (the message says why)."""


@dataclass(frozen=True)
class ModelSummary:
    """What the check saw: enough to say what a model is in a log line or a test."""

    size: int
    version: int
    subgraphs: int
    tensors: int  # of the main subgraph
    operators: int  # of the main subgraph
    operator_codes: int
    buffers: int


# vtable slots of the schema's tables (field id i is at 4 + 2 * i)
_MODEL_VERSION, _MODEL_OPCODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 4, 6, 8, 12
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 4, 6, 8, 10
_TENSOR_SHAPE, _TENSOR_BUFFER = 4, 8
_OPERATOR_OPCODE, _OPERATOR_INPUTS, _OPERATOR_OUTPUTS = 4, 6, 8
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 4, 6, 8


class _Reader:
    """Bounds-checked access to one flatbuffer; every failure is a TfliteFormatError with a reason."""

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        self.buf = data
        self.size = len(data)

    def _get(self, fmt: str, pos: int, what: str) -> int:
        width = struct.calcsize(fmt)
        if pos < 0 or pos + width > self.size:
            raise TfliteFormatError(f"{what} at byte {pos} lies outside the file ({self.size} bytes)")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def table(self, pos: int, what: str) -> tuple[flatbuffers.table.Table, int]:
        """The table at `pos` and its inline size, once its vtable is known to lie in the file."""
        soffset = self._get("<i", pos, what)
        vtable = pos - soffset
        vtable_size = self._get("<H", vtable, f"{what}'s vtable")
        table_size = self._get("<H", vtable + 2, f"{what}'s vtable")
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > self.size:
            raise TfliteFormatError(f"{what}'s vtable at byte {vtable} is malformed (size {vtable_size})")
        if table_size < 4 or pos + table_size > self.size:
            raise TfliteFormatError(f"{what} at byte {pos} ({table_size} bytes) runs past the end of the file "
                                    f"({self.size} bytes)")
        return flatbuffers.table.Table(self.buf, pos), table_size

    def field(self, table: tuple[flatbuffers.table.Table, int], slot: int, width: int, what: str) -> int:
        """The offset of a field inside its table (0: absent), checked to lie inside the table."""
        tab, table_size = table
        offset = tab.Offset(slot)
        if offset and offset + width > table_size:
            raise TfliteFormatError(f"{what}: field offset {offset} lies outside its table ({table_size} bytes)")
        return offset

    def scalar(self, table: tuple[flatbuffers.table.Table, int], slot: int, fmt: str, what: str,
               default: int | None = 0) -> int | None:
        offset = self.field(table, slot, struct.calcsize(fmt), what)
        return self._get(fmt, table[0].Pos + offset, what) if offset else default

    def vector(self, table: tuple[flatbuffers.table.Table, int], slot: int, element: int, what: str) -> tuple[int, int]:
        """(start, length) of a vector field, checked to lie inside the file; (0, 0) when absent."""
        offset = self.field(table, slot, 4, what)
        if not offset:
            return 0, 0
        at = table[0].Pos + offset
        vector = at + self._get("<I", at, what)
        length = self._get("<I", vector, f"{what}'s length")
        start = vector + 4
        if start + length * element > self.size:
            raise TfliteFormatError(f"{what}: {length} entries from byte {start} run past the end of the file "
                                    f"({self.size} bytes)")
        return start, length

    def ints(self, table: tuple[flatbuffers.table.Table, int], slot: int, what: str) -> list[int]:
        start, length = self.vector(table, slot, 4, what)
        return list(struct.unpack_from(f"<{length}i", self.buf, start)) if length else []

    def tables(self, table: tuple[flatbuffers.table.Table, int], slot: int, what: str,
               ) -> list[tuple[flatbuffers.table.Table, int]]:
        start, length = self.vector(table, slot, 4, what)
        found = []
        for index in range(length):
            at = start + 4 * index
            found.append(self.table(at + self._get("<I", at, f"{what}[{index}]"), f"{what}[{index}]"))
        return found


def _check_indices(indices: list[int], limit: int, what: str) -> None:
    for index in indices:
        if not -1 <= index < limit:
            raise TfliteFormatError(f"{what} names tensor {index}; the subgraph has {limit} tensors")


def _check(data: bytes | bytearray | memoryview | mmap.mmap) -> ModelSummary:
    reader = _Reader(data)
    if reader.size < 8:
        raise TfliteFormatError(f"the file is {reader.size} bytes: too short for a flatbuffer")
    identifier = bytes(data[4:8])
    if identifier != FILE_IDENTIFIER:
        raise TfliteFormatError(f"file identifier {identifier!r} at bytes 4..8, expected {FILE_IDENTIFIER!r}")
    model = reader.table(reader._get("<I", 0, "root offset"), "the model root table")
    version = reader.scalar(model, _MODEL_VERSION, "<I", "the model's version", default=None)
    if version is None:
        raise TfliteFormatError("the model root table has no schema version")
    if version != SCHEMA_VERSION:
        raise TfliteFormatError(f"schema version {version}, expected {SCHEMA_VERSION}")
    opcodes = reader.tables(model, _MODEL_OPCODES, "operator_codes")
    buffers = reader.tables(model, _MODEL_BUFFERS, "buffers")
    for index, buffer in enumerate(buffers):
        reader.vector(buffer, _BUFFER_DATA, 1, f"buffers[{index}].data")
        offset = reader.scalar(buffer, _BUFFER_OFFSET, "<Q", f"buffers[{index}].offset") or 0
        size = reader.scalar(buffer, _BUFFER_SIZE, "<Q", f"buffers[{index}].size") or 0
        if offset > 1 and offset + size > reader.size:
            raise TfliteFormatError(f"buffers[{index}]: {size} bytes of data at byte {offset} run past the end "
                                    f"of the file ({reader.size} bytes)")
    subgraphs = reader.tables(model, _MODEL_SUBGRAPHS, "subgraphs")
    if not subgraphs:
        raise TfliteFormatError("the model has no subgraph")
    counts = []
    for number, subgraph in enumerate(subgraphs):
        where = f"subgraphs[{number}]"
        tensors = reader.tables(subgraph, _SUBGRAPH_TENSORS, f"{where}.tensors")
        operators = reader.tables(subgraph, _SUBGRAPH_OPERATORS, f"{where}.operators")
        counts.append((len(tensors), len(operators)))
        for index, tensor in enumerate(tensors):
            reader.vector(tensor, _TENSOR_SHAPE, 4, f"{where}.tensors[{index}].shape")
            buffer = reader.scalar(tensor, _TENSOR_BUFFER, "<I", f"{where}.tensors[{index}].buffer") or 0
            if buffer >= max(len(buffers), 1):
                raise TfliteFormatError(f"{where}.tensors[{index}] uses buffer {buffer}; the model has "
                                        f"{len(buffers)} buffers")
        for index, operator in enumerate(operators):
            what = f"{where}.operators[{index}]"
            opcode = reader.scalar(operator, _OPERATOR_OPCODE, "<I", f"{what}.opcode_index") or 0
            if opcode >= len(opcodes):
                raise TfliteFormatError(f"{what} uses operator code {opcode}; the model has {len(opcodes)}")
            _check_indices(reader.ints(operator, _OPERATOR_INPUTS, f"{what}.inputs"), len(tensors), f"{what}.inputs")
            _check_indices(reader.ints(operator, _OPERATOR_OUTPUTS, f"{what}.outputs"), len(tensors),
                           f"{what}.outputs")
        for slot, name in ((_SUBGRAPH_INPUTS, "inputs"), (_SUBGRAPH_OUTPUTS, "outputs")):
            _check_indices(reader.ints(subgraph, slot, f"{where}.{name}"), len(tensors), f"{where}.{name}")
    main_tensors, main_operators = counts[0]
    if not main_tensors or not main_operators:
        raise TfliteFormatError(f"the main subgraph has {main_tensors} tensors and {main_operators} operators: "
                                "nothing to run")
    return ModelSummary(size=reader.size, version=version, subgraphs=len(subgraphs), tensors=main_tensors,
                        operators=main_operators, operator_codes=len(opcodes), buffers=len(buffers))


def check_model_bytes(data: bytes | bytearray | memoryview | mmap.mmap) -> ModelSummary:
    """What the model holds, or TfliteFormatError saying why `data` is not a loadable `.tflite`."""
    try:
        return _check(data)
    except TfliteFormatError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, TypeError) as exc:  # a reader bug or exotic damage
        raise TfliteFormatError(f"unreadable flatbuffer ({type(exc).__name__}: {exc})") from None


def check_model_file(path: str | os.PathLike[str]) -> ModelSummary:
    """`check_model_bytes` of a file; MnasError naming the file when it cannot be read or is not a model."""
    target = Path(path)
    try:
        with target.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                data: bytes | mmap.mmap = handle.read()
                return _checked(target, data)
            # mapped, not read: a multi-gigabyte model is checked without holding it in memory
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _checked(target, mapped)
    except OSError as exc:
        raise MnasError(f"{target}: cannot read the model: {exc.strerror or exc}") from None


def _checked(target: Path, data: bytes | mmap.mmap) -> ModelSummary:
    try:
        return check_model_bytes(data)
    except TfliteFormatError as exc:
        raise TfliteFormatError(f"{target}: not a valid TFLite model: {exc}") from None
