"""Map any `.tflite` graph onto the layers a latency predictor knows, and predict it (`mnas predict model.tflite`).

Why: nn-Meter users predict the latency of their own `.tflite` files, not of arch strings. A
mnas predictor knows latencies of *layers* (`LayerSig`: stem, conv / depthwise-separable /
MBConv blocks with optional squeeze-excite and skip, head), each measured as its own
one-layer model, and a network costs the calibrated sum of its layers. So a model is
predicted by finding those layers among its operators; what is left over is named, with its
share of the model's FLOPs, never silently dropped or guessed at.

The patterns are the op sequences `space/tflite_graph.py` writes (a converter writes the same
ones for these layers), matched greedily in execution order along tensor edges:

* activation: a fused RELU/RELU6, or a standalone RELU/RELU6 op right after (folded in);
* stem: a CONV_2D with an activation reading the model's input, first of all layers;
* block: [CONV_2D 1x1 + act (expand)] -> DEPTHWISE_CONV_2D + act -> [SE] -> CONV_2D 1x1
  (project) is an MBConv (with expand) or a depthwise-separable conv (without); a CONV_2D kxk
  + act -> [SE] is a regular conv block. SE is MEAN(H,W) -> CONV_2D 1x1 + act -> CONV_2D 1x1 ->
  LOGISTIC -> MUL. The skip is an ADD with the block's input (identity) or with its input
  through AVERAGE_POOL_2D (window = stride) and/or a linear CONV_2D 1x1 (the pool skip);
* head: CONV_2D 1x1 + act -> global pool (MEAN over H,W, or an AVERAGE_POOL_2D covering the
  whole map) -> [RESHAPE / SQUEEZE] -> FULLY_CONNECTED; without the conv, the pool and the FC
  (a head of op "fc"); a FULLY_CONNECTED alone on a vector is a head "fc" on a 1x1 map.

Convs must be square, undilated, of stride 1 or 2 and SAME-padded (VALID where it gives the same
output: a 1x1, or a conv reading an explicit PAD of H and W, as converters write PyTorch's padded
convs; that PAD stays listed as unmapped, since the copy is not part of a mnas layer). A linear projection is what mnas writes; a projection with a fused ReLU
(MobileNetV1-style) is mapped to the same layer and the row says so. Anything else — ops with no
mnas layer kind (SOFTMAX, CONCATENATION, PAD, MAX_POOL_2D, HARD_SWISH, ...) and convs outside
these patterns — is listed as unmapped, and the total covers the mapped layers only.

FLOPs (for the unmapped share): 2 per multiply-accumulate of CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED, one per window element of a pool or input element of a reduction, one per output
element of an elementwise op, none for ops that only move data (RESHAPE, CONCATENATION, PAD, ...).

Only float32 models are predicted (float16 weights, dequantized when the model is loaded, count
as float32): the tables behind every predictor time float32 layers, so an int8 model, fully
quantized or with int8 weights only (dynamic range), is refused with one line rather than
predicted at the wrong precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mnas.errors import MnasError
from mnas.predictor.calibration import calibrated
from mnas.predictor.features import layer_mparams
from mnas.space.arch import LayerSig, same_output_size
from mnas.space.tflite_graph import check_sig
from mnas.space.tflite_reader import OPTION_DEFAULTS, ModelGraph, OperatorInfo, read_graph_file

__all__ = ["MappedLayer", "TfliteLayers", "UnmappedOp", "map_graph", "op_flops", "predict_mapped", "read_layers"]

_ACTS = {"RELU": "relu", "RELU6": "relu6"}
_QUANTIZED = frozenset({"INT8", "UINT8", "INT16"})
_COMPUTE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
_DATA_MOVEMENT = frozenset({
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD", "TRANSPOSE", "SLICE",
    "STRIDED_SLICE", "SPLIT", "SPLIT_V", "GATHER", "PACK", "UNPACK", "SHAPE", "QUANTIZE", "DEQUANTIZE", "CAST",
    "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "TILE", "BROADCAST_TO"})
_REDUCTIONS = frozenset({"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"})
_POOLS = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"})
_VIEWS = frozenset({"RESHAPE", "SQUEEZE"})


@dataclass(frozen=True)
class MappedLayer:
    """A layer found in the graph: its `LayerSig` and the operator indices it covers."""

    sig: LayerSig
    ops: tuple[int, ...]
    flops: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnmappedOp:
    """An operator no layer covers: index, builtin name, FLOPs and why it was left out."""

    index: int
    op: str
    flops: int
    reason: str


@dataclass(frozen=True)
class TfliteLayers:
    """A model's graph as mnas layers plus the operators left over."""

    layers: tuple[MappedLayer, ...]
    unmapped: tuple[UnmappedOp, ...]
    operators: int
    flops: int
    resolution: int | None  # the input's side when the model reads one square image, else None
    dtype: str  # "float32", or the quantized type its convs compute in

    @property
    def unmapped_flops(self) -> int:
        return sum(op.flops for op in self.unmapped)

    @property
    def unmapped_flops_share(self) -> float:
        return self.unmapped_flops / self.flops if self.flops else 0.0


