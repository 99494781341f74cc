"""The factorized hierarchical search space: sizes, sampling, token round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.blocks import SkipOp
from mnas.space.search_space import mnasnet


def test_choices_per_block_and_sizes() -> None:
    space = mnasnet()
    assert space.choices_per_block == 4 * 2 * 2 * 3 * 3 * 3 == 432
    assert len(space.decisions) == 42
    hierarchical, per_layer = space.paper_sizes(blocks=5, layers_per_block=3)
    assert 1e13 <= hierarchical < 2e13  # the paper's ~10^13
    assert 1e39 <= per_layer < 1e40  # ~10^39
    assert space.size() == 432**7


def test_block_options_follow_mobilenet_v2() -> None:
    space = mnasnet()
    assert space.block_options(3)["filters"] == (48, 64, 80)
    assert space.block_options(3)["layers"] == (3, 4, 5)
    assert space.block_options(0)["layers"] == (1, 1, 2)  # n-1 clipped at 1
    assert space.block_options(0)["skip"] == (SkipOp.POOL, SkipOp.IDENTITY, SkipOp.NONE)
    # multiples of 4 keep the three filter choices distinct everywhere
    for block in range(7):
        assert len(set(space.block_options(block)["filters"])) == 3


def test_sampling_is_seeded() -> None:
    space = mnasnet()
    assert space.sample(7) == space.sample(7)
    assert space.sample(7) != space.sample(8)


@pytest.mark.parametrize("seed", range(25))
def test_decode_encode_round_trip(seed: int) -> None:
    space = mnasnet()
    tokens = space.sample_tokens(np.random.default_rng(seed))
    arch = space.decode(tokens)
    canonical = space.encode(arch)
    assert space.decode(canonical) == arch
    # tokens differ only where two choices give the same network (layers n-1 == n when n = 1)
    for b in range(7):
        assert canonical[6 * b: 6 * b + 5] == tokens[6 * b: 6 * b + 5]


def test_strides_stay_mobilenet_v2() -> None:
    arch = mnasnet().sample(1)
    assert [b.stride for b in arch.blocks] == [1, 2, 2, 2, 1, 2, 1]


def test_bad_tokens() -> None:
    space = mnasnet()
    with pytest.raises(MnasError, match="expected 42"):
        space.decode([0] * 5)
    bad = [0] * 42
    bad[1] = 2
    with pytest.raises(MnasError, match=r"token b0.kernel = 2: expected an integer in \[0, 1\]"):
        space.decode(bad)


def test_encode_rejects_archs_outside_the_space() -> None:
    # MnasNet-A1's first four blocks lie in the space; its 112-filter block does not
    with pytest.raises(MnasError, match=r"arch block 4 \(r2_k3_s11_e6_i80_o112_se0.25\): filters = 112: expected one of \[72, 96, 120\]"):
        mnasnet().encode(zoo.get("mnasnet-a1"))
