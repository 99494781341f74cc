"""Encode a graph as a TFLite flatbuffer (schema version 3, file identifier "TFL3").

Why this exists: no library writes `.tflite` without TensorFlow. The TF converter needs the
whole TF stack and spends ~10 s per MnasNet-sized model, while an architecture search exports
thousands of models to time them. The `tflite` package ships only the schema's generated
flatbuffer code, so this module drives those generated builders directly. It knows the TFLite
schema and nothing of MnasNet: `tflite_graph` decides which ops to emit.

Speed: weights go into the builder as raw bytes (one `Buffer` per weight, 16-byte aligned as
the schema's `force_align: 16` asks), copied once from contiguous numpy arrays; the builder is
sized up front so it never regrows. Per-op cost is a handful of small tables.

Only the ops MnasNet needs are supported: CONV_2D, DEPTHWISE_CONV_2D, AVERAGE_POOL_2D, ADD,
MUL, MEAN, LOGISTIC, FULLY_CONNECTED, plus QUANTIZE and DEQUANTIZE at the edges of an int8
model. A float op is written at operator version 1 (the float kernels every LiteRT release
registers); an int8 op carries the version TFLite's converter gives it (`quantize` sets
`OpSpec.version`), and each (operator, version) pair gets its own OperatorCode, as the
converter writes them. A tensor may carry `Quant` parameters (scale, zero point, quantized
dimension): the schema's QuantizationParameters table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16

FLOAT32 = tflite.TensorType.FLOAT32
INT32 = tflite.TensorType.INT32
INT8 = tflite.TensorType.INT8
_NUMPY_TYPES = {np.dtype(np.float32): FLOAT32, np.dtype(np.int32): INT32, np.dtype(np.int8): INT8}
TYPE_NAMES: dict[int, str] = {code: name for name, code in vars(tflite.TensorType).items() if isinstance(code, int)}

Op = tflite.BuiltinOperator
Act = tflite.ActivationFunctionType

# builtin code -> operator version written in the OperatorCode table
OP_VERSIONS: dict[int, int] = {
    Op.CONV_2D: 1,
    Op.DEPTHWISE_CONV_2D: 1,
    Op.AVERAGE_POOL_2D: 1,
    Op.ADD: 1,
    Op.MUL: 1,
    Op.MEAN: 1,
    Op.LOGISTIC: 1,
    Op.FULLY_CONNECTED: 1,
    Op.QUANTIZE: 1,
    Op.DEQUANTIZE: 1,
}
OP_NAMES: dict[int, str] = {code: name for name, code in vars(Op).items() if isinstance(code, int)}
_DEPRECATED_CODE_LIMIT = 127  # deprecated_builtin_code is an int8; codes >= 127 store 127 there


@dataclass(frozen=True)
class Quant:
    """Affine quantization of a tensor: real = (q - zero_point) x scale.

    One (scale, zero point) pair per tensor, or one per slice along `dim` (per-axis).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    dim: int = 0


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: name, static shape, element type, buffer index (0 = no data), quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: int = FLOAT32
    buffer: int = 0
    quant: Quant | None = None


@dataclass(frozen=True)
class OpSpec:
    """One operator and the option values it uses (the rest are schema defaults)."""

    code: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    stride: int = 1
    filter: int = 1  # AVERAGE_POOL_2D window
    act: int = Act.NONE
    keep_dims: bool = False  # MEAN
    version: int = 0  # operator version; 0 = OP_VERSIONS[code] (the float kernel's)


