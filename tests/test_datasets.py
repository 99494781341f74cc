"""Dataset loaders on small files the tests write: shapes, labels, splits, channels, errors."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import need
from PIL import Image

from mnas.errors import MnasError
from mnas.search import datasets as ds


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def fake_fashion(root: Path, n: int = 20, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = np.arange(n) % 10 if labels is None else labels
    write_idx(root / "train-images-idx3-ubyte.gz", images)
    write_idx(root / "train-labels-idx1-ubyte.gz", y.astype(np.uint8))
    write_idx(root / "t10k-images-idx3-ubyte.gz", images[:5])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", y[:5].astype(np.uint8))
    return images, y


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def fake_cifar(root: Path, per_batch: int = 4, skip: str | None = None) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    all_data = []
    for name in (*ds.CIFAR_TRAIN, "test_batch"):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        if name != "test_batch":
            all_data.append(data)
        if name == skip:
            continue
        with open(root / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, handle)
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, handle)
    return np.concatenate(all_data)


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_idx_pair_loads_and_repeats_gray(tmp_path: Path) -> None:
    images, y = fake_fashion(tmp_path / "fm")
    data = ds.load_fashion_mnist(tmp_path / "fm")
    assert data.name == "fashion-mnist" and data.num_classes == 10 and data.channels == 1
    assert data.x.shape == (20, 3, 28, 28) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and data.y.tolist() == y.tolist()
    np.testing.assert_allclose(data.x[7, 0], images[7] / 255.0, rtol=0, atol=1e-7)
    assert np.array_equal(data.x[:, 0], data.x[:, 1]) and np.array_equal(data.x[:, 0], data.x[:, 2])
    assert data.class_names[9] == "ankle boot"
    test = ds.load_fashion_mnist(tmp_path / "fm", part="test")
    assert test.x.shape == (5, 3, 28, 28)


def test_uncompressed_idx_is_accepted(tmp_path: Path) -> None:
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1], dtype=np.uint8), compress=False)
    data = ds.load_dataset(str(tmp_path))
    assert data.num_classes == 2 and data.x.shape == (2, 3, 4, 4)
    assert data.x[1, 2, 3, 3] == pytest.approx(31 / 255)


def test_real_fashion_mnist_when_installed() -> None:
    need("DATASET", ds.fashion_mnist_installed(), "Debian's dataset-fashion-mnist is not installed "
         "(apt-get install dataset-fashion-mnist)")
    data = ds.load_dataset("fashion-mnist")
    assert data.x.shape == (60000, 3, 28, 28) and data.num_classes == 10
    assert np.bincount(data.y).tolist() == [6000] * 10  # balanced classes
    assert ds.default_dataset_name() == "fashion-mnist"


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(MnasError, match=r"fashion-mnist: folder .*nope not found: expected Debian's "
                                        r"dataset-fashion-mnist package \(sudo apt-get install dataset-fashion-mnist\)"):
        ds.load_fashion_mnist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MnasError, match=r"train-images-idx3-ubyte.gz: not found: expected the IDX file of "
                                        r"Debian's dataset-fashion-mnist package"):
        ds.load_fashion_mnist(tmp_path / "empty")
    with pytest.raises(MnasError, match="apt-get install dataset-fashion-mnist"):
        ds.default_dataset_name(root=tmp_path / "empty")
    with pytest.warns(UserWarning, match="smoke-test-sized"):
        assert ds.default_dataset_name(allow_fallback=True, root=tmp_path / "empty") == "digits"


def test_bad_idx_files_fail_with_the_path(tmp_path: Path) -> None:
    fake_fashion(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.array([0, 1, 12] + [0] * 17, dtype=np.uint8))
    with pytest.raises(MnasError, match=r"train-labels-idx1-ubyte.gz: label 12 out of range: expected labels in \[0, 9\]"):
        ds.load_fashion_mnist(tmp_path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(MnasError, match="train-labels-idx1-ubyte.gz: unreadable .*expected a gzip-compressed IDX file"):
        ds.load_fashion_mnist(tmp_path)
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x00\x01")
    with pytest.raises(MnasError, match=r"train-labels-idx1-ubyte.gz: 2 data bytes: expected 5 for shape \(5,\)"):
        ds.load_fashion_mnist(tmp_path)
    write_idx(path, np.zeros(3, dtype=np.uint8))
    with pytest.raises(MnasError, match="3 labels for 20 images: expected one label per image"):
        ds.load_fashion_mnist(tmp_path)


# ------------------------------------------------------------------------------------ digits


def test_digits_is_marked_smoke_test() -> None:
    data = ds.load_dataset("digits")
    assert data.x.shape == (1797, 3, 8, 8) and data.num_classes == 10 and data.smoke_test
    assert float(data.x.max()) == 1.0 and float(data.x.min()) == 0.0
    assert "smoke-test-sized" in data.source


# ------------------------------------------------------------------------------ ImageFolder


def test_image_folder_gray_and_colour(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_png(root / "cat" / "a.png", np.full((6, 6, 3), (255, 0, 0), dtype=np.uint8))
    write_png(root / "cat" / "b.png", np.full((6, 6, 3), (0, 255, 0), dtype=np.uint8))
    write_png(root / "dog" / "c.png", np.full((6, 6), 128, dtype=np.uint8))  # grayscale
    (root / "dog" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    data = ds.load_dataset(str(root))
    assert data.class_names == ("cat", "dog") and data.num_classes == 2 and data.channels == 3
    assert data.y.tolist() == [0, 0, 1]
    assert data.x.shape == (3, 3, 6, 6)
    assert data.x[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert data.x[2, :, 3, 3].tolist() == pytest.approx([128 / 255] * 3)  # gray repeated


def test_image_folder_all_gray_resize(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_png(root / "a" / "1.png", np.zeros((10, 12), dtype=np.uint8))
    write_png(root / "b" / "2.png", np.full((5, 5), 255, dtype=np.uint8))
    with pytest.raises(MnasError, match=r"2.png: size 5x5 differs from 12x10: expected one size"):
        ds.load_image_folder(root)
    data = ds.load_image_folder(root, image_size=8)
    assert data.channels == 1 and data.x.shape == (2, 3, 8, 8)
    assert float(data.x[1].min()) == 1.0


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MnasError, match=r"dataset '.*missing': no such file or folder: expected 'fashion-mnist'"):
        ds.load_dataset(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MnasError, match=r"empty: no class folders: expected an ImageFolder tree"):
        ds.load_dataset(str(empty))
    (empty / "cls").mkdir()
    with pytest.raises(MnasError, match=r"empty/cls: no images: expected at least one .png"):
        ds.load_dataset(str(empty))
    broken = tmp_path / "broken" / "cls" / "x.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(MnasError, match=r"broken/cls/x.png: unreadable image \(UnidentifiedImageError\)"):
        ds.load_dataset(str(tmp_path / "broken"))
    text = tmp_path / "data.csv"
    text.write_text("1,2")
    with pytest.raises(MnasError, match=r"dataset '.*data.csv': a .csv file: expected"):
        ds.load_dataset(str(text))


# ---------------------------------------------------------------------------------- CIFAR-10


def test_cifar_folder(tmp_path: Path) -> None:
    raw = fake_cifar(tmp_path / "cifar")
    data = ds.load_dataset(str(tmp_path / "cifar"))
    assert data.x.shape == (20, 3, 32, 32) and data.channels == 3 and data.num_classes == 10
    assert data.class_names[0] == "airplane"
    np.testing.assert_allclose(data.x[5].reshape(-1), raw[5] / 255.0, atol=1e-7)  # planes R, G, B
    test = ds.load_cifar10(tmp_path / "cifar", part="test")
    assert test.x.shape == (4, 3, 32, 32)


def test_cifar_missing_batch_and_bad_labels(tmp_path: Path) -> None:
    fake_cifar(tmp_path / "c", skip="data_batch_3")
    with pytest.raises(MnasError, match=r"c/data_batch_3: not found: expected the CIFAR-10 python batch file"):
        ds.load_dataset(str(tmp_path / "c"))
    fake_cifar(tmp_path / "d")
    with open(tmp_path / "d" / "data_batch_2", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, handle)
    with pytest.raises(MnasError, match=r"d/data_batch_2: label 10 out of range: expected labels in \[0, 9\]"):
        ds.load_dataset(str(tmp_path / "d"))
    with open(tmp_path / "d" / "data_batch_2", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, handle)
    with pytest.raises(MnasError, match=r"data_batch_2: key 'labels' missing"):
        ds.load_dataset(str(tmp_path / "d"))


# --------------------------------------------------------------------------------------- npz


def test_npz_layouts_and_val_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "d.npz"
    x_nhwc = rng.integers(0, 256, size=(12, 9, 9, 3), dtype=np.uint8)
    np.savez(path, x_train=x_nhwc, y_train=np.arange(12) % 3,
             x_val=rng.random((4, 9, 9, 3)).astype(np.float32), y_val=np.array([0, 1, 2, 0]))
    data = ds.load_dataset(str(path))
    assert data.x.shape == (12, 3, 9, 9) and data.num_classes == 3 and data.channels == 3
    np.testing.assert_allclose(data.x[4].transpose(1, 2, 0), x_nhwc[4] / 255.0, atol=1e-7)
    assert data.x_val is not None and data.x_val.shape == (4, 3, 9, 9) and data.y_val.tolist() == [0, 1, 2, 0]
    gray = tmp_path / "g.npz"
    np.savez(gray, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 1, 0]))
    data = ds.load_npz(gray)
    assert data.channels == 1 and data.x.shape == (4, 3, 8, 8) and data.x_val is None


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(MnasError, match=r"d.npz: key\(s\) y_train missing \(has x_train\): expected x_train and y_train"):
        ds.load_dataset(str(path))
    np.savez(path, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 5, -1]), num_classes=3)
    with pytest.raises(MnasError, match=r"d.npz\[y_train\]: label -1 out of range: expected labels in \[0, 2\]"):
        ds.load_dataset(str(path))
    np.savez(path, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 1, 0]), x_val=np.zeros((1, 8, 8)))
    with pytest.raises(MnasError, match="has only one of x_val / y_val: expected both or neither"):
        ds.load_dataset(str(path))
    np.savez(path, x_train=np.zeros((4, 8), np.uint8), y_train=np.array([0, 1, 1, 0]))
    with pytest.raises(MnasError, match=r"images have shape \(4, 8\): expected \(N, H, W\)"):
        ds.load_dataset(str(path))
    path.write_bytes(b"garbage")
    with pytest.raises(MnasError, match="d.npz: unreadable"):
        ds.load_dataset(str(path))


# ------------------------------------------------------------------------ splits and tensors


def test_holdout_split_is_stratified_seeded_and_disjoint() -> None:
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    train, val = ds.holdout_split(y, 0.1, seed=5)
    assert np.bincount(y[val]).tolist() == [10, 5, 3, 2]
    assert len(set(train) | set(val)) == 200 and not set(train) & set(val)
    again = ds.holdout_split(y, 0.1, seed=5)
    assert np.array_equal(again[1], val) and np.array_equal(again[0], train)
    assert not np.array_equal(ds.holdout_split(y, 0.1, seed=6)[1], val)
    with pytest.raises(MnasError, match=r"validation fraction 1.5: expected a value in \(0, 1\)"):
        ds.holdout_split(y, 1.5)


def test_to_tensor_resizes_and_normalises() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((6, 3, 28, 28)).astype(np.float32)
    mean, std = ds.channel_stats(x)
    out = ds.to_tensor(x, 32, mean, std, chunk=4)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    reference = torch.nn.functional.interpolate(torch.from_numpy(x), size=(32, 32), mode="bilinear")
    reference = (reference - torch.from_numpy(mean).view(1, 3, 1, 1)) / torch.from_numpy(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, reference)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    same = ds.to_tensor(x, 28, mean, std)
    np.testing.assert_allclose(same.numpy(), (x - mean[None, :, None, None]) / std[None, :, None, None], atol=1e-6)
    with pytest.raises(MnasError, match="resolution 4: expected >= 8 pixels"):
        ds.to_tensor(x, 4, mean, std)


def test_unknown_name_and_parts() -> None:
    with pytest.raises(MnasError, match=r"dataset 'imagenet': no such file or folder: expected 'fashion-mnist', 'digits'"):
        ds.load_dataset("imagenet")
    with pytest.raises(MnasError, match="dataset 'digits': has no test part"):
        ds.load_dataset("digits", part="test")
