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

`read_graph` goes one step further for `mnas predict model.tflite`: once the structure check
has passed, it reads the main subgraph's operators (name, version, tensors, the options that
change what they compute) and tensors (shape, type, small int32 constants), so
`predictor/tflite_layers.py` can map a model written by any tool onto mnas layers.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import tflite

from mnas.errors import MnasError
from mnas.space.tflite_schema import FILE_IDENTIFIER, OP_NAMES, SCHEMA_VERSION, TYPE_NAMES

__all__ = ["OPTION_DEFAULTS", "ModelGraph", "ModelSummary", "OperatorInfo", "TensorInfo", "TfliteFormatError", "check_model_bytes",
           "check_model_file", "read_graph", "read_graph_file"]


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


# ------------------------------------------------------------------------- the graph, read

# What `read_graph` returns: enough of the main subgraph to map its ops onto layers (which op,
# which tensors, their shapes and types, the options that change what an op computes). It is read
# only after `check_model_bytes` has passed, so the generated `tflite` classes (which check no
# bounds) only walk tables known to lie inside the file; option tables are not covered by that
# check, so a failure there is still turned into a TfliteFormatError.

_ACTIVATION_NAMES = {code: name for name, code in vars(tflite.ActivationFunctionType).items() if isinstance(code, int)}
_PADDING_NAMES = {code: name for name, code in vars(tflite.Padding).items() if isinstance(code, int)}
_SMALL_CONSTANT = 16  # int32 constants up to this many values are read (axes, shapes, paddings)

# builtin op -> (options class, {our key: getter name}); activation and padding become names
_OPTION_FIELDS: dict[str, tuple[type, dict[str, str]]] = {
    "CONV_2D": (tflite.Conv2DOptions, {"padding": "Padding", "stride_h": "StrideH", "stride_w": "StrideW",
                                       "dilation_h": "DilationHFactor", "dilation_w": "DilationWFactor",
                                       "act": "FusedActivationFunction"}),
    "DEPTHWISE_CONV_2D": (tflite.DepthwiseConv2DOptions, {
        "padding": "Padding", "stride_h": "StrideH", "stride_w": "StrideW", "depth_multiplier": "DepthMultiplier",
        "dilation_h": "DilationHFactor", "dilation_w": "DilationWFactor", "act": "FusedActivationFunction"}),
    "AVERAGE_POOL_2D": (tflite.Pool2DOptions, {"padding": "Padding", "stride_h": "StrideH", "stride_w": "StrideW",
                                               "filter_h": "FilterHeight", "filter_w": "FilterWidth",
                                               "act": "FusedActivationFunction"}),
    "MAX_POOL_2D": (tflite.Pool2DOptions, {"padding": "Padding", "stride_h": "StrideH", "stride_w": "StrideW",
                                           "filter_h": "FilterHeight", "filter_w": "FilterWidth",
                                           "act": "FusedActivationFunction"}),
    "ADD": (tflite.AddOptions, {"act": "FusedActivationFunction"}),
    "MUL": (tflite.MulOptions, {"act": "FusedActivationFunction"}),
    "FULLY_CONNECTED": (tflite.FullyConnectedOptions, {"act": "FusedActivationFunction"}),
    "CONCATENATION": (tflite.ConcatenationOptions, {"axis": "Axis", "act": "FusedActivationFunction"}),
    "MEAN": (tflite.ReducerOptions, {"keep_dims": "KeepDims"}),
}
# the schema's defaults, for an op whose options table is absent (and for graphs built by hand)
OPTION_DEFAULTS = {"padding": "SAME", "stride_h": 1, "stride_w": 1, "dilation_h": 1, "dilation_w": 1,
                    "depth_multiplier": 1, "filter_h": 1, "filter_w": 1, "act": "NONE", "axis": 0,
                    "keep_dims": False}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph: name, shape, element type name ("FLOAT32", "INT8", ...),
    whether a buffer holds its data (a weight or constant), and the values of a small int32
    constant (MEAN axes, a RESHAPE shape; None otherwise)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    constant: bool
    values: tuple[int, ...] | None = None


