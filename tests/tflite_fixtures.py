"""Tiny valid `.tflite` files for the host-device, runner and parser tests.

The project's own `.tflite` writer lives in `space/`; these fixtures are built independently of
it (not through `Graph`/`encode`), so the benchmark tests do not depend on (or test) what that
writer emits; they share only its one-table helpers (`tensor_table`, `operator_table`, ...).
Every model is float32, NHWC, file identifier "TFL3".
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import tflite

from mnas.space import tflite_schema as schema

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
        buffer_offsets = []  # each data vector just before its table (not all data first, as the writer does)
        for data in self.buffers:
            data_offset = b.CreateNumpyVector(np.frombuffer(data, dtype=np.uint8)) if data else None
            buffer_offsets += schema.buffer_tables(b, [data_offset])
        tensor_offsets = [schema.tensor_table(b, name, shape, _FLOAT32, buffer_index)
                          for name, shape, buffer_index in self.tensors]

        operator_offsets = []
        for opcode_index, op_inputs, op_outputs, kind, (stride_h, stride_w) in self.operators:
            in_offset, out_offset = schema.int_vector(b, op_inputs), schema.int_vector(b, op_outputs)
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
            operator = schema.operator_table(b, opcode_index, in_offset, out_offset, options_type, options)
            operator_offsets.append(operator)

        tensors_vec, operators_vec = schema.offset_vector(b, tensor_offsets), schema.offset_vector(b, operator_offsets)
        inputs_vec, outputs_vec = schema.int_vector(b, inputs), schema.int_vector(b, outputs)
        subgraph = schema.subgraph_table(b, tensors_vec, inputs_vec, outputs_vec, operators_vec)
        opcode_offsets = [schema.operator_code_table(b, builtin, 1) for builtin in self.opcodes]
        opcodes_vec = schema.offset_vector(b, opcode_offsets)
        subgraphs_vec = schema.offset_vector(b, [subgraph])
        buffers_vec = schema.offset_vector(b, buffer_offsets)
        schema.finish_model(b, opcodes_vec, subgraphs_vec, buffers_vec, "mnas test fixture")
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
