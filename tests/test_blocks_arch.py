"""Block strings and Arch: official strings round-trip exactly, bad input names the field."""

from __future__ import annotations

import json

import pytest

from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.arch import Arch, LayerSig
from mnas.space.blocks import BlockSpec, ConvOp, SkipOp, round_filters

OFFICIAL = [name for name in zoo.names() if name.startswith("mnasnet")]


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_block_strings_round_trip_exactly(name: str) -> None:
    for text in zoo.entry(name).blocks:
        assert str(BlockSpec.parse(text)) == text


def test_block_fields_are_parsed() -> None:
    block = BlockSpec.parse("r3_k5_s22_e3_i24_o40_se0.25")
    assert (block.repeats, block.kernel, block.stride, block.expand_ratio) == (3, 5, 2, 3)
    assert (block.input_filters, block.output_filters, block.se_ratio) == (24, 40, 0.25)
    assert block.skip is SkipOp.IDENTITY and block.conv_op is ConvOp.MBCONV
    assert BlockSpec.parse("r1_k3_s11_e1_i32_o16_noskip").skip is SkipOp.NONE
    assert BlockSpec.parse("r1_k3_s11_e1_i32_o16").conv_op is ConvOp.DSCONV


def test_extensions_round_trip() -> None:
    for text in ("r2_k5_s22_e1_i16_o24_se0.25_conv_pool", "r1_k3_s11_e6_i16_o16_pool", "r1_k3_s11_e1_i8_o8_conv_noskip"):
        assert str(BlockSpec.parse(text)) == text
    assert BlockSpec.parse("r2_k5_s22_e1_i16_o24_conv").conv_op is ConvOp.CONV


@pytest.mark.parametrize(("text", "message"), [
    ("r-1_k3_s11_e1_i32_o16", "field 'r' = -1: expected a repeat count >= 1"),
    ("r1_k4_s11_e1_i32_o16", "field 'k' = 4: expected an odd kernel size"),
    ("r1_k3_s12_e1_i32_o16", "field 's'"),
    ("r1_k3_s11_e1_i32", "field 'o' = None: expected present"),
    ("r1_k3_s11_e1_i32_o16_zz3", "token 'zz3': expected one of"),
    ("r1_k3_s11_e1_i32_o16_se0.2x", "field 'se' = '0.2x': expected a number"),
    ("r1_k3_s11_e6_i32_o16_conv", "field 'e' = 6: expected e1 with the regular conv op"),
    ("r1_k3x_s11_e1_i32_o16", "field 'k' = '3x': expected an integer"),
    ("r1_k3_s11_e1_i32_o16_noskip_pool", "at most one skip flag"),
])
def test_malformed_block_strings_name_the_field(text: str, message: str) -> None:
    with pytest.raises(MnasError) as info:
        BlockSpec.parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_round_filters_matches_official_rule() -> None:
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 0.35) == 16  # 11.2 -> 8 would lose > 10%, so +8
    assert round_filters(16, 1.4) == 24  # 22.4 -> 24
    assert round_filters(1280, 1.4) == 1792


@pytest.mark.parametrize("name", zoo.names())
def test_arch_string_hash_and_json_round_trip(name: str) -> None:
    arch = zoo.get(name)
    assert Arch.parse(str(arch)) == arch
    assert Arch.from_json(arch.to_json()) == arch
    assert json.loads(arch.to_json())["hash"] == arch.hash
    assert len(arch.hash) == 16


def test_hash_is_stable_across_processes() -> None:
    # sha256 of the canonical string: a constant, not Python's salted hash()
    assert zoo.get("mnasnet-a1").hash == "d5676d1ba7705f2b"


def test_bare_block_list_defaults_stem_and_head() -> None:
    arch = Arch.parse(" ".join(zoo.entry("mnasnet-a1").blocks))
    assert arch == zoo.get("mnasnet-a1")


def test_identity_skip_only_where_official_applies_it() -> None:
    layers = zoo.get("mnasnet-a1").layers(224)
    # first block is _noskip; stride-2 first layers never skip; repeats do
    assert [layer.skip for layer in layers[1:5]] == ["none", "none", "identity", "none"]
    # the official mnasnet-small declares i16 after an 8-filter stem: no skip (16 != 8),
    # and the depthwise conv runs on the real 8 channels
    small = zoo.get("mnasnet-small").layers(224)
    assert small[1].cin == 8 and small[1].mid == 8 and small[1].skip == "none"


def test_identity_skip_on_stride_two_is_simply_not_applied() -> None:
    arch = Arch.parse("stem16,r1_k3_s22_e1_i16_o16")
    assert arch.layers(64)[1].skip == "none"


def test_pool_skip_is_identity_on_same_shape_layers() -> None:
    arch = Arch.parse("stem16,r2_k3_s22_e3_i16_o24_pool")
    first, second = arch.layers(64)[1:3]
    assert (first.skip, second.skip) == ("pool", "identity")


def test_layer_keys_round_trip() -> None:
    for layer in zoo.get("mnasnet-a1").layers(224) + zoo.get("mobilenet-v2").layers(160):
        assert LayerSig.from_key(layer.key) == layer


def test_bad_layer_key_is_one_line_error() -> None:
    with pytest.raises(MnasError, match="layer key 'block:mbconv:oops'"):
        LayerSig.from_key("block:mbconv:oops")


def test_bad_arch_json() -> None:
    with pytest.raises(MnasError, match="key 'arch' missing"):
        Arch.from_json("{}")
