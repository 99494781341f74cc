"""Parameters and multiply-adds, per layer and total.

Definitions (those of the MnasNet / MobileNetV2 papers and the official READMEs):
* mult-adds count the multiply-accumulates of convolutions and the classifier; BN (folded at
  inference), activations, pooling, the SE sigmoid/multiply and residual adds are not counted.
* params count every trainable weight: conv kernels, conv/FC biases, and BN's gamma and beta
  (2 per channel; the moving mean/variance are statistics, not parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from mnas.space.arch import Arch, LayerSig

BN_PARAMS_PER_CHANNEL = 2


@dataclass(frozen=True)
class Cost:
    params: int
    mult_adds: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.mult_adds + other.mult_adds)


ZERO = Cost(0, 0)


def conv_cost(cin: int, cout: int, kernel: int, out_h: int, out_w: int, *, depthwise: bool = False,
              bias: bool = False, bn: bool = True) -> Cost:
    per_output = kernel * kernel * (1 if depthwise else cin)
    weights = per_output * cout
    params = weights + (cout if bias else 0) + (BN_PARAMS_PER_CHANNEL * cout if bn else 0)
    return Cost(params, per_output * cout * out_h * out_w)


def layer_cost(layer: LayerSig) -> Cost:
    """Cost of one layer (see the module docstring for the definitions)."""
    oh, ow = layer.out_h, layer.out_w
    if layer.kind == "stem":
        return conv_cost(layer.cin, layer.cout, layer.kernel, oh, ow)
    if layer.kind == "head":
        fc = Cost(layer.cout * layer.classes + layer.classes, layer.cout * layer.classes)
        if layer.op == "fc":  # no head conv (Arch head0): pool + classifier only
            return fc
        return conv_cost(layer.cin, layer.cout, 1, layer.h, layer.w) + fc
    total = ZERO
    se_width = layer.mid
    if layer.op == "conv":
        total += conv_cost(layer.cin, layer.cout, layer.kernel, oh, ow)
        se_width = layer.cout
    else:
        if layer.op == "mbconv":
            total += conv_cost(layer.cin, layer.mid, 1, layer.h, layer.w)
        total += conv_cost(layer.mid, layer.mid, layer.kernel, oh, ow, depthwise=True)
        total += conv_cost(layer.mid, layer.cout, 1, oh, ow)
    if layer.se:
        total += conv_cost(se_width, layer.se, 1, 1, 1, bias=True, bn=False)
        total += conv_cost(layer.se, se_width, 1, 1, 1, bias=True, bn=False)
    if layer.skip == "pool" and layer.cin != layer.cout:
        total += conv_cost(layer.cin, layer.cout, 1, oh, ow)
    return total


def arch_cost(arch: Arch, resolution: int = 224, num_classes: int = 1000) -> Cost:
    total = ZERO
    for layer in arch.layers(resolution, num_classes):
        total += layer_cost(layer)
    return total


def block_costs(arch: Arch, resolution: int = 224, num_classes: int = 1000) -> list[tuple[str, Cost]]:
    """Cost grouped as the user sees the net: stem, each block (all repeats), head."""
    layers = arch.layers(resolution, num_classes)
    rows: list[tuple[str, Cost]] = [("stem", layer_cost(layers[0]))]
    index = 1
    for block in arch.blocks:
        cost = ZERO
        for layer in layers[index:index + block.repeats]:
            cost += layer_cost(layer)
        rows.append((str(block), cost))
        index += block.repeats
    rows.append(("head", layer_cost(layers[-1])))
    return rows