@dataclass(frozen=True)
class OperatorInfo:
    """One operator, in execution order: its builtin name ("CUSTOM:<code>" for a custom op),
    operator version, tensor indices (-1 = an absent optional input) and the options that shape
    what it computes (`padding` "SAME"/"VALID", `act` "NONE"/"RELU"/"RELU6"/..., strides,
    dilations, filter sizes, depth multiplier, keep_dims, axis; absent for other ops)."""

    index: int
    op: str
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, int | str | bool]


@dataclass(frozen=True)
class ModelGraph:
    """The main (first) subgraph of a model, plus the model's description and subgraph count."""

    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    description: str


def _options(operator: tflite.Operator, name: str) -> dict[str, int | str | bool]:
    spec = _OPTION_FIELDS.get(name)
    if spec is None:
        return {}
    cls, fields = spec
    table = operator.BuiltinOptions()
    if table is None:
        values: dict[str, int | str | bool] = {key: OPTION_DEFAULTS[key] for key in fields}
        return values
    options = cls()
    options.Init(table.Bytes, table.Pos)
    values = {key: getattr(options, getter)() for key, getter in fields.items()}
    if "act" in values:
        values["act"] = _ACTIVATION_NAMES.get(int(values["act"]), str(values["act"]))
    if "padding" in values:
        values["padding"] = _PADDING_NAMES.get(int(values["padding"]), str(values["padding"]))
    if "keep_dims" in values:
        values["keep_dims"] = bool(values["keep_dims"])
    return values


def _tensor(model: tflite.Model, subgraph: tflite.SubGraph, index: int) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    buffer = model.Buffers(tensor.Buffer()) if tensor.Buffer() else None
    stored = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
    dtype = TYPE_NAMES.get(tensor.Type(), str(tensor.Type()))
    values = None
    if buffer is not None and dtype == "INT32" and 0 < buffer.DataLength() <= 4 * _SMALL_CONSTANT:
        raw = bytes(buffer.DataAsNumpy().tobytes())
        values = struct.unpack_from(f"<{len(raw) // 4}i", raw)
    name = tensor.Name()
    return TensorInfo(name.decode("utf-8", "replace") if name else "", shape, dtype, stored, values)


def _read_graph(data: bytes | bytearray | memoryview | mmap.mmap) -> ModelGraph:
    summary = check_model_bytes(data)
    model = tflite.Model.GetRootAsModel(data, 0)
    subgraph = model.Subgraphs(0)
    tensors = tuple(_tensor(model, subgraph, i) for i in range(subgraph.TensorsLength()))
    operators = []
    for index in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.CustomCode()
            name = f"CUSTOM:{custom.decode('utf-8', 'replace') if custom else '?'}"
        inputs = tuple(int(i) for i in operator.InputsAsNumpy()) if operator.InputsLength() else ()
        outputs = tuple(int(i) for i in operator.OutputsAsNumpy()) if operator.OutputsLength() else ()
        operators.append(OperatorInfo(index, name, code.Version(), inputs, outputs, _options(operator, name)))
    description = model.Description()
    return ModelGraph(
        tensors=tensors, operators=tuple(operators),
        inputs=tuple(int(i) for i in subgraph.InputsAsNumpy()) if subgraph.InputsLength() else (),
        outputs=tuple(int(i) for i in subgraph.OutputsAsNumpy()) if subgraph.OutputsLength() else (),
        subgraphs=summary.subgraphs, description=description.decode("utf-8", "replace") if description else "")


def read_graph(data: bytes | bytearray | memoryview | mmap.mmap) -> ModelGraph:
    """The main subgraph of a `.tflite` (checked first), or TfliteFormatError saying why it is not one."""
    try:
        return _read_graph(data)
    except TfliteFormatError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, TypeError, AttributeError) as exc:
        raise TfliteFormatError(f"unreadable flatbuffer ({type(exc).__name__}: {exc})") from None


def read_graph_file(path: str | os.PathLike[str]) -> ModelGraph:
    """`read_graph` of a file; MnasError naming the file when it cannot be read or is not a model."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise MnasError(f"{target}: cannot read the model: {exc.strerror or exc}") from None
    try:
        return read_graph(data)
    except TfliteFormatError as exc:
        raise TfliteFormatError(f"{target}: not a valid TFLite model: {exc}") from None