@dataclass
class Graph:
    """A single-subgraph model under construction: tensors, constant buffers and ops in order."""

    description: str = ""
    tensors: list[TensorSpec] = field(default_factory=list)
    buffers: list[np.ndarray | None] = field(default_factory=lambda: [None])  # 0: empty sentinel
    ops: list[OpSpec] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def activation(self, name: str, shape: tuple[int, ...], dtype: int = FLOAT32, quant: Quant | None = None) -> int:
        """A tensor computed at run time (float32 unless told); returns its index."""
        self.tensors.append(TensorSpec(name, shape, dtype, 0, quant))
        return len(self.tensors) - 1

    def constant(self, name: str, data: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor holding `data` (float32, int32 or int8, copied as-is); returns its index."""
        dtype = _NUMPY_TYPES.get(data.dtype)
        if dtype is None:
            raise TypeError(f"constant {name!r}: dtype {data.dtype} is not float32, int32 or int8")
        self.buffers.append(np.ascontiguousarray(data))
        self.tensors.append(TensorSpec(name, tuple(int(d) for d in data.shape), dtype, len(self.buffers) - 1, quant))
        return len(self.tensors) - 1

    def op(self, code: int, inputs: tuple[int, ...], outputs: tuple[int, ...], **options: int | bool) -> None:
        if code not in OP_VERSIONS:
            raise ValueError(f"builtin operator {code} is not supported by this writer")
        self.ops.append(OpSpec(code, inputs, outputs, **options))  # type: ignore[arg-type]

    @property
    def weight_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers if b is not None)


def int_vector(b: flatbuffers.Builder, values: tuple[int, ...] | list[int]) -> int:
    """An [int32] vector (shapes, tensor indices). Public: the foreign-model test fixture builds with it too."""
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependInt32(value)
    return b.EndVector()


def offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    """A vector of tables (tensors, operators, buffers, ...), given their offsets in order."""
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _quantization(b: flatbuffers.Builder, quant: Quant) -> int:
    """A QuantizationParameters table: float scales, int64 zero points, quantized dimension."""
    b.StartVector(4, len(quant.scale), 4)
    for value in reversed(quant.scale):
        b.PrependFloat32(value)
    scale = b.EndVector()
    b.StartVector(8, len(quant.zero_point), 8)
    for value in reversed(quant.zero_point):
        b.PrependInt64(value)
    zero_point = b.EndVector()
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(b, quant.dim)
    return tflite.QuantizationParametersEnd(b)


def data_vector(b: flatbuffers.Builder, data: np.ndarray | bytes) -> int:
    """A [ubyte] vector holding the array's (or bytes') bytes, aligned to BUFFER_ALIGNMENT, one copy."""
    raw = memoryview(data).cast("B")
    size = raw.nbytes
    b.StartVector(1, size, BUFFER_ALIGNMENT)
    b.head -= size
    b.Bytes[b.head:b.head + size] = raw
    b.vectorNumElems = size
    return b.EndVector()


def buffer_tables(b: flatbuffers.Builder, data_offsets: list[int | None]) -> list[int]:
    """One Buffer table per data vector (None: the empty buffer), in order."""
    offsets = []
    for data_offset in data_offsets:
        tflite.BufferStart(b)
        if data_offset is not None:
            tflite.BufferAddData(b, data_offset)
        offsets.append(tflite.BufferEnd(b))
    return offsets


def tensor_table(b: flatbuffers.Builder, name: str, shape: tuple[int, ...] | list[int], dtype: int, buffer: int,
                 quant: Quant | None = None) -> int:
    """One Tensor table: its name, static shape, element type, buffer index and quantization."""
    name_offset = b.CreateString(name)
    shape_offset = int_vector(b, shape)
    quantization = _quantization(b, quant) if quant is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape_offset)
    tflite.TensorAddType(b, dtype)
    tflite.TensorAddBuffer(b, buffer)
    tflite.TensorAddName(b, name_offset)
    if quantization is not None:
        tflite.TensorAddQuantization(b, quantization)
    return tflite.TensorEnd(b)


def operator_table(b: flatbuffers.Builder, code_index: int, inputs: int, outputs: int, options_type: int,
                   options: int) -> int:
    """One Operator table from its (already written) input/output vectors and options table."""
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, code_index)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options_type != tflite.BuiltinOptions.NONE:
        tflite.OperatorAddBuiltinOptionsType(b, options_type)
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)


def operator_code_table(b: flatbuffers.Builder, code: int, version: int) -> int:
    """One OperatorCode table: the builtin code in both fields (the deprecated int8 one capped), its version."""
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, _DEPRECATED_CODE_LIMIT))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, version)
    return tflite.OperatorCodeEnd(b)


def subgraph_table(b: flatbuffers.Builder, tensors: int, inputs: int, outputs: int, operators: int,
                   name: str = "main") -> int:
    """One SubGraph table from its (already written) tensor, input, output and operator vectors."""
    name_offset = b.CreateString(name)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddOperators(b, operators)
    tflite.SubGraphAddName(b, name_offset)
    return tflite.SubGraphEnd(b)


def finish_model(b: flatbuffers.Builder, operator_codes: int, subgraphs: int, buffers: int, description: str,
                 metadata: int | None = None) -> None:
    """Write the root Model table (schema version 3) and finish the file with its identifier "TFL3"."""
    description_offset = b.CreateString(description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, operator_codes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddDescription(b, description_offset)
    tflite.ModelAddBuffers(b, buffers)
    if metadata is not None:
        tflite.ModelAddMetadata(b, metadata)
    b.Finish(tflite.ModelEnd(b), file_identifier=FILE_IDENTIFIER)


def conv2d_options(b: flatbuffers.Builder, stride: int, act: int, padding: int = tflite.Padding.SAME,
                   dilation: int = 1) -> tuple[int, int]:
    """(BuiltinOptions type, offset) of a CONV_2D: square stride and dilation."""
    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, padding)
    tflite.Conv2DOptionsAddStrideW(b, stride)
    tflite.Conv2DOptionsAddStrideH(b, stride)
    tflite.Conv2DOptionsAddFusedActivationFunction(b, act)
    tflite.Conv2DOptionsAddDilationWFactor(b, dilation)
    tflite.Conv2DOptionsAddDilationHFactor(b, dilation)
    return tflite.BuiltinOptions.Conv2DOptions, tflite.Conv2DOptionsEnd(b)


def depthwise_conv2d_options(b: flatbuffers.Builder, stride: int, act: int,
                             padding: int = tflite.Padding.SAME) -> tuple[int, int]:
    """(BuiltinOptions type, offset) of a DEPTHWISE_CONV_2D: square stride, multiplier 1, no dilation."""
    tflite.DepthwiseConv2DOptionsStart(b)
    tflite.DepthwiseConv2DOptionsAddPadding(b, padding)
    tflite.DepthwiseConv2DOptionsAddStrideW(b, stride)
    tflite.DepthwiseConv2DOptionsAddStrideH(b, stride)
    tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
    tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
    tflite.DepthwiseConv2DOptionsAddDilationWFactor(b, 1)
    tflite.DepthwiseConv2DOptionsAddDilationHFactor(b, 1)
    return tflite.BuiltinOptions.DepthwiseConv2DOptions, tflite.DepthwiseConv2DOptionsEnd(b)


def builtin_options(b: flatbuffers.Builder, op: OpSpec) -> tuple[int, int]:
    """(BuiltinOptions type, table offset) of one operator; (NONE, 0) when it has none."""
    code = op.code
    if code == Op.CONV_2D:
        return conv2d_options(b, op.stride, op.act)
    if code == Op.DEPTHWISE_CONV_2D:
        return depthwise_conv2d_options(b, op.stride, op.act)
    if code == Op.AVERAGE_POOL_2D:
        tflite.Pool2DOptionsStart(b)
        tflite.Pool2DOptionsAddPadding(b, tflite.Padding.SAME)
        tflite.Pool2DOptionsAddStrideW(b, op.stride)
        tflite.Pool2DOptionsAddStrideH(b, op.stride)
        tflite.Pool2DOptionsAddFilterWidth(b, op.filter)
        tflite.Pool2DOptionsAddFilterHeight(b, op.filter)
        tflite.Pool2DOptionsAddFusedActivationFunction(b, op.act)
        return tflite.BuiltinOptions.Pool2DOptions, tflite.Pool2DOptionsEnd(b)
    if code == Op.ADD:
        tflite.AddOptionsStart(b)
        tflite.AddOptionsAddFusedActivationFunction(b, op.act)
        return tflite.BuiltinOptions.AddOptions, tflite.AddOptionsEnd(b)
    if code == Op.MUL:
        tflite.MulOptionsStart(b)
        tflite.MulOptionsAddFusedActivationFunction(b, op.act)
        return tflite.BuiltinOptions.MulOptions, tflite.MulOptionsEnd(b)
    if code == Op.MEAN:
        tflite.ReducerOptionsStart(b)
        tflite.ReducerOptionsAddKeepDims(b, op.keep_dims)
        return tflite.BuiltinOptions.ReducerOptions, tflite.ReducerOptionsEnd(b)
    if code == Op.FULLY_CONNECTED:
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, op.act)
        return tflite.BuiltinOptions.FullyConnectedOptions, tflite.FullyConnectedOptionsEnd(b)
    return tflite.BuiltinOptions.NONE, 0  # LOGISTIC, QUANTIZE, DEQUANTIZE


def encode(graph: Graph) -> bytes:
    """Serialise `graph` into `.tflite` bytes (deterministic for equal graphs)."""
    return bytes(encode_view(graph))


def encode_view(graph: Graph) -> memoryview:
    """As `encode`, but a view of the builder's buffer: no copy of the (weight-sized) result."""
    quant_values = sum(len(t.quant.scale) for t in graph.tensors if t.quant is not None)
    overhead = 4096 + 200 * len(graph.tensors) + 200 * len(graph.ops) + len(graph.description) + 12 * quant_values
    b = flatbuffers.Builder(graph.weight_bytes + BUFFER_ALIGNMENT * len(graph.buffers) + overhead)

    # Buffers: the data vectors first (the bulk of the file), then their tables.
    data_offsets = [None if data is None else data_vector(b, data) for data in graph.buffers]
    buffer_offsets = buffer_tables(b, data_offsets)
    tensor_offsets = [tensor_table(b, t.name, t.shape, t.dtype, t.buffer, t.quant) for t in graph.tensors]

    codes: list[tuple[int, int]] = []  # (builtin code, version), in first-use order
    code_index: dict[tuple[int, int], int] = {}
    operator_offsets = []
    for op in graph.ops:
        key = (op.code, op.version or OP_VERSIONS[op.code])
        if key not in code_index:
            code_index[key] = len(codes)
            codes.append(key)
        inputs = int_vector(b, op.inputs)
        outputs = int_vector(b, op.outputs)
        options_type, options = builtin_options(b, op)
        operator_offsets.append(operator_table(b, code_index[key], inputs, outputs, options_type, options))
    code_offsets = [operator_code_table(b, code, version) for code, version in codes]

    tensors = offset_vector(b, tensor_offsets)
    inputs = int_vector(b, graph.inputs)
    outputs = int_vector(b, graph.outputs)
    operators = offset_vector(b, operator_offsets)
    subgraph = subgraph_table(b, tensors, inputs, outputs, operators)

    subgraphs = offset_vector(b, [subgraph])
    operator_codes = offset_vector(b, code_offsets)
    buffers = offset_vector(b, buffer_offsets)
    finish_model(b, operator_codes, subgraphs, buffers, graph.description)
    return memoryview(b.Bytes)[b.Head():]


