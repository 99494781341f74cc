"""The model zoo: official MnasNet variants, MobileNetV1/V2, ProxylessNAS and Single-Path NAS.

Block strings are the official TF-TPU ones (docs/architecture.md, "Architectures"). MobileNetV2 is expressed in the same
block language: its bottleneck is the MBConv without SE; it keeps ReLU6 and a head of
1280 x max(1, multiplier) filters, as in its paper. MnasNet's head stays 1280 at every
multiplier, as in the official code.

MobileNetV1 (Howard et al. 2017, Table 1): a 3x3 stem of 32 filters at stride 2, 13
depthwise-separable layers (`e1` blocks, no skips) and its official head: global average
pool + a 1000-way classifier on the 1024 channels, with no 1x1 head conv (`head0`). Its
pointwise convs have BN + ReLU where mnas's `e1` projection has BN only: the activation is
fused into the conv by TFLite, costs no parameters or mult-adds and next to no time, so the
latency-relevant structure (every conv, its shape and its stride) is kept exactly. Its depth
multiplier follows the official TF-slim code, `max(int(filters * multiplier), 8)` with no
rounding to multiples of 8 (so x0.75 has 24, 48, 96, ... filters), and multipliers down to
0.25 are allowed for it. Params and mult-adds (tests/test_zoo.py) meet the paper's Table 6/7:
1.0/224 4.2M / 569M, 0.5/160 1.32M / 77M, 0.25/128 0.47M / 14M.

ProxylessNAS (Cai et al., ICLR 2019) mobile / CPU / GPU / mobile-1.4 and Single-Path NAS
(Stamoulis et al. 2019) are their published nets as the pytorchcv (osmr/imgclsmob) model
definitions state them (`proxylessnas.py`, `spnasnet.py`; ProxylessNAS's are its official
`proxyless_*.config` files): one `r1` block per searched layer (kernels 3/5/7, expansions
3/6, no SE), the "zero" layers dropped, identity skips where the shapes allow (which is
exactly where those nets place them). Their parameter counts equal the ones pytorchcv asserts
(tests/test_zoo.py). ProxylessNAS uses ReLU6 and Single-Path NAS ReLU, as in those definitions.

`pytorchcv_arch` maps the pytorchcv names used by published benchmarks (e.g. the
mobile-ml-benchmark CSV) onto archs; see its docstring for the variants' quirks.
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
    head: int = 1280  # 0: no head conv (global pool + classifier on the last block, MobileNetV1)
    family: str = ""
    rounding: str = "official"  # "official": round_filters; "slim": max(int(f * m), 8) (MobileNetV1)
    multiplier_range: tuple[float, float] = MULTIPLIER_RANGE


def _layers(*layers: tuple[int, int, int, int], first_in: int) -> tuple[str, ...]:
    """Block strings from per-layer (kernel, expand, out, stride), one block per run of equal layers."""
    blocks: list[list[int]] = []  # [repeats, kernel, expand, in, out, stride]
    cin = first_in
    for kernel, expand, out, stride in layers:
        last = blocks[-1] if blocks else None
        if last is not None and stride == 1 and (last[1], last[2], last[4]) == (kernel, expand, out) and cin == out:
            last[0] += 1
        else:
            blocks.append([1, kernel, expand, cin, out, stride])
        cin = out
    return tuple(f"r{r}_k{k}_s{s}{s}_e{e}_i{i}_o{o}" for r, k, e, i, o, s in blocks)


_PROXYLESS_MOBILE = [(3, 1, 16, 1), (5, 3, 32, 2), (3, 3, 32, 1), (7, 3, 40, 2), (3, 3, 40, 1), (5, 3, 40, 1),
                     (5, 3, 40, 1), (7, 6, 80, 2), (5, 3, 80, 1), (5, 3, 80, 1), (5, 3, 80, 1), (5, 6, 96, 1),
                     (5, 3, 96, 1), (5, 3, 96, 1), (5, 3, 96, 1), (7, 6, 192, 2), (7, 6, 192, 1), (7, 3, 192, 1),
                     (7, 3, 192, 1), (7, 6, 320, 1)]
_PROXYLESS_MOBILE14 = [(k, e, {16: 24, 32: 40, 40: 56, 80: 112, 96: 136, 192: 256, 320: 448}[o], s)
                       for k, e, o, s in _PROXYLESS_MOBILE]
_PROXYLESS_CPU = [(3, 1, 24, 1), (3, 6, 32, 2), (3, 3, 32, 1), (3, 3, 32, 1), (3, 3, 32, 1), (3, 6, 48, 2),
                  (3, 3, 48, 1), (3, 3, 48, 1), (5, 3, 48, 1), (3, 6, 88, 2), (3, 3, 88, 1), (5, 6, 104, 1),
                  (3, 3, 104, 1), (3, 3, 104, 1), (3, 3, 104, 1), (5, 6, 216, 2), (5, 3, 216, 1), (5, 3, 216, 1),
                  (3, 3, 216, 1), (5, 6, 360, 1)]
_PROXYLESS_GPU = [(3, 1, 24, 1), (5, 3, 32, 2), (7, 3, 56, 2), (3, 3, 56, 1), (7, 6, 112, 2), (5, 3, 112, 1),
                  (5, 6, 128, 1), (3, 3, 128, 1), (5, 3, 128, 1), (7, 6, 256, 2), (7, 6, 256, 1), (7, 6, 256, 1),
                  (5, 6, 256, 1), (7, 6, 432, 1)]


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
            activation="relu6", head_scales=True, family="mobilenet-v2"),
        ZooEntry("mobilenet-v1", (
            "r1_k3_s11_e1_i32_o64_noskip", "r1_k3_s22_e1_i64_o128_noskip", "r1_k3_s11_e1_i128_o128_noskip",
            "r1_k3_s22_e1_i128_o256_noskip", "r1_k3_s11_e1_i256_o256_noskip", "r1_k3_s22_e1_i256_o512_noskip",
            "r5_k3_s11_e1_i512_o512_noskip", "r1_k3_s22_e1_i512_o1024_noskip", "r1_k3_s11_e1_i1024_o1024_noskip"),
            32, 224, "MobileNetV1 (paper: 4.2M params, 569M mult-adds; no head conv)", head=0,
            family="mobilenet-v1", rounding="slim", multiplier_range=(0.25, 1.4)),
        ZooEntry("proxylessnas-mobile", _layers(*_PROXYLESS_MOBILE, first_in=32), 32, 224,
                 "ProxylessNAS mobile (4.08M params, 320M mult-adds, 78 ms Pixel 1)", activation="relu6",
                 head_scales=True, family="proxylessnas"),
        ZooEntry("proxylessnas-mobile14", _layers(*_PROXYLESS_MOBILE14, first_in=48), 48, 224,
                 "ProxylessNAS mobile, width 1.4 (6.86M params, 581M mult-adds)", activation="relu6", head=1792,
                 family="proxylessnas"),
        ZooEntry("proxylessnas-cpu", _layers(*_PROXYLESS_CPU, first_in=40), 40, 224,
                 "ProxylessNAS CPU (4.36M params, 439M mult-adds)", activation="relu6", head=1432,
                 family="proxylessnas"),
        ZooEntry("proxylessnas-gpu", _layers(*_PROXYLESS_GPU, first_in=40), 40, 224,
                 "ProxylessNAS GPU (7.12M params, 465M mult-adds)", activation="relu6", head=1728,
                 family="proxylessnas"),
        ZooEntry("spnasnet", (
            "r1_k3_s11_e1_i32_o16_noskip", "r1_k3_s22_e3_i16_o24", "r2_k3_s11_e3_i24_o24", "r1_k5_s22_e6_i24_o40",
            "r3_k3_s11_e3_i40_o40", "r1_k5_s22_e6_i40_o80", "r3_k3_s11_e3_i80_o80", "r1_k5_s11_e6_i80_o96",
            "r3_k5_s11_e3_i96_o96", "r4_k5_s22_e6_i96_o192",
            "r1_k3_s11_e6_i192_o320_noskip"), 32, 224,
            "Single-Path NAS (4.42M params, 333M mult-adds, 79 ms Pixel 1)", family="spnasnet"),
    )
}


def names() -> list[str]:
    return list(_ZOO)


def entry(name: str) -> ZooEntry:
    try:
        return _ZOO[name]
    except KeyError:
        raise MnasError(f"unknown zoo model {name!r}: expected one of {', '.join(_ZOO)}") from None


def family(name: str) -> str:
    """The family a zoo model belongs to (`mnasnet`, `mobilenet-v1`, `mobilenet-v2`, `proxylessnas`, `spnasnet`)."""
    spec = entry(name)
    return spec.family or name.split("-")[0]


def check_multiplier(multiplier: float, name: str | None = None) -> None:
    low, high = entry(name).multiplier_range if name is not None else MULTIPLIER_RANGE
    if not low <= multiplier <= high:
        raise MnasError(f"depth multiplier {multiplier:g}: expected a value in [{low}, {high}]")


def check_resolution(resolution: int) -> None:
    low, high = RESOLUTION_RANGE
    if not low <= resolution <= high:
        raise MnasError(f"resolution {resolution}: expected an input size in [{low}, {high}]")


def slim_depth(filters: int, multiplier: float, min_depth: int = 8) -> int:
    """MobileNetV1's official (TF-slim) depth multiplier: `max(int(filters * multiplier), min_depth)`."""
    return max(int(filters * multiplier), min_depth)


