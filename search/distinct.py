"""Distinct networks of a search space, and sampling each of them equally often.

Some token sequences of the factorized space give the same network. For a block whose stage
has one layer (MobileNetV2's first and last), the layer-count choices n-1 and n both give
one layer; and an identity skip only applies to a layer with stride 1 whose input and output
widths match, so in a block of one layer (its first layer changes the width, or the stride)
the identity and none skips give the same layers. Sampling tokens uniformly therefore draws
such networks two or four times as often as the others.

`DistinctSampler` counts the networks instead: two token choices of a block are the same
network when they give the same layers (`Arch.layers`: op, widths, kernel, stride, expand,
SE and the skip *as applied*) from the same input width. Which networks are equal depends
on the previous block's width, so the sampler walks the blocks with a dynamic programme over
that width: N_b(c) = sum over the distinct networks d of block b from input width c of
N_{b+1}(width of d). Sampling block by block with probability N_{b+1}(width of d) / N_b(c)
draws every distinct whole network with probability exactly 1 / N_0(stem). Each network is
returned as its canonical tokens: the first token choice (in token order) that gives it, the
rule `SearchSpace.encode` follows.

Who uses it: random search draws its samples here, and so does regularized evolution for its
initial population. The controller does not: it is a policy over tokens, and at
initialisation it gives a network the sum of the probabilities of its token sequences; PPO
sees the same reward for both sequences of a network and learns them together (documented
rule, `tests/test_search_faults.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np

from mnas.space.search_space import SearchSpace

__all__ = ["BlockClass", "DistinctSampler"]


@dataclasses.dataclass(frozen=True)
class BlockClass:
    """One distinct network of a block from a given input width: its canonical tokens, its token choices."""

    tokens: tuple[int, ...]  # the first (canonical) choice of the block's 6 decisions
    members: tuple[tuple[int, ...], ...]  # every choice giving these layers
    cout: int


@functools.lru_cache(maxsize=256)
def _block_classes(stage: tuple[int, int, int, int], cin: int) -> tuple[BlockClass, ...]:
    """The distinct networks of one stage's block from input width `cin` (through `SearchSpace.decode`)."""
    one = SearchSpace(stages=(stage,), stem_filters=cin, head_filters=cin)
    counts = [n for _, n in one.decisions]
    groups: dict[tuple, list[tuple[int, ...]]] = {}
    couts: dict[tuple, int] = {}
    for tokens in itertools.product(*(range(n) for n in counts)):
        arch = one.decode(list(tokens))
        layers = arch.layers(224, 10)[1:-1]
        key = tuple(dataclasses.astuple(layer) for layer in layers)
        groups.setdefault(key, []).append(tuple(tokens))
        couts[key] = layers[-1].cout
    return tuple(BlockClass(members[0], tuple(members), couts[key]) for key, members in groups.items())


class DistinctSampler:
    """Uniform samples over the distinct networks of `space` (module docstring)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        stages = space.stages
        # widths each block can receive: the stem's, then every width option of the block before
        self._inputs: list[list[int]] = [[space.stem_filters]]
        for b in range(1, len(stages)):
            self._inputs.append(sorted({c.cout for cin in self._inputs[b - 1] for c in _block_classes(stages[b - 1], cin)}))
        # counts[b][cin] = distinct networks of blocks b.. from input width cin (exact integers)
        self._counts: list[dict[int, int]] = [dict() for _ in stages] + [{}]
        for b in reversed(range(len(stages))):
            for cin in self._inputs[b]:
                self._counts[b][cin] = sum(self._rest(b + 1, c.cout) for c in _block_classes(stages[b], cin))

    def _rest(self, block: int, cin: int) -> int:
        return 1 if block == len(self.space.stages) else self._counts[block][cin]

    def count(self) -> int:
        """How many distinct networks the space holds (token sequences: `space.size()`)."""
        return self._counts[0][self.space.stem_filters]

    def sample_tokens(self, rng: np.random.Generator) -> list[int]:
        """Canonical tokens of a network drawn uniformly from the distinct ones."""
        tokens: list[int] = []
        cin = self.space.stem_filters
        for b, stage in enumerate(self.space.stages):
            classes = _block_classes(stage, cin)
            weights = np.array([float(self._rest(b + 1, c.cout)) for c in classes])
            cumulative = np.cumsum(weights / weights.sum())
            pick = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(classes) - 1)
            tokens.extend(classes[pick].tokens)
            cin = classes[pick].cout
        return tokens

    def _classes_of(self, tokens: Sequence[int]) -> list[BlockClass]:
        self.space.check_tokens(tokens)
        out, cin = [], self.space.stem_filters
        for b, stage in enumerate(self.space.stages):
            block = tuple(int(t) for t in tokens[6 * b: 6 * b + 6])
            found = next(c for c in _block_classes(stage, cin) if block in c.members)
            out.append(found)
            cin = found.cout
        return out

    def canonical(self, tokens: Sequence[int]) -> list[int]:
        """The canonical tokens of the network `tokens` give (the first choice per block)."""
        return [t for c in self._classes_of(tokens) for t in c.tokens]

    def multiplicity(self, tokens: Sequence[int]) -> int:
        """How many token sequences give the same network as `tokens`."""
        return math.prod(len(c.members) for c in self._classes_of(tokens))