def op_names(model_bytes: bytes) -> list[str]:
    """Builtin operator names of the first subgraph, in execution order (for checks and tests)."""
    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    subgraph = model.Subgraphs(0)
    names = []
    for i in range(subgraph.OperatorsLength()):
        code = model.OperatorCodes(subgraph.Operators(i).OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        names.append(OP_NAMES.get(builtin, str(builtin)))
    return names


def _tensor_signature(model: tflite.Model, subgraph: tflite.SubGraph, index: int) -> dict[str, object]:
    tensor = subgraph.Tensors(index)
    quant = tensor.Quantization()
    scales = 0 if quant is None else quant.ScaleLength()
    if scales == 0:
        granularity = "none"
    elif scales == 1:
        granularity = "per_tensor"
    else:
        granularity = f"per_axis:{quant.QuantizedDimension()}"
    constant = tensor.Buffer() != 0 and model.Buffers(tensor.Buffer()).DataLength() > 0
    return {"type": TYPE_NAMES.get(tensor.Type(), str(tensor.Type())), "quant": granularity, "const": constant}


def op_signatures(model_bytes: bytes) -> list[dict[str, object]]:
    """Per operator of the first subgraph, in order: name, version and, per input and output
    tensor, its type, quantization granularity ("none", "per_tensor", "per_axis:D") and whether
    it is a constant. What a structural comparison with a converter's output looks at."""
    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    subgraph = model.Subgraphs(0)
    out = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        out.append({"op": OP_NAMES.get(builtin, str(builtin)), "version": code.Version(),
                    "inputs": [_tensor_signature(model, subgraph, op.Inputs(j)) for j in range(op.InputsLength())],
                    "outputs": [_tensor_signature(model, subgraph, op.Outputs(j)) for j in range(op.OutputsLength())]})
    return out