def _count(shape: Sequence[int]) -> int:
    return int(math.prod(max(int(d), 1) for d in shape))


def op_flops(graph: ModelGraph, op: OperatorInfo) -> int:
    """FLOPs of one operator (the module docstring says how each kind is counted)."""
    def shape(position: int, outputs: bool = False) -> tuple[int, ...]:
        indices = op.outputs if outputs else op.inputs
        if position >= len(indices) or indices[position] < 0:
            return ()
        return graph.tensors[indices[position]].shape

    out = _count(shape(0, outputs=True)) if op.outputs else 0
    if op.op == "CONV_2D" and len(shape(1)) == 4:
        return 2 * out * _count(shape(1)[1:])
    if op.op == "DEPTHWISE_CONV_2D" and len(shape(1)) == 4:
        return 2 * out * _count(shape(1)[1:3])
    if op.op == "FULLY_CONNECTED" and len(shape(1)) == 2:
        rows = _count(shape(0)) // max(shape(1)[1], 1)
        return 2 * max(rows, 1) * _count(shape(1))
    if op.op in _POOLS:
        return out * int(op.options.get("filter_h", 1)) * int(op.options.get("filter_w", 1))
    if op.op in _REDUCTIONS:
        return _count(shape(0))
    if op.op in _DATA_MOVEMENT:
        return 0
    return out


def _formed(op: OperatorInfo) -> bool:
    """Whether an op has an input and an output to follow (a damaged file may give it neither)."""
    return bool(op.inputs) and bool(op.outputs) and op.inputs[0] >= 0 and op.outputs[0] >= 0


