"""The zoo at x1.0 is the official reference: block strings, params and mult-adds (issue 11, point 8)."""

from __future__ import annotations

import pytest

from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.arch import Arch
from mnas.space.cost import arch_cost, layer_cost

# The block-string lists of the TF-TPU reference (tensorflow/tpu models/official/mnasnet/
# mnasnet_models.py), written out here rather than read from the zoo, so the zoo is checked
# against them. MobileNetV2 is not in that file: its list is the paper's Table 2 in the same
# block language (t = e, c = o, n = r, s = s).
OFFICIAL_BLOCKS = {
    "mnasnet-a1": [
        "r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
        "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
        "r1_k3_s11_e6_i160_o320"],
    "mnasnet-b1": [
        "r1_k3_s11_e1_i32_o16_noskip", "r3_k3_s22_e3_i16_o24", "r3_k5_s22_e3_i24_o40",
        "r3_k5_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o96", "r4_k5_s22_e6_i96_o192",
        "r1_k3_s11_e6_i192_o320_noskip"],
    "mnasnet-small": [
        "r1_k3_s11_e1_i16_o8", "r1_k3_s22_e3_i8_o16", "r2_k3_s22_e6_i16_o16",
        "r4_k5_s22_e6_i16_o32_se0.25", "r3_k3_s11_e6_i32_o32_se0.25", "r3_k5_s22_e6_i32_o88_se0.25",
        "r1_k3_s11_e6_i88_o144"],
    "mnasnet-d1": [
        "r1_k3_s11_e9_i32_o24", "r3_k3_s22_e9_i24_o36", "r5_k3_s22_e9_i36_o48",
        "r4_k5_s22_e9_i48_o96", "r5_k7_s11_e3_i96_o96", "r3_k3_s22_e9_i96_o80",
        "r1_k7_s11_e6_i80_o320_noskip"],
    "mnasnet-d1-320": [
        "r3_k5_s11_e6_i32_o24", "r4_k7_s22_e9_i24_o36", "r5_k5_s22_e9_i36_o48",
        "r5_k7_s22_e6_i48_o96", "r5_k3_s11_e9_i96_o144", "r5_k5_s22_e6_i144_o160",
        "r1_k7_s11_e9_i160_o320"],
    "mobilenet-v2": [
        "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r3_k3_s22_e6_i24_o32",
        "r4_k3_s22_e6_i32_o64", "r3_k3_s11_e6_i64_o96", "r3_k3_s22_e6_i96_o160",
        "r1_k3_s11_e6_i160_o320"],
    # MobileNetV1, paper Table 1: 13 depthwise-separable layers, no skips, no head conv
    "mobilenet-v1": [
        "r1_k3_s11_e1_i32_o64_noskip", "r1_k3_s22_e1_i64_o128_noskip", "r1_k3_s11_e1_i128_o128_noskip",
        "r1_k3_s22_e1_i128_o256_noskip", "r1_k3_s11_e1_i256_o256_noskip", "r1_k3_s22_e1_i256_o512_noskip",
        "r5_k3_s11_e1_i512_o512_noskip", "r1_k3_s22_e1_i512_o1024_noskip", "r1_k3_s11_e1_i1024_o1024_noskip"],
    # ProxylessNAS and Single-Path NAS: the per-layer lists of pytorchcv's proxylessnas.py /
    # spnasnet.py (ProxylessNAS's official proxyless_*.config), zero layers dropped, runs of
    # equal layers written as one block
    "proxylessnas-mobile": [
        "r1_k3_s11_e1_i32_o16", "r1_k5_s22_e3_i16_o32", "r1_k3_s11_e3_i32_o32", "r1_k7_s22_e3_i32_o40",
        "r1_k3_s11_e3_i40_o40", "r2_k5_s11_e3_i40_o40", "r1_k7_s22_e6_i40_o80", "r3_k5_s11_e3_i80_o80",
        "r1_k5_s11_e6_i80_o96", "r3_k5_s11_e3_i96_o96", "r2_k7_s22_e6_i96_o192", "r2_k7_s11_e3_i192_o192",
        "r1_k7_s11_e6_i192_o320"],
    "proxylessnas-mobile14": [
        "r1_k3_s11_e1_i48_o24", "r1_k5_s22_e3_i24_o40", "r1_k3_s11_e3_i40_o40", "r1_k7_s22_e3_i40_o56",
        "r1_k3_s11_e3_i56_o56", "r2_k5_s11_e3_i56_o56", "r1_k7_s22_e6_i56_o112", "r3_k5_s11_e3_i112_o112",
        "r1_k5_s11_e6_i112_o136", "r3_k5_s11_e3_i136_o136", "r2_k7_s22_e6_i136_o256", "r2_k7_s11_e3_i256_o256",
        "r1_k7_s11_e6_i256_o448"],
    "proxylessnas-cpu": [
        "r1_k3_s11_e1_i40_o24", "r1_k3_s22_e6_i24_o32", "r3_k3_s11_e3_i32_o32", "r1_k3_s22_e6_i32_o48",
        "r2_k3_s11_e3_i48_o48", "r1_k5_s11_e3_i48_o48", "r1_k3_s22_e6_i48_o88", "r1_k3_s11_e3_i88_o88",
        "r1_k5_s11_e6_i88_o104", "r3_k3_s11_e3_i104_o104", "r1_k5_s22_e6_i104_o216", "r2_k5_s11_e3_i216_o216",
        "r1_k3_s11_e3_i216_o216", "r1_k5_s11_e6_i216_o360"],
    "proxylessnas-gpu": [
        "r1_k3_s11_e1_i40_o24", "r1_k5_s22_e3_i24_o32", "r1_k7_s22_e3_i32_o56", "r1_k3_s11_e3_i56_o56",
        "r1_k7_s22_e6_i56_o112", "r1_k5_s11_e3_i112_o112", "r1_k5_s11_e6_i112_o128", "r1_k3_s11_e3_i128_o128",
        "r1_k5_s11_e3_i128_o128", "r3_k7_s22_e6_i128_o256", "r1_k5_s11_e6_i256_o256", "r1_k7_s11_e6_i256_o432"],
    "spnasnet": [
        "r1_k3_s11_e1_i32_o16_noskip", "r1_k3_s22_e3_i16_o24", "r2_k3_s11_e3_i24_o24", "r1_k5_s22_e6_i24_o40",
        "r3_k3_s11_e3_i40_o40", "r1_k5_s22_e6_i40_o80", "r3_k3_s11_e3_i80_o80", "r1_k5_s11_e6_i80_o96",
        "r3_k5_s11_e3_i96_o96", "r4_k5_s22_e6_i96_o192", "r1_k3_s11_e6_i192_o320_noskip"],
}
OFFICIAL_STEM = {"mnasnet-small": 8, "proxylessnas-mobile14": 48, "proxylessnas-cpu": 40, "proxylessnas-gpu": 40}
OFFICIAL_HEAD = {"mobilenet-v1": 0, "proxylessnas-mobile14": 1792, "proxylessnas-cpu": 1432,
                 "proxylessnas-gpu": 1728}


