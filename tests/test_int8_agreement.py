"""int8 MnasNet-A1 and MobileNetV2 agree with their float models on Fashion-MNIST (issue 14 item 2).

The acceptance check of the int8 writer on real predictions: each zoo model is trained on the
Fashion-MNIST proxy task (32 px, the timed network's full strides so the `.tflite` graph is
the trained one, 4 epochs of 4,096 images: ~73% top-1 for MnasNet-A1; after 1 epoch the nets
sit near 50% with near-tied logits, where any perturbation flips the top-1), written as float32
and as int8 (calibrated on 32 training images, as a representative dataset would be), and
both files run in LiteRT on 500 held-out images. Criterion: the int8 top-1 equals the float
top-1 on >= 95% of them, and the int8 accuracy is within 3 points of the float one.
Slow: ~1-2 min of training per model on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from needs import needs
from test_int8_writer import run

from mnas.search.accuracy import ProxyTask, ProxyTrainer
from mnas.search.datasets import fashion_mnist_installed
from mnas.space import zoo
from mnas.space.tflite_writer import arch_to_bytes

pytestmark = [pytest.mark.slow,
              needs("DATASET", fashion_mnist_installed(), "Debian's dataset-fashion-mnist is not installed")]

VAL_IMAGES, CALIBRATION_IMAGES = 500, 32


@pytest.fixture(scope="module")
def trainer() -> ProxyTrainer:
    return ProxyTrainer(ProxyTask(resolution=32, reduced_strides=False, epochs=4, max_val_samples=VAL_IMAGES))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy(), dtype=np.float32)


@pytest.mark.parametrize("name", ["mnasnet-a1", "mobilenet-v2"])
def test_int8_top1_agrees_with_float_on_trained_proxy(trainer: ProxyTrainer, name: str) -> None:
    arch = zoo.get(name)
    model = trainer.accuracy(arch, return_model=True).model.eval()
    data = trainer.data
    images, labels = _nhwc(data.x_val), data.y_val.numpy()
    calibration = _nhwc(data.x_train[:CALIBRATION_IMAGES])
    ref = run(arch_to_bytes(arch, resolution=32, module=model), images)
    got = run(arch_to_bytes(arch, resolution=32, module=model, dtype="int8", calibration=calibration), images)
    assert len(images) == VAL_IMAGES
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    float_acc, int8_acc = float(np.mean(ref.argmax(1) == labels)), float(np.mean(got.argmax(1) == labels))
    print(f"\n{name}: top-1 agreement {agreement:.3f}, accuracy float {float_acc:.3f} int8 {int8_acc:.3f}")
    assert float_acc > 0.6  # a trained net, not a near-chance one
    assert agreement >= 0.95
    assert abs(int8_acc - float_acc) <= 0.03