class _Matcher:
    """Greedy pattern matching over one graph; every matched op is claimed once."""

    def __init__(self, graph: ModelGraph) -> None:
        self.g = graph
        # every option an op may be asked for is present (the schema's default where the file has none)
        self.ops = tuple(replace(op, options={**OPTION_DEFAULTS, **op.options}) for op in graph.operators)
        self.consumers: dict[int, list[int]] = {}
        self.producers = {tensor: op.index for op in self.ops for tensor in op.outputs}
        for op in self.ops:
            for tensor in op.inputs:
                if tensor >= 0:
                    self.consumers.setdefault(tensor, []).append(op.index)
        self.claimed: set[int] = set()
        self.outputs = set(graph.outputs)
        self.layers: list[MappedLayer] = []

    # ---------------------------------------------------------------- graph helpers

    def shape(self, tensor: int) -> tuple[int, ...]:
        """The tensor's shape; () for an absent optional tensor (index -1)."""
        return self.g.tensors[tensor].shape if tensor >= 0 else ()

    def constant(self, tensor: int) -> bool:
        """A weight: stored in the file, or a DEQUANTIZE of a stored one (float16 weights)."""
        if tensor < 0:
            return False
        return self.g.tensors[tensor].constant or self.weight_dequantize(tensor) is not None

    def weight_dequantize(self, tensor: int) -> OperatorInfo | None:
        """The DEQUANTIZE that turns a stored (float16) weight into `tensor`, else None."""
        producer = self.producer(tensor)
        if producer is None or producer.op != "DEQUANTIZE" or not producer.inputs:
            return None
        return producer if self.g.tensors[producer.inputs[0]].constant else None

    def values(self, op: OperatorInfo, position: int) -> tuple[int, ...] | None:
        """The small int32 constant at input `position` of `op` (MEAN axes), else None."""
        return self.g.tensors[op.inputs[position]].values if len(op.inputs) > position >= 0 \
            and op.inputs[position] >= 0 else None

    def next_op(self, tensor: int, *names: str) -> OperatorInfo | None:
        """The only (unclaimed) consumer of `tensor`, if it is one of `names`."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs or users[0] in self.claimed:
            return None
        op = self.ops[users[0]]
        return op if op.op in names and _formed(op) else None

    def activated(self, op: OperatorInfo) -> tuple[str | None, int, tuple[int, ...]]:
        """(act name or None, the tensor after the activation, ops folded in) of a conv/FC output."""
        out = op.outputs[0]
        fused = str(op.options.get("act", "NONE"))
        if fused in _ACTS:
            return _ACTS[fused], out, ()
        if fused != "NONE":
            return "unsupported", out, ()
        follower = self.next_op(out, *_ACTS)
        if follower is not None:
            return _ACTS[follower.op], follower.outputs[0], (follower.index,)
        return None, out, ()

    def conv_geometry(self, op: OperatorInfo) -> dict[str, int] | str:
        """h, w, cin, cout, kernel, stride of a CONV_2D / DEPTHWISE_CONV_2D, or why it fits no layer."""
        if len(op.inputs) < 2 or op.inputs[0] < 0 or op.inputs[1] < 0 or not op.outputs:
            return "missing input or filter tensor"
        x, f, y = self.shape(op.inputs[0]), self.shape(op.inputs[1]), self.shape(op.outputs[0])
        if len(x) != 4 or len(f) != 4 or len(y) != 4 or x[0] != 1:
            return f"shapes {x} -> {y}: expected one NHWC image"
        if not self.constant(op.inputs[1]):
            return "its filter is computed at run time, not a weight"
        kernel, kernel_w = f[1], f[2]
        stride, stride_w = int(op.options["stride_h"]), int(op.options["stride_w"])
        if kernel != kernel_w or kernel % 2 == 0:
            return f"kernel {kernel}x{kernel_w}: expected an odd square kernel"
        if stride != stride_w or stride not in (1, 2):
            return f"stride {stride}x{stride_w}: expected 1 or 2 in both directions"
        if op.options["dilation_h"] != 1 or op.options["dilation_w"] != 1:
            return "dilated: mnas layers are undilated"
        source = op.inputs[0]
        padded = self.explicit_pad(op, y, stride) if op.options["padding"] == "VALID" else None
        if padded is not None:
            source, x = padded
        same = (same_output_size(x[1], stride), same_output_size(x[2], stride))
        if (y[1], y[2]) != same:
            return (f"{op.options['padding']} padding gives {y[1]}x{y[2]} from {x[1]}x{x[2]}: mnas layers are "
                    f"SAME-padded (SAME gives {same[0]}x{same[1]})")
        cout = y[3]
        if op.op == "DEPTHWISE_CONV_2D" and cout != x[3]:
            return f"depth multiplier {cout // max(x[3], 1)}: expected 1"
        return {"h": x[1], "w": x[2], "cin": x[3], "cout": cout, "kernel": kernel, "stride": stride, "x": source}

    def explicit_pad(self, op: OperatorInfo, y: tuple[int, ...], stride: int) -> tuple[int, tuple[int, ...]] | None:
        """(unpadded input tensor, its shape) when a VALID conv reads a PAD of H and W only that makes it
        compute the SAME conv's output size (as converters write PyTorch's padded convs), else None.
        The PAD stays unmapped: its copy is not part of a mnas layer."""
        pad = self.producer(op.inputs[0])
        if pad is None or pad.op not in ("PAD", "PADV2") or not self.only_for(op.inputs[0], op.index):
            return None
        paddings = self.values(pad, 1)
        x = self.shape(pad.inputs[0])
        if paddings is None or len(paddings) != 8 or any(paddings[i] for i in (0, 1, 6, 7)) or len(x) != 4:
            return None
        if (same_output_size(x[1], stride), same_output_size(x[2], stride)) != (y[1], y[2]):
            return None
        return pad.inputs[0], x

    def pointwise(self, op: OperatorInfo | None) -> dict[str, int] | None:
        """Geometry of a stride-1 1x1 CONV_2D, else None."""
        if op is None or op.op != "CONV_2D":
            return None
        geometry = self.conv_geometry(op)
        if isinstance(geometry, str) or geometry["kernel"] != 1 or geometry["stride"] != 1:
            return None
        return geometry

    def flops(self, indices: Sequence[int]) -> int:
        return sum(op_flops(self.g, self.ops[i]) for i in indices)

    def add(self, sig: LayerSig, ops: Sequence[int], notes: Sequence[str] = ()) -> bool:
        try:
            check_sig(sig)
        except MnasError:
            return False
        weights = [d.index for i in ops for t in self.ops[i].inputs if t >= 0
                   for d in (self.weight_dequantize(t),) if d is not None]
        ops = sorted({*ops, *weights})  # a float16 weight's DEQUANTIZE belongs to the layer that reads it
        self.claimed.update(ops)
        self.layers.append(MappedLayer(sig, tuple(ops), self.flops(ops), tuple(notes)))
        return True

    # ---------------------------------------------------------------- patterns

    def global_pool(self, tensor: int) -> tuple[OperatorInfo, int, list[int]] | None:
        """The global pool reading `tensor` and the FULLY_CONNECTED after it (through views)."""
        pool = self.next_op(tensor, "MEAN", "AVERAGE_POOL_2D")
        if pool is None:
            return None
        x = self.shape(tensor)
        if len(x) != 4:
            return None
        if pool.op == "MEAN":
            axes = self.values(pool, 1)
            if axes is None or sorted(a % 4 for a in axes) != [1, 2]:
                return None
        elif (pool.options["filter_h"], pool.options["filter_w"]) != (x[1], x[2]) or pool.options["act"] != "NONE":
            return None
        ops = [pool.index]
        out = pool.outputs[0]
        view = self.next_op(out, *_VIEWS)
        while view is not None:
            ops.append(view.index)
            out = view.outputs[0]
            view = self.next_op(out, *_VIEWS)
        fc = self.next_op(out, "FULLY_CONNECTED")
        if fc is None or fc.options.get("act") != "NONE" or len(fc.inputs) < 2 or len(self.shape(fc.inputs[1])) != 2:
            return None
        if not self.constant(fc.inputs[1]) or self.shape(fc.inputs[1])[1] != x[3]:
            return None
        return fc, x[3], [*ops, fc.index]

    def head(self, op: OperatorInfo) -> bool:
        """CONV_2D 1x1 + act -> global pool -> FC."""
        geometry = self.pointwise(op)
        if geometry is None:
            return False
        act, out, folded = self.activated(op)
        if act not in ("relu", "relu6"):
            return False
        found = self.global_pool(out)
        if found is None:
            return False
        fc, _, ops = found
        sig = LayerSig(kind="head", op="head", cin=geometry["cin"], cout=geometry["cout"], h=geometry["h"],
                       w=geometry["w"], act=act, classes=self.shape(fc.inputs[1])[0])
        return self.add(sig, [op.index, *folded, *ops])

    def pool_head(self, op: OperatorInfo) -> bool:
        """Global pool -> FC (a head without its 1x1 conv)."""
        if op.op not in ("MEAN", "AVERAGE_POOL_2D") or not op.inputs or op.inputs[0] < 0:
            return False
        users = self.consumers.get(op.inputs[0], [])
        if op.index not in users:
            return False
        tensor = op.inputs[0]
        found = self.global_pool(tensor) if users == [op.index] else None
        if found is None:
            return False
        fc, channels, ops = found
        x = self.shape(tensor)
        sig = LayerSig(kind="head", op="fc", cin=channels, cout=channels, h=x[1], w=x[2], act=self.model_act(),
                       classes=self.shape(fc.inputs[1])[0])
        return self.add(sig, ops)

    def lone_fc(self, op: OperatorInfo) -> bool:
        """A FULLY_CONNECTED on a vector: a head "fc" on a 1x1 map."""
        if op.op != "FULLY_CONNECTED" or op.options.get("act") != "NONE" or len(op.inputs) < 2:
            return False
        weights = self.shape(op.inputs[1]) if op.inputs[1] >= 0 else ()
        if len(weights) != 2 or not self.constant(op.inputs[1]) or _count(self.shape(op.inputs[0])) != weights[1]:
            return False
        sig = LayerSig(kind="head", op="fc", cin=weights[1], cout=weights[1], h=1, w=1, act=self.model_act(),
                       classes=weights[0])
        return self.add(sig, [op.index])

    def model_act(self) -> str:
        """The activation of the layers found so far (a head "fc" has none of its own)."""
        return self.layers[-1].sig.act if self.layers else "relu"

    def squeeze_excite(self, tensor: int) -> tuple[int, int, list[int]] | None:
        """(SE width, the scaled tensor, ops) of an SE on `tensor`, else None."""
        users = [self.ops[i] for i in self.consumers.get(tensor, []) if i not in self.claimed and _formed(self.ops[i])]
        if len(users) != 2 or tensor in self.outputs:
            return None
        mean = next((u for u in users if u.op == "MEAN"), None)
        mul = next((u for u in users if u.op == "MUL"), None)
        if mean is None or mul is None or not mean.options.get("keep_dims"):
            return None
        axes = self.values(mean, 1)
        if axes is None or sorted(a % 4 for a in axes) != [1, 2]:
            return None
        reduce = self.next_op(mean.outputs[0], "CONV_2D")
        reduced = self.pointwise(reduce)
        if reduce is None or reduced is None:
            return None
        act, out, folded = self.activated(reduce)
        if act not in ("relu", "relu6"):
            return None
        expand = self.next_op(out, "CONV_2D")
        if self.pointwise(expand) is None or expand is None or expand.options["act"] != "NONE":
            return None
        gate = self.next_op(expand.outputs[0], "LOGISTIC")
        if gate is None or self.next_op(gate.outputs[0], "MUL") is not mul or mul.options["act"] != "NONE":
            return None
        return reduced["cout"], mul.outputs[0], [mean.index, reduce.index, *folded, expand.index, gate.index, mul.index]

    def skip(self, x: int, out: int, cin: int, cout: int, stride: int) -> tuple[str, int, list[int]]:
        """("identity" | "pool" | "none", the block's output tensor, ops) for the block output `out`."""
        add = self.next_op(out, "ADD")
        if add is None or len(add.inputs) != 2 or add.options["act"] != "NONE":
            return "none", out, []
        other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        if self.shape(add.outputs[0]) != self.shape(out):
            return "none", out, []
        if other == x:
            return ("identity", add.outputs[0], [add.index]) if stride == 1 and cin == cout else ("none", out, [])
        ops: list[int] = []
        tensor = other
        producer = self.producer(tensor)
        if producer is not None and producer.op == "CONV_2D" and self.pointwise(producer) is not None \
                and producer.options["act"] == "NONE" and self.only_for(tensor, add.index) and cin != cout:
            ops.append(producer.index)
            tensor = producer.inputs[0]
            producer = self.producer(tensor)
        if stride > 1:
            if producer is None or producer.op != "AVERAGE_POOL_2D" or producer.inputs[0] != x \
                    or not self.only_for(tensor, ops[0] if ops else add.index):
                return "none", out, []
            if (producer.options["filter_h"], producer.options["stride_h"]) != (stride, stride) \
                    or (producer.options["filter_w"], producer.options["stride_w"]) != (stride, stride):
                return "none", out, []
            ops.append(producer.index)
            tensor = x
        if tensor != x or not ops:
            return "none", out, []
        return "pool", add.outputs[0], [*ops, add.index]

    def producer(self, tensor: int) -> OperatorInfo | None:
        index = self.producers.get(tensor)
        return None if index is None or index in self.claimed or not _formed(self.ops[index]) else self.ops[index]

    def only_for(self, tensor: int, user: int) -> bool:
        return self.consumers.get(tensor, []) == [user] and tensor not in self.outputs

    def block(self, op: OperatorInfo) -> bool:
        """Stem, conv, depthwise-separable or MBConv block starting at `op`."""
        if op.op not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            return False
        x = op.inputs[0]
        ops: list[int] = []
        notes: list[str] = []
        expand_geometry = None
        depthwise = op
        if op.op == "CONV_2D":
            act, out, folded = self.activated(op)
            following = self.next_op(out, "DEPTHWISE_CONV_2D")
            pad = self.next_op(out, "PAD", "PADV2") if following is None else None
            if pad is not None:  # expand -> PAD -> VALID depthwise (a converted PyTorch stride-2 block)
                following = self.next_op(pad.outputs[0], "DEPTHWISE_CONV_2D")
            if self.pointwise(op) is not None and act in ("relu", "relu6") and following is not None:
                expand_geometry = self.pointwise(op)
                ops += [op.index, *folded]
                depthwise = following
            else:
                return self.conv_block(op)
        geometry = self.conv_geometry(depthwise)
        if isinstance(geometry, str):
            return False
        if expand_geometry is None:
            x = geometry["x"]  # past an explicit PAD
        act, y, folded = self.activated(depthwise)
        if act not in ("relu", "relu6") or (expand_geometry is not None and act != self.activated(op)[0]):
            return False
        ops += [depthwise.index, *folded]
        mid = geometry["cin"]
        se, y, se_ops = self.squeeze_excite(y) or (0, y, [])
        project = self.next_op(y, "CONV_2D")
        projected = self.pointwise(project)
        if project is None or projected is None:
            return False
        project_act, p, project_folded = self.activated(project)
        if project_act == "unsupported":
            return False
        if project_act is not None:
            notes.append(f"its projection has a fused {project_act.upper()} (mnas writes a linear one)")
        cin = expand_geometry["cin"] if expand_geometry is not None else mid
        cout = projected["cout"]
        skip, _, skip_ops = self.skip(x, p, cin, cout, geometry["stride"])
        kind = "mbconv" if expand_geometry is not None else "dsconv"
        expand = max(1, round(mid / cin)) if kind == "mbconv" else 1
        sig = LayerSig(kind="block", op=kind, cin=cin, cout=cout, h=expand_geometry["h"] if expand_geometry else
                       geometry["h"], w=expand_geometry["w"] if expand_geometry else geometry["w"],
                       kernel=geometry["kernel"], stride=geometry["stride"], expand=expand, mid=mid, se=se, skip=skip,
                       act=act)
        return self.add(sig, [*ops, *se_ops, project.index, *project_folded, *skip_ops], notes)

    def conv_block(self, op: OperatorInfo) -> bool:
        geometry = self.conv_geometry(op)
        act, y, folded = self.activated(op)
        if isinstance(geometry, str) or act not in ("relu", "relu6"):
            return False
        common = {"cin": geometry["cin"], "cout": geometry["cout"], "h": geometry["h"], "w": geometry["w"],
                  "kernel": geometry["kernel"], "stride": geometry["stride"], "act": act}
        if not self.layers and geometry["x"] in self.g.inputs:
            return self.add(LayerSig(kind="stem", op="conv", **common), [op.index, *folded])
        se, y, se_ops = self.squeeze_excite(y) or (0, y, [])
        skip, _, skip_ops = self.skip(geometry["x"], y, geometry["cin"], geometry["cout"], geometry["stride"])
        sig = LayerSig(kind="block", op="conv", mid=geometry["cout"], se=se, skip=skip, **common)
        return self.add(sig, [op.index, *folded, *se_ops, *skip_ops])

    def reason(self, op: OperatorInfo) -> str:
        users = self.consumers.get(op.outputs[0], []) if _formed(op) else []
        if op.op in ("PAD", "PADV2") and len(users) == 1 and users[0] in self.claimed:
            return (f"explicit padding of the VALID {self.ops[users[0]].op} #{users[0]}, mapped as a SAME one: "
                    "the copy itself is not predicted")
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            geometry = self.conv_geometry(op)
            if isinstance(geometry, str):
                return geometry
            act = self.activated(op)[0]
            if act == "unsupported":
                return f"fused activation {op.options['act']}: mnas layers use RELU or RELU6"
            return "not part of a stem, block or head pattern"
        if op.op in ("ADD", "MUL", "LOGISTIC", "MEAN", "AVERAGE_POOL_2D", "FULLY_CONNECTED", *_ACTS, *_VIEWS):
            return "not part of a stem, block or head pattern"
        return f"no mnas layer kind for {op.op}"

    def run(self) -> TfliteLayers:
        for op in self.ops:
            if op.index in self.claimed or not _formed(op):
                continue
            for match in (self.head, self.block, self.pool_head, self.lone_fc):
                if match(op):
                    break
        unmapped = tuple(UnmappedOp(op.index, op.op, op_flops(self.g, op), self.reason(op))
                         for op in self.ops if op.index not in self.claimed)
        layers = tuple(sorted(self.layers, key=lambda layer: layer.ops[0]))
        return TfliteLayers(layers, unmapped, len(self.ops), sum(op_flops(self.g, op) for op in self.ops),
                            _resolution(self.g), _compute_dtype(self.g))


def _resolution(graph: ModelGraph) -> int | None:
    if len(graph.inputs) != 1:
        return None
    shape = graph.tensors[graph.inputs[0]].shape
    return shape[1] if len(shape) == 4 and shape[1] == shape[2] else None


def _compute_dtype(graph: ModelGraph) -> str:
    """"float32", or the quantized type a conv / FC reads: its input (full-integer models) or its
    weights (dynamic-range models, whose kernels are hybrid, not float)."""
    for op in graph.operators:
        if op.op in _COMPUTE:
            for tensor in op.inputs[:2]:
                if tensor >= 0 and graph.tensors[tensor].dtype in _QUANTIZED:
                    return graph.tensors[tensor].dtype.lower()
    return "float32"


def map_graph(graph: ModelGraph) -> TfliteLayers:
    """The mnas layers of `graph` and its unmapped operators (see the module docstring)."""
    return _Matcher(graph).run()


def read_layers(path: str | Path) -> TfliteLayers:
    """`map_graph` of a `.tflite` file; MnasError (one line naming the file) when it is not a float32 model.

    An int8 model is read, then refused: every predictor is fitted on float32 layers.
    """
    graph = read_graph_file(path)
    try:
        mapped = map_graph(graph)
    except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError) as exc:  # a damaged graph the checks let by
        raise MnasError(f"{path}: cannot map its graph onto layers ({type(exc).__name__}: {exc})") from None
    if mapped.dtype != "float32":
        raise MnasError(f"{path}: an {mapped.dtype} (quantized) model: the latency predictors are fitted on float32 "
                        "layers and would not predict it: expected a float32 .tflite (e.g. `mnas arch export` "
                        "without --dtype int8)")
    if not mapped.layers:
        raise MnasError(f"{path}: none of its {mapped.operators} operators forms a layer mnas knows (conv, depthwise, "
                        "MBConv, squeeze-excite, head): nothing to predict")
    return mapped


