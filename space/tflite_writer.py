"""Write any `Arch` (or one layer of it) as a float32 or int8 `.tflite` file, without TensorFlow.

Why hand-written: no library writes TFLite without TensorFlow. The TF converter needs the whole
TF stack and takes ~10 s per MnasNet-sized model; the search and the latency tables export
thousands of models. This writer emits the flatbuffer directly (`tflite_schema`) from the op
mapping in `tflite_graph`: MnasNet-A1 takes ~0.03 s in memory and ~0.06 s to a file (with
its sha256) on one core (benchmarks/export_speed.py), and the tests check that
LiteRT runs every file to the same logits as the torch model of `torch_model`.

Weights come from one of two sources:

* `module=`: a torch model from `build_model(arch)` (or `build_layer(sig)` for one layer),
  trained or not. BatchNorm is folded with its running statistics, i.e. the file computes the
  module in eval mode. Only attribute access and `.detach().cpu().numpy()` are used here.
* otherwise a seeded initialiser: He-uniform filters (variance 2/fan_in before an activation,
  1/fan_in before none), zero biases, all drawn in one numpy call; torch is never imported.
  The same seed gives byte-identical files. Latency does not depend on the values; these
  weights only keep activations finite and non-trivial.

`dtype="int8"` writes the fully-quantized model TFLite's post-training full-integer
quantization produces (float32 input and output, int8 inside), calibrated on a few inputs:
`quantize` does it, on the same float graph (seconds, not milliseconds: the float model runs
in LiteRT once per calibration input).

Files are written atomically (temporary file in the same directory, then `os.replace`), so a
reader never sees half a model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnas.errors import MnasError
from mnas.space.arch import Arch, LayerSig
from mnas.space.quantize import DEFAULT_CALIBRATION_COUNT, check_dtype, int8_graph, is_weight
from mnas.space.tflite_graph import Conv, build_graph, check_sig, weight_shapes
from mnas.space.tflite_schema import Graph, encode, encode_view

if TYPE_CHECKING:
    from torch import nn

    from mnas.space.torch_model import MnasNetModel

_LINEAR_ROLES = frozenset({"se_expand", "project", "shortcut", "fc"})  # no activation follows


@dataclass(frozen=True)
class WriteInfo:
    """What was written: path, file size in bytes, operator count, weight count, sha256 hex."""

    path: Path
    size: int
    ops: int
    params: int
    sha256: str


# ---------------------------------------------------------------- weights: seeded initialiser

def init_weights(sigs: list[LayerSig], seed: int) -> list[dict[str, Conv]]:
    """Deterministic weights for `sigs` from `seed` (numpy only, one random draw in total)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MnasError(f"seed {seed!r}: expected an integer >= 0")
    shapes = [weight_shapes(sig) for sig in sigs]
    total = sum(int(np.prod(s.filter)) for layer in shapes for s in layer.values())
    values = np.random.default_rng(int(seed)).random(total, dtype=np.float32)
    values -= np.float32(0.5)  # uniform on [-0.5, 0.5): variance 1/12
    out: list[dict[str, Conv]] = []
    start = 0
    for layer in shapes:
        weights = {}
        for role, shape in layer.items():
            size = int(np.prod(shape.filter))
            chunk = values[start:start + size]
            start += size
            gain = 1.0 if role in _LINEAR_ROLES else 2.0
            chunk *= np.float32(np.sqrt(12.0 * gain / shape.fan_in))
            weights[role] = Conv(chunk.reshape(shape.filter), np.zeros(shape.bias, dtype=np.float32))
        out.append(weights)
    return out


# ------------------------------------------------------------------ weights: a torch module

def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


def _fold_conv_bn(convbn: Any, depthwise: bool) -> Conv:
    """ConvBN (conv without bias + BatchNorm) -> folded TFLite filter and bias."""
    weight = _numpy(convbn.conv.weight)  # (out, in/groups, kh, kw)
    bn = convbn.bn
    scale = _numpy(bn.weight) / np.sqrt(_numpy(bn.running_var) + float(bn.eps))
    bias = _numpy(bn.bias) - _numpy(bn.running_mean) * scale
    weight = weight * scale[:, None, None, None]
    layout = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)
    return Conv(np.ascontiguousarray(weight.transpose(layout), dtype=np.float32), bias.astype(np.float32))


