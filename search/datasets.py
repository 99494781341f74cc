"""Image classification data for the accuracy proxy, loaded from local files only.

Nothing is downloaded at run time. The embedded default is Fashion-MNIST as Debian's
`dataset-fashion-mnist` package installs it (the original IDX gzip files); scikit-learn's
bundled 8x8 digits are a smoke-test-sized fallback used only when asked for. Users bring
colour or ImageNet-like data as an ImageFolder tree (one folder per class), the CIFAR-10
python-pickle folder (read by a restricted unpickler: a pickle naming anything but the real
batches' numpy arrays is refused, never run), or an `.npz` with `x_train`/`y_train` (and
optionally `x_val`/`y_val`; read with `allow_pickle=False`).

Every loader returns a `Dataset` whose `x` is float32 NCHW with **3 channels** in [0, 1]
(uint8 sources divided by 255): the search space's stem takes 3 channels, so grayscale images
are repeated to 3 channels. The repetition is a read-only broadcast view (no extra memory);
indexing `x[idx]` returns an ordinary array. Images keep their stored size; the trainer
resizes batches to the proxy resolution (`to_tensor`) and normalises per channel with
statistics of the training part (`channel_stats`). The validation split is always carved out
of the training set (`holdout_split`), never the test set, as the paper held out 50K ImageNet
training images.

Every failure is one `MnasError` line naming the path and what was expected.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnas.errors import MnasError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"
NAMED = ("fashion-mnist", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
MAX_IDX_BYTES = 16 << 30  # an IDX file's declared data; Fashion-MNIST's largest is 47 MB
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
EXPECTED_SPEC = ("expected 'fashion-mnist', 'digits', or a path to an ImageFolder tree, a CIFAR-10 "
                 "python folder, a folder of IDX files or an .npz file")


@dataclass(frozen=True)
class Dataset:
    """A labelled image set in memory.

    `x`: float32 (N, 3, H, W) in [0, 1] (see the module docstring); `y`: int64 (N,) in
    [0, num_classes). `channels` is what the source stored (1 = grayscale, repeated to 3 in
    `x`). `x_val`/`y_val` are a validation set the files provide themselves (npz); when None
    the trainer holds out part of `x`. `smoke_test` marks sets too small to rank networks.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    channels: int
    source: str
    class_names: tuple[str, ...] = ()
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    smoke_test: bool = False

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])


# ---------------------------------------------------------------------------------- helpers


