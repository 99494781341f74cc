"""Tiny valid `.tflite` files for the host-device, runner and parser tests.

The project's own `.tflite` writer lives in `space/`; these fixtures are built independently,
directly with the `tflite` schema package's flatbuffer builders, so the benchmark tests do
not depend on (or test) that writer. Every model is float32, NHWC, file identifier "TFL3".
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import tflite

_FLOAT32 = tflite.TensorType.FLOAT32
_SAME = tflite.Padding.SAME
_NO_ACTIVATION = tflite.ActivationFunctionType.NONE


class _Graph:
    """Collects buffers, tensors and operators of one subgraph, then serialises them."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = [b""]  # buffer 0 is the conventional empty buffer
        self.tensors: list[tuple[str, list[int], int]] = []  # name, shape, buffer index
        self.operators: list[tuple[int, list[int], list[int], str, tuple[int, int]]] = []
        self.opcodes: list[int] = []

    def tensor(self, name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        buffer_index = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data, dtype=np.float32).tobytes())
            buffer_index = len(self.buffers) - 1
        self.tensors.append((name, shape, buffer_index))
        return len(self.tensors) - 1

    def op(self, builtin: int, inputs: list[int], outputs: list[int], stride: int = 1) -> None:
        if builtin not in self.opcodes:
            self.opcodes.append(builtin)
        kind = "conv" if builtin == tflite.BuiltinOperator.CONV_2D else "add"
        self.operators.append((self.opcodes.index(builtin), inputs, outputs, kind, (stride, stride)))

    def serialise(self, inputs: list[int], outputs: list[int]) -> bytes:
        b = flatbuffers.Builder(1024)

        def int_vector(start, values: list[int]) -> int:
            start(b, len(values))
            for value in reversed(values):
                b.PrependInt32(value)
            return b.EndVector()

        buffer_offsets = []
        for data in self.buffers:
            data_offset = b.CreateNumpyVector(np.frombuffer(data, dtype=np.uint8)) if data else None
            tflite.BufferStart(b)
            if data_offset is not None:
                tflite.BufferAddData(b, data_offset)
            buffer_offsets.append(tflite.BufferEnd(b))

        tensor_offsets = []
        for name, shape, buffer_index in self.tensors:
            name_offset = b.CreateString(name)
            shape_offset = int_vector(tflite.TensorStartShapeVector, shape)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape_offset)
            tflite.TensorAddType(b, _FLOAT32)
            tflite.TensorAddBuffer(b, buffer_index)
            tflite.TensorAddName(b, name_offset)
            tensor_offsets.append(tflite.TensorEnd(b))

        operator_offsets = []
        for opcode_index, op_inputs, op_outputs, kind, (stride_h, stride_w) in self.operators:
            in_offset = int_vector(tflite.OperatorStartInputsVector, op_inputs)
            out_offset = int_vector(tflite.OperatorStartOutputsVector, op_outputs)
            if kind == "conv":
                tflite.Conv2DOptionsStart(b)
                tflite.Conv2DOptionsAddPadding(b, _SAME)
                tflite.Conv2DOptionsAddStrideH(b, stride_h)
                tflite.Conv2DOptionsAddStrideW(b, stride_w)
                tflite.Conv2DOptionsAddDilationHFactor(b, 1)
                tflite.Conv2DOptionsAddDilationWFactor(b, 1)
                tflite.Conv2DOptionsAddFusedActivationFunction(b, _NO_ACTIVATION)
                options, options_type = tflite.Conv2DOptionsEnd(b), tflite.BuiltinOptions.Conv2DOptions
            else:
                tflite.AddOptionsStart(b)
                tflite.AddOptionsAddFusedActivationFunction(b, _NO_ACTIVATION)
                options, options_type = tflite.AddOptionsEnd(b), tflite.BuiltinOptions.AddOptions
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, opcode_index)
            tflite.OperatorAddInputs(b, in_offset)
            tflite.OperatorAddOutputs(b, out_offset)
            tflite.OperatorAddBuiltinOptionsType(b, options_type)
            tflite.OperatorAddBuiltinOptions(b, options)
            operator_offsets.append(tflite.OperatorEnd(b))

        def table_vector(start, offsets: list[int]) -> int:
            start(b, len(offsets))
            for offset in reversed(offsets):
                b.PrependUOffsetTRelative(offset)
            return b.EndVector()

        tensors_vec = table_vector(tflite.SubGraphStartTensorsVector, tensor_offsets)
        operators_vec = table_vector(tflite.SubGraphStartOperatorsVector, operator_offsets)
        inputs_vec = int_vector(tflite.SubGraphStartInputsVector, inputs)
        outputs_vec = int_vector(tflite.SubGraphStartOutputsVector, outputs)
        graph_name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_vec)
        tflite.SubGraphAddInputs(b, inputs_vec)
        tflite.SubGraphAddOutputs(b, outputs_vec)
        tflite.SubGraphAddOperators(b, operators_vec)
        tflite.SubGraphAddName(b, graph_name)
        subgraph = tflite.SubGraphEnd(b)

        opcode_offsets = []
        for builtin in self.opcodes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
            tflite.OperatorCodeAddBuiltinCode(b, builtin)
            tflite.OperatorCodeAddVersion(b, 1)
            opcode_offsets.append(tflite.OperatorCodeEnd(b))

        opcodes_vec = table_vector(tflite.ModelStartOperatorCodesVector, opcode_offsets)
        subgraphs_vec = table_vector(tflite.ModelStartSubgraphsVector, [subgraph])
        buffers_vec = table_vector(tflite.ModelStartBuffersVector, buffer_offsets)
        description = b.CreateString("mnas test fixture")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, opcodes_vec)
        tflite.ModelAddSubgraphs(b, subgraphs_vec)
        tflite.ModelAddDescription(b, description)
        tflite.ModelAddBuffers(b, buffers_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def conv_model_bytes(size: int = 16, channels: int = 8, layers: int = 1, kernel: int = 3) -> bytes:
    """`layers` chained CONV_2D ops (SAME, stride 1, bias) on a 1 x size x size x channels input."""
    rng = np.random.default_rng(1234)
    g = _Graph()
    shape = [1, size, size, channels]
    x = g.tensor("input", shape)
    first_input = x
    for i in range(layers):
        w = g.tensor(f"conv{i}/weights", [channels, kernel, kernel, channels],
                     rng.standard_normal((channels, kernel, kernel, channels)) * 0.1)
        bias = g.tensor(f"conv{i}/bias", [channels], np.zeros(channels))
        y = g.tensor(f"conv{i}/output", shape)
        g.op(tflite.BuiltinOperator.CONV_2D, [x, w, bias], [y])
        x = y
    return g.serialise([first_input], [x])


def add_model_bytes(shape: tuple[int, ...] = (1, 16, 16, 8)) -> bytes:
    """One ADD of two float32 inputs (two input tensors: exercises multi-input filling)."""
    g = _Graph()
    a = g.tensor("a", list(shape))
    b = g.tensor("b", list(shape))
    out = g.tensor("sum", list(shape))
    g.op(tflite.BuiltinOperator.ADD, [a, b], [out])
    return g.serialise([a, b], [out])


def write_model(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def small_conv(tmp: Path) -> Path:
    """One 3x3 CONV_2D, 8 -> 8 channels, on 1x16x16x8 (a few microseconds per invoke)."""
    return write_model(tmp / "small_conv.tflite", conv_model_bytes())


def big_conv(tmp: Path) -> Path:
    """Four 3x3 CONV_2D, 32 -> 32 channels, on 1x64x64x32 (~0.3 GFLOP: milliseconds per invoke)."""
    return write_model(tmp / "big_conv.tflite", conv_model_bytes(size=64, channels=32, layers=4))