def get(name: str, multiplier: float = 1.0) -> Arch:
    """A zoo model at a depth multiplier (filters rounded as the official code does).

    The official `round_filters` returns the filters unchanged when no depth multiplier is
    given (`if not multiplier: return filters`), and the reference models are built without
    one; x1.0 here means exactly that. So at x1.0 every zoo model has its official block
    strings, including the 36-filter stages of `mnasnet-d1` and `mnasnet-d1-320` that the
    multiple-of-8 rounding would turn into 40. Any other multiplier rounds every filter count
    (MobileNetV1 with its own slim rule, `slim_depth`).
    """
    spec = entry(name)
    check_multiplier(multiplier, name)
    if multiplier == 1.0:
        return Arch(blocks=tuple(BlockSpec.parse(text) for text in spec.blocks), stem_filters=spec.stem,
                    head_filters=spec.head, activation=spec.activation)

    def scale(filters: int) -> int:
        return slim_depth(filters, multiplier) if spec.rounding == "slim" else round_filters(filters, multiplier)

    blocks = []
    for text in spec.blocks:
        block = BlockSpec.parse(text)
        blocks.append(block.scaled(scale(block.input_filters), scale(block.output_filters)))
    head = round_filters(spec.head, max(1.0, multiplier)) if spec.head_scales and spec.head else spec.head
    return Arch(blocks=tuple(blocks), stem_filters=scale(spec.stem), head_filters=head, activation=spec.activation)


