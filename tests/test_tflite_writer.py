"""The `.tflite` writer computes exactly what the torch model computes (issue 2 item 7).

Every zoo model, 24 seeded search-space samples and every single-layer variant are written
with weights from a torch module whose BatchNorms have random statistics (so BN folding is
exercised), loaded in LiteRT, and compared with the torch module on the same input (NCHW vs
NHWC): max |tflite - torch| <= 1e-4 x max |torch|. Single layers are also run on LiteRT's
reference and builtin (non-XNNPACK) kernels. Resolutions: zoo models at their default
(224 / 320); samples at 96, 113 and 128 px (113 makes every stride-2 SAME padding asymmetric).
Plus: file structure read back with the `tflite` package, determinism, atomic writes, errors.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tflite
import torch
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from mnas.errors import MnasError
from mnas.space import zoo
from mnas.space.arch import Arch, LayerSig
from mnas.space.search_space import mnasnet
from mnas.space.tflite_writer import (
    WriteInfo,
    arch_to_bytes,
    init_weights,
    layer_to_bytes,
    write_arch,
    write_layer,
)
from mnas.space.torch_model import build_layer, build_model, randomize_batchnorm

REL_TOL = 1e-4
MAX_DIFFS: dict[str, tuple[float, float]] = {}  # label -> (max abs diff, max |torch|); printed with -s


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread_and_report():
    """Torch on one thread (two threads on a shared 2-core machine are several times slower);
    afterwards print the worst relative difference seen (visible with -s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if MAX_DIFFS:
        rel_label, (diff, scale) = max(MAX_DIFFS.items(), key=lambda kv: kv[1][0] / kv[1][1])
        abs_label, (worst_abs, _) = max(MAX_DIFFS.items(), key=lambda kv: kv[1][0])
        print(f"\n{len(MAX_DIFFS)} comparisons: worst max|tflite - torch| / max|torch| = {diff / scale:.3g} "
              f"({rel_label}); worst max abs diff {worst_abs:.3g} ({abs_label})")


def run_tflite(data: bytes, x_nchw: np.ndarray, resolver: OpResolverType = OpResolverType.AUTO) -> np.ndarray:
    interpreter = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert tuple(inp["shape"]) == (x_nchw.shape[0], x_nchw.shape[2], x_nchw.shape[3], x_nchw.shape[1])
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    result = interpreter.get_tensor(out["index"])
    return result.transpose(0, 3, 1, 2) if result.ndim == 4 else result


def run_torch(module: torch.nn.Module, x_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x_nchw)).numpy()