def test_every_zoo_model_has_a_reference() -> None:
    assert sorted(OFFICIAL_BLOCKS) == sorted(zoo.names())


@pytest.mark.parametrize("name", sorted(OFFICIAL_BLOCKS))
def test_zoo_prints_the_official_block_strings_at_x1(name: str) -> None:
    arch = zoo.get(name)
    assert [str(block) for block in arch.blocks] == OFFICIAL_BLOCKS[name]
    assert arch.stem_filters == OFFICIAL_STEM.get(name, 32)
    assert arch.head_filters == OFFICIAL_HEAD.get(name, 1280)
    # the printed arch string carries them too (what `mnas arch show` prints)
    for text in OFFICIAL_BLOCKS[name]:
        assert text in str(arch)


@pytest.mark.parametrize(("name", "resolution", "params_m", "mult_adds_m"), [
    ("mnasnet-d1", 224, 3.638, 967.7),
])
def test_d1_cost_matches_the_unrounded_official_model(name: str, resolution: int, params_m: float,
                                                      mult_adds_m: float) -> None:
    cost = arch_cost(zoo.get(name), resolution)
    assert abs(cost.params / 1e6 - params_m) <= 0.002
    assert abs(cost.mult_adds / 1e6 - mult_adds_m) <= 0.5