def _biased_conv(conv: Any) -> Conv:
    """Conv2d with bias (squeeze-excite) -> TFLite filter and bias."""
    weight = np.ascontiguousarray(_numpy(conv.weight).transpose(0, 2, 3, 1), dtype=np.float32)
    return Conv(weight, _numpy(conv.bias).astype(np.float32))


def _module_layer(sig: LayerSig, module: Any) -> dict[str, Conv]:
    """The weights of one layer read from its torch module, checked against `sig`."""
    where = f"module for layer {sig.key!r}"
    try:
        if sig.kind == "stem":
            weights = {"conv": _fold_conv_bn(module, depthwise=False)}
        elif sig.kind == "head":
            fc = module.fc
            weights = {"fc": Conv(np.ascontiguousarray(_numpy(fc.weight), dtype=np.float32),
                                  _numpy(fc.bias).astype(np.float32))}
            if sig.op != "fc":
                weights["conv"] = _fold_conv_bn(module.conv, depthwise=False)
        else:
            weights = {"conv": _fold_conv_bn(module.conv, depthwise=sig.op != "conv")}
            for role in ("expand", "project", "shortcut"):
                if getattr(module, role) is not None:
                    weights[role] = _fold_conv_bn(getattr(module, role), depthwise=False)
            if module.se is not None:
                weights["se_reduce"] = _biased_conv(module.se.reduce)
                weights["se_expand"] = _biased_conv(module.se.expand)
    except AttributeError as exc:
        raise MnasError(f"{where}: {exc}: expected a module built by torch_model for this layer") from None
    expected = weight_shapes(sig)
    if set(weights) != set(expected):
        raise MnasError(f"{where}: has parts {sorted(weights)}: expected {sorted(expected)}")
    for role, shape in expected.items():
        got = weights[role]
        if got.filter.shape != shape.filter or got.bias.shape != (shape.bias,):
            raise MnasError(f"{where}: {role} weight shape {got.filter.shape} / bias {got.bias.shape}: "
                            f"expected {shape.filter} / ({shape.bias},) in TFLite layout")
    return weights


def module_weights(sigs: list[LayerSig], module: Any) -> list[dict[str, Conv]]:
    """Weights of a whole `MnasNetModel` (stem, layers, head), in `sigs` order."""
    for part in ("stem", "layers", "head"):
        if not hasattr(module, part):
            raise MnasError(f"module {type(module).__name__}: no attribute {part!r}: expected a model from build_model(arch)")
    layers = list(module.layers)
    if len(layers) != len(sigs) - 2:
        raise MnasError(f"module {type(module).__name__}: {len(layers)} block layers: expected {len(sigs) - 2} for this arch")
    parts = [module.stem, *layers, module.head]
    return [_module_layer(sig, part) for sig, part in zip(sigs, parts, strict=True)]


# ---------------------------------------------------------------------------------- the API

def _arch_sigs(arch: Arch, resolution: int, num_classes: int | None, module: Any) -> list[LayerSig]:
    if not isinstance(arch, Arch):
        raise MnasError(f"arch {arch!r}: expected an Arch (parse strings with Arch.parse)")
    if module is not None:
        module_arch = getattr(module, "arch", None)
        if module_arch is not None and module_arch != arch:
            raise MnasError(f"module is built for arch {module_arch}: expected {arch}")
        if num_classes is None:
            num_classes = int(module.head.fc.out_features)
    if num_classes is None:
        num_classes = 1000
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise MnasError(f"resolution {resolution!r}: expected an integer number of pixels >= 8")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise MnasError(f"num_classes {num_classes!r}: expected an integer >= 1")
    return arch.layers(int(resolution), int(num_classes))


def _with_dtype(graph: Graph, dtype: str, calibration: np.ndarray | None, seed: int) -> Graph:
    """`graph` itself for float32; its int8 graph, calibrated on `calibration` (default: the
    quantizer's seeded synthetic inputs from `seed`), for int8."""
    if check_dtype(dtype) == "float32":
        return graph
    return int8_graph(graph, calibration, count=DEFAULT_CALIBRATION_COUNT, seed=seed)


def arch_graph(arch: Arch, *, resolution: int = 224, num_classes: int | None = None,
               module: MnasNetModel | None = None, seed: int = 0, dtype: str = "float32",
               calibration: np.ndarray | None = None) -> Graph:
    """The op graph of `arch` (input (1, R, R, 3) float32 NHWC, output the logits).

    `dtype="int8"`: the fully-quantized graph, calibrated on `calibration` (N, R, R, 3).
    """
    check_dtype(dtype)
    sigs = _arch_sigs(arch, resolution, num_classes, module)
    weights = module_weights(sigs, module) if module is not None else init_weights(sigs, seed)
    source = "module" if module is not None else f"seed {seed}"
    description = f"mnas {arch} resolution {resolution} classes {sigs[-1].classes} weights {source}"
    return _with_dtype(build_graph(sigs, weights, description), dtype, calibration, seed)