# ---------------------------------------------------------------- pytorchcv (imgclsmob) names

_PYTORCHCV_WIDTHS = {"w1": 1.0, "w3d4": 0.75, "wd2": 0.5, "wd4": 0.25}


def _pytorchcv_mobilenet_v2(width: float, remove_exp_conv: bool) -> Arch:
    """pytorchcv's `get_mobilenetv2`: widths `int(c * width)` (no rounding to 8), head 1280 below x1.

    Its `mobilenetv2_*` nets keep a 1x1 conv-BN-ReLU6 (stem width -> stem width) in front of
    the first, unexpanded bottleneck; `mobilenetv2b_*` (`remove_exp_conv=True`) drop it, as the
    official MobileNetV2 does. The extra conv is a regular 1x1 `_conv` block without skip.
    """
    stem = int(32 * width)
    outs = [(16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]
    texts = [] if remove_exp_conv else [f"r1_k1_s11_e1_i{stem}_o{stem}_conv_noskip"]
    cin = stem
    for index, (out, repeats, stride) in enumerate(outs):
        out = int(out * width)
        texts.append(f"r{repeats}_k3_s{stride}{stride}_e{1 if index == 0 else 6}_i{cin}_o{out}")
        cin = out
    return Arch(blocks=tuple(BlockSpec.parse(t) for t in texts), stem_filters=stem, head_filters=1280,
                activation="relu6")


# pytorchcv names the published benchmarks use that mnas does not express, with the reason
PYTORCHCV_UNMAPPED = {
    "mobilenetb": "pytorchcv's MobileNet-B (depthwise convs without BN/activation) is not MobileNetV1's "
                  "depthwise-separable block",
    "fdmobilenet": "FD-MobileNet (fast down-sampling MobileNet) is not in the zoo",
    "mobilenetv3": "MobileNetV3 needs hard-swish and SE placements the block language does not express",
    "fbnet": "FBNet's grouped convs and channel shuffles are not in the block language",
}


def pytorchcv_arch(name: str) -> tuple[str, float, Arch]:
    """(family, width multiplier, arch) of a pytorchcv model name, or MnasError saying why not.

    * `mobilenet_w1|w3d4|wd2|wd4` -> `mobilenet-v1` at x1/0.75/0.5/0.25: pytorchcv scales with
      `int(c * width)`, which is TF-slim's rule at these widths.
    * `mobilenetv2_*`, `mobilenetv2b_*` -> MobileNetV2 with pytorchcv's widths
      (`_pytorchcv_mobilenet_v2`; not the zoo's multiple-of-8 rounding).
    * `proxylessnas_mobile|cpu|gpu|mobile14`, `spnasnet` -> the zoo entries (x1.4 for mobile14).
    All at pytorchcv's fixed 224x224 input.
    """
    key = name.strip()
    base, _, suffix = key.rpartition("_")
    if base in ("mobilenet", "mobilenetv2", "mobilenetv2b") and suffix in _PYTORCHCV_WIDTHS:
        width = _PYTORCHCV_WIDTHS[suffix]
        if base == "mobilenet":
            return "mobilenet-v1", width, get("mobilenet-v1", width)
        return "mobilenet-v2", width, _pytorchcv_mobilenet_v2(width, remove_exp_conv=base == "mobilenetv2b")
    zoo_name = {"proxylessnas_mobile": "proxylessnas-mobile", "proxylessnas_cpu": "proxylessnas-cpu",
                "proxylessnas_gpu": "proxylessnas-gpu", "proxylessnas_mobile14": "proxylessnas-mobile14",
                "spnasnet": "spnasnet"}.get(key)
    if zoo_name is not None:
        return family(zoo_name), 1.4 if key.endswith("14") else 1.0, get(zoo_name)
    for prefix, reason in PYTORCHCV_UNMAPPED.items():
        if key.split("_")[0] == prefix:
            raise MnasError(f"pytorchcv model {key!r}: {reason}")
    raise MnasError(f"pytorchcv model {key!r}: not expressible in mnas's block language (mapped: mobilenet_*, "
                    "mobilenetv2_*, mobilenetv2b_*, proxylessnas_mobile/cpu/gpu/mobile14, spnasnet)")