def test_other_multipliers_still_round_to_multiples_of_eight() -> None:
    arch = zoo.get("mnasnet-d1", 0.5)
    assert all(block.output_filters % 8 == 0 and block.input_filters % 8 == 0 for block in arch.blocks)
    assert str(zoo.get("mnasnet-d1", 1.4).blocks[1]) == "r3_k3_s22_e9_i32_o48"  # 33.6 -> 32, 50.4 -> 48


def test_arch_show_prints_the_official_d1_blocks() -> None:
    import json

    from click.testing import CliRunner

    from mnas.cli_arch import arch

    result = CliRunner().invoke(arch, ["show", "mnasnet-d1", "--json"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "r3_k3_s22_e9_i24_o36" in text and "o40" not in text
    payload = json.loads(text)
    assert payload  # the JSON parses


# ------------------------------------------------------------------ MobileNetV1 (issue 12)

@pytest.mark.parametrize(("multiplier", "resolution", "params_m", "mult_adds_m"), [
    # MobileNetV1 paper, Tables 6 and 7 (the TF-slim README lists the same checkpoints)
    (1.0, 224, 4.2, 569),
    (0.75, 224, 2.6, 325),
    (0.5, 160, 1.32, 77),
    (0.25, 128, 0.47, 14),
])
def test_mobilenet_v1_matches_the_paper(multiplier: float, resolution: int, params_m: float,
                                        mult_adds_m: float) -> None:
    cost = arch_cost(zoo.get("mobilenet-v1", multiplier), resolution)
    assert abs(cost.params / 1e6 - params_m) <= 0.02 * params_m
    # the paper prints whole millions: 13.57M at 0.25/128 is its "14" (3% off only by that rounding)
    assert abs(cost.mult_adds / 1e6 - mult_adds_m) <= max(0.02 * mult_adds_m, 0.5)


def test_mobilenet_v1_uses_the_slim_depth_rule_and_its_official_head() -> None:
    arch = zoo.get("mobilenet-v1", 0.75)
    # TF-slim: max(int(d * multiplier), 8), no rounding to multiples of 8 (24, not 32 / 16)
    assert arch.stem_filters == 24
    assert [b.output_filters for b in arch.blocks] == [48, 96, 96, 192, 192, 384, 384, 768, 768]
    assert zoo.get("mobilenet-v1", 0.25).stem_filters == 8
    head = arch.layers(224)[-1]
    assert (arch.head_filters, head.op, head.cin, head.cout) == (0, "fc", 768, 768)  # pool + classifier only
    assert str(arch).endswith(",head0") and Arch.parse(str(arch)) == arch
    # 0.25 is an official MobileNetV1 width; the other families keep their range
    with pytest.raises(MnasError, match="expected a value in"):
        zoo.get("mnasnet-a1", 0.25)


def test_a_head_without_conv_is_written_as_pool_and_classifier() -> None:
    from mnas.space.tflite_graph import weight_shapes

    sig = zoo.get("mobilenet-v1", 0.25).layers(128)[-1]
    assert set(weight_shapes(sig)) == {"fc"}
    assert layer_cost(sig).params == 256 * 1000 + 1000 and layer_cost(sig).mult_adds == 256 * 1000


# ------------------------------------------------ ProxylessNAS, Single-Path NAS, pytorchcv names

# Trainable parameter counts pytorchcv asserts in its own tests (osmr/imgclsmob, pytorch/pytorchcv/
# models/*.py `_test`). pytorchcv's MobileNetV2 classifier is a 1x1 conv without bias, so mnas
# (a fully connected layer with bias) counts 1000 more there.
PYTORCHCV_PARAMS = {
    "proxylessnas_mobile": 4080512, "proxylessnas_mobile14": 6857568, "proxylessnas_cpu": 4361648,
    "proxylessnas_gpu": 7119848, "spnasnet": 4421616,
    "mobilenet_w1": 4231976, "mobilenet_w3d4": 2585560, "mobilenet_wd2": 1331592, "mobilenet_wd4": 470072,
    "mobilenetv2_w1": 3504960 + 1000, "mobilenetv2_w3d4": 2627592 + 1000, "mobilenetv2_wd2": 1964736 + 1000,
    "mobilenetv2_wd4": 1516392 + 1000, "mobilenetv2b_w1": 3503872 + 1000, "mobilenetv2b_w3d4": 2626968 + 1000,
    "mobilenetv2b_wd2": 1964448 + 1000, "mobilenetv2b_wd4": 1516312 + 1000,
}
# The `FLOPS` column of the mobile-ml-benchmark CSV (qed-usc/mobile-ml-benchmark, tflite_cnn_e2e.csv):
# about 2 x mult-adds of the converted model, so it checks the structure the phones actually ran
# (e.g. pytorchcv's extra 1x1 conv in mobilenetv2_*, absent from mobilenetv2b_*)
BENCHMARK_FLOPS = {
    "proxylessnas_mobile": 640918888, "proxylessnas_mobile14": 1161855624, "proxylessnas_cpu": 878558896,
    "proxylessnas_gpu": 930605992, "spnasnet": 666997864,
    "mobilenet_w1": 1137531880, "mobilenet_w3d4": 650839528, "mobilenet_wd2": 299020264, "mobilenet_wd4": 82074088,
    "mobilenetv2_w1": 627301376, "mobilenetv2_w3d4": 373363776, "mobilenetv2_wd2": 184604800,
    "mobilenetv2_wd4": 61024448, "mobilenetv2b_w1": 601611264, "mobilenetv2b_w3d4": 358913088,
    "mobilenetv2b_wd2": 178182272, "mobilenetv2b_wd4": 59418816,
}


@pytest.mark.parametrize("name", sorted(PYTORCHCV_PARAMS))
def test_pytorchcv_names_have_their_published_params_and_flops(name: str) -> None:
    family, multiplier, arch = zoo.pytorchcv_arch(name)
    cost = arch_cost(arch, 224)
    assert cost.params == PYTORCHCV_PARAMS[name]
    # the counter adds a little (biases, residual adds): within 0.2% of 2 x mult-adds for all 17
    assert abs(2 * cost.mult_adds - BENCHMARK_FLOPS[name]) <= 0.002 * BENCHMARK_FLOPS[name]
    assert family in ("mobilenet-v1", "mobilenet-v2", "proxylessnas", "spnasnet")
    assert Arch.parse(str(arch)) == arch


def test_pytorchcv_names_map_onto_the_zoo() -> None:
    assert zoo.pytorchcv_arch("proxylessnas_mobile") == ("proxylessnas", 1.0, zoo.get("proxylessnas-mobile"))
    assert zoo.pytorchcv_arch("proxylessnas_mobile14")[:2] == ("proxylessnas", 1.4)
    assert zoo.pytorchcv_arch("mobilenet_w3d4") == ("mobilenet-v1", 0.75, zoo.get("mobilenet-v1", 0.75))
    # mobilenetv2b is the official MobileNetV2; mobilenetv2 adds a 1x1 conv before the first bottleneck
    assert zoo.pytorchcv_arch("mobilenetv2b_w1")[2] == zoo.get("mobilenet-v2")
    assert str(zoo.pytorchcv_arch("mobilenetv2_w1")[2]).startswith("stem32,r1_k1_s11_e1_i32_o32_conv_noskip,")
    # pytorchcv scales widths with int(), not the official multiple-of-8 rounding
    assert str(zoo.pytorchcv_arch("mobilenetv2b_w3d4")[2]).startswith("stem24,r1_k3_s11_e1_i24_o12,")


@pytest.mark.parametrize(("name", "reason"), [
    ("mobilenetb_w1", "MobileNet-B"), ("fbnet_cb", "FBNet"), ("mobilenetv3_large_w1", "MobileNetV3"),
    ("resnet18", "not expressible"), ("mobilenet_w5d4", "not expressible"),
])
def test_unmapped_pytorchcv_names_say_why(name: str, reason: str) -> None:
    with pytest.raises(MnasError, match=reason):
        zoo.pytorchcv_arch(name)


def test_pytorchcv_mobilenetv2_with_its_extra_conv_writes_a_tflite() -> None:
    from mnas.space.tflite_writer import arch_to_bytes

    assert arch_to_bytes(zoo.pytorchcv_arch("mobilenetv2_wd4")[2], resolution=96)[4:8] == b"TFL3"
