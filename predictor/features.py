"""Numeric features of a layer, for the learned (nn-Meter-like) predictor and the calibration.

Latency of a mobile CPU kernel follows compute (mult-adds) and memory traffic, modulated by
the kernel implementation (op kind, kernel size, stride, channel counts that hit or miss
vector widths). The features give a regressor all of those; `work` is the scale the learned
predictor divides latency by, so trees predict a per-work cost that carries over to
resolutions and widths the table never measured; `layer_mparams` is the weight count the
calibration adds (weights evicted from cache inside a network cost time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mnas.space.arch import LayerSig
from mnas.space.cost import layer_cost

__all__ = ["FEATURE_NAMES", "layer_feature_row", "layer_features", "layer_mparams", "memory_bytes", "op_name", "work"]

BYTES_PER_VALUE = 4  # float32 tensors and weights
OPS: tuple[str, ...] = ("stem", "conv", "dsconv", "mbconv", "head")
SKIPS: tuple[str, ...] = ("none", "identity", "pool")

FEATURE_NAMES: tuple[str, ...] = (
    "mult_adds", "params", "memory_bytes", "h", "w", "out_h", "out_w", "cin", "cout", "mid",
    "kernel", "stride", "expand", "se", "classes",
    *(f"op_{op}" for op in OPS), *(f"skip_{skip}" for skip in SKIPS),
)


def op_name(layer: LayerSig) -> str:
    """The op family a layer belongs to: stem, conv, dsconv, mbconv or head."""
    return layer.kind if layer.kind in ("stem", "head") else layer.op


def memory_bytes(layer: LayerSig) -> int:
    """Bytes read and written once: input, output, weights, and the expanded tensor of an MBConv."""
    values = layer.h * layer.w * layer.cin + layer.out_h * layer.out_w * layer.cout
    if layer.kind == "block" and layer.op != "conv":
        # the depthwise conv reads the (expanded) tensor at input size and writes it at output size
        values += layer.mid * (layer.h * layer.w + layer.out_h * layer.out_w)
    if layer.kind == "head":
        values += layer.cout + layer.classes  # pooled vector and logits
    return (values + layer_cost(layer).params) * BYTES_PER_VALUE


def layer_feature_row(layer: LayerSig) -> list[float]:
    cost = layer_cost(layer)
    op = op_name(layer)
    return [
        float(cost.mult_adds), float(cost.params), float(memory_bytes(layer)),
        float(layer.h), float(layer.w), float(layer.out_h), float(layer.out_w),
        float(layer.cin), float(layer.cout), float(layer.mid), float(layer.kernel),
        float(layer.stride), float(layer.expand), float(layer.se), float(layer.classes),
        *(1.0 if op == o else 0.0 for o in OPS),
        *(1.0 if layer.skip == s else 0.0 for s in SKIPS),
    ]


def layer_features(layers: Sequence[LayerSig]) -> np.ndarray:
    """Feature matrix [len(layers), len(FEATURE_NAMES)] (float64)."""
    if not layers:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.asarray([layer_feature_row(layer) for layer in layers], dtype=np.float64)


def work(features: np.ndarray) -> np.ndarray:
    """A positive size scale per row: mega mult-adds plus memory traffic in MB (1 MB ~ 1 M mult-adds)."""
    names = FEATURE_NAMES
    flops = features[:, names.index("mult_adds")]
    mem = features[:, names.index("memory_bytes")]
    return flops / 1e6 + mem / 1e6 + 1e-3


def layer_mparams(layers: Sequence[LayerSig]) -> np.ndarray:
    """Million weights of each layer: what a network streams from memory per inference (the
    calibration's weight term)."""
    return np.asarray([layer_cost(layer).params / 1e6 for layer in layers], dtype=np.float64)