def layer_graph(sig: LayerSig, *, module: nn.Module | None = None, seed: int = 0, dtype: str = "float32",
                calibration: np.ndarray | None = None) -> Graph:
    """The op graph of one layer (input (1, sig.h, sig.w, sig.cin) float32 NHWC); int8 as `arch_graph`."""
    check_dtype(dtype)
    if not isinstance(sig, LayerSig):
        raise MnasError(f"layer {sig!r}: expected a LayerSig (see Arch.layers or LayerSig.from_key)")
    check_sig(sig)
    if module is not None:
        module_sig = getattr(module, "sig", None)  # modules are size-agnostic: ignore h and w
        if module_sig is not None and replace(module_sig, h=sig.h, w=sig.w) != sig:
            raise MnasError(f"module is built for layer {module_sig.key!r}: expected {sig.key!r}")
        weights = [_module_layer(sig, module)]
    else:
        weights = init_weights([sig], seed)
    source = "module" if module is not None else f"seed {seed}"
    graph = build_graph([sig], weights, f"mnas layer {sig.key} weights {source}")
    return _with_dtype(graph, dtype, calibration, seed)


def arch_to_bytes(arch: Arch, *, resolution: int = 224, num_classes: int | None = None,
                  module: MnasNetModel | None = None, seed: int = 0, dtype: str = "float32",
                  calibration: np.ndarray | None = None) -> bytes:
    """`.tflite` bytes of `arch`; weights from `module` or initialised from `seed`."""
    return encode(arch_graph(arch, resolution=resolution, num_classes=num_classes, module=module, seed=seed,
                             dtype=dtype, calibration=calibration))


def layer_to_bytes(sig: LayerSig, *, module: nn.Module | None = None, seed: int = 0, dtype: str = "float32",
                   calibration: np.ndarray | None = None) -> bytes:
    """`.tflite` bytes of a single-layer model (stem, block layer or head), as latency tables time it."""
    return encode(layer_graph(sig, module=module, seed=seed, dtype=dtype, calibration=calibration))


def _write(graph: Graph, path: str | os.PathLike[str]) -> WriteInfo:
    data = encode_view(graph)
    target = Path(path)
    write_atomic(target, data)
    params = sum(int(np.prod(t.shape)) for t in graph.tensors if is_weight(t))
    return WriteInfo(target, data.nbytes, len(graph.ops), params, hashlib.sha256(data).hexdigest())


def write_arch(arch: Arch, path: str | os.PathLike[str], *, resolution: int = 224,
               num_classes: int | None = None, module: MnasNetModel | None = None,
               seed: int = 0, dtype: str = "float32", calibration: np.ndarray | None = None) -> WriteInfo:
    """Write `arch` as a `.tflite` model at `path` (atomically).

    `num_classes` defaults to the module's classifier size, or 1000 without a module;
    `dtype` is "float32" or "int8" (calibrated on `calibration`, default seeded inputs).
    """
    graph = arch_graph(arch, resolution=resolution, num_classes=num_classes, module=module, seed=seed,
                       dtype=dtype, calibration=calibration)
    return _write(graph, path)


def write_layer(sig: LayerSig, path: str | os.PathLike[str], *, module: nn.Module | None = None,
                seed: int = 0, dtype: str = "float32", calibration: np.ndarray | None = None) -> WriteInfo:
    """Write a single-layer model of `sig` at `path` (atomically)."""
    return _write(layer_graph(sig, module=module, seed=seed, dtype=dtype, calibration=calibration), path)


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to `path` through a temporary file in the same directory and `os.replace`."""
    directory = path.parent
    if not directory.is_dir():
        raise MnasError(f"output path {str(path)!r}: directory {str(directory)!r} does not exist: expected an existing directory")
    if path.is_dir():
        raise MnasError(f"output path {str(path)!r} is a directory: expected a file name such as model.tflite")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise MnasError(f"output path {str(path)!r}: cannot create a file in {str(directory)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide the model from other users
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MnasError(f"output path {str(path)!r}: write failed: {exc.strerror}") from None
