"""MnasNet layers as TFLite ops: which op, in which order, with which weight shapes.

This is the one place that maps a `LayerSig` onto TFLite operators, so the `.tflite` files
compute exactly the function of `torch_model` (NHWC instead of NCHW):

* stem / regular conv / 1x1 convs: CONV_2D (SAME padding) with BatchNorm folded into the
  filter and bias, ReLU/ReLU6 fused (none on the projection and the pool-skip shortcut);
* depthwise kxk: DEPTHWISE_CONV_2D, depth multiplier 1, BN folded, activation fused;
* squeeze-excite: MEAN over H,W (keep dims) -> CONV_2D (bias, act) -> CONV_2D (bias) ->
  LOGISTIC -> MUL with the block tensor (broadcast over H,W);
* identity skip: ADD; pool skip: AVERAGE_POOL_2D (window = stride, SAME, TFLite averages over
  the in-bounds elements only, like `count_include_pad=False`) when the stride is 2, then a
  1x1 CONV_2D (BN folded, no act) when the channels change, then ADD;
* head: CONV_2D 1x1 (act) -> MEAN over H,W -> FULLY_CONNECTED; the output is the logits
  (a head of op "fc", `Arch` head0, has no CONV_2D: MEAN -> FULLY_CONNECTED).

Weights arrive already in TFLite layout (`Conv`): CONV_2D filters are (out, kh, kw, in),
DEPTHWISE_CONV_2D filters (1, kh, kw, channels), FULLY_CONNECTED weights (out, in). Where they
come from (a torch module or a seeded initialiser) is `tflite_writer`'s business;
`weight_shapes` tells both sources what each layer needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mnas.errors import MnasError
from mnas.space.arch import LayerSig
from mnas.space.tflite_schema import Act, Graph, Op

ACTIVATIONS = {"relu": Act.RELU, "relu6": Act.RELU6}
ROLES = ("conv", "expand", "se_reduce", "se_expand", "project", "shortcut", "fc")


@dataclass(frozen=True)
class Conv:
    """Folded float32 weights of one conv / FC in TFLite layout, and its bias."""

    filter: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class WeightShape:
    """What one role of a layer needs: filter shape (TFLite layout), bias length, fan-in."""

    filter: tuple[int, ...]
    bias: int
    fan_in: int
    depthwise: bool = False


def weight_shapes(sig: LayerSig) -> dict[str, WeightShape]:
    """The weights a layer uses, by role (a subset of ROLES, in ROLES order)."""
    check_sig(sig)

    def conv(cin: int, cout: int, kernel: int = 1) -> WeightShape:
        return WeightShape((cout, kernel, kernel, cin), cout, kernel * kernel * cin)

    shapes: dict[str, WeightShape] = {}
    if sig.kind == "stem":
        shapes["conv"] = conv(sig.cin, sig.cout, sig.kernel)
    elif sig.kind == "head":
        if sig.op != "fc":
            shapes["conv"] = conv(sig.cin, sig.cout)
        shapes["fc"] = WeightShape((sig.classes, sig.cout), sig.classes, sig.cout)
    elif sig.op == "conv":
        shapes["conv"] = conv(sig.cin, sig.cout, sig.kernel)
    else:
        if sig.op == "mbconv":
            shapes["expand"] = conv(sig.cin, sig.mid)
        shapes["conv"] = WeightShape((1, sig.kernel, sig.kernel, sig.mid), sig.mid, sig.kernel * sig.kernel, True)
    if sig.kind == "block":
        width = sig.cout if sig.op == "conv" else sig.mid
        if sig.se:
            shapes["se_reduce"] = conv(width, sig.se)
            shapes["se_expand"] = conv(sig.se, width)
        if sig.op != "conv":
            shapes["project"] = conv(sig.mid, sig.cout)
        if sig.skip == "pool" and sig.cin != sig.cout:
            shapes["shortcut"] = conv(sig.cin, sig.cout)
    return {role: shapes[role] for role in ROLES if role in shapes}


def check_sig(sig: LayerSig) -> None:
    """One-line MnasError for a layer the writer cannot express."""
    where = f"layer {sig.key!r}"
    if sig.kind not in ("stem", "block", "head"):
        raise MnasError(f"{where}: field 'kind' = {sig.kind!r}: expected 'stem', 'block' or 'head'")
    if sig.act not in ACTIVATIONS:
        raise MnasError(f"{where}: field 'act' = {sig.act!r}: expected 'relu' or 'relu6'")
    for name in ("cin", "cout", "h", "w"):
        if getattr(sig, name) < 1:
            raise MnasError(f"{where}: field {name!r} = {getattr(sig, name)}: expected >= 1")
    if sig.stride not in (1, 2):
        raise MnasError(f"{where}: field 'stride' = {sig.stride}: expected 1 or 2")
    if sig.kernel < 1 or sig.kernel % 2 == 0:
        raise MnasError(f"{where}: field 'kernel' = {sig.kernel}: expected an odd size >= 1")
    if sig.kind == "head" and sig.classes < 1:
        raise MnasError(f"{where}: field 'classes' = {sig.classes}: expected >= 1")
    if sig.kind == "head" and sig.op not in ("head", "fc"):
        raise MnasError(f"{where}: field 'op' = {sig.op!r}: expected 'head' or 'fc' (no head conv)")
    if sig.kind == "head" and sig.op == "fc" and sig.cout != sig.cin:
        raise MnasError(f"{where}: field 'cout' = {sig.cout}: expected cin = {sig.cin} for a head without conv")
    if sig.kind != "block":
        return
    if sig.op not in ("conv", "dsconv", "mbconv"):
        raise MnasError(f"{where}: field 'op' = {sig.op!r}: expected 'conv', 'dsconv' or 'mbconv'")
    if sig.op != "conv" and sig.mid < 1:
        raise MnasError(f"{where}: field 'mid' = {sig.mid}: expected >= 1 for op {sig.op!r}")
    if sig.op == "dsconv" and sig.mid != sig.cin:
        raise MnasError(f"{where}: field 'mid' = {sig.mid}: expected cin = {sig.cin} for op 'dsconv'")
    if sig.se < 0:
        raise MnasError(f"{where}: field 'se' = {sig.se}: expected >= 0")
    if sig.skip not in ("identity", "pool", "none"):
        raise MnasError(f"{where}: field 'skip' = {sig.skip!r}: expected 'identity', 'pool' or 'none'")
    if sig.skip == "identity" and (sig.stride != 1 or sig.cin != sig.cout):
        raise MnasError(f"{where}: field 'skip' = 'identity': expected stride 1 and cin == cout "
                        f"(got stride {sig.stride}, cin {sig.cin}, cout {sig.cout})")


class _Emitter:
    """Appends one network's ops to a `Graph`, naming tensors after their layer and role."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self._axes: int | None = None

    def axes(self) -> int:
        """The shared int32 [1, 2] axis tensor of every MEAN."""
        if self._axes is None:
            self._axes = self.g.constant("mean_axes_hw", np.array([1, 2], dtype=np.int32))
        return self._axes

    def conv(self, x: int, w: Conv, name: str, shape: tuple[int, ...], stride: int = 1,
             act: int = Act.NONE, depthwise: bool = False) -> int:
        f = self.g.constant(f"{name}/filter", w.filter)
        b = self.g.constant(f"{name}/bias", w.bias)
        y = self.g.activation(name, shape)
        self.g.op(Op.DEPTHWISE_CONV_2D if depthwise else Op.CONV_2D, (x, f, b), (y,), stride=stride, act=act)
        return y

    def stem(self, x: int, sig: LayerSig, w: dict[str, Conv], name: str) -> int:
        shape = (1, sig.out_h, sig.out_w, sig.cout)
        return self.conv(x, w["conv"], name, shape, sig.stride, ACTIVATIONS[sig.act])

    def block(self, x: int, sig: LayerSig, w: dict[str, Conv], name: str) -> int:
        act = ACTIVATIONS[sig.act]
        oh, ow = sig.out_h, sig.out_w
        y = x
        if sig.op == "conv":
            width = sig.cout
            y = self.conv(y, w["conv"], f"{name}/conv", (1, oh, ow, width), sig.stride, act)
        else:
            width = sig.mid
            if "expand" in w:
                y = self.conv(y, w["expand"], f"{name}/expand", (1, sig.h, sig.w, width), 1, act)
            y = self.conv(y, w["conv"], f"{name}/depthwise", (1, oh, ow, width), sig.stride, act, depthwise=True)
        if sig.se:
            s = self.g.activation(f"{name}/se/mean", (1, 1, 1, width))
            self.g.op(Op.MEAN, (y, self.axes()), (s,), keep_dims=True)
            s = self.conv(s, w["se_reduce"], f"{name}/se/reduce", (1, 1, 1, sig.se), 1, act)
            s = self.conv(s, w["se_expand"], f"{name}/se/expand", (1, 1, 1, width))
            gate = self.g.activation(f"{name}/se/gate", (1, 1, 1, width))
            self.g.op(Op.LOGISTIC, (s,), (gate,))
            scaled = self.g.activation(f"{name}/se/scaled", (1, oh, ow, width))
            self.g.op(Op.MUL, (y, gate), (scaled,))
            y = scaled
        if sig.op != "conv":
            y = self.conv(y, w["project"], f"{name}/project", (1, oh, ow, sig.cout))
        if sig.skip == "none":
            return y
        shortcut = x
        if sig.skip == "pool":
            if sig.stride > 1:
                shortcut = self.g.activation(f"{name}/skip/pool", (1, oh, ow, sig.cin))
                self.g.op(Op.AVERAGE_POOL_2D, (x,), (shortcut,), stride=sig.stride, filter=sig.stride)
            if "shortcut" in w:
                shortcut = self.conv(shortcut, w["shortcut"], f"{name}/skip/conv", (1, oh, ow, sig.cout))
        out = self.g.activation(f"{name}/add", (1, oh, ow, sig.cout))
        self.g.op(Op.ADD, (y, shortcut), (out,))
        return out

    def head(self, x: int, sig: LayerSig, w: dict[str, Conv], name: str) -> int:
        y = x
        if "conv" in w:
            y = self.conv(x, w["conv"], f"{name}/conv", (1, sig.h, sig.w, sig.cout), 1, ACTIVATIONS[sig.act])
        pooled = self.g.activation(f"{name}/mean", (1, sig.cout))
        self.g.op(Op.MEAN, (y, self.axes()), (pooled,), keep_dims=False)
        fc = w["fc"]
        weights = self.g.constant(f"{name}/fc/weights", fc.filter)
        bias = self.g.constant(f"{name}/fc/bias", fc.bias)
        logits = self.g.activation("logits", (1, sig.classes))
        self.g.op(Op.FULLY_CONNECTED, (pooled, weights, bias), (logits,))
        return logits


def layer_name(index: int, sig: LayerSig) -> str:
    return sig.kind if sig.kind != "block" else f"layer{index:02d}"


def build_graph(sigs: list[LayerSig], weights: Iterable[dict[str, Conv]], description: str) -> Graph:
    """A graph running `sigs` in sequence (input of the first, output of the last).

    `weights[i]` maps each role of `weight_shapes(sigs[i])` to its `Conv`.
    """
    if not sigs:
        raise MnasError("tflite graph: no layers given: expected at least one LayerSig")
    graph = Graph(description=description)
    emitter = _Emitter(graph)
    first = sigs[0]
    x = graph.activation("input", (1, first.h, first.w, first.cin))
    graph.inputs.append(x)
    for index, (sig, w) in enumerate(zip(sigs, weights, strict=True)):
        emit = {"stem": emitter.stem, "block": emitter.block, "head": emitter.head}[sig.kind]
        x = emit(x, sig, w, layer_name(index, sig))
    graph.outputs.append(x)
    return graph
