"""The model zoo: official MnasNet variants and MobileNetV2, with depth multiplier.

Block strings are the official TF-TPU ones (docs/architecture.md, "Architectures"). MobileNetV2 is expressed in the same
block language: its bottleneck is the MBConv without SE; it keeps ReLU6 and a head of
1280 x max(1, multiplier) filters, as in its paper. MnasNet's head stays 1280 at every
multiplier, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnas.errors import MnasError
from mnas.space.arch import Arch
from mnas.space.blocks import BlockSpec, round_filters

MULTIPLIER_RANGE = (0.35, 1.4)
RESOLUTION_RANGE = (96, 320)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    blocks: tuple[str, ...]
    stem: int
    default_resolution: int
    description: str
    activation: str = "relu"
    head_scales: bool = False  # MobileNetV2: head = 1280 * max(1, multiplier)


_ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry("mnasnet-a1", (
            "r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
            "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
            "r1_k3_s11_e6_i160_o320"), 32, 224, "MnasNet-A1 (paper Table 1: 3.9M params, 312M mult-adds, 78 ms Pixel 1)"),
        ZooEntry("mnasnet-b1", (
            "r1_k3_s11_e1_i32_o16_noskip", "r3_k3_s22_e3_i16_o24", "r3_k5_s22_e3_i24_o40",
            "r3_k5_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o96", "r4_k5_s22_e6_i96_o192",
            "r1_k3_s11_e6_i192_o320_noskip"), 32, 224, "MnasNet-B1 (no squeeze-excite)"),
        ZooEntry("mnasnet-small", (
            "r1_k3_s11_e1_i16_o8", "r1_k3_s22_e3_i8_o16", "r2_k3_s22_e6_i16_o16",
            "r4_k5_s22_e6_i16_o32_se0.25", "r3_k3_s11_e6_i32_o32_se0.25",
            "r3_k5_s22_e6_i32_o88_se0.25", "r1_k3_s11_e6_i88_o144"), 8, 224, "MnasNet-small (2.0M params, 68M mult-adds)"),
        ZooEntry("mnasnet-d1", (
            "r1_k3_s11_e9_i32_o24", "r3_k3_s22_e9_i24_o36", "r5_k3_s22_e9_i36_o48",
            "r4_k5_s22_e9_i48_o96", "r5_k7_s11_e3_i96_o96", "r3_k3_s22_e9_i96_o80",
            "r1_k7_s11_e6_i80_o320_noskip"), 32, 224, "MnasNet-D1 (searched jointly with the detection backbone)"),
        ZooEntry("mnasnet-d1-320", (
            "r3_k5_s11_e6_i32_o24", "r4_k7_s22_e9_i24_o36", "r5_k5_s22_e9_i36_o48",
            "r5_k7_s22_e6_i48_o96", "r5_k3_s11_e9_i96_o144", "r5_k5_s22_e6_i144_o160",
            "r1_k7_s11_e9_i160_o320"), 32, 320, "MnasNet-D1 searched for 320x320 inputs"),
        ZooEntry("mobilenet-v2", (
            "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r3_k3_s22_e6_i24_o32",
            "r4_k3_s22_e6_i32_o64", "r3_k3_s11_e6_i64_o96", "r3_k3_s22_e6_i96_o160",
            "r1_k3_s11_e6_i160_o320"), 32, 224, "MobileNetV2 (paper: 3.4M params, 300M mult-adds, 75 ms Pixel 1)",
            activation="relu6", head_scales=True),
    )
}


def names() -> list[str]:
    return list(_ZOO)


def entry(name: str) -> ZooEntry:
    try:
        return _ZOO[name]
    except KeyError:
        raise MnasError(f"unknown zoo model {name!r}: expected one of {', '.join(_ZOO)}") from None


def check_multiplier(multiplier: float) -> None:
    low, high = MULTIPLIER_RANGE
    if not low <= multiplier <= high:
        raise MnasError(f"depth multiplier {multiplier:g}: expected a value in [{low}, {high}]")


def check_resolution(resolution: int) -> None:
    low, high = RESOLUTION_RANGE
    if not low <= resolution <= high:
        raise MnasError(f"resolution {resolution}: expected an input size in [{low}, {high}]")


def get(name: str, multiplier: float = 1.0) -> Arch:
    """A zoo model at a depth multiplier (filters rounded as the official code does).

    The official `round_filters` returns the filters unchanged when no depth multiplier is
    given (`if not multiplier: return filters`), and the reference models are built without
    one; x1.0 here means exactly that. So at x1.0 every zoo model has its official block
    strings, including the 36-filter stages of `mnasnet-d1` and `mnasnet-d1-320` that the
    multiple-of-8 rounding would turn into 40. Any other multiplier rounds every filter count.
    """
    spec = entry(name)
    check_multiplier(multiplier)
    if multiplier == 1.0:
        return Arch(blocks=tuple(BlockSpec.parse(text) for text in spec.blocks), stem_filters=spec.stem,
                    head_filters=1280, activation=spec.activation)
    blocks = []
    for text in spec.blocks:
        block = BlockSpec.parse(text)
        blocks.append(block.scaled(round_filters(block.input_filters, multiplier),
                                   round_filters(block.output_filters, multiplier)))
    head = round_filters(1280, max(1.0, multiplier)) if spec.head_scales else 1280
    return Arch(blocks=tuple(blocks), stem_filters=round_filters(spec.stem, multiplier),
                head_filters=head, activation=spec.activation)
