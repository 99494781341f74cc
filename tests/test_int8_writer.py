"""int8 `.tflite` files: structure against the converter fixture, the spec's constraints, numbers
against the float model, the CLI (issue 14 item 2).

Structure: `tests/fixtures/int8_converter_small.json` records, by hand from the documented
behaviour, what TFLite's converter produces for a small model (op list, operator versions,
tensor types, quantization granularity); the file mnas writes for that model must match it.
Numbers: the int8 file runs in LiteRT and stays within what 8-bit quantization allows of the
float file (stated per test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tflite
import torch
from ai_edge_litert.interpreter import Interpreter

from mnas.errors import MnasError
from mnas.space.arch import Arch
from mnas.space.quantize import calibration_inputs, check_dtype, weight_quant
from mnas.space.tflite_reader import check_model_bytes
from mnas.space.tflite_schema import encode, op_signatures
from mnas.space.tflite_writer import arch_to_bytes, layer_graph, layer_to_bytes
from mnas.space.torch_model import build_layer, build_model, randomize_batchnorm

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "int8_converter_small.json").read_text())
SMALL = Arch.parse(FIXTURE["model"]["arch"])
RES, CLASSES = FIXTURE["model"]["resolution"], FIXTURE["model"]["classes"]


def _notation(tensor: dict) -> str:
    return f"{tensor['type']} {tensor['quant']}" + (" const" if tensor["const"] else "")


def run(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Outputs of `model` in LiteRT (default kernels, one thread) for each input (H, W, C)."""
    interpreter = Interpreter(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32  # float edges, int8 inside
    rows = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(rows)


@pytest.fixture(scope="module")
def small_int8() -> bytes:
    return arch_to_bytes(SMALL, resolution=RES, num_classes=CLASSES, dtype="int8")


def test_op_list_versions_and_tensor_types_match_the_converter_fixture(small_int8: bytes) -> None:
    got = [{"op": o["op"], "version": o["version"], "inputs": [_notation(t) for t in o["inputs"]],
            "outputs": [_notation(t) for t in o["outputs"]]} for o in op_signatures(small_int8)]
    assert got == FIXTURE["ops"]
    summary = check_model_bytes(small_int8)  # the structure check `mnas bench` runs
    assert summary is not None


def _quant(t: tflite.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    q = t.Quantization()
    return q.ScaleAsNumpy(), q.ZeroPointAsNumpy(), q.QuantizedDimension()


def test_quantization_parameters_follow_the_int8_spec(small_int8: bytes) -> None:
    model = tflite.Model.GetRootAsModel(small_int8, 0)
    graph = model.Subgraphs(0)
    names = [o["op"] for o in op_signatures(small_int8)]
    constraints = FIXTURE["constraints"]
    checked = set()

    def data(t: tflite.Tensor, dtype: type) -> np.ndarray:
        return model.Buffers(t.Buffer()).DataAsNumpy().view(dtype)

    for i, name in enumerate(names):
        op = graph.Operators(i)
        ins = [graph.Tensors(op.Inputs(j)) for j in range(op.InputsLength())]
        out = graph.Tensors(op.Outputs(0))
        if name != "DEQUANTIZE":
            _, zero_point, _ = _quant(out)
            lo, hi = constraints["activation_zero_point_range"]
            assert lo <= int(zero_point[0]) <= hi
        if name == "LOGISTIC":
            scale, zero_point, _ = _quant(out)
            assert (float(scale[0]), int(zero_point[0])) == (constraints["LOGISTIC_output"]["scale"],
                                                             constraints["LOGISTIC_output"]["zero_point"])
            checked.add(name)
        if name == "AVERAGE_POOL_2D":
            assert [a.tolist() for a in _quant(out)[:2]] == [a.tolist() for a in _quant(ins[0])[:2]]
            checked.add(name)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x_scale = float(_quant(ins[0])[0][0])
            w_scale, w_zero, w_dim = _quant(ins[1])
            b_scale, b_zero, _ = _quant(ins[2])
            weights = data(ins[1], np.int8)
            assert not w_zero.any() and not b_zero.any()
            assert np.abs(weights.astype(int)).max() <= 127 and weights.min() >= -127
            channels = ins[1].ShapeAsNumpy()[w_dim]
            assert len(w_scale) == channels
            np.testing.assert_allclose(b_scale, (np.float32(x_scale) * w_scale).astype(np.float32), rtol=1e-6)
            assert data(ins[2], np.int32).size == ins[2].ShapeAsNumpy()[0]
            checked.add(name)
    assert checked == {"LOGISTIC", "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def test_weight_quantization_is_symmetric_per_channel_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 5)) * np.array([1e-3, 1.0, 10.0, 0.0])[:, None, None, None]
    q, quant = weight_quant(w, axis=0)
    assert q.dtype == np.int8 and quant.dim == 0 and quant.zero_point == (0, 0, 0, 0)
    assert quant.scale[3] == 1.0 and not q[3].any()  # an all-zero channel keeps a usable scale
    for c in range(3):
        assert np.abs(q[c]).max() == 127  # each channel uses its full range
        np.testing.assert_allclose(q[c] * quant.scale[c], w[c], atol=quant.scale[c] / 2 + 1e-12)


def test_int8_file_is_deterministic_and_four_times_smaller() -> None:
    float_model = arch_to_bytes(SMALL, resolution=RES, num_classes=CLASSES)
    first = arch_to_bytes(SMALL, resolution=RES, num_classes=CLASSES, dtype="int8", seed=3)
    assert first == arch_to_bytes(SMALL, resolution=RES, num_classes=CLASSES, dtype="int8", seed=3)
    assert first != arch_to_bytes(SMALL, resolution=RES, num_classes=CLASSES, dtype="int8", seed=4)
    from mnas.space.zoo import get

    a1 = get("mnasnet-a1")
    ratio = len(arch_to_bytes(a1, resolution=96, dtype="int8")) / len(arch_to_bytes(a1, resolution=96))
    assert 0.24 < ratio < 0.32, ratio  # int8 weights, int32 biases, a little per-channel metadata
    assert len(first) < len(float_model)


def test_small_model_int8_logits_stay_within_quantization_error() -> None:
    """A torch module with random BatchNorm statistics (so BN folding matters), SE and both
    skips; calibrated on 16 structured inputs, compared on 64 others. A random net's top-1 is
    the same class for every input (its logits are mostly input-independent), so top-1
    agreement says nothing here (tests/test_int8_agreement.py checks it on trained nets).
    Criterion instead: RMS(int8 - float) <= 5% of RMS(float) and <= 35% of the
    input-dependent part RMS(float - its mean over inputs); measured 2.9% and 23%. This checks
    the chain of layers end to end; the per-layer test below is the tight one (a bias off by
    10% passes here but not there)."""
    torch.manual_seed(0)
    module = build_model(SMALL, num_classes=CLASSES).eval()
    randomize_batchnorm(module, seed=1)
    cal = calibration_inputs((1, RES, RES, 3), 16, seed=10)
    xs = calibration_inputs((1, RES, RES, 3), 64, seed=11)
    ref = run(arch_to_bytes(SMALL, resolution=RES, module=module), xs)
    got = run(arch_to_bytes(SMALL, resolution=RES, module=module, dtype="int8", calibration=cal), xs)
    error = np.sqrt(np.mean((got - ref) ** 2))
    assert error <= 0.05 * np.sqrt(np.mean(ref ** 2)), error
    assert error <= 0.35 * np.sqrt(np.mean((ref - ref.mean(axis=0)) ** 2)), error


@pytest.mark.parametrize("index", range(len(SMALL.layers(RES, CLASSES))))
def test_each_layer_int8_output_is_within_about_one_quantization_step(index: int) -> None:
    """Single-layer models (stem conv, depthwise-separable + identity skip, MBConv + SE + pool
    skip, regular conv, head conv + mean + FC) with random BatchNorm statistics; calibrated on
    16 structured inputs, compared on 16 others. Criterion, in units of the int8 output's
    scale: RMS(int8 - float) <= 1.5 steps (measured 0.36-1.04; one requantization alone gives
    ~0.3). Not the max: a test input beyond the calibrated range is clipped, as in TFLite."""
    sig = SMALL.layers(RES, CLASSES)[index]
    torch.manual_seed(index)
    module = build_layer(sig).eval()
    randomize_batchnorm(module, seed=index)
    shape = (1, sig.h, sig.w, sig.cin)
    graph = layer_graph(sig, module=module, dtype="int8", calibration=calibration_inputs(shape, 16, seed=1))
    step = graph.tensors[graph.ops[-1].inputs[0]].quant.scale[0]  # the tensor DEQUANTIZE reads
    xs = calibration_inputs(shape, 16, seed=2)
    error = (run(encode(graph), xs) - run(layer_to_bytes(sig, module=module), xs)) / step
    assert np.sqrt(np.mean(error ** 2)) <= 1.5


def test_single_layer_int8_model_runs() -> None:
    sig = SMALL.layers(RES, CLASSES)[2]  # the MBConv with SE and pooling skip
    model = layer_to_bytes(sig, dtype="int8")
    names = [o["op"] for o in op_signatures(model)]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE" and "LOGISTIC" in names
    out = run(model, calibration_inputs((1, sig.h, sig.w, sig.cin), 2, seed=5))
    assert out.shape == (2, sig.out_h, sig.out_w, sig.cout)
    assert np.isfinite(out).all()


def test_bad_dtype_and_calibration_are_one_line_errors() -> None:
    with pytest.raises(MnasError, match=r"dtype 'int4': expected one of float32, int8"):
        check_dtype("int4")
    with pytest.raises(MnasError, match=r"calibration inputs of shape \(2, 16, 16, 3\): expected \(N, 32, 32, 3\)"):
        arch_to_bytes(SMALL, resolution=RES, dtype="int8", calibration=np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(MnasError, match="NaN or infinity"):
        arch_to_bytes(SMALL, resolution=RES, dtype="int8", calibration=np.full((1, RES, RES, 3), np.nan, np.float32))


def mnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnas.cli", *args], capture_output=True, text=True, timeout=180)


def test_cli_export_int8_writes_a_runnable_quantized_file(tmp_path: Path) -> None:
    target = tmp_path / "small.tflite"
    out = mnas("arch", "export", "mnasnet-small", "-o", str(target), "--resolution", "96", "--classes", "10",
               "--dtype", "int8", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["dtype"] == "int8" and payload["size_bytes"] == target.stat().st_size
    model = target.read_bytes()
    ops = op_signatures(model)
    assert ops[0]["op"] == "QUANTIZE" and ops[-1]["op"] == "DEQUANTIZE"
    assert all(t["type"] == "INT8" for o in ops[1:-1] for t in o["outputs"])
    assert run(model, calibration_inputs((1, 96, 96, 3), 1)).shape == (1, 10)
    bad = mnas("arch", "export", "mnasnet-small", "-o", str(tmp_path / "x.tflite"), "--dtype", "int4")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'int4' is not one of 'float32', 'int8'" in bad.stderr
