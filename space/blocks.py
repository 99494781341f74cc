"""Block specifications in the official TF-TPU MnasNet block-string language, extended.

Official strings (`r3_k5_s22_e3_i24_o40_se0.25`, `..._noskip`) parse and print unchanged.
Two suffixes extend them to the search space's ops (docs/architecture.md, "Architectures"):

* `_conv`  - the conv op is a regular kxk convolution (cin -> cout, BN, activation) instead
  of the MBConv family; it requires `e1`.
* `_pool`  - the "pooling" skip op (see `SkipOp.POOL`).

Without `_conv`, `e1` is the depthwise-separable conv (depthwise kxk -> BN-act -> 1x1 project
-> BN), exactly as the official MBConv with expand ratio 1; `e3`/`e6` are MBConv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum

from mnas.errors import MnasError


class ConvOp(str, Enum):
    """The conv op of a block, derived from the block string."""

    CONV = "conv"  # regular kxk convolution
    DSCONV = "dsconv"  # depthwise-separable (MBConv e1)
    MBCONV = "mbconv"  # inverted bottleneck with expansion


class SkipOp(str, Enum):
    """How a layer's input reaches its output.

    IDENTITY: residual add, applied only when stride is 1 and input == output filters (as the
      official code: otherwise silently no skip).
    POOL: "pooling" skip, which the paper names but does not define. mnas defines it as: an
      average pool with window = stride (TF SAME padding, padding excluded from the mean),
      followed by a 1x1 conv + BN (no activation) when the channel count changes, added to
      the layer's output. On a stride-1, same-width layer it is the identity add, so within a
      block it differs from IDENTITY only on the block's first layer.
    NONE: no skip.
    """

    IDENTITY = "identity"
    POOL = "pool"
    NONE = "none"


def block_error(text: str, field: str, value: object, expected: str) -> MnasError:
    return MnasError(f"block string {text!r}: field {field!r} = {value!r}: expected {expected}")


_TOKEN = re.compile(r"^([a-z]+)(.*)$")


@dataclass(frozen=True)
class BlockSpec:
    """One block: `repeats` layers sharing op, kernel, expand, SE and skip."""

    repeats: int
    kernel: int
    strides: tuple[int, int]
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: float | None = None
    skip: SkipOp = SkipOp.IDENTITY
    regular_conv: bool = False

    def __post_init__(self) -> None:
        text = self.to_string_unchecked()
        if self.repeats < 1:
            raise block_error(text, "r", self.repeats, "a repeat count >= 1")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise block_error(text, "k", self.kernel, "an odd kernel size >= 1")
        if len(self.strides) != 2 or self.strides[0] != self.strides[1] or self.strides[0] not in (1, 2):
            raise block_error(text, "s", self.strides, "11 or 22 (equal strides of 1 or 2)")
        if self.expand_ratio < 1:
            raise block_error(text, "e", self.expand_ratio, "an expand ratio >= 1")
        if self.input_filters < 1:
            raise block_error(text, "i", self.input_filters, "input filters >= 1")
        if self.output_filters < 1:
            raise block_error(text, "o", self.output_filters, "output filters >= 1")
        if self.se_ratio is not None and not 0 < self.se_ratio <= 1:
            raise block_error(text, "se", self.se_ratio, "a squeeze-excite ratio in (0, 1]")
        if self.regular_conv and self.expand_ratio != 1:
            raise block_error(text, "e", self.expand_ratio, "e1 with the regular conv op (_conv)")

    @property
    def stride(self) -> int:
        return self.strides[0]

    @property
    def conv_op(self) -> ConvOp:
        if self.regular_conv:
            return ConvOp.CONV
        return ConvOp.DSCONV if self.expand_ratio == 1 else ConvOp.MBCONV

    @property
    def has_se(self) -> bool:
        return self.se_ratio is not None and self.se_ratio > 0

    def to_string_unchecked(self) -> str:
        parts = [
            f"r{self.repeats}",
            f"k{self.kernel}",
            "s" + "".join(str(s) for s in self.strides),
            f"e{self.expand_ratio}",
            f"i{self.input_filters}",
            f"o{self.output_filters}",
        ]
        if self.se_ratio is not None:
            parts.append(f"se{self.se_ratio:g}")
        if self.regular_conv:
            parts.append("conv")
        if self.skip is SkipOp.NONE:
            parts.append("noskip")
        elif self.skip is SkipOp.POOL:
            parts.append("pool")
        return "_".join(parts)

    def __str__(self) -> str:
        return self.to_string_unchecked()

    def scaled(self, input_filters: int, output_filters: int) -> BlockSpec:
        return replace(self, input_filters=input_filters, output_filters=output_filters)

    @classmethod
    def parse(cls, text: str) -> BlockSpec:
        """Parse a block string; every malformed token raises a one-line error naming it."""
        if not isinstance(text, str) or not text.strip():
            raise MnasError(f"block string {text!r}: expected e.g. 'r3_k5_s22_e3_i24_o40_se0.25'")
        text = text.strip()
        fields: dict[str, str] = {}
        flags: set[str] = set()
        for token in text.split("_"):
            match = _TOKEN.match(token)
            if match is None:
                raise MnasError(f"block string {text!r}: token {token!r}: expected a letter prefix such as r3, k5, s22")
            key, value = match.groups()
            if key in ("noskip", "conv", "pool"):
                if value:
                    raise block_error(text, key, token, f"the bare flag '_{key}'")
                if key in flags:
                    raise block_error(text, key, token, "each flag at most once")
                flags.add(key)
                continue
            if key not in ("r", "k", "s", "e", "i", "o", "se"):
                raise MnasError(
                    f"block string {text!r}: token {token!r}: expected one of r, k, s, e, i, o, se, "
                    "noskip, conv, pool"
                )
            if key in fields:
                raise block_error(text, key, token, "each field at most once")
            fields[key] = value
        missing = [key for key in ("r", "k", "s", "e", "i", "o") if key not in fields]
        if missing:
            raise block_error(text, missing[0], None, "present (r, k, s, e, i, o are required)")
        if "noskip" in flags and "pool" in flags:
            raise block_error(text, "skip", "noskip+pool", "at most one skip flag")

        def integer(key: str) -> int:
            value = fields[key]
            if not re.fullmatch(r"-?\d+", value):
                raise block_error(text, key, value, "an integer")
            return int(value)

        strides_text = fields["s"]
        if not re.fullmatch(r"\d\d?", strides_text):
            raise block_error(text, "s", strides_text, "two stride digits such as 11 or 22")
        strides = tuple(int(c) for c in strides_text) if len(strides_text) == 2 else (int(strides_text),) * 2
        se_ratio = None
        if "se" in fields:
            try:
                se_ratio = float(fields["se"])
            except ValueError:
                raise block_error(text, "se", fields["se"], "a number such as 0.25") from None
        skip = SkipOp.NONE if "noskip" in flags else SkipOp.POOL if "pool" in flags else SkipOp.IDENTITY
        return cls(
            repeats=integer("r"),
            kernel=integer("k"),
            strides=(strides[0], strides[1]),
            expand_ratio=integer("e"),
            input_filters=integer("i"),
            output_filters=integer("o"),
            se_ratio=se_ratio,
            skip=skip,
            regular_conv="conv" in flags,
        )


def round_filters(filters: float, multiplier: float = 1.0, divisor: int = 8) -> int:
    """The official filter rounding: nearest multiple of `divisor`, never below 90% of the target."""
    scaled = filters * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)
