"""`Arch`: an immutable network (stem + blocks + head) and its expansion into layers.

The canonical string is what every store, table and search run keys on:
`stem32,r1_k3_s11_e1_i32_o16_noskip,...,head1280` (plus `,relu6` for ReLU6 nets). It parses
back exactly, so `Arch.parse(str(a)) == a`, and `arch.hash` (sha256 of it) is stable across
processes and machines.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mnas.errors import MnasError
from mnas.space.blocks import BlockSpec, ConvOp, SkipOp

ACTIVATIONS = ("relu", "relu6")


def same_output_size(size: int, stride: int) -> int:
    """Spatial output of a TensorFlow SAME-padded op."""
    return int(math.ceil(size / stride))


@dataclass(frozen=True)
class LayerSig:
    """One layer's identity for cost, latency tables and the builders.

    `kind` is "stem", "block" or "head". For blocks: `op` is the ConvOp value, `cin` the real
    input channels, `mid` the channels through the depthwise conv (expanded width), `se` the
    squeeze-excite reduced channels (0 = no SE), `skip` the skip *as applied* ("identity",
    "pool" or "none": an identity skip whose condition fails is "none", a pooling skip on a
    same-shape layer is "identity"). For the head, `cout` is the 1x1 conv width and `classes`
    the classifier size; a head without the 1x1 conv (`Arch.head_filters == 0`, MobileNetV1's
    official head: global pool + classifier on the last block's output) has `op` "fc" and
    `cout == cin` (the width the classifier reads).
    """

    kind: str
    op: str
    cin: int
    cout: int
    h: int
    w: int
    kernel: int = 1
    stride: int = 1
    expand: int = 1
    mid: int = 0
    se: int = 0
    skip: str = "none"
    act: str = "relu"
    classes: int = 0

    @property
    def out_h(self) -> int:
        return same_output_size(self.h, self.stride)

    @property
    def out_w(self) -> int:
        return same_output_size(self.w, self.stride)

    @property
    def key(self) -> str:
        """A compact, stable text key (latency tables are keyed on it)."""
        parts = [self.kind, self.op, f"{self.h}x{self.w}x{self.cin}", f"o{self.cout}", f"k{self.kernel}", f"s{self.stride}"]
        if self.kind == "block":
            parts += [f"e{self.expand}", f"m{self.mid}", f"se{self.se}", self.skip]
        if self.kind == "head":
            parts.append(f"c{self.classes}")
        if self.act != "relu":
            parts.append(self.act)
        return ":".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_key(cls, key: str) -> LayerSig:
        """Inverse of `key`."""
        parts = key.split(":")
        try:
            kind, op, shape = parts[0], parts[1], parts[2]
            h, w, cin = (int(x) for x in shape.split("x"))
            values: dict[str, Any] = {"kind": kind, "op": op, "h": h, "w": w, "cin": cin}
            rest = parts[3:]
            if rest and rest[-1] in ACTIVATIONS:
                values["act"] = rest.pop()
            prefixed = {"o": "cout", "k": "kernel", "s": "stride", "e": "expand", "m": "mid", "se": "se", "c": "classes"}
            for part in rest:
                if part in ("identity", "pool", "none"):
                    values["skip"] = part
                    continue
                match = re.fullmatch(r"([a-z]+)(\d+)", part)
                if match is None or match.group(1) not in prefixed:
                    raise ValueError(part)
                values[prefixed[match.group(1)]] = int(match.group(2))
            return cls(**values)
        except (ValueError, IndexError, TypeError) as exc:
            raise MnasError(f"layer key {key!r}: unexpected part {exc}: expected kind:op:HxWxC:o..:k..:s..") from None


def block_layers(block: BlockSpec, cin: int, h: int, w: int, act: str) -> list[LayerSig]:
    """Expand one block into its layers, following the official MnasBlock semantics.

    The declared input filters (`i`) set the expanded width, the SE width and the identity
    condition, while the depthwise/regular conv runs on the real input channels `cin` (the
    official mnasnet-small declares i16 after an 8-filter stem).
    """
    layers = []
    declared_in = block.input_filters
    for index in range(block.repeats):
        stride = block.stride if index == 0 else 1
        if index > 0:
            declared_in = block.output_filters
        if block.conv_op is ConvOp.CONV:
            mid = block.output_filters
        else:
            mid = declared_in * block.expand_ratio if block.expand_ratio != 1 else cin
        se = max(1, int(declared_in * block.se_ratio)) if block.has_se else 0
        same_shape = stride == 1 and declared_in == block.output_filters
        if block.skip is SkipOp.NONE:
            skip = "none"
        elif same_shape:
            skip = "identity"
        else:
            skip = "pool" if block.skip is SkipOp.POOL else "none"
        if skip == "identity" and cin != block.output_filters:
            raise MnasError(
                f"block {block}: identity skip needs input channels {cin} == output filters "
                f"{block.output_filters}: expected 'i' to match the previous block's output"
            )
        layers.append(
            LayerSig(
                kind="block",
                op=block.conv_op.value,
                cin=cin,
                cout=block.output_filters,
                h=h,
                w=w,
                kernel=block.kernel,
                stride=stride,
                expand=block.expand_ratio,
                mid=mid,
                se=se,
                skip=skip,
                act=act,
            )
        )
        cin = block.output_filters
        h, w = same_output_size(h, stride), same_output_size(w, stride)
    return layers


@dataclass(frozen=True)
class Arch:
    """Stem + blocks + head; immutable, hashable, with a canonical string.

    `head_filters` is the width of the 1x1 head conv before global pooling and the classifier;
    0 means no head conv (`head0`: the classifier reads the last block's output, as in
    MobileNetV1).
    """

    blocks: tuple[BlockSpec, ...]
    stem_filters: int = 32
    head_filters: int = 1280
    activation: str = "relu"
    _key: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.blocks:
            raise MnasError("arch: field 'blocks' is empty: expected at least one block string")
        if self.stem_filters < 1:
            raise MnasError(f"arch: field 'stem' = {self.stem_filters}: expected filters >= 1")
        if self.head_filters < 0:
            raise MnasError(f"arch: field 'head' = {self.head_filters}: expected filters >= 1, "
                            "or 0 for no head conv (global pool + classifier only)")
        if self.activation not in ACTIVATIONS:
            raise MnasError(f"arch: field 'activation' = {self.activation!r}: expected one of {ACTIVATIONS}")
        self.layers(32)  # validates channel chaining once, at construction

    def __str__(self) -> str:
        parts = [f"stem{self.stem_filters}", *(str(b) for b in self.blocks), f"head{self.head_filters}"]
        if self.activation != "relu":
            parts.append(self.activation)
        return ",".join(parts)

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit id (sha256 of the canonical string)."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str) -> Arch:
        """Parse a canonical string; also accepts bare block strings separated by ',', ';' or spaces."""
        tokens = [t for t in re.split(r"[,;\s]+", text.strip()) if t]
        if not tokens:
            raise MnasError(f"arch string {text!r}: expected block strings such as 'r1_k3_s11_e1_i32_o16_noskip'")
        stem = head = None
        activation = "relu"
        blocks = []
        for token in tokens:
            if re.fullmatch(r"stem\d+", token):
                stem = int(token[4:])
            elif re.fullmatch(r"head\d+", token):
                head = int(token[4:])
            elif token in ACTIVATIONS:
                activation = token
            else:
                blocks.append(BlockSpec.parse(token))
        if not blocks:
            raise MnasError(f"arch string {text!r}: expected at least one block string")
        return cls(
            blocks=tuple(blocks),
            stem_filters=stem if stem is not None else blocks[0].input_filters,
            head_filters=head if head is not None else 1280,
            activation=activation,
        )

    def layers(self, resolution: int = 224, num_classes: int = 1000) -> list[LayerSig]:
        """Every layer at a square input resolution: stem, each repeat of each block, head."""
        if resolution < 8:
            raise MnasError(f"resolution {resolution}: expected >= 8 pixels")
        stem = LayerSig(kind="stem", op="conv", cin=3, cout=self.stem_filters, h=resolution, w=resolution, kernel=3, stride=2, act=self.activation)
        out = [stem]
        cin, h, w = stem.cout, stem.out_h, stem.out_w
        for block in self.blocks:
            layers = block_layers(block, cin, h, w, self.activation)
            out.extend(layers)
            cin, h, w = layers[-1].cout, layers[-1].out_h, layers[-1].out_w
        if self.head_filters:
            out.append(LayerSig(kind="head", op="head", cin=cin, cout=self.head_filters, h=h, w=w,
                                act=self.activation, classes=num_classes))
        else:  # no head conv: global pool + classifier on the last block's `cin` channels
            out.append(LayerSig(kind="head", op="fc", cin=cin, cout=cin, h=h, w=w, act=self.activation,
                                classes=num_classes))
        return out

    def to_json(self) -> str:
        return json.dumps({"arch": str(self), "hash": self.hash, "blocks": [str(b) for b in self.blocks],
                           "stem_filters": self.stem_filters, "head_filters": self.head_filters,
                           "activation": self.activation})

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MnasError(f"arch JSON: {exc.msg} at position {exc.pos}: expected an object with key 'arch'") from None
        if not isinstance(data, dict) or "arch" not in data:
            raise MnasError("arch JSON: key 'arch' missing: expected the canonical arch string under 'arch'")
        return cls.parse(data["arch"])
