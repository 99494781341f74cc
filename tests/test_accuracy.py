"""Accuracy sources: real short training beats chance, is deterministic, keys separate tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mnas.errors import MnasError
from mnas.search import accuracy as acc
from mnas.search.accuracy import (
    AccuracySource,
    CheapAccuracy,
    ProxyTask,
    ProxyTrainer,
)
from mnas.search.optim import TFRMSprop, learning_rate_at
from mnas.space import zoo
from mnas.space.arch import Arch

# ~10K parameters: trains in about a second on one core at 16 px
TINY = Arch.parse("stem8,r1_k3_s11_e1_i8_o8_noskip,r1_k3_s22_e3_i8_o16,r2_k3_s22_e3_i16_o24,head64")
DIGITS = {"dataset": "digits", "resolution": 16, "epochs": 3, "batch_size": 64, "max_train_samples": 1024,
          "base_lr": 0.2, "bn_recalibration_samples": 512, "threads": 1}


@pytest.fixture(scope="module")
def digits_trainer() -> ProxyTrainer:
    return ProxyTrainer(ProxyTask(**DIGITS))


def test_short_training_on_digits_beats_chance_clearly(digits_trainer: ProxyTrainer) -> None:
    result = digits_trainer.accuracy(TINY)
    assert digits_trainer.describe()["train_samples"] == 1024
    assert result.val_samples == 179  # 10% of each digit class of 1,797 images, stratified
    assert result.steps == 48  # 3 epochs x (1024 // 64)
    assert result.accuracy > 0.6  # chance is 0.1
    assert result.final_loss is not None and result.final_loss < 1.6  # ln(10) = 2.30 at chance
    assert not result.diverged and result.train_seconds > 0
    assert json.loads(result.task_key)["dataset"] == "digits"
    assert "model" not in result.to_dict()


def test_same_seed_same_accuracy(digits_trainer: ProxyTrainer) -> None:
    first = digits_trainer.accuracy(TINY)
    second = ProxyTrainer(ProxyTask(**DIGITS)).accuracy(TINY)
    assert (first.accuracy, first.final_loss, first.steps) == (second.accuracy, second.final_loss, second.steps)
    other = ProxyTrainer(ProxyTask(**{**DIGITS, "seed": 1})).accuracy(TINY)
    assert other.final_loss != first.final_loss
    assert other.task_key != first.task_key


def test_training_leaves_the_global_rng_alone(digits_trainer: ProxyTrainer) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    digits_trainer.accuracy(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_returned_model_reproduces_the_accuracy(digits_trainer: ProxyTrainer) -> None:
    seen: list[tuple[Arch, dict[str, torch.Tensor]]] = []
    trainer = ProxyTrainer(ProxyTask(**DIGITS), on_trained=lambda a, m, r: seen.append((a, m.state_dict())))
    result = trainer.accuracy(TINY, return_model=True)
    assert result.model is not None and seen and seen[0][0] == TINY
    again = acc.evaluate(result.model, trainer.data.x_val, trainer.data.y_val)
    assert again == result.accuracy
    fresh = trainer.task.model(TINY, 10)  # at 16 px: the reduced strides the task trained with
    fresh.load_state_dict(seen[0][1])  # the callback's weights are a complete, loadable state
    assert acc.evaluate(fresh, trainer.data.x_val, trainer.data.y_val) == result.accuracy


def test_npz_validation_set_is_used(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def images(labels: np.ndarray) -> np.ndarray:  # class 1 = bright square in the middle
        x = rng.integers(0, 60, size=(labels.size, 12, 12), dtype=np.uint8)
        x[labels == 1, 3:9, 3:9] = 230
        return x

    y_train, y_val = np.arange(200) % 2, np.arange(40) % 2
    path = tmp_path / "two.npz"
    np.savez(path, x_train=images(y_train), y_train=y_train, x_val=images(y_val), y_val=y_val)
    task = ProxyTask(dataset=str(path), resolution=12, epochs=3, batch_size=32, base_lr=0.2,
                     max_val_samples=None, threads=1)
    result = ProxyTrainer(task).accuracy(TINY)
    assert result.val_samples == 40 and result.steps == 18
    assert result.accuracy >= 0.9  # chance is 0.5


def test_keys_separate_tasks_not_execution() -> None:
    base = ProxyTask(dataset="digits")
    assert base.key() == ProxyTask(dataset="digits").key()
    assert base.key() != ProxyTask(dataset="digits", resolution=24).key()
    assert base.key() != ProxyTask(dataset="digits", epochs=2).key()
    assert base.key() != ProxyTask(dataset="digits", base_lr=0.1).key()
    assert base.key() != ProxyTask(dataset="digits", val_fraction=0.2).key()
    assert base.key() == ProxyTask(dataset="digits", device="cpu", threads=1).key()
    assert ProxyTask.from_key(base.key(), threads=2) == ProxyTask(dataset="digits", threads=2)
    assert json.loads(base.key())["proxy"] == acc.PROXY_VERSION
    same = ProxyTask(dataset="digits", epochs=1, base_lr=np.float64(0.016), batch_size=np.int64(128))
    assert same.key() == base.key()  # 1 == 1.0 and numpy scalars give the same key
    with pytest.raises(MnasError, match=r"field 'resolution' = 32.5: expected an integer"):
        ProxyTask(dataset="digits", resolution=32.5)
    with pytest.raises(MnasError, match=r"field 'epochs' = nan: expected a finite number"):
        ProxyTask(dataset="digits", epochs=float("nan"))


def test_dataset_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 0, 1]))
    monkeypatch.chdir(tmp_path)
    assert ProxyTask(dataset="d.npz").dataset == str(path)
    assert ProxyTask(dataset="d.npz").key() == ProxyTask(dataset=str(path)).key()


def test_bad_inputs_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(MnasError, match=r"dataset 'imagenet': no such file or folder: expected 'fashion-mnist'"):
        ProxyTask(dataset="imagenet")
    with pytest.raises(MnasError, match=r"proxy task: field 'resolution' = 4: expected an integer >= 8 pixels"):
        ProxyTask(dataset="digits", resolution=4)
    with pytest.raises(MnasError, match=r"field 'optimizer' = 'adam': expected one of \('rmsprop', 'sgd'\)"):
        ProxyTask(dataset="digits", optimizer="adam")
    with pytest.raises(MnasError, match=r"field 'batch_size' = 1: expected an integer >= 2"):
        ProxyTask(dataset="digits", batch_size=1)
    with pytest.raises(MnasError, match=r"field 'val_fraction' = 0.0: expected a value in \(0, 1\)"):
        ProxyTask(dataset="digits", val_fraction=0.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MnasError, match=r"empty: no class folders: expected an ImageFolder tree"):
        ProxyTrainer(ProxyTask(dataset=str(empty)))
    with pytest.raises(MnasError, match=r"proxy task key: unknown field\(s\) colour"):
        ProxyTask.from_key('{"proxy": 1, "colour": "red"}')


def test_tf_rmsprop_matches_the_tf1_update_by_hand() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = TFRMSprop([w], lr=0.1, decay=0.9, momentum=0.5, eps=1e-3, weight_decay=0.01)
    ms, mom, value = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for grad in ([0.5, 0.25], [-1.0, 2.0]):
        w.grad = torch.tensor(grad)
        opt.step()
        g = np.array(grad) + 0.01 * value
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.5 * mom + 0.1 * g / np.sqrt(ms + 1e-3)
        value = value - mom
        np.testing.assert_allclose(w.detach().numpy(), value, rtol=1e-6)


def test_learning_rate_schedule() -> None:
    task = ProxyTask(dataset="digits", base_lr=0.512, batch_size=128, warmup_fraction=0.1, lr_schedule="cosine")
    assert task.learning_rate == pytest.approx(0.256)  # linear in the batch: per 256 images
    assert learning_rate_at(task, 0, 100, 10) == pytest.approx(0.0256)
    assert learning_rate_at(task, 9, 100, 10) == pytest.approx(0.256)
    assert learning_rate_at(task, 10, 100, 10) == pytest.approx(0.256)
    assert learning_rate_at(task, 55, 100, 10) == pytest.approx(0.128)
    exp = ProxyTask(dataset="digits", base_lr=0.016, batch_size=256, warmup_fraction=0.0, lr_schedule="exponential")
    assert learning_rate_at(exp, 23, 1000, 10) == pytest.approx(0.016)  # decays every 2.4 epochs = 24 steps
    assert learning_rate_at(exp, 24, 1000, 10) == pytest.approx(0.016 * 0.97)


def test_divergence_is_reported_not_raised(digits_trainer: ProxyTrainer) -> None:
    task = ProxyTask(**{**DIGITS, "optimizer": "sgd", "base_lr": 1e8, "warmup_fraction": 0.0})
    result = ProxyTrainer(task).accuracy(TINY)
    assert result.diverged and result.accuracy == pytest.approx(0.1) and result.final_loss is None
    assert json.dumps(result.to_dict(), allow_nan=False)  # no Infinity/NaN in what gets stored


def test_cheap_accuracy_is_deterministic_and_labelled() -> None:
    cheap = CheapAccuracy(noise=0.0)
    a1, small = zoo.get("mnasnet-a1"), zoo.get("mnasnet-a1", 0.35)
    assert cheap.accuracy(a1).accuracy == pytest.approx(0.75, abs=0.005)  # 312M mult-adds
    assert cheap.accuracy(small).accuracy < cheap.accuracy(a1).accuracy
    noisy = CheapAccuracy(noise=0.01, seed=3)
    assert noisy.accuracy(a1) == noisy.accuracy(a1)
    assert abs(noisy.value(a1) - cheap.value(a1)) <= 0.01
    assert noisy.value(a1) != CheapAccuracy(noise=0.01, seed=4).value(a1)
    assert "cheap-not-an-accuracy" in cheap.task_key and cheap.task_key != noisy.task_key
    assert cheap.accuracy(a1).steps == 0 and cheap.accuracy(a1).final_loss is None
    assert isinstance(cheap, AccuracySource)
    with pytest.raises(MnasError, match="expected 0 <= lo < hi <= 1"):
        CheapAccuracy(lo=0.9, hi=0.8)


def test_trainer_is_an_accuracy_source(digits_trainer: ProxyTrainer) -> None:
    assert isinstance(digits_trainer, AccuracySource)
    assert digits_trainer.task_key == ProxyTask(**DIGITS).key()


def test_default_task_uses_fashion_mnist_or_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from mnas.search import datasets

    if datasets.fashion_mnist_installed():
        assert ProxyTask.default().dataset == "fashion-mnist"
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(MnasError, match=r"sudo apt-get install dataset-fashion-mnist\), or --dataset digits"):
        ProxyTask.default()
    with pytest.warns(UserWarning, match="smoke-test-sized"):
        assert ProxyTask.default(allow_fallback=True, epochs=2).dataset == "digits"
    with pytest.raises(MnasError, match=r"train-images-idx3-ubyte.gz: not found: expected the IDX "
                                        r"file of Debian's dataset-fashion-mnist package"):
        ProxyTrainer(ProxyTask())  # the named default fails when loaded, before any training
