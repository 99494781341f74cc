"""The torch builder: shapes, SAME padding, BN settings."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mnas.space import zoo
from mnas.space.search_space import mnasnet
from mnas.space.torch_model import ConvBN, build_model, same_avg_pool, same_pads


def test_same_padding_is_tensorflows() -> None:
    assert same_pads(224, 3, 2) == (0, 1)  # extra row at the bottom, as TF
    assert same_pads(15, 3, 2) == (1, 1)
    assert same_pads(14, 5, 1) == (2, 2)
    assert same_pads(7, 1, 1) == (0, 0)


def test_conv_same_padding_output_sizes() -> None:
    conv = ConvBN(3, 8, 3, 2).eval()
    assert conv(torch.zeros(1, 3, 15, 17)).shape == (1, 8, 8, 9)


def test_pool_excludes_padding_from_the_mean() -> None:
    x = torch.ones(1, 1, 3, 3)
    assert torch.equal(same_avg_pool(x, 2), torch.ones(1, 1, 2, 2))


def test_batchnorm_settings_are_official() -> None:
    model = build_model(zoo.get("mnasnet-a1"))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 and abs(bn.momentum - 0.01) < 1e-12 for bn in bns)


def test_any_resolution_and_class_count() -> None:
    arch = mnasnet().sample(3)
    model = build_model(arch, num_classes=10).eval()
    for size in (32, 97):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_first_conv_matches_tf_same_by_hand() -> None:
    conv = ConvBN(1, 1, 3, 2, act=None).eval()
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), torch.ones(1, 1, 3, 3), stride=2)
    scale = 1 / (1 + 1e-3) ** 0.5
    assert torch.allclose(conv(x), expected * scale)
