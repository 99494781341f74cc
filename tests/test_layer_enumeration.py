"""Layer enumeration: exactly the layers architectures of the space expand to, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mnas.errors import MnasError
from mnas.predictor.layers import count_by_kind, enumerate_layers, estimate_build_seconds
from mnas.space.search_space import SearchSpace, mnasnet

SMALL = SearchSpace(stages=((1, 16, 1, 1), (6, 24, 2, 2)))


def test_small_space_matches_hand_count() -> None:
    # Hand count for SMALL (stem 32, head 1280) at resolution 32: the stem runs 32 -> 16x16.
    # Widths (multiples of 4): block 0 {12, 16, 20}; block 1 {20, 24, 32}. Depths: block 0
    # {1, 2}; block 1 {1, 2, 3}. Ops: conv, dsconv, mbconv e3, mbconv e6 (4 distinct keys).
    # * stem: 1
    # * block 0 first layer: cin 32 (stem), stride 1, cout != 32 so identity skip does not
    #   apply: skips {pool, none} = 2 -> 4 ops x 2 kernels x 2 SE x 2 skips x 3 widths = 96
    # * block 0 repeated layer (depth 2): cin = cout = width, 16x16, skips {identity (pool and
    #   identity both apply as identity), none} = 2 -> 4 x 2 x 2 x 2 x 3 = 96
    # * block 1 first layer: cin in {12, 16, 20}, stride 2: skips {pool, none} ->
    #   4 x 2 x 2 x 2 x 3 widths x 3 input widths = 288
    # * block 1 repeated layer: 8x8, 4 x 2 x 2 x 2 x 3 = 96
    # * head: cin in {20, 24, 32} -> 3
    # total 1 + 96 + 96 + 288 + 96 + 3 = 580; per op (96+96+288+96)/4 = 144, mbconv = 2 x 144.
    layers = enumerate_layers(SMALL, 32)
    assert count_by_kind(layers) == {"block:conv": 144, "block:dsconv": 144, "block:mbconv": 288,
                                     "head": 3, "stem": 1, "total": 580}
    keys = [layer.key for layer in layers]
    assert len(set(keys)) == len(keys)


def test_consistency_small_space_enumeration_equals_layers_of_random_archs() -> None:
    """Both directions: every arch layer is enumerated, and every enumerated layer occurs."""
    enumerated = {layer.key for layer in enumerate_layers(SMALL, 32)}
    rng = np.random.default_rng(7)
    seen = {layer.key for _ in range(5000) for layer in SMALL.sample(rng).layers(32)}
    assert seen == enumerated


def test_mnasnet_space_contains_every_layer_of_500_random_archs() -> None:
    layers = enumerate_layers(mnasnet(), 224)
    # 7 blocks: block 0 has one input width (96 first layers), blocks 1..6 three (288 each);
    # each block adds 96 repeated layers; + stem + 3 heads
    assert count_by_kind(layers)["total"] == 96 + 6 * 288 + 7 * 96 + 1 + 3 == 2500
    keys = {layer.key for layer in layers}
    rng = np.random.default_rng(0)
    for _ in range(500):
        arch = mnasnet().sample(rng)
        missing = [layer.key for layer in arch.layers(224) if layer.key not in keys]
        assert not missing, f"{arch}: {missing[:3]}"


def test_other_resolution_changes_spatial_sizes_only() -> None:
    at_224 = enumerate_layers(mnasnet(), 224)
    at_192 = enumerate_layers(mnasnet(), 192)
    assert len(at_192) == len(at_224)
    assert at_192[0].h == 192 and at_192[-1].h == 6 and at_224[-1].h == 7


def test_estimate_build_seconds_and_errors() -> None:
    layers = enumerate_layers(SMALL, 32)
    assert estimate_build_seconds(layers, 1.5) == 870.0
    assert estimate_build_seconds(layers, 1.5, devices=2) == 435.0
    assert estimate_build_seconds(layers, 2.0, devices=3) == 388.0  # ceil(580 / 3) = 194 rounds
    assert estimate_build_seconds(layers[:7], 2.0, devices=3) == 6.0  # ceil(7 / 3) = 3 rounds
    with pytest.raises(MnasError, match=r"^per_layer_s = -1: expected seconds >= 0$"):
        estimate_build_seconds(layers, -1)
    with pytest.raises(MnasError, match=r"^devices = 0: expected at least 1 device$"):
        estimate_build_seconds(layers, 1.0, devices=0)
    with pytest.raises(MnasError, match=r"^resolution 4: expected >= 8 pixels$"):
        enumerate_layers(SMALL, 4)
