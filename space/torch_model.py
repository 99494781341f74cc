"""PyTorch modules for any `Arch`, computing exactly what the `.tflite` writer emits.

TensorFlow SAME padding (asymmetric on stride 2: the extra row/column goes bottom/right) is
applied explicitly, and BatchNorm uses the official momentum 0.99 / eps 1e-3 (torch's
`momentum` is 1 - TF's decay, so 0.01). The module tree mirrors `Arch.layers()` one to one:
`model.stem`, `model.layers[i]` (one `MnasLayer` per `LayerSig`), `model.head`, which is what
the `.tflite` writer walks to read weights.

Initialisers (`init="official"`, the default) are the official MnasNet code's
(`mnasnet_model.py`): every conv kernel normal with sd sqrt(2 / fan_out), where TF's fan_out
is kernel_h x kernel_w x output channels per group (a depthwise kernel [k, k, C, 1] has
fan_out k x k), the classifier uniform in +-1/sqrt(classes) (TF's `dense_kernel_initializer`
reads the kernel's out dimension), every bias zero, BN gamma 1 and beta 0. `init="torch"`
keeps torch's defaults (Kaiming-uniform with a = sqrt(5)); only proxy tasks stored before the
official initialisers (proxy key version 1) ask for it.

`reduced_strides=True` is the usual small-image adaptation of MobileNetV2 (CIFAR): the stem
and the first stride-2 block run at stride 1, so the total stride is 8 instead of 32 and, at
32 px, the last blocks see 4x4 maps (7x7 at 224 px with the full strides) instead of 1x1.
The module tree and every weight shape stay those of the timed network (same blocks,
kernels, SE, skips), so a state dict loads into either variant.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mnas.space.arch import Arch, LayerSig

BN_MOMENTUM = 0.01  # TF decay 0.99
BN_EPS = 1e-3
INITS = ("official", "torch")


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's SAME for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def activation(x: torch.Tensor, act: str | None) -> torch.Tensor:
    if act is None:
        return x
    return F.relu6(x) if act == "relu6" else F.relu(x)


class ConvBN(nn.Module):
    """kxk conv (no bias) with SAME padding, BatchNorm, optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, depthwise: bool = False,
                 act: str | None = "relu") -> None:
        super().__init__()
        self.kernel, self.stride, self.act = kernel, stride, act
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, momentum=BN_MOMENTUM, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1:
            top, bottom = same_pads(x.shape[2], self.kernel, self.stride)
            left, right = same_pads(x.shape[3], self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        return activation(self.bn(self.conv(x)), self.act)


class SqueezeExcite(nn.Module):
    """mean -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> sigmoid -> multiply."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.act = act
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.expand(activation(self.reduce(s), self.act))
        return x * torch.sigmoid(s)


def same_avg_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Average pool, window = stride, TF SAME padding with padding excluded from the mean."""
    if stride == 1:
        return x
    return F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)


class MnasLayer(nn.Module):
    """One layer of a block (see `LayerSig`): [expand] -> dw or regular conv -> [SE] -> [project] (+ skip)."""

    def __init__(self, sig: LayerSig) -> None:
        super().__init__()
        self.sig = sig
        act = sig.act
        self.expand: ConvBN | None = None
        self.project: ConvBN | None = None
        self.shortcut: ConvBN | None = None
        if sig.op == "conv":
            self.conv = ConvBN(sig.cin, sig.cout, sig.kernel, sig.stride, act=act)
            se_channels = sig.cout
        else:
            if sig.op == "mbconv":
                self.expand = ConvBN(sig.cin, sig.mid, 1, act=act)
            self.conv = ConvBN(sig.mid, sig.mid, sig.kernel, sig.stride, depthwise=True, act=act)
            self.project = ConvBN(sig.mid, sig.cout, 1, act=None)
            se_channels = sig.mid
        self.se = SqueezeExcite(se_channels, sig.se, act) if sig.se else None
        if sig.skip == "pool" and sig.cin != sig.cout:
            self.shortcut = ConvBN(sig.cin, sig.cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.conv(y)
        if self.se is not None:
            y = self.se(y)
        if self.project is not None:
            y = self.project(y)
        if self.sig.skip == "identity":
            y = y + x
        elif self.sig.skip == "pool":
            shortcut = same_avg_pool(x, self.sig.stride)
            if self.shortcut is not None:
                shortcut = self.shortcut(shortcut)
            y = y + shortcut
        return y


class Head(nn.Module):
    """1x1 conv-BN-act -> global average pool -> dropout -> fully connected (no conv: op "fc")."""

    def __init__(self, sig: LayerSig, dropout: float = 0.2) -> None:
        super().__init__()
        self.sig = sig
        self.conv = ConvBN(sig.cin, sig.cout, 1, act=sig.act) if sig.op != "fc" else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(sig.cout, sig.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).mean(dim=(2, 3))
        return self.fc(self.dropout(x))


class MnasNetModel(nn.Module):
    """stem -> layers -> head, mirroring `arch.layers()` (see the module docstring for the options)."""

    def __init__(self, arch: Arch, num_classes: int = 1000, dropout: float = 0.2, *, reduced_strides: bool = False,
                 init: str = "official") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init {init!r}: expected one of {INITS}")
        self.arch = arch
        self.reduced_strides = reduced_strides
        sigs = arch.layers(224, num_classes)  # spatial size does not change the module tree
        blocks = list(sigs[1:-1])
        if reduced_strides:
            first = next((i for i, sig in enumerate(blocks) if sig.stride > 1), None)
            if first is not None:
                blocks[first] = dataclasses.replace(blocks[first], stride=1)
        self.stem = ConvBN(3, sigs[0].cout, 3, 1 if reduced_strides else 2, act=sigs[0].act)
        self.layers = nn.ModuleList(MnasLayer(sig) for sig in blocks)
        self.head = Head(sigs[-1], dropout)
        if init == "official":
            official_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def official_init(module: nn.Module) -> None:
    """The official MnasNet initialisers (module docstring); uses torch's global RNG."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * (m.out_channels // m.groups)
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()


def build_model(arch: Arch, num_classes: int = 1000, dropout: float = 0.2, *, reduced_strides: bool = False,
                init: str = "official") -> MnasNetModel:
    """A trainable torch model of `arch` (NCHW input of any spatial size >= 8); options in the module docstring."""
    return MnasNetModel(arch, num_classes, dropout, reduced_strides=reduced_strides, init=init)


def build_layer(sig: LayerSig) -> nn.Module:
    """A module for one layer of the space (stem, block layer or head), as latency tables time it."""
    if sig.kind == "stem":
        return ConvBN(sig.cin, sig.cout, sig.kernel, sig.stride, act=sig.act)
    if sig.kind == "head":
        return Head(sig, dropout=0.0)
    return MnasLayer(sig)


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics, so equivalence tests exercise BN folding."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