def _as_three_channels(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float32 with C in {1, 3} -> 3 channels (broadcast view for C == 1)."""
    if x.shape[1] == 1:
        return np.broadcast_to(x, (x.shape[0], 3, x.shape[2], x.shape[3]))
    return x


def _to_float(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise MnasError(f"{where}: images contain NaN or infinite values: expected finite pixels")
        return out
    raise MnasError(f"{where}: image dtype {x.dtype}: expected uint8 (0..255) or float (0..1)")


def _check_labels(y: np.ndarray, count: int, num_classes: int, where: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise MnasError(f"{where}: labels have shape {y.shape} and dtype {y.dtype}: expected a 1-D integer array")
    if y.shape[0] != count:
        raise MnasError(f"{where}: {y.shape[0]} labels for {count} images: expected one label per image")
    if count == 0:
        raise MnasError(f"{where}: no images: expected at least one")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise MnasError(f"{where}: label {bad} out of range: expected labels in [0, {num_classes - 1}]")
    return y.astype(np.int64, copy=False)


def _nchw(x: np.ndarray, where: str) -> np.ndarray:
    """NHW, NHWC (C in 1/3) or NCHW (C in 1/3) -> NCHW."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    raise MnasError(f"{where}: images have shape {x.shape}: expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3")


# ------------------------------------------------------------------------------------- IDX


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzip or raw): magic 0x0000 <type 0x08 = ubyte> <ndim>, big-endian sizes.

    Reads only what the header declares (and one byte more, to notice extra data), so a gzip
    file that inflates far beyond its declared shape is refused without being inflated."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
                raise MnasError(f"{path}: bad IDX header {magic.hex()}: expected 0000 08 <ndim> (unsigned bytes)")
            ndim = magic[3]
            sizes = handle.read(4 * ndim)
            if ndim < 1 or len(sizes) < 4 * ndim:
                raise MnasError(f"{path}: IDX header truncated: expected {ndim} dimension sizes")
            shape = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
            size = math.prod(shape)
            if size > MAX_IDX_BYTES:
                raise MnasError(f"{path}: IDX shape {shape} declares {size} bytes: expected at most "
                                f"{MAX_IDX_BYTES >> 30} GiB")
            data = handle.read(size + 1)
    except FileNotFoundError:
        raise MnasError(f"{path}: not found: expected an IDX file") from None
    except (OSError, EOFError, zlib.error, MemoryError) as exc:
        raise MnasError(f"{path}: unreadable ({type(exc).__name__}: {exc}): expected a gzip-compressed IDX file") from None
    if len(data) != size:
        count = f"more than {size}" if len(data) > size else str(len(data))
        raise MnasError(f"{path}: {count} data bytes: expected {size} for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _idx_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def has_idx_files(root: Path) -> bool:
    return _idx_file(root, "train-images-idx3-ubyte") is not None


def load_idx_folder(root: str | Path, part: str = "train", *, name: str | None = None,
                    num_classes: int | None = None, class_names: tuple[str, ...] = (),
                    hint: str = "") -> Dataset:
    """A folder in the MNIST layout: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    root = Path(root)
    prefix = {"train": "train", "test": "t10k"}.get(part)
    if prefix is None:
        raise MnasError(f"dataset part {part!r}: expected 'train' or 'test'")
    paths = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        found = _idx_file(root, stem)
        if found is None:
            raise MnasError(f"{root / (stem + '.gz')}: not found: expected the IDX file{hint}")
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3:
        raise MnasError(f"{paths[0]}: IDX shape {images.shape}: expected (N, H, W) images")
    k = num_classes if num_classes is not None else int(labels.max()) + 1 if labels.size else 1
    y = _check_labels(labels.reshape(-1) if labels.ndim == 1 else labels, images.shape[0], k, str(paths[1]))
    x = _as_three_channels(_to_float(images[:, None, :, :], str(paths[0])))
    return Dataset(name=name or f"idx:{root}", x=x, y=y, num_classes=k, channels=1,
                   source=f"IDX files {paths[0]} + {paths[1].name}", class_names=class_names)


def fashion_mnist_installed(root: str | Path | None = None) -> bool:
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    return has_idx_files(folder) and _idx_file(folder, "train-labels-idx1-ubyte") is not None


def load_fashion_mnist(root: str | Path | None = None, part: str = "train") -> Dataset:
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28 grayscale, 10 balanced classes);
    `root` defaults to `FASHION_MNIST_DIR` (where the Debian package puts it)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise MnasError(f"fashion-mnist: folder {root} not found: expected Debian's dataset-fashion-mnist "
                        f"package ({INSTALL_HINT}), or --dataset digits for a smoke-test-sized set")
    hint = f" of Debian's dataset-fashion-mnist package ({INSTALL_HINT})"
    return load_idx_folder(root, part, name="fashion-mnist", num_classes=10,
                           class_names=FASHION_MNIST_CLASSES, hint=hint)


def default_dataset_name(allow_fallback: bool = False, root: str | Path | None = None) -> str:
    """'fashion-mnist' when installed; else 'digits' if allowed (with a warning); else an error."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if fashion_mnist_installed(root):
        return "fashion-mnist"
    if allow_fallback:
        warnings.warn(f"Fashion-MNIST is not installed ({INSTALL_HINT}); using scikit-learn's 8x8 digits "
                      "(1,797 images), a smoke-test-sized set that ranks networks poorly", stacklevel=2)
        return "digits"
    raise MnasError(f"fashion-mnist: {Path(root)} has no IDX files: expected Debian's dataset-fashion-mnist "
                    f"package ({INSTALL_HINT}), or --dataset digits for a smoke-test-sized set")


# ---------------------------------------------------------------------------------- digits


def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled UCI digits: 1,797 8x8 grayscale images, 10 classes (smoke tests only)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return Dataset(name="digits", x=_as_three_channels(x), y=y, num_classes=10, channels=1,
                   source="scikit-learn load_digits (1,797 8x8 images; smoke-test-sized, ranks networks poorly)",
                   class_names=tuple(str(i) for i in range(10)), smoke_test=True)


# ------------------------------------------------------------------------------ ImageFolder


def _read_image(path: Path) -> np.ndarray:
    """(H, W, C) uint8 with C = 1 or 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("L", "1", "I;16", "I", "F"):
                gray = image.convert("L")
                return np.asarray(gray, dtype=np.uint8)[:, :, None]
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MnasError(f"{path}: unreadable image ({type(exc).__name__}): expected a valid "
                        f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES[:4])} file") from None


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    mode = "L" if image.shape[2] == 1 else "RGB"
    pil = Image.fromarray(image[:, :, 0] if mode == "L" else image, mode=mode)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out[:, :, None] if mode == "L" else out


def load_image_folder(root: str | Path, image_size: int | None = None) -> Dataset:
    """One sub-folder per class (sorted names -> labels 0..K-1), images inside (PIL).

    With `image_size`, every image is resized to image_size x image_size when loaded; without
    it all images must share one size. Grayscale and colour may mix (grayscale is repeated).
    """
    root = Path(root)
    if not root.is_dir():
        raise MnasError(f"{root}: folder not found: expected an ImageFolder tree (one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MnasError(f"{root}: no class folders: expected an ImageFolder tree (one sub-folder per class, images inside)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        images = sorted(p for p in (root / name).iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not images:
            raise MnasError(f"{root / name}: no images: expected at least one {', '.join(IMAGE_SUFFIXES)} file per class folder")
        files.extend((p, label) for p in images)
    arrays = []
    first_shape: tuple[int, int] | None = None
    for path, _ in files:
        image = _read_image(path)
        if image_size is not None:
            image = _resize_uint8(image, image_size)
        elif first_shape is None:
            first_shape = image.shape[:2]
        elif image.shape[:2] != first_shape:
            raise MnasError(f"{path}: size {image.shape[1]}x{image.shape[0]} differs from "
                            f"{first_shape[1]}x{first_shape[0]}: expected one size, or pass an image size to resize to")
        arrays.append(image)
    colour = any(a.shape[2] == 3 for a in arrays)
    if colour:
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    x = _to_float(np.stack(arrays).transpose(0, 3, 1, 2), str(root))
    y = np.array([label for _, label in files], dtype=np.int64)
    return Dataset(name=f"imagefolder:{root}", x=_as_three_channels(np.ascontiguousarray(x)), y=y,
                   num_classes=len(classes), channels=3 if colour else 1,
                   source=f"ImageFolder {root} ({len(files)} images, {len(classes)} classes)",
                   class_names=tuple(classes))


# ---------------------------------------------------------------------------------- CIFAR-10


def is_cifar_folder(root: Path) -> bool:
    return any((root / name).exists() for name in (*CIFAR_TRAIN, *CIFAR_TEST, "batches.meta"))


# What the CIFAR python batches are made of: dicts, lists, bytes and ints (pickle opcodes, no
# globals), numpy uint8 arrays (rebuilt through these globals) and, in batches pickled by Python
# 3 at protocol 2, bytes spelled as `_codecs.encode(text, "latin1")`. Taken from the objects
# themselves so the names match whichever numpy is installed (numpy 2 moved `numpy.core` to
# `numpy._core`; both spellings are admitted because old files name the old one).
_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NP_SCALAR = np.uint8(0).__reduce__()[0]
_CIFAR_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, "_reconstruct"): _NP_RECONSTRUCT
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _NP_SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


class _Refused(Exception):
    """A CIFAR batch asked for something a real batch never holds (the message says what)."""


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocol < 3, and only that use of it."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"global _codecs.encode called with encoding {encoding!r}")
    return text.encode("latin1")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only the layout of the real CIFAR python batches; any other global is refused.

    A pickle runs whatever callable its globals name when it is loaded, so a plain
    `pickle.load` of a downloaded or shared folder could run any code. The real batches need
    only numpy's array reconstruction (and `_codecs.encode` for bytes re-pickled by Python 3),
    so every other global - `os.system`, `builtins.eval`, a class's constructor - is refused
    before it is ever looked up: nothing the file names is imported or called.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        found = _CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise _Refused(f"global {module}.{name}")
        return found


def _read_pickle(path: Path) -> dict:
    """One CIFAR python batch, through `CifarUnpickler` (never a plain `pickle.load`)."""
    if not path.is_file():
        raise MnasError(f"{path}: not found: expected the CIFAR-10 python batch file "
                        f"({', '.join(CIFAR_TRAIN)}, test_batch, batches.meta)")
    try:
        with open(path, "rb") as handle:
            data = CifarUnpickler(handle, encoding="bytes").load()
    except _Refused as exc:
        raise MnasError(f"refused to load {exc} from {path}: expected only the dicts, lists, bytes and numpy "
                        "arrays of a CIFAR python batch (other globals in a pickle can run code on load)") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError, RecursionError) as exc:
        raise MnasError(f"{path}: unreadable ({type(exc).__name__}): expected a CIFAR-10 python pickle") from None
    if not isinstance(data, dict):
        raise MnasError(f"{path}: holds a {type(data).__name__}: expected a dict (CIFAR-10 python pickle)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def load_cifar10(root: str | Path, part: str = "train") -> Dataset:
    """The CIFAR-10 python version: data_batch_1..5 (train), test_batch, batches.meta.

    The batches are pickles; they are read with `CifarUnpickler`, which admits only the
    dict / list / bytes / numpy-array layout of the real files, so a tampered folder cannot run
    code when it is loaded (it is refused, naming the file and the global it asked for).
    """
    root = Path(root)
    if not root.is_dir():
        raise MnasError(f"{root}: folder not found: expected the CIFAR-10 python folder (cifar-10-batches-py)")
    names = {"train": CIFAR_TRAIN, "test": CIFAR_TEST}.get(part)
    if names is None:
        raise MnasError(f"dataset part {part!r}: expected 'train' or 'test'")
    meta = _read_pickle(root / "batches.meta")
    labels_names = meta.get("label_names")
    if not isinstance(labels_names, list) or not labels_names:
        raise MnasError(f"{root / 'batches.meta'}: key 'label_names' missing or empty: expected the class names")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in labels_names)
    xs, ys = [], []
    for name in names:
        path = root / name
        batch = _read_pickle(path)
        for key in ("data", "labels"):
            if key not in batch:
                raise MnasError(f"{path}: key {key!r} missing: expected 'data' (N x 3072 uint8) and 'labels'")
        data = np.asarray(batch["data"])
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise MnasError(f"{path}: data has shape {data.shape} and dtype {data.dtype}: expected (N, 3072) uint8")
        labels = np.asarray(batch["labels"])
        ys.append(_check_labels(labels, data.shape[0], len(class_names), str(path)))
        xs.append(data.reshape(-1, 3, 32, 32))
    x = _to_float(np.concatenate(xs), str(root))
    return Dataset(name=f"cifar10:{root}", x=x, y=np.concatenate(ys), num_classes=len(class_names), channels=3,
                   source=f"CIFAR-10 python folder {root} ({part})", class_names=class_names)


# -------------------------------------------------------------------------------------- npz


def load_npz(path: str | Path, part: str = "train") -> Dataset:
    """`x_train`, `y_train` (required), `x_val`/`y_val` (optional, together), `x_test`/`y_test`,
    `num_classes` (optional; default max label + 1). Images NHW, NHWC or NCHW, uint8 or float."""
    path = Path(path)
    if not path.is_file():
        raise MnasError(f"{path}: file not found: expected an .npz with x_train and y_train")
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MnasError(f"{path}: unreadable ({type(exc).__name__}): expected an .npz with x_train and y_train") from None
    prefix = {"train": "train", "test": "test"}.get(part)
    if prefix is None:
        raise MnasError(f"dataset part {part!r}: expected 'train' or 'test'")
    missing = [k for k in (f"x_{prefix}", f"y_{prefix}") if k not in arrays]
    if missing:
        raise MnasError(f"{path}: key(s) {', '.join(missing)} missing (has {', '.join(sorted(arrays)) or 'none'}): "
                        f"expected x_{prefix} and y_{prefix}")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise MnasError(f"{path}: has only one of x_val / y_val: expected both or neither")
    label_arrays = [arrays[k] for k in ("y_train", "y_val", "y_test") if k in arrays]
    if "num_classes" in arrays:
        num_classes = int(arrays["num_classes"])
    else:
        num_classes = max(int(a.max()) + 1 for a in label_arrays if a.size and np.issubdtype(a.dtype, np.integer)) \
            if any(a.size and np.issubdtype(a.dtype, np.integer) for a in label_arrays) else 0
    if num_classes < 2:
        raise MnasError(f"{path}: {num_classes} classes: expected at least 2")

    def images(key: str) -> tuple[np.ndarray, int]:
        x = _nchw(arrays[key], f"{path}[{key}]")
        return _as_three_channels(_to_float(x, f"{path}[{key}]")), int(x.shape[1])

    x, channels = images(f"x_{prefix}")
    y = _check_labels(arrays[f"y_{prefix}"], x.shape[0], num_classes, f"{path}[y_{prefix}]")
    x_val = y_val = None
    if part == "train" and "x_val" in arrays:
        x_val, _ = images("x_val")
        y_val = _check_labels(arrays["y_val"], x_val.shape[0], num_classes, f"{path}[y_val]")
        if x_val.shape[2:] != x.shape[2:]:
            raise MnasError(f"{path}: x_val images are {x_val.shape[2:]}: expected the size of x_train, {x.shape[2:]}")
    return Dataset(name=f"npz:{path}", x=x, y=y, num_classes=num_classes, channels=channels,
                   source=f"npz {path} ({part})", x_val=x_val, y_val=y_val)


# ---------------------------------------------------------------------------------- dispatch


def normalize_spec(spec: str) -> str:
    """A named set stays as is; a path becomes absolute (so task keys do not depend on the cwd)."""
    if spec in NAMED:
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def check_spec(spec: str) -> None:
    """Fail fast (no loading) on a name that is neither a known set nor an existing path."""
    if spec in NAMED:
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise MnasError(f"dataset {spec!r}: no such file or folder: {EXPECTED_SPEC}")
    if path.is_file() and path.suffix != ".npz":
        raise MnasError(f"dataset {spec!r}: a {path.suffix or 'suffix-less'} file: {EXPECTED_SPEC}")


def load_dataset(spec: str, part: str = "train", *, image_size: int | None = None) -> Dataset:
    """Load a named set ('fashion-mnist', 'digits') or a path (npz file; CIFAR, IDX or ImageFolder folder).

    `image_size` only applies to ImageFolder trees (images are resized when read).
    """
    check_spec(spec)
    if spec == "fashion-mnist":
        return load_fashion_mnist(part=part)
    if spec == "digits":
        if part != "train":
            raise MnasError("dataset 'digits': has no test part: expected part 'train'")
        return load_digits_dataset()
    path = Path(spec).expanduser()
    if path.is_file():
        return load_npz(path, part)
    if is_cifar_folder(path):
        return load_cifar10(path, part)
    if has_idx_files(path):
        return load_idx_folder(path, part)
    if part != "train":
        raise MnasError(f"{path}: an ImageFolder tree has no test part: expected part 'train'")
    return load_image_folder(path, image_size)


# ------------------------------------------------------------------------ splits and tensors


def holdout_split(y: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of a training set into (train_idx, val_idx).

    Each class keeps round(val_fraction * n_c) images for validation (at least one when it has
    two or more), so the held-out set mirrors the class balance. Both index arrays are shuffled.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MnasError(f"validation fraction {val_fraction:g}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_val = int(round(val_fraction * members.size))
        if members.size >= 2:
            n_val = min(max(n_val, 1), members.size - 1)
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train_idx = rng.permutation(np.concatenate(train_parts)).astype(np.int64)
    val_idx = rng.permutation(np.concatenate(val_parts)).astype(np.int64)
    if val_idx.size == 0:
        raise MnasError(f"validation fraction {val_fraction:g} of {y.size} images leaves no validation image: "
                        "expected a larger fraction or more data")
    return train_idx, val_idx


def channel_stats(x: np.ndarray, max_samples: int = 10000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32, shape (3,)) over up to `max_samples` images."""
    sample = np.asarray(x[:max_samples], dtype=np.float64)
    mean = sample.mean(axis=(0, 2, 3))
    std = sample.std(axis=(0, 2, 3))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def to_tensor(x: np.ndarray, resolution: int, mean: np.ndarray, std: np.ndarray,
              chunk: int = 2048) -> torch.Tensor:
    """Images -> normalised float32 (N, 3, resolution, resolution) tensor (bilinear resize,
    antialiased when shrinking), converted in chunks to bound peak memory."""
    if resolution < 8:
        raise MnasError(f"resolution {resolution}: expected >= 8 pixels")
    m = torch.from_numpy(np.asarray(mean, dtype=np.float32)).view(1, -1, 1, 1)
    s = torch.from_numpy(np.asarray(std, dtype=np.float32)).view(1, -1, 1, 1)
    parts = []
    for start in range(0, x.shape[0], chunk):
        batch = torch.from_numpy(np.ascontiguousarray(x[start:start + chunk], dtype=np.float32))
        if batch.shape[2:] != (resolution, resolution):
            shrink = batch.shape[2] > resolution or batch.shape[3] > resolution
            batch = F.interpolate(batch, size=(resolution, resolution), mode="bilinear",
                                  align_corners=False, antialias=shrink)
        parts.append((batch - m) / s)
    if not parts:
        return torch.empty(0, 3, resolution, resolution)
    return torch.cat(parts)
