"""Accuracy sources for the search: a real proxy trainer and a cheap stand-in.

The search scores each sampled child by `ACC(m) x (LAT(m)/T)^w`. `ProxyTrainer` gets ACC the
way the paper did, scaled down: it trains `build_model(arch, num_classes)` briefly on a proxy
task and returns the top-1 accuracy on images held out from the *training* set. Every result
carries `task_key`, the canonical JSON of the `ProxyTask`, so accuracies of different proxy
tasks are never mixed in one store or one ranking.

Training follows the official MnasNet recipe (TF-TPU `mnasnet_main.py` / `mnasnet_utils.py`):
TF1's RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3; see `TFRMSprop` for why torch's own
RMSprop differs), learning rate `base_lr x batch / 256` (official base 0.016 per 256 images,
i.e. 0.256 at batch 4096), linear warm-up from 0, then the official staircase decay x0.97
every 2.4 epochs (or cosine / constant), weight decay 1e-5 on every non-BN weight, label
smoothing 0.1, dropout 0.2, BN momentum 0.99 and the official initialisers (conv kernels
normal with sd sqrt(2 / fan_out), the classifier uniform +-1/sqrt(classes); both in the
builder, `space/torch_model.py`). Proxy-specific choices, all
fields of `ProxyTask` (measurements in its docstring): reduced early strides below 64 px
(so late blocks see feature maps of their timed sizes), warm-up as a fraction of the run
(the official 5 epochs of 350 is ~1.4%; a 1-epoch proxy needs a fraction), cosine decay by
default (the official staircase x0.97 / 2.4 epochs is flat over one epoch; both scored the
same), no data augmentation, and BN statistics recomputed on training images before
evaluation: after a few dozen steps BN's 0.99 moving averages still mostly hold their
initial values, and every net then scores chance in eval mode.

The optimizer and schedule live in `search/optim.py`.

`CheapAccuracy` is NOT an accuracy: a deterministic function of mult-adds plus hash noise,
for benchmarks and tests of the search machinery that must not spend time training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnas.errors import MnasError
from mnas.search import datasets
from mnas.search.optim import learning_rate_at, make_optimizer
from mnas.space.arch import Arch
from mnas.space.cost import arch_cost
from mnas.space.torch_model import INITS, build_model

PROXY_VERSION = 2  # bump when the training code changes what an accuracy means
# version 1: torch's default initialisers, full strides; its keys are still read (and written
# for such a task) so that runs started before version 2 resume with the training they began
LEGACY_VERSION = 1
SMALL_INPUT_PX = 64  # below this proxy resolution, `reduced_strides` defaults to True
OPTIMIZERS = ("rmsprop", "sgd")
LR_SCHEDULES = ("exponential", "cosine", "constant")
EXECUTION_FIELDS = ("device", "threads")  # change speed, not the task: left out of the key


@dataclass(frozen=True)
class AccuracyResult:
    """One child's proxy accuracy and how it was obtained.

    `accuracy` is top-1 on `val_samples` held-out images, in [0, 1]. `final_loss` is the mean
    training loss of the last (up to) 10 steps, None when nothing was trained or the loss
    became NaN/inf: such a child stops training, gets chance accuracy (1 / classes) and
    `diverged` (every field stays JSON-clean).
    `model` (not compared, not serialised) is the trained network when asked for.
    """

    accuracy: float
    train_seconds: float
    steps: int
    val_samples: int
    task_key: str
    final_loss: float | None
    eval_seconds: float = 0.0
    diverged: bool = False
    model: nn.Module | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


@runtime_checkable
class AccuracySource(Protocol):
    """Where the search gets ACC(m); it never knows which implementation it has."""

    @property
    def task_key(self) -> str: ...

    def accuracy(self, arch: Arch) -> AccuracyResult: ...


# ---------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class ProxyTask:
    """Everything that defines a proxy accuracy (the key) plus how to run it (device, threads).

    Defaults: Fashion-MNIST resized 28 -> 32 px; 4,096 training images, 1 epoch = 32 steps of
    128; 2,000 validation images held out (stratified 10% of the 60,000 training images,
    then capped); TF RMSProp with the official base_lr 0.016 per 256 images (0.008 at batch
    128), 10% warm-up then cosine to 0. Measured on Fashion-MNIST (mnasnet-a1 / two samples):
    base_lr 0.004 -> 0.37/0.30/0.68, 0.008 -> 0.53/0.47/0.73, 0.016 -> 0.65/0.61/0.73,
    0.025 -> 0.66/0.53/0.69, 0.05 -> 0.63/0.57/0.67, 0.15 -> 0.62 (loss rising); the
    official exponential schedule gave the same mean (0.69/0.60/0.70); without BN
    re-calibration every net scores chance (0.10). Per child on this shared 2-core host, one
    thread: 9-33 s training + 1-8 s BN re-calibration and evaluation (mnasnet-a1: 20 s + 4 s).
    All of these were measured with the full strides and torch's default initialisers (key
    version 1); the reduced strides, default below 64 px, cost ~8-10x more per step
    (mnasnet-a1, 32 px, batch 128, one thread: 0.66 s -> 5.3-7.4 s per step).

    `threads` (torch intra-op threads while training; None = torch's default) is 1: at 32 px
    a second thread barely helps on an idle 2-core host (~0.5 s/step either way for
    mnasnet-a1) and, measured on this shared host, made each step 6-9x slower whenever other
    processes wanted the cores (OpenMP threads spin against each other); scale out by
    training several children in parallel instead. On CPU, results are reproducible for a
    fixed thread count.

    `reduced_strides` (None = True when `resolution` < 64 px): train with the stem and the
    first stride-2 block at stride 1 (`space.torch_model`), the usual small-image adaptation
    of MobileNetV2, so the late blocks see feature maps of the sizes they have in the timed
    network at its scale (MnasNet space: total stride 8, so 4x4 maps after the last stride-2
    block at 32 px, against 7x7 at 224 px; with the full strides a 32 px input is 1x1 there,
    where 5x5 kernels and squeeze-excite see one pixel). The architecture (blocks, kernels,
    SE, skips, widths) is the timed one either way; the option is part of the key, so
    accuracies of the two settings are never mixed. `init`: "official" (the MnasNet
    initialisers) or "torch" (torch's defaults; only version-1 keys, written before the
    official initialisers, ask for it).

    `dataset`: 'fashion-mnist', 'digits' or a path (made absolute). `steps`, when set,
    overrides `epochs`. `max_train_samples` / `max_val_samples` None = no cap. `seed` drives
    init, dropout and batch order; `split_seed` the held-out split (kept apart so that several
    seeds are scored on the same images).
    """

    dataset: str = "fashion-mnist"
    resolution: int = 32
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 128
    max_train_samples: int | None = 4096
    val_fraction: float = 0.1
    max_val_samples: int | None = 2000
    optimizer: str = "rmsprop"
    base_lr: float = 0.016
    lr_schedule: str = "cosine"
    warmup_fraction: float = 0.1
    lr_decay: float = 0.97
    lr_decay_epochs: float = 2.4
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1e-3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    dropout: float = 0.2
    bn_recalibration_samples: int = 1024
    seed: int = 0
    split_seed: int = 0
    reduced_strides: bool | None = None
    init: str = "official"
    device: str = "auto"
    threads: int | None = 1

    def __post_init__(self) -> None:
        self._coerce_numbers()
        datasets.check_spec(self.dataset)
        object.__setattr__(self, "dataset", datasets.normalize_spec(self.dataset))
        if self.reduced_strides is None:
            object.__setattr__(self, "reduced_strides", self.resolution < SMALL_INPUT_PX)
        checks: list[tuple[str, bool, str]] = [
            ("resolution", self.resolution >= 8, "an integer >= 8 pixels"),
            ("epochs", self.epochs > 0, "a number > 0"),
            ("steps", self.steps is None or self.steps >= 1, "None or an integer >= 1"),
            ("batch_size", self.batch_size >= 2, "an integer >= 2 (BatchNorm needs two images)"),
            ("max_train_samples", self.max_train_samples is None or self.max_train_samples >= 2, "None or >= 2"),
            ("val_fraction", 0.0 < self.val_fraction < 1.0, "a value in (0, 1)"),
            ("max_val_samples", self.max_val_samples is None or self.max_val_samples >= 1, "None or >= 1"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}"),
            ("base_lr", self.base_lr > 0, "a number > 0"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
            ("warmup_fraction", 0.0 <= self.warmup_fraction < 1.0, "a value in [0, 1)"),
            ("lr_decay", 0.0 < self.lr_decay <= 1.0, "a value in (0, 1]"),
            ("lr_decay_epochs", self.lr_decay_epochs > 0, "a number > 0"),
            ("rmsprop_decay", 0.0 <= self.rmsprop_decay < 1.0, "a value in [0, 1)"),
            ("momentum", 0.0 <= self.momentum < 1.0, "a value in [0, 1)"),
            ("epsilon", self.epsilon > 0, "a number > 0"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "a value in [0, 1)"),
            ("dropout", 0.0 <= self.dropout < 1.0, "a value in [0, 1)"),
            ("bn_recalibration_samples", self.bn_recalibration_samples >= 0, "an integer >= 0"),
            ("device", self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "'auto', 'cpu' or 'cuda[:N]'"),
            ("threads", self.threads is None or self.threads >= 1, "None or an integer >= 1"),
            ("reduced_strides", isinstance(self.reduced_strides, bool), "true, false or None (auto)"),
            ("init", self.init in INITS, f"one of {INITS}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise MnasError(f"proxy task: field {name!r} = {getattr(self, name)!r}: expected {expected}")

    def _coerce_numbers(self) -> None:
        """Plain int/float values (numpy scalars, 1 vs 1.0), so equal tasks have equal keys."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.type not in ("int", "float", "int | None"):
                continue
            finite = (isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
                      and math.isfinite(float(value)))
            if finite and f.type == "float":
                object.__setattr__(self, f.name, float(value))
            elif finite and float(value).is_integer():
                object.__setattr__(self, f.name, int(value))
            else:
                kind = "a finite number" if f.type == "float" else "an integer"
                raise MnasError(f"proxy task: field {f.name!r} = {value!r}: expected {kind}")

    @classmethod
    def default(cls, allow_fallback: bool = False, **overrides: Any) -> ProxyTask:
        """The default task on Fashion-MNIST; with `allow_fallback`, digits (with a warning) when
        the Debian package is missing, else a one-line error saying how to install it."""
        return cls(dataset=datasets.default_dataset_name(allow_fallback), **overrides)

    @property
    def learning_rate(self) -> float:
        """Peak learning rate: base_lr scaled linearly with the batch (per 256 images, as the official code)."""
        return self.base_lr * self.batch_size / 256.0

    def model(self, arch: Arch, num_classes: int) -> nn.Module:
        """The network this task trains for `arch` (its strides and initialisers); load stored weights into it."""
        return build_model(arch, num_classes, self.dropout, reduced_strides=bool(self.reduced_strides), init=self.init)

    @property
    def legacy(self) -> bool:
        """A version-1 task: torch's default initialisers and the full strides."""
        return self.init == "torch" and not self.reduced_strides

    def key_fields(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in EXECUTION_FIELDS}
        if self.legacy:  # exactly the key version 1 wrote
            return {"proxy": LEGACY_VERSION, **{k: v for k, v in values.items() if k not in ("reduced_strides", "init")}}
        return {"proxy": PROXY_VERSION, **values}

    def key(self) -> str:
        """Canonical JSON of everything that defines the accuracy (not device/threads)."""
        return json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str, **execution: Any) -> ProxyTask:
        """Inverse of `key()`; `execution` may set device/threads."""
        try:
            values = json.loads(key)
        except json.JSONDecodeError as exc:
            raise MnasError(f"proxy task key: {exc.msg} at position {exc.pos}: expected the JSON of ProxyTask.key()") from None
        version = values.pop("proxy", None) if isinstance(values, dict) else None
        if version not in (LEGACY_VERSION, PROXY_VERSION):
            raise MnasError(f"proxy task key: version missing or not {PROXY_VERSION}: expected a key written by this mnas")
        known = {f.name for f in dataclasses.fields(cls)}
        if version == LEGACY_VERSION:
            if {"reduced_strides", "init"} & set(values):
                raise MnasError("proxy task key: version 1 with reduced_strides/init: expected a key written by this mnas")
            values.update(reduced_strides=False, init="torch")
        unknown = sorted(set(values) - known)
        if unknown:
            raise MnasError(f"proxy task key: unknown field(s) {', '.join(unknown)}: expected ProxyTask fields")
        return cls(**values, **execution)


