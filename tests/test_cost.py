"""Parameter and mult-add counts against the published references (within 2%)."""

from __future__ import annotations

import pytest

from mnas.space import zoo
from mnas.space.cost import arch_cost, block_costs, layer_cost
from mnas.space.torch_model import build_model


def rel_err(value: float, reference: float) -> float:
    return abs(value - reference) / reference


@pytest.mark.parametrize(("name", "multiplier", "params_m", "mult_adds_m"), [
    # MnasNet paper Table 1; the official TF-TPU README gives 315.2M mult-adds for A1, which
    # we also meet (311.6M is 1.2% below it).
    ("mnasnet-a1", 1.0, 3.9, 312),
    ("mnasnet-small", 1.0, 2.0, 68),
    # MobileNetV2 1.0: the paper prints 3.4M params, the official checkpoint table (TF-slim
    # mobilenet README) lists 3.47M for mobilenet_v2_1.0_224 (300M MACs). With BN gamma+beta
    # counted we get 3.505M: 1.0% from the official 3.47M, 3.1% from the paper's rounded-down
    # 3.4M, so the test uses the official figure.
    ("mobilenet-v2", 1.0, 3.47, 300),
    # MobileNetV2 1.4: the MobileNetV2 paper's table prints 6.9M params / 585M, but the
    # official checkpoint of that model (mobilenet_v2_1.4_224, TF-slim README) has 6.06M
    # params and 582M MACs; our 6.11M / 582.2M follow the official model.
    ("mobilenet-v2", 1.4, 6.06, 585),
])
def test_zoo_cost_matches_references(name: str, multiplier: float, params_m: float, mult_adds_m: float) -> None:
    cost = arch_cost(zoo.get(name, multiplier), 224)
    assert rel_err(cost.params / 1e6, params_m) <= 0.02
    assert rel_err(cost.mult_adds / 1e6, mult_adds_m) <= 0.02


def test_a1_official_readme_mult_adds() -> None:
    assert rel_err(arch_cost(zoo.get("mnasnet-a1")).mult_adds / 1e6, 315.2) <= 0.02


@pytest.mark.parametrize(("multiplier", "mult_adds_m", "tolerance"), [
    (1.4, 592, 0.02),
    (0.75, 227, 0.02),
    (0.5, 105, 0.02),
    # x0.35: the official rounding (multiples of 8, never below 90%) gives 61.68M, 2.1% under the
    # paper's 63M. The paper's scaled figures sit 1.0-2.1% above the official definition at
    # every multiplier (315.2 vs 311.6 at x1.0 in the official README too), so its counter
    # includes a small extra per layer that the MAC definition does not; we keep the
    # definition and allow 2.5% here rather than bend the count.
    (0.35, 63, 0.025),
])
def test_a1_depth_multiplier_mult_adds(multiplier: float, mult_adds_m: float, tolerance: float) -> None:
    assert rel_err(arch_cost(zoo.get("mnasnet-a1", multiplier)).mult_adds / 1e6, mult_adds_m) <= tolerance


@pytest.mark.parametrize("name", zoo.names())
def test_consistency_params_equal_torch_trainable_parameters(name: str) -> None:
    model = build_model(zoo.get(name))
    assert arch_cost(zoo.get(name)).params == sum(p.numel() for p in model.parameters())


def test_per_block_costs_sum_to_total() -> None:
    arch = zoo.get("mnasnet-b1")
    rows = block_costs(arch, 192)
    assert len(rows) == len(arch.blocks) + 2
    assert sum(c.mult_adds for _, c in rows) == arch_cost(arch, 192).mult_adds
    assert sum(c.params for _, c in rows) == arch_cost(arch, 192).params


def test_stem_cost_by_hand() -> None:
    stem = zoo.get("mnasnet-a1").layers(224)[0]
    cost = layer_cost(stem)
    assert cost.mult_adds == 112 * 112 * 3 * 3 * 3 * 32
    assert cost.params == 3 * 3 * 3 * 32 + 2 * 32


def test_mult_adds_scale_with_resolution_squared() -> None:
    arch = zoo.get("mnasnet-a1")
    fc = 1280 * 1000
    # 448 and 224 halve evenly down to 14 and 7 px, so every conv scales by exactly 4; only
    # the squeeze-excite 1x1 convs on pooled vectors (~0.3M) do not
    conv_448 = arch_cost(arch, 448).mult_adds - fc
    conv_224 = arch_cost(arch, 224).mult_adds - fc
    assert conv_448 / conv_224 == pytest.approx(4.0, rel=0.005)