def predict_mapped(predictor: Any, mapped: TfliteLayers) -> dict[str, Any]:
    """The predicted latency of a mapped model and its per-layer figures.

    The total is the predictor's calibration applied to the sum of the mapped layers, as
    `predict_ms` does for an arch (unless that is not positive: then the raw sum, with
    `calibration_applied` False); the unmapped operators are not in it.
    """
    sigs = [layer.sig for layer in mapped.layers]
    layer_ms = np.asarray(predictor.predict_layers_ms(sigs), dtype=np.float64)
    calibration = getattr(predictor, "calibration_", None)
    mparams = np.asarray([layer_mparams(sigs).sum()]) if calibration is not None and calibration.uses_params else None
    raw = float(layer_ms.sum())
    total = float(calibrated(calibration, np.asarray([raw]), np.asarray([float(len(sigs))]), mparams)[0])
    # an affine calibration fitted on whole networks can go below zero far under their size (a
    # negative intercept): then the raw layer sum is the figure, and the row says so
    applied = calibration is not None and total > 0
    total = total if applied or calibration is None else raw
    table = getattr(predictor, "table", None)
    in_table: set[str] = set(table.latencies(predictor.statistic)) if table is not None else set()
    per_layer = [{
        "layer": index, "kind": layer.sig.op if layer.sig.kind == "block" else layer.sig.kind,
        "layer_key": layer.sig.key, "run_orders": list(layer.ops), "flops": layer.flops, "predicted_ms": float(ms),
        "source": "table" if layer.sig.key in in_table else "learned", "notes": list(layer.notes),
    } for index, (layer, ms) in enumerate(zip(mapped.layers, layer_ms, strict=True))]
    from_table = sum(row["source"] == "table" for row in per_layer)
    return {
        "resolution": mapped.resolution, "dtype": mapped.dtype, "predicted_ms": total, "layer_sum_ms": raw, "calibration_applied": applied,
        "layers": len(sigs), "layers_from_table": from_table, "layers_from_learned": len(sigs) - from_table,
        "ops": mapped.operators, "mapped_ops": mapped.operators - len(mapped.unmapped),
        "flops": mapped.flops, "unmapped_flops": mapped.unmapped_flops,
        "unmapped_flops_share": mapped.unmapped_flops_share,
        "unmapped_ops": [{"run_order": op.index, "node_type": op.op, "flops": op.flops, "reason": op.reason}
                         for op in mapped.unmapped],
        "per_layer": per_layer,
    }