def assert_same(label: str, got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"{label}: shape {got.shape} != torch {want.shape}"
    scale = float(np.abs(want).max())
    assert scale > 0, f"{label}: torch output is all zeros, the comparison would prove nothing"
    diff = float(np.abs(got - want).max())
    assert diff <= REL_TOL * scale, f"{label}: max abs diff {diff:.3g} > {REL_TOL} x {scale:.3g}"
    MAX_DIFFS[label] = (diff, scale)
    return diff


def prepare(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """LeCun-normal conv weights and random BatchNorm statistics (so BN folding is exercised), eval mode.

    torch's default init shrinks activations layer by layer, so ReLU6 would never clip and the
    test could not tell ReLU6 from ReLU; He-normal makes pooled/identity residual sums explode
    (float32 itself then loses 1e-3). With std 1/sqrt(fan_in) and inputs x3, activations peak
    around 10-30: ReLU6 clips, and the float64 torch model agrees with float32 to ~1e-7."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
    randomize_batchnorm(module, seed)
    return module.eval()


def torch_arch_model(arch: Arch, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return prepare(build_model(arch, num_classes=num_classes), seed)


def check_arch(arch: Arch, resolution: int, num_classes: int, seed: int, label: str) -> None:
    model = torch_arch_model(arch, num_classes, seed)
    data = arch_to_bytes(arch, resolution=resolution, module=model)
    x = 3 * np.random.default_rng(seed).standard_normal((1, 3, resolution, resolution), dtype=np.float32)
    assert_same(label, run_tflite(data, x), run_torch(model, x))


# ------------------------------------------------------------------------ whole networks

@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_matches_torch(name: str) -> None:
    check_arch(zoo.get(name), zoo.entry(name).default_resolution, 1000, seed=1, label=f"zoo {name}")


def test_zoo_model_with_multiplier_matches_torch() -> None:
    check_arch(zoo.get("mnasnet-a1", 0.5), 160, 1000, seed=2, label="zoo mnasnet-a1 x0.5 @160")


@pytest.mark.parametrize("seed", range(24))
def test_search_space_sample_matches_torch(seed: int) -> None:
    resolution = (96, 113, 128)[seed % 3]
    arch = mnasnet().sample(seed)
    check_arch(arch, resolution, 100, seed=seed, label=f"sample {seed} @{resolution}")


def test_module_num_classes_is_the_default() -> None:
    arch = zoo.get("mnasnet-small", 0.35)
    model = torch_arch_model(arch, 10, 3)
    data = arch_to_bytes(arch, resolution=96, module=model)
    x = np.random.default_rng(3).standard_normal((1, 3, 96, 96), dtype=np.float32)
    assert run_tflite(data, x).shape == (1, 10)


def test_initialised_weights_run_and_are_finite(tmp_path: Path) -> None:
    arch = zoo.get("mnasnet-a1")
    info = write_arch(arch, tmp_path / "a1.tflite", seed=7)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    interpreter = Interpreter(model_path=str(info.path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1).copy())
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all()
    assert 1e-3 < float(np.abs(logits).max()) < 1e3  # neither vanished nor exploded
    assert float(logits.std()) > 0
    # MnasNet-A1: 3.9M parameters (paper Table 1); the file is float32 weights plus a little
    assert 3.8e6 < info.params < 4.0e6
    assert info.params * 4 < info.size < info.params * 4 + 200_000


# ------------------------------------------------------------------------- single layers

def _block_cases() -> list[LayerSig]:
    """Every conv op x skip x SE x kernel x stride, on square, odd and non-square inputs."""
    ops = (("conv", 1), ("dsconv", 1), ("mbconv", 3), ("mbconv", 6))
    sizes = ((15, 15), (16, 16), (9, 14))
    cases = []
    for n, ((op, expand), kernel, stride, se) in enumerate(itertools.product(ops, (3, 5, 7), (1, 2), (0, 1))):
        skips = ("identity", "pool", "none") if stride == 1 else ("pool", "pool_same", "none")
        for skip in skips:
            cin = 8
            cout = 8 if skip in ("identity", "pool_same") else 12
            h, w = sizes[(n + len(cases)) % len(sizes)]
            mid = cout if op == "conv" else cin * expand
            cases.append(LayerSig(
                kind="block", op=op, cin=cin, cout=cout, h=h, w=w, kernel=kernel, stride=stride,
                expand=expand, mid=mid, se=max(1, cin // 4) if se else 0, skip="pool" if skip == "pool_same" else skip,
                act=("relu", "relu6")[len(cases) % 2]))
    return cases


LAYER_CASES = (
    _block_cases()
    + [LayerSig(kind="stem", op="conv", cin=3, cout=16, h=h, w=w, kernel=3, stride=2, act=act)
       for (h, w), act in (((15, 15), "relu"), ((16, 16), "relu6"), ((17, 10), "relu"))]
    + [LayerSig(kind="head", op="head", cin=24, cout=64, h=h, w=w, act=act, classes=classes)
       for (h, w), act, classes in (((7, 7), "relu", 10), ((4, 5), "relu6", 1000), ((1, 1), "relu", 3))]
)


def test_layer_cases_cover_the_space() -> None:
    blocks = [s for s in LAYER_CASES if s.kind == "block"]
    assert {(s.op, s.expand) for s in blocks} == {("conv", 1), ("dsconv", 1), ("mbconv", 3), ("mbconv", 6)}
    assert {s.kernel for s in blocks} == {3, 5, 7} and {s.stride for s in blocks} == {1, 2}
    assert {(s.skip, s.stride, s.cin != s.cout) for s in blocks} == {
        ("identity", 1, False), ("pool", 1, True), ("pool", 2, True), ("pool", 2, False),
        ("none", 1, True), ("none", 2, True)}
    assert {s.se > 0 for s in blocks} == {False, True}
    assert any(s.h % 2 == 1 and s.stride == 2 for s in blocks)


@pytest.mark.parametrize("sig", LAYER_CASES, ids=lambda s: s.key)
def test_layer_matches_torch(sig: LayerSig) -> None:
    torch.manual_seed(0)
    module = prepare(build_layer(sig), 5)
    data = layer_to_bytes(sig, module=module)
    x = 3 * np.random.default_rng(1).standard_normal((1, sig.cin, sig.h, sig.w), dtype=np.float32)
    want = run_torch(module, x)
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, OpResolverType.BUILTIN_REF):
        assert_same(f"layer {sig.key} {resolver.name}", run_tflite(data, x, resolver), want)


def test_every_layer_of_a_sample_matches_torch() -> None:
    """Layers as the latency tables cut them: each `arch.layers()` entry with its own module."""
    arch = mnasnet().sample(11)
    model = torch_arch_model(arch, 10, 11)
    sigs = arch.layers(64, 10)
    modules = [model.stem, *model.layers, model.head]
    for index, (sig, module) in enumerate(zip(sigs, modules, strict=True)):
        x = np.random.default_rng(index).standard_normal((1, sig.cin, sig.h, sig.w), dtype=np.float32)
        assert_same(f"sample 11 layer {index}", run_tflite(layer_to_bytes(sig, module=module), x), run_torch(module, x))


# --------------------------------------------------------------------- the file itself

MBCONV_SE = LayerSig(kind="block", op="mbconv", cin=16, cout=16, h=14, w=14, kernel=5, stride=1,
                     expand=6, mid=96, se=4, skip="identity")


def test_file_round_trip_with_the_tflite_package(tmp_path: Path) -> None:
    info = write_layer(MBCONV_SE, tmp_path / "layer.tflite", seed=3)
    data = info.path.read_bytes()
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAsModel(data, 0)
    assert model.Version() == 3 and model.SubgraphsLength() == 1
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        assert code.BuiltinCode() == code.DeprecatedBuiltinCode()  # every code here is < 127
        assert code.Version() == 1
        ops.append(names[code.BuiltinCode()])
    assert ops == ["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "CONV_2D", "CONV_2D", "LOGISTIC", "MUL", "CONV_2D", "ADD"]
    assert info.ops == 9
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    # params: expand 16*96 + dw 25*96 + SE 96*4+4 + 4*96+96 + project 96*16, each conv with a bias
    assert info.params == (16 * 96 + 96) + (25 * 96 + 96) + (96 * 4 + 4) + (4 * 96 + 96) + (96 * 16 + 16)
    tensor = graph.Tensors(graph.Inputs(0))
    assert tensor.ShapeAsNumpy().tolist() == [1, 14, 14, 16] and tensor.Type() == tflite.TensorType.FLOAT32
    assert graph.Tensors(graph.Outputs(0)).ShapeAsNumpy().tolist() == [1, 14, 14, 16]
    depthwise = graph.Operators(1).BuiltinOptions()
    options = tflite.DepthwiseConv2DOptions()
    options.Init(depthwise.Bytes, depthwise.Pos)
    assert (options.DepthMultiplier(), options.StrideH(), options.Padding()) == (1, 1, tflite.Padding.SAME)
    assert options.FusedActivationFunction() == tflite.ActivationFunctionType.RELU
    assert graph.Tensors(graph.Operators(1).Inputs(1)).ShapeAsNumpy().tolist() == [1, 5, 5, 96]
    for i in range(1, model.BuffersLength()):  # weight data 16-byte aligned in the file
        buffer = model.Buffers(i)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            assert start % 16 == 0


def test_head_and_pool_skip_ops(tmp_path: Path) -> None:
    head = LayerSig(kind="head", op="head", cin=8, cout=32, h=3, w=3, classes=5)
    pool = LayerSig(kind="block", op="dsconv", cin=8, cout=16, h=9, w=9, kernel=3, stride=2, mid=8, skip="pool")
    for sig, expected in ((head, ["CONV_2D", "MEAN", "FULLY_CONNECTED"]),
                          (pool, ["DEPTHWISE_CONV_2D", "CONV_2D", "AVERAGE_POOL_2D", "CONV_2D", "ADD"])):
        model = tflite.Model.GetRootAsModel(layer_to_bytes(sig), 0)
        graph = model.Subgraphs(0)
        codes = [model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode() for i in range(graph.OperatorsLength())]
        assert codes == [getattr(tflite.BuiltinOperator, name) for name in expected]


def test_bytes_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    arch = mnasnet().sample(4)
    first = arch_to_bytes(arch, resolution=96, seed=9)
    assert arch_to_bytes(arch, resolution=96, seed=9) == first
    assert arch_to_bytes(arch, resolution=96, seed=10) != first
    info = write_arch(arch, tmp_path / "m.tflite", resolution=96, seed=9)
    assert info.path.read_bytes() == first
    assert layer_to_bytes(MBCONV_SE, seed=1) == layer_to_bytes(MBCONV_SE, seed=1)


def test_initialiser_scales() -> None:
    (weights,) = init_weights([MBCONV_SE], seed=0)
    assert weights["expand"].filter.shape == (96, 1, 1, 16) and weights["conv"].filter.shape == (1, 5, 5, 96)
    expand = weights["expand"].filter
    assert expand.dtype == np.float32 and abs(float(expand.var()) - 2 / 16) < 0.02  # He: 2/fan_in
    assert abs(float(weights["project"].filter.var()) - 1 / 96) < 0.002  # linear: 1/fan_in
    assert not weights["conv"].bias.any()


def test_initialised_path_never_imports_torch() -> None:
    code = ("import sys; from mnas.space import zoo; from mnas.space.tflite_writer import arch_to_bytes; "
            "data = arch_to_bytes(zoo.get('mnasnet-small'), resolution=96); "
            "print(len(data) > 0, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "False"]


def test_export_is_fast() -> None:
    """Regression guard for the speed target (>= 10 MnasNet-A1/s on one core; ~20/s measured).
    The limit is loose because the test machine is shared and noisy."""
    arch = zoo.get("mnasnet-a1")
    arch_to_bytes(arch)
    times = []
    for seed in range(3):
        start = time.perf_counter()
        arch_to_bytes(arch, seed=seed)
        times.append(time.perf_counter() - start)
    assert sorted(times)[1] < 0.5


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    info = write_layer(MBCONV_SE, path, seed=0)
    assert isinstance(info, WriteInfo) and info.path == path
    assert path.read_bytes() == layer_to_bytes(MBCONV_SE, seed=0)
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------ errors

def test_errors_are_one_line(tmp_path: Path) -> None:
    arch = zoo.get("mnasnet-small", 0.35)
    missing = tmp_path / "nope" / "m.tflite"
    with pytest.raises(MnasError) as err:
        write_arch(arch, missing)
    assert str(err.value) == (f"output path {str(missing)!r}: directory {str(missing.parent)!r} does not exist: "
                              "expected an existing directory")
    with pytest.raises(MnasError) as err:
        write_arch(arch, tmp_path)
    assert str(err.value) == f"output path {str(tmp_path)!r} is a directory: expected a file name such as model.tflite"
    with pytest.raises(MnasError) as err:
        arch_to_bytes(arch, seed=-1)
    assert str(err.value) == "seed -1: expected an integer >= 0"
    with pytest.raises(MnasError) as err:
        arch_to_bytes(arch, resolution=4)
    assert str(err.value) == "resolution 4: expected >= 8 pixels"
    with pytest.raises(MnasError) as err:
        arch_to_bytes(arch, num_classes=0)
    assert str(err.value) == "num_classes 0: expected an integer >= 1"
    with pytest.raises(MnasError) as err:
        arch_to_bytes("r1_k3_s11_e1_i32_o16")  # type: ignore[arg-type]
    assert str(err.value) == "arch 'r1_k3_s11_e1_i32_o16': expected an Arch (parse strings with Arch.parse)"
    other = zoo.get("mnasnet-small", 0.5)
    with pytest.raises(MnasError) as err:
        arch_to_bytes(arch, module=build_model(other, num_classes=10))
    assert str(err.value) == f"module is built for arch {other}: expected {arch}"
    bad = LayerSig(kind="block", op="mbconv", cin=8, cout=8, h=8, w=8, kernel=3, stride=2, expand=3, mid=24, skip="identity")
    with pytest.raises(MnasError) as err:
        layer_to_bytes(bad)
    assert str(err.value) == (f"layer {bad.key!r}: field 'skip' = 'identity': expected stride 1 and cin == cout "
                              "(got stride 2, cin 8, cout 8)")
    with pytest.raises(MnasError) as err:
        layer_to_bytes(LayerSig(kind="block", op="mbconv", cin=8, cout=8, h=8, w=8, kernel=4, mid=24))
    assert "field 'kernel' = 4: expected an odd size >= 1" in str(err.value)
    with pytest.raises(MnasError) as err:
        layer_to_bytes(MBCONV_SE, module=build_layer(LayerSig(kind="stem", op="conv", cin=3, cout=16, h=8, w=8, kernel=3, stride=2)))
    assert str(err.value).startswith(f"module for layer {MBCONV_SE.key!r}: ")
    other_sig = LayerSig(kind="block", op="dsconv", cin=16, cout=16, h=14, w=14, kernel=3, mid=16, skip="identity")
    with pytest.raises(MnasError) as err:
        layer_to_bytes(MBCONV_SE, module=build_layer(other_sig))
    assert str(err.value) == f"module is built for layer {other_sig.key!r}: expected {MBCONV_SE.key!r}"

