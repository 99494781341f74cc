"""The MnasNet factorized hierarchical search space (Tan et al., CVPR 2019, Sec. 4.1).

Seven blocks on MobileNetV2's skeleton; each block chooses, for all of its layers:
conv op {regular conv, depthwise-separable, MBConv e3, MBConv e6} x kernel {3, 5} x
squeeze-excite {0, 0.25} x skip {pooling, identity, none} x filters {0.75, 1.0, 1.25} x
MobileNetV2's width x layers {n-1, n, n+1} (at least 1) = 432 choices per block. Strides,
the 32-filter stem and the 1280-filter head stay MobileNetV2's.

Filter choices are rounded to a multiple of 4 (not 8): with 8, 0.75 x 16 and 1.0 x 16 would
collapse into the same width and the space would silently lose choices.

Tokens: one integer per decision, six decisions per block in the order of `DECISIONS`
(conv op, kernel, SE, skip, filters, layers), 42 in all. `decode` maps tokens to an `Arch`,
`encode` maps an `Arch` of the space back to tokens. Where two choices give the same network
(layers n-1 and n for a block with n = 1), `encode` returns the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mnas.errors import MnasError
from mnas.space.arch import Arch
from mnas.space.blocks import BlockSpec, SkipOp, round_filters

# (expand, filters, layers, stride) of MobileNetV2's 7 bottleneck stages
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)

CONV_OPS: tuple[str, ...] = ("conv", "dsconv", "mbconv3", "mbconv6")
KERNELS: tuple[int, ...] = (3, 5)
SE_RATIOS: tuple[float, ...] = (0.0, 0.25)
SKIPS: tuple[SkipOp, ...] = (SkipOp.POOL, SkipOp.IDENTITY, SkipOp.NONE)
FILTER_MULTIPLIERS: tuple[float, ...] = (0.75, 1.0, 1.25)
LAYER_DELTAS: tuple[int, ...] = (-1, 0, 1)
DECISIONS: tuple[str, ...] = ("conv", "kernel", "se", "skip", "filters", "layers")
FILTER_DIVISOR = 4


@dataclass(frozen=True)
class BlockChoice:
    """One block's decisions, as values."""

    conv: str
    kernel: int
    se_ratio: float
    skip: SkipOp
    filters: int
    layers: int


class SearchSpace:
    """The factorized hierarchical space over a base skeleton of stages."""

    def __init__(self, stages: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_STAGES,
                 stem_filters: int = 32, head_filters: int = 1280) -> None:
        self.stages = tuple(stages)
        self.stem_filters = stem_filters
        self.head_filters = head_filters
        self._options: list[tuple[tuple, ...]] = []
        for _, filters, layers, _ in self.stages:
            widths = tuple(round_filters(filters, m, FILTER_DIVISOR) for m in FILTER_MULTIPLIERS)
            depths = tuple(max(1, layers + d) for d in LAYER_DELTAS)
            self._options.append((CONV_OPS, KERNELS, SE_RATIOS, SKIPS, widths, depths))

    @property
    def num_blocks(self) -> int:
        return len(self.stages)

    @property
    def decisions(self) -> list[tuple[str, int]]:
        """(name, number of choices) of every decision, in token order."""
        return [(f"b{b}.{name}", len(options)) for b in range(self.num_blocks)
                for name, options in zip(DECISIONS, self._options[b], strict=True)]

    @property
    def choices_per_block(self) -> int:
        return math.prod(len(o) for o in self._options[0])

    def block_options(self, block: int) -> dict[str, tuple]:
        """The values each decision of `block` can take."""
        return dict(zip(DECISIONS, self._options[block], strict=True))

    def size(self) -> int:
        """Number of token sequences: (choices per block) ** blocks."""
        return math.prod(math.prod(len(o) for o in opts) for opts in self._options)

    def per_layer_size(self, layers_per_block: int) -> int:
        """Size of a flat per-layer space with the same per-layer choices (the paper's comparison)."""
        return self.choices_per_block ** (self.num_blocks * layers_per_block)

    @staticmethod
    def paper_sizes(blocks: int = 5, layers_per_block: int = 3, choices: int = 432) -> tuple[int, int]:
        """The paper's example: hierarchical S**B vs per-layer S**(B*N) (~1e13 vs ~1e39)."""
        return choices**blocks, choices ** (blocks * layers_per_block)

    def sample_tokens(self, rng: np.random.Generator) -> list[int]:
        return [int(rng.integers(n)) for _, n in self.decisions]

    def sample(self, rng: np.random.Generator | int) -> Arch:
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        return self.decode(self.sample_tokens(rng))

    def check_tokens(self, tokens: Sequence[int]) -> None:
        decisions = self.decisions
        if len(tokens) != len(decisions):
            raise MnasError(f"tokens: got {len(tokens)} values: expected {len(decisions)} (6 per block)")
        for value, (name, n) in zip(tokens, decisions, strict=True):
            if not isinstance(value, int | np.integer) or not 0 <= int(value) < n:
                raise MnasError(f"token {name} = {value!r}: expected an integer in [0, {n - 1}]")

    def block_choice(self, block: int, tokens: Sequence[int]) -> BlockChoice:
        values = [opts[int(t)] for opts, t in zip(self._options[block], tokens, strict=True)]
        return BlockChoice(*values)

    def decode(self, tokens: Sequence[int]) -> Arch:
        self.check_tokens(tokens)
        blocks = []
        cin = self.stem_filters
        for b, (expand, _, _, stride) in enumerate(self.stages):
            del expand
            choice = self.block_choice(b, tokens[6 * b: 6 * b + 6])
            expand_ratio = {"conv": 1, "dsconv": 1, "mbconv3": 3, "mbconv6": 6}[choice.conv]
            blocks.append(BlockSpec(
                repeats=choice.layers, kernel=choice.kernel, strides=(stride, stride),
                expand_ratio=expand_ratio, input_filters=cin, output_filters=choice.filters,
                se_ratio=choice.se_ratio or None, skip=choice.skip, regular_conv=choice.conv == "conv",
            ))
            cin = choice.filters
        return Arch(blocks=tuple(blocks), stem_filters=self.stem_filters, head_filters=self.head_filters)

    def encode(self, arch: Arch) -> list[int]:
        """Tokens of an architecture of this space; a one-line error names the first block that is not."""
        if len(arch.blocks) != self.num_blocks:
            raise MnasError(f"arch {arch}: has {len(arch.blocks)} blocks: expected {self.num_blocks} for this space")
        if arch.stem_filters != self.stem_filters or arch.head_filters != self.head_filters:
            raise MnasError(f"arch {arch}: stem/head {arch.stem_filters}/{arch.head_filters}: expected "
                            f"{self.stem_filters}/{self.head_filters}")
        tokens: list[int] = []
        for b, block in enumerate(arch.blocks):
            conv = "conv" if block.regular_conv else {1: "dsconv", 3: "mbconv3", 6: "mbconv6"}.get(block.expand_ratio, "?")
            values = (conv, block.kernel, block.se_ratio or 0.0, block.skip, block.output_filters, block.repeats)
            for name, value, options in zip(DECISIONS, values, self._options[b], strict=True):
                if value not in options:
                    raise MnasError(f"arch block {b} ({block}): {name} = {value!r}: expected one of {list(options)}")
                tokens.append(options.index(value))
            if block.stride != self.stages[b][3]:
                raise MnasError(f"arch block {b} ({block}): stride {block.stride}: expected {self.stages[b][3]}")
        return tokens


def mnasnet() -> SearchSpace:
    """The paper's space on MobileNetV2."""
    return SearchSpace()
