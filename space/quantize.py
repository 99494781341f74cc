"""Full-integer (int8) post-training quantization of a float `Graph`, without TensorFlow.

Why hand-written: TFLite's post-training full-integer quantization lives in the TensorFlow
converter (`TFLiteConverter` with a representative dataset), which needs the whole TF stack, a
SavedModel and ~10 s per model; mnas has no TensorFlow and times thousands of models. The
graph `tflite_graph` builds is small and fixed (conv, depthwise conv, mean, logistic, mul,
add, average pool, fully connected), so the quantization scheme of TFLite's 8-bit
specification is applied here directly, op by op, to the same `Graph` the float writer emits:

* calibration: the float model runs in LiteRT (builtin kernels, every intermediate tensor
  kept) on a few inputs; each run-time tensor's min/max over those inputs is its range;
* activations: int8, per tensor, asymmetric: the range is widened to contain 0, scale =
  (max - min) / 255, zero point = round(-128 - min / scale) clipped to [-128, 127]; a tensor
  that is 0 on every calibration input gets scale 1 and zero point -128, as the converter's
  quantizer does (a vanishing scale would also make XNNPACK refuse the model);
* weights: int8, symmetric (zero point 0), values in [-127, 127], one scale per output
  channel: quantized dimension 0 for CONV_2D and FULLY_CONNECTED, 3 for DEPTHWISE_CONV_2D
  (per-channel dense weights are the converter's default; its
  `_experimental_disable_per_channel_quantization_for_dense_layers` switch, which
  microcontroller users set, is what turns them back to one scale);
* biases: int32, zero point 0, scale = input scale x weight scale (per channel);
* op constraints: LOGISTIC's output is fixed at scale 1/256, zero point -128;
  AVERAGE_POOL_2D's output takes its input's scale and zero point; MEAN, ADD and MUL
  rescale, so their outputs keep their calibrated ranges; fused ReLU/ReLU6 clamp in the
  integer domain (the calibrated output range of a fused op already starts at 0);
* edges: the model keeps float32 input and output; QUANTIZE follows the input and
  DEQUANTIZE precedes the output;
* operator versions: the ones TFLite's converter assigns to int8 kernels (its op-version
  rules), e.g. CONV_2D 3, FULLY_CONNECTED 4, MUL 2 (3 when in1 x in2 / out scale >= 1).

`tests/test_int8_*.py` check the files against a recorded fixture of what the converter
produces for a small model (op list, versions, tensor types and granularity) and the
numbers against the float model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mnas.errors import MnasError
from mnas.space.tflite_schema import (
    FLOAT32,
    INT8,
    INT32,
    Graph,
    Op,
    OpSpec,
    Quant,
    TensorSpec,
    encode,
)

DTYPES = ("float32", "int8")
DEFAULT_CALIBRATION_COUNT = 8
LOGISTIC_OUTPUT = Quant((1.0 / 256.0,), (-128,))
_QMIN, _QMAX = -128, 127
_WEIGHT_MAX = 127  # symmetric weights use [-127, 127]

# the converter's operator version for each op with int8 inputs (MUL: see _version)
_INT8_VERSIONS: dict[int, int] = {
    Op.CONV_2D: 3, Op.DEPTHWISE_CONV_2D: 3, Op.FULLY_CONNECTED: 4, Op.AVERAGE_POOL_2D: 2,
    Op.ADD: 2, Op.MUL: 2, Op.MEAN: 2, Op.LOGISTIC: 2, Op.QUANTIZE: 1, Op.DEQUANTIZE: 2,
}
# the output-channel axis of each weighted op's weights: one scale per slice along it
_WEIGHT_AXIS: dict[int, int] = {Op.CONV_2D: 0, Op.DEPTHWISE_CONV_2D: 3, Op.FULLY_CONNECTED: 0}

Range = tuple[float, float]


def check_dtype(dtype: str) -> str:
    """`dtype` if it is one the writer knows; otherwise one MnasError line."""
    if dtype not in DTYPES:
        raise MnasError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dtype


def calibration_inputs(shape: tuple[int, ...], count: int = DEFAULT_CALIBRATION_COUNT, seed: int = 0) -> np.ndarray:
    """`count` seeded, image-like inputs of `shape` (1, H, W, C) as one (count, H, W, C) array.

    Smooth random fields (a coarse normal grid upsampled, plus a little pixel noise), roughly
    zero mean and unit variance like normalised images. Spatially correlated like pictures:
    white noise would average out in every mean-pooled tensor (squeeze-excite, head) and
    calibrate those ranges too narrow. Real images, when there are some, are better.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise MnasError(f"calibration count {count!r}: expected an integer >= 1")
    _, height, width, channels = shape
    rng = np.random.default_rng(seed)
    cell = max(1, min(height, width) // 7)
    coarse = rng.standard_normal((count, -(-height // cell), -(-width // cell), channels), dtype=np.float32)
    smooth = np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)[:, :height, :width]
    noise = rng.standard_normal((count, height, width, channels), dtype=np.float32)
    return np.ascontiguousarray(smooth + np.float32(0.25) * noise, dtype=np.float32)


def calibrate(graph: Graph, inputs: np.ndarray) -> list[Range | None]:
    """(min, max) of every run-time tensor of the float `graph` over `inputs` (None: constants).

    `inputs` is (N, H, W, C) float32 matching the graph's input (1, H, W, C). LiteRT runs the
    float file on its builtin kernels (no XNNPACK delegate, which would hide the intermediate
    tensors) with every tensor preserved; the file's tensor indices are the graph's.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    shape = graph.tensors[graph.inputs[0]].shape
    data = np.asarray(inputs)
    if data.ndim != len(shape) or tuple(data.shape[1:]) != tuple(shape[1:]) or len(data) < 1:
        raise MnasError(f"calibration inputs of shape {tuple(data.shape)}: expected (N, {', '.join(map(str, shape[1:]))}) "
                        "with N >= 1")
    if not np.all(np.isfinite(data)):
        raise MnasError("calibration inputs: contain NaN or infinity: expected finite values")
    interpreter = Interpreter(model_content=encode(graph), num_threads=1, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    runtime = [i for i, t in enumerate(graph.tensors) if t.buffer == 0]
    lo = np.full(len(graph.tensors), np.inf)
    hi = np.full(len(graph.tensors), -np.inf)
    for sample in data.astype(np.float32, copy=False):
        interpreter.set_tensor(graph.inputs[0], sample[None])
        interpreter.invoke()
        for index in runtime:
            value = interpreter.get_tensor(index)
            lo[index] = min(lo[index], float(value.min()))
            hi[index] = max(hi[index], float(value.max()))
    return [(float(lo[i]), float(hi[i])) if graph.tensors[i].buffer == 0 else None for i in range(len(graph.tensors))]


def activation_quant(lo: float, hi: float) -> Quant:
    """Per-tensor asymmetric int8 parameters of a tensor observed in [lo, hi]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < np.finfo(np.float64).eps:
        return Quant((1.0,), (_QMIN,))
    scale = (hi - lo) / (_QMAX - _QMIN)
    zero_point = int(np.clip(round(_QMIN - lo / scale), _QMIN, _QMAX))
    return Quant((float(np.float32(scale)),), (zero_point,))


def weight_quant(weights: np.ndarray, axis: int) -> tuple[np.ndarray, Quant]:
    """Symmetric int8 weights ([-127, 127], zero point 0), one scale per slice along `axis`
    (an all-zero slice gets scale 1: any scale represents it exactly)."""
    w = np.asarray(weights, dtype=np.float64)
    other = tuple(d for d in range(w.ndim) if d != axis)
    peak = np.abs(w).max(axis=other, initial=0.0)
    scales = np.where(peak > 0, peak / _WEIGHT_MAX, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.astype(np.float64).reshape(shape)), -_WEIGHT_MAX, _WEIGHT_MAX)
    return q.astype(np.int8), Quant(tuple(float(s) for s in scales), (0,) * len(scales), axis)


def bias_quant(bias: np.ndarray, input_scale: float, weight: Quant) -> tuple[np.ndarray, Quant]:
    """int32 bias, zero point 0, scale input_scale x weight scale (per channel, or one scale
    when the weights have one)."""
    scales = (np.float32(input_scale) * np.asarray(weight.scale, dtype=np.float32)).astype(np.float32)
    limit = np.iinfo(np.int32)
    q = np.clip(np.round(np.asarray(bias, dtype=np.float64) / scales.astype(np.float64)), limit.min, limit.max)
    return q.astype(np.int32), Quant(tuple(float(s) for s in scales), (0,) * len(scales), 0)


def _version(op: OpSpec, quants: list[Quant]) -> int:
    """The converter's version for int8 `op`; `quants` are its inputs' then its output's."""
    if op.code == Op.MUL:
        in1, in2, out = (q.scale[0] for q in quants[:3])
        return 3 if in1 * in2 / out >= 1.0 else 2
    return _INT8_VERSIONS[op.code]


class _Quantizer:
    """Builds the int8 graph from the float one, tensor by tensor, in the float graph's op order."""

    def __init__(self, graph: Graph, ranges: Sequence[Range | None]) -> None:
        if len(ranges) != len(graph.tensors):
            raise MnasError(f"calibration ranges: {len(ranges)} entries: expected one per tensor ({len(graph.tensors)})")
        self.src = graph
        self.ranges = ranges
        self.out = Graph(description=f"{graph.description} dtype int8".strip())
        self.mapped: dict[int, int] = {}  # float tensor index -> int8 graph tensor index

    def quant_of(self, new_index: int) -> Quant:
        quant = self.out.tensors[new_index].quant
        assert quant is not None
        return quant

    def calibrated(self, index: int) -> Quant:
        got = self.ranges[index]
        if got is None or not all(np.isfinite(got)):
            raise MnasError(f"tensor {self.src.tensors[index].name!r}: no calibrated range: expected a finite (min, max)")
        return activation_quant(*got)

    def runtime_input(self, index: int) -> int:
        if index not in self.mapped:
            raise MnasError(f"tensor {self.src.tensors[index].name!r}: used before it is computed: expected ops in order")
        return self.mapped[index]

    def plain_constant(self, index: int) -> int:
        """A constant kept as-is (MEAN's int32 axes), shared like in the float graph."""
        if index not in self.mapped:
            spec = self.src.tensors[index]
            data = self.src.buffers[spec.buffer]
            assert data is not None
            self.mapped[index] = self.out.constant(spec.name, data)
        return self.mapped[index]

    def weighted_inputs(self, op: OpSpec) -> tuple[int, ...]:
        x, w, b = op.inputs
        x_new = self.runtime_input(x)
        w_spec, b_spec = self.src.tensors[w], self.src.tensors[b]
        w_data, b_data = self.src.buffers[w_spec.buffer], self.src.buffers[b_spec.buffer]
        assert w_data is not None and b_data is not None
        q_w, w_quant = weight_quant(w_data, _WEIGHT_AXIS[op.code])
        q_b, b_quant = bias_quant(b_data, self.quant_of(x_new).scale[0], w_quant)
        return x_new, self.out.constant(w_spec.name, q_w, w_quant), self.out.constant(b_spec.name, q_b, b_quant)

    def output_quant(self, op: OpSpec, inputs: tuple[int, ...]) -> Quant:
        if op.code == Op.LOGISTIC:
            return LOGISTIC_OUTPUT
        if op.code == Op.AVERAGE_POOL_2D:
            return self.quant_of(inputs[0])
        return self.calibrated(op.outputs[0])

    def run(self) -> Graph:
        src, out = self.src, self.out
        if len(src.inputs) != 1 or len(src.outputs) != 1:
            raise MnasError(f"graph with {len(src.inputs)} inputs and {len(src.outputs)} outputs: expected one of each")
        (x,) = src.inputs
        spec = src.tensors[x]
        if spec.dtype != FLOAT32:
            raise MnasError(f"graph input {spec.name!r}: not float32: expected a float graph to quantize")
        x_float = out.activation(spec.name, spec.shape)
        x_int8 = out.activation(f"{spec.name}_int8", spec.shape, INT8, self.calibrated(x))
        out.inputs.append(x_float)
        out.op(Op.QUANTIZE, (x_float,), (x_int8,), version=_INT8_VERSIONS[Op.QUANTIZE])
        self.mapped[x] = x_int8
        (y,) = src.outputs
        for op in src.ops:
            if op.code in _WEIGHT_AXIS:
                inputs = self.weighted_inputs(op)
            elif op.code == Op.MEAN:
                inputs = (self.runtime_input(op.inputs[0]), self.plain_constant(op.inputs[1]))
            else:
                inputs = tuple(self.runtime_input(i) for i in op.inputs)
            (result,) = op.outputs
            result_spec = src.tensors[result]
            quant = self.output_quant(op, inputs)
            name = f"{result_spec.name}_int8" if result == y else result_spec.name
            new = out.activation(name, result_spec.shape, INT8, quant)
            activation_inputs = [self.quant_of(i) for i in inputs if out.tensors[i].buffer == 0]
            version = _version(op, [*activation_inputs, quant])
            out.ops.append(replace(op, inputs=inputs, outputs=(new,), version=version))
            self.mapped[result] = new
        y_float = out.activation(src.tensors[y].name, src.tensors[y].shape)
        out.op(Op.DEQUANTIZE, (self.runtime_input(y),), (y_float,), version=_INT8_VERSIONS[Op.DEQUANTIZE])
        out.outputs.append(y_float)
        return out


def quantize(graph: Graph, ranges: Sequence[Range | None]) -> Graph:
    """The int8 graph of float `graph`, with activation ranges from `calibrate`."""
    return _Quantizer(graph, ranges).run()


def int8_graph(graph: Graph, calibration: np.ndarray | None = None, *, count: int = DEFAULT_CALIBRATION_COUNT,
               seed: int = 0) -> Graph:
    """Calibrate float `graph` on `calibration` (N, H, W, C) (default: `count` seeded
    `calibration_inputs`) and return its int8 graph; the description names the calibration."""
    if calibration is None:
        calibration = calibration_inputs(graph.tensors[graph.inputs[0]].shape, count, seed)
        source = f"{count} synthetic inputs seed {seed}"
    else:
        source = f"{len(calibration)} given inputs"
    result = quantize(graph, calibrate(graph, calibration))
    result.description = f"{result.description} calibration {source}"
    return result


def is_weight(spec: TensorSpec) -> bool:
    """A constant that counts as a parameter: float weights, int8 weights, int32 biases."""
    return spec.buffer != 0 and (spec.dtype == FLOAT32 or (spec.quant is not None and spec.dtype in (INT8, INT32)))