# --------------------------------------------------------------------------------- trainer


@dataclass(frozen=True)
class ProxyData:
    """The prepared tensors of one proxy task (normalised, at the proxy resolution)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    source: str
    smoke_test: bool


def prepare_data(task: ProxyTask) -> ProxyData:
    """Load the dataset, hold out validation images from the training set, resize, normalise."""
    ds = datasets.load_dataset(task.dataset, "train", image_size=task.resolution)
    if ds.x_val is not None and ds.y_val is not None:
        rng = np.random.default_rng(task.split_seed)
        train_idx = rng.permutation(len(ds)).astype(np.int64)
        x_val_all, y_val_all = ds.x_val, ds.y_val
        val_idx = rng.permutation(y_val_all.shape[0]).astype(np.int64)
    else:
        train_idx, val_idx = datasets.holdout_split(ds.y, task.val_fraction, task.split_seed)
        x_val_all, y_val_all = ds.x, ds.y
    if task.max_train_samples is not None:
        train_idx = train_idx[: task.max_train_samples]
    if task.max_val_samples is not None:
        val_idx = val_idx[: task.max_val_samples]
    if train_idx.size < 2:
        raise MnasError(f"dataset {task.dataset}: {train_idx.size} training image(s) after the validation split: expected >= 2")
    x_train_np, x_val_np = ds.x[train_idx], x_val_all[val_idx]
    mean, std = datasets.channel_stats(x_train_np)
    return ProxyData(
        x_train=datasets.to_tensor(x_train_np, task.resolution, mean, std),
        y_train=torch.from_numpy(ds.y[train_idx].copy()),
        x_val=datasets.to_tensor(x_val_np, task.resolution, mean, std),
        y_val=torch.from_numpy(y_val_all[val_idx].copy()),
        num_classes=ds.num_classes,
        source=ds.source,
        smoke_test=ds.smoke_test,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MnasError(f"proxy task: device {name!r}: CUDA is not available here: expected 'cpu' or 'auto'")
    return torch.device(name)


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Replace BN running statistics by their plain average over `images` (train-mode passes)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for chunk in images.split(batch_size):
            if chunk.shape[0] >= 2:
                model(chunk)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / max(1, int(y.shape[0]))


class ProxyTrainer:
    """`AccuracySource` that really trains each child briefly (see the module docstring).

    The data are loaded and prepared once, when the trainer is made (so a bad dataset fails
    before any training). Same task and arch -> same accuracy on CPU (seeded init, dropout and
    shuffling; the thread count must not change between runs). `on_trained(arch, model,
    result)`, when given, sees every trained model (e.g. to save its state_dict for export).
    """

    def __init__(self, task: ProxyTask | None = None,
                 on_trained: Callable[[Arch, nn.Module, AccuracyResult], None] | None = None, *,
                 data: ProxyData | None = None) -> None:
        self.task = task if task is not None else ProxyTask()
        self.on_trained = on_trained
        self.device = resolve_device(self.task.device)
        # `data`: tensors another trainer prepared for a task with the same data fields (a
        # finalize re-trains one child under several seeds on the same images)
        self.data = data if data is not None else prepare_data(self.task)
        self._on_device: ProxyData | None = None

    @property
    def task_key(self) -> str:
        return self.task.key()

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def describe(self) -> dict[str, Any]:
        return {"source": self.data.source, "train_samples": int(self.data.y_train.shape[0]),
                "val_samples": int(self.data.y_val.shape[0]), "num_classes": self.num_classes,
                "resolution": self.task.resolution, "device": str(self.device), "smoke_test": self.data.smoke_test}

    def _data(self) -> ProxyData:
        if self._on_device is None:
            d = self.data
            self._on_device = dataclasses.replace(
                d, x_train=d.x_train.to(self.device), y_train=d.y_train.to(self.device),
                x_val=d.x_val.to(self.device), y_val=d.y_val.to(self.device))
        return self._on_device

    def accuracy(self, arch: Arch, *, return_model: bool = False) -> AccuracyResult:
        """Train `arch` on the proxy task; top-1 accuracy on the held-out images."""
        task = self.task
        arch.layers(task.resolution, self.num_classes)  # fails fast on an arch/resolution mismatch
        previous_threads = torch.get_num_threads()
        if task.threads is not None:
            torch.set_num_threads(task.threads)
        try:
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(task.seed)
                model, result = self._train(arch)
        finally:
            torch.set_num_threads(previous_threads)
        if self.on_trained is not None:
            self.on_trained(arch, model, result)
        return dataclasses.replace(result, model=model) if return_model else result

    def total_steps(self) -> int:
        """Training steps of one child: `steps`, else `epochs` x full batches per epoch."""
        n = int(self.data.y_train.shape[0])
        steps_per_epoch = max(1, n // min(self.task.batch_size, n))
        return self.task.steps if self.task.steps is not None else max(1, int(round(self.task.epochs * steps_per_epoch)))

    def _train(self, arch: Arch) -> tuple[nn.Module, AccuracyResult]:
        task, data = self.task, self._data()
        model = task.model(arch, self.num_classes).to(self.device)
        optimizer = make_optimizer(task, model)
        n = int(data.y_train.shape[0])
        batch = min(task.batch_size, n)
        steps_per_epoch = max(1, n // batch)  # incomplete last batch dropped (BN needs > 1 image)
        total = task.steps if task.steps is not None else max(1, int(round(task.epochs * steps_per_epoch)))
        generator = torch.Generator().manual_seed(task.seed)
        losses: list[float] = []
        diverged = False
        start = time.perf_counter()
        model.train()
        order = torch.empty(0, dtype=torch.int64)
        for step in range(total):
            position = step % steps_per_epoch
            if position == 0:
                order = torch.randperm(n, generator=generator).to(self.device)
            idx = order[position * batch:(position + 1) * batch]
            lr = learning_rate_at(task, step, total, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(data.x_train[idx])
            loss = F.cross_entropy(logits, data.y_train[idx], label_smoothing=task.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                diverged = True
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        if diverged:
            accuracy = 1.0 / self.num_classes
        else:
            if task.bn_recalibration_samples > 0:
                recalibrate_batchnorm(model, data.x_train[: task.bn_recalibration_samples], batch)
            accuracy = evaluate(model, data.x_val, data.y_val)
        eval_seconds = time.perf_counter() - start
        tail = losses[-10:]
        final_loss = float(np.mean(tail)) if tail and not diverged else None
        model.eval()
        result = AccuracyResult(accuracy=accuracy, train_seconds=train_seconds, steps=len(losses),
                                val_samples=int(data.y_val.shape[0]), task_key=self.task_key,
                                final_loss=final_loss, eval_seconds=eval_seconds, diverged=diverged)
        return model.cpu(), result


# ------------------------------------------------------------------------- cheap stand-in


class CheapAccuracy:
    """NOT A REAL ACCURACY: a deterministic stand-in for benchmarks and tests of the search.

    acc = lo + (hi - lo) * (1 - exp(-ln(M / m0) / tau)) for mult-adds M > m0 (else lo), plus
    uniform noise in [-noise, noise] drawn from the arch's hash and `seed`, clipped to [0, 1].
    With the defaults (M at 224 px, 1000 classes) it is a saturating curve loosely shaped like
    ImageNet top-1 vs mult-adds (~0.66 at 63M, ~0.75 at 312M, ~0.77 at 600M) so the search
    has a real trade-off to find; it knows nothing else about the network. It trains nothing
    and costs microseconds; its `task_key` says "cheap" so its values are never mixed with
    trained accuracies.
    """

    def __init__(self, resolution: int = 224, noise: float = 0.01, seed: int = 0, lo: float = 0.5,
                 hi: float = 0.8, m0: float = 20e6, tau: float = 1.536) -> None:
        if resolution < 8:
            raise MnasError(f"cheap accuracy: resolution {resolution}: expected >= 8 pixels")
        if not 0 <= lo < hi <= 1 or m0 <= 0 or tau <= 0 or noise < 0:
            raise MnasError(f"cheap accuracy: lo={lo}, hi={hi}, m0={m0}, tau={tau}, noise={noise}: "
                            "expected 0 <= lo < hi <= 1, m0 > 0, tau > 0, noise >= 0")
        self.resolution, self.noise, self.seed = resolution, noise, seed
        self.lo, self.hi, self.m0, self.tau = lo, hi, m0, tau

    @property
    def task_key(self) -> str:
        return json.dumps({"proxy": "cheap-not-an-accuracy", "resolution": self.resolution, "noise": self.noise,
                           "seed": self.seed, "lo": self.lo, "hi": self.hi, "m0": self.m0, "tau": self.tau},
                          sort_keys=True, separators=(",", ":"))

    def value(self, arch: Arch) -> float:
        madds = arch_cost(arch, self.resolution, 1000).mult_adds
        base = self.lo
        if madds > self.m0:
            base += (self.hi - self.lo) * (1.0 - math.exp(-math.log(madds / self.m0) / self.tau))
        digest = hashlib.sha256(f"{arch}|{self.seed}".encode()).digest()
        unit = int.from_bytes(digest[:8], "big") / 2.0**64  # [0, 1)
        return min(1.0, max(0.0, base + self.noise * (2.0 * unit - 1.0)))

    def accuracy(self, arch: Arch) -> AccuracyResult:
        return AccuracyResult(accuracy=self.value(arch), train_seconds=0.0, steps=0, val_samples=0,
                              task_key=self.task_key, final_loss=None)
