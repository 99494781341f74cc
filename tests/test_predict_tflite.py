"""`mnas predict model.tflite` (issue 15, point 5): a `.tflite` graph mapped onto mnas layers and predicted.

The zoo's own exports must map back onto exactly the layers of their arch strings, so their
prediction equals the arch-string prediction; a model written by another tool (the recorded
`fixtures/foreign_small.tflite`) must have its foreign ops listed with their FLOP share.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mnas.errors import MnasError
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.calibration import Calibration
from mnas.predictor.selection import shipped_device_predictor
from mnas.predictor.tflite_layers import map_graph, predict_mapped, read_layers
from mnas.space import zoo
from mnas.space.arch import Arch, LayerSig
from mnas.space.cost import layer_cost
from mnas.space.search_space import mnasnet
from mnas.space.tflite_reader import (
    ModelGraph,
    OperatorInfo,
    TensorInfo,
    TfliteFormatError,
    read_graph,
)
from mnas.space.tflite_writer import arch_to_bytes, write_arch

FOREIGN = Path(__file__).parent / "fixtures" / "foreign_small.tflite"


def mnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnas.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


class SyntheticPredictor(AdditivePredictor):
    """A known per-layer latency (from mult-adds and channel counts) with a calibration that
    uses every term, weights included: NOT a measurement."""

    kind = "synthetic"

    def __init__(self, resolution: int = 224) -> None:
        super().__init__(resolution, 1000, mnasnet(), "median")
        self.calibration_ = Calibration(coef_sum=1.1, coef_layers=0.05, intercept_ms=0.7, n=10, coef_mparams=0.3,
                                        uses_params=True)

    def predict_layers_ms(self, layers: Sequence[LayerSig]) -> np.ndarray:
        return np.asarray([0.02 + layer_cost(layer).mult_adds / 5e7 + 0.001 * layer.cout + 0.01 * layer.se
                           for layer in layers], dtype=np.float64)


def _predictors() -> list[AdditivePredictor]:
    shipped = shipped_device_predictor("pixel1", 224)
    return [SyntheticPredictor(), *([shipped] if shipped is not None else [])]


# ------------------------------------------------------------------------------- zoo exports

@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_export_maps_onto_its_layers_and_predicts_as_its_arch_string(name: str) -> None:
    arch = zoo.get(name)
    mapped = map_graph(read_graph(arch_to_bytes(arch, resolution=224)))
    assert [layer.sig for layer in mapped.layers] == arch.layers(224)
    assert mapped.unmapped == () and mapped.unmapped_flops_share == 0.0
    assert mapped.resolution == 224 and mapped.dtype == "float32"
    # every operator of the file belongs to exactly one layer
    covered = sorted(index for layer in mapped.layers for index in layer.ops)
    assert covered == list(range(mapped.operators))
    predictors = _predictors()
    assert shipped_device_predictor("pixel1", 224) is not None, "the shipped pixel1 table is part of the repository"
    for predictor in predictors:
        expected = float(predictor.predict_ms([arch])[0])
        got = predict_mapped(predictor, mapped)
        assert got["predicted_ms"] == pytest.approx(expected, rel=0.01), type(predictor).__name__
        assert got["layers"] == len(arch.layers(224))


def test_search_space_samples_map_exactly_with_pool_skips_conv_se_and_head0() -> None:
    archs = [Arch.parse("stem32,r1_k3_s11_e1_i32_o16_noskip,r2_k3_s22_e6_i16_o24_pool,"
                        "r2_k5_s22_e1_i24_o40_conv_pool_se0.25,r2_k3_s22_e3_i40_o40_pool,"
                        "r2_k3_s11_e1_i40_o48_se0.25_pool,r1_k3_s22_e1_i48_o48_conv_se0.25,head0,relu6")]
    rng = np.random.default_rng(7)
    archs += [mnasnet().sample(rng) for _ in range(8)]
    for arch in archs:
        for resolution in (96, 193):
            mapped = map_graph(read_graph(arch_to_bytes(arch, resolution=resolution, num_classes=10)))
            assert [layer.sig for layer in mapped.layers] == arch.layers(resolution, 10), str(arch)
            assert mapped.unmapped == ()


def test_cli_predict_of_an_export_equals_the_arch_prediction_on_a_fresh_clone(tmp_path: Path) -> None:
    model = tmp_path / "a1.tflite"
    assert mnas("arch", "export", "mnasnet-a1", "-o", str(model)).returncode == 0
    db = str(tmp_path / "absent.db")  # no results store: the shipped pixel1 table answers
    by_file = mnas("--db", db, "predict", str(model), "--device", "pixel1", "--json")
    by_arch = mnas("--db", db, "predict", "mnasnet-a1", "--device", "pixel1", "--json")
    assert by_file.returncode == 0, by_file.stderr
    assert by_arch.returncode == 0, by_arch.stderr
    file_row, arch_row = json.loads(by_file.stdout)[0], json.loads(by_arch.stdout)[0]
    assert file_row["resolution"] == 224
    assert file_row["predicted_ms"] == pytest.approx(arch_row["predicted_ms"], rel=0.01)
    for key in ("layers", "layers_from_table", "layers_from_learned", "table", "calibrated", "calibration_samples"):
        assert file_row[key] == arch_row[key], key
    assert file_row["unmapped_ops"] == [] and file_row["unmapped_flops_share"] == 0.0
    assert file_row["dtype"] == "float32" and file_row["model_path"] == str(model.resolve())
    assert [r["layer_key"] for r in file_row["per_layer"]] == [s.key for s in zoo.get("mnasnet-a1").layers(224)]
    text = mnas("--db", db, "predict", str(model), "--device", "pixel1", "--per-layer")
    assert text.returncode == 0, text.stderr
    assert "every operator maps onto a mnas layer" in text.stdout
    assert "head:head:7x7x320:o1280:k1:s1:c1000" in text.stdout  # the per-layer table


# --------------------------------------------------------------------------- a foreign model

def test_foreign_fixture_runs_in_litert() -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(FOREIGN))
    interpreter.allocate_tensors()
    given, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(given["index"], np.random.default_rng(0).standard_normal(given["shape"]).astype(np.float32))
    interpreter.invoke()
    assert float(interpreter.get_tensor(out["index"]).sum()) == pytest.approx(1.0, abs=1e-5)


def test_foreign_fixture_lists_its_unmapped_ops_and_their_flop_share() -> None:
    mapped = read_layers(FOREIGN)
    assert [layer.sig.key for layer in mapped.layers] == [
        "stem:conv:32x32x3:o16:k3:s2:relu6",
        "block:dsconv:16x16x16:o16:k3:s1:e1:m16:se0:identity:relu6",
        "block:mbconv:16x16x16:o16:k3:s2:e3:m48:se0:none:relu6",  # expand -> PAD -> VALID depthwise s2
        "block:conv:8x8x24:o32:k3:s1:e1:m32:se0:none",  # PAD -> VALID conv: the SAME conv of the unpadded map
        "head:fc:8x8x32:o32:k1:s1:c10",
    ]
    assert [layer.ops for layer in mapped.layers] == [(0,), (1, 2, 3), (4, 6, 7), (12,), (13, 14, 15)]
    assert [(op.index, op.op) for op in mapped.unmapped] == [
        (5, "PAD"), (8, "CONV_2D"), (9, "MAX_POOL_2D"), (10, "CONCATENATION"), (11, "PAD"), (16, "SOFTMAX")]
    reasons = {op.index: op.reason for op in mapped.unmapped}
    assert reasons[8] == "dilated: mnas layers are undilated"
    assert reasons[5].startswith("explicit padding of the VALID DEPTHWISE_CONV_2D #6")
    assert reasons[10] == "no mnas layer kind for CONCATENATION"
    # FLOPs by hand: 2 per MAC of convs and FC, window x outputs for pools, inputs for MEAN, outputs otherwise
    stem, dw1, pw1, add = 2 * 16 * 16 * 16 * 27, 2 * 16 * 16 * 16 * 9, 2 * 16 * 16 * 16 * 16, 16 * 16 * 16
    expand, dw2, project = 2 * 16 * 16 * 48 * 16, 2 * 8 * 8 * 48 * 9, 2 * 8 * 8 * 16 * 48
    atrous, maxpool, padded_conv = 2 * 8 * 8 * 8 * 9 * 16, 8 * 8 * 16 * 9, 2 * 8 * 8 * 32 * 9 * 24
    mean, fc, softmax = 8 * 8 * 32, 2 * 32 * 10, 10
    total = stem + dw1 + pw1 + add + expand + dw2 + project + atrous + maxpool + padded_conv + mean + fc + softmax
    assert mapped.flops == total
    assert mapped.unmapped_flops == atrous + maxpool + softmax
    assert mapped.unmapped_flops_share == pytest.approx((atrous + maxpool + softmax) / total)


@pytest.mark.slow  # the shipped table has no 32-pixel layers: its learned fallback is trained, in each call
def test_cli_predict_of_the_foreign_fixture_names_the_unmapped_ops(tmp_path: Path) -> None:
    db = str(tmp_path / "absent.db")
    out = mnas("--db", db, "predict", str(FOREIGN), "--device", "pixel1", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)[0]
    assert row["resolution"] == 32  # the model's input side
    assert (row["layers"], row["ops"], row["mapped_ops"]) == (5, 17, 11)
    assert [op["node_type"] for op in row["unmapped_ops"]] == ["PAD", "CONV_2D", "MAX_POOL_2D", "CONCATENATION", "PAD",
                                                              "SOFTMAX"]
    assert row["unmapped_flops_share"] == pytest.approx(156682 / 2021002)
    assert row["predicted_ms"] > 0 and sum(r["predicted_ms"] for r in row["per_layer"]) == pytest.approx(
        row["layer_sum_ms"])
    text = mnas("--db", db, "predict", str(FOREIGN), "--device", "pixel1")
    assert text.returncode == 0, text.stderr
    assert "6 operators map onto no mnas layer (7.8% of 2.0 MFLOPs; not in the predicted total):" in text.stdout
    assert "#8 CONV_2D (0.15 MFLOPs): dilated: mnas layers are undilated" in text.stdout


# ------------------------------------------------------------- patterns a converter writes

def _graph(ops: list[tuple[str, list[int], list[int], dict]], shapes: dict[int, tuple[int, ...]],
           constants: set[int], inputs: tuple[int, ...] = (0,), dtypes: dict[int, str] | None = None) -> ModelGraph:
    count = max(shapes) + 1
    tensors = tuple(TensorInfo(f"t{i}", shapes.get(i, ()), (dtypes or {}).get(i, "FLOAT32"), i in constants)
                    for i in range(count))
    defaults = {"padding": "SAME", "stride_h": 1, "stride_w": 1, "dilation_h": 1, "dilation_w": 1, "act": "NONE",
                "depth_multiplier": 1}
    operators = tuple(OperatorInfo(i, name, 1, tuple(ins), tuple(outs), {**defaults, **options})
                      for i, (name, ins, outs, options) in enumerate(ops))
    return ModelGraph(tensors, operators, inputs, (ops[-1][2][0],), 1, "")


def test_standalone_relu_is_folded_and_a_relu_projection_is_mapped_with_a_note() -> None:
    # MobileNetV1-style: depthwise -> RELU6 op -> pointwise with a fused RELU6
    shapes = {0: (1, 8, 8, 4), 1: (1, 3, 3, 4), 2: (1, 8, 8, 4), 3: (1, 8, 8, 4), 4: (6, 1, 1, 4), 5: (1, 8, 8, 6)}
    ops = [("DEPTHWISE_CONV_2D", [0, 1], [2], {}), ("RELU6", [2], [3], {}), ("CONV_2D", [3, 4], [5], {"act": "RELU6"})]
    mapped = map_graph(_graph(ops, shapes, {1, 4}))
    assert [layer.sig.key for layer in mapped.layers] == ["block:dsconv:8x8x4:o6:k3:s1:e1:m4:se0:none:relu6"]
    assert mapped.layers[0].ops == (0, 1, 2) and mapped.unmapped == ()
    assert "fused RELU6" in mapped.layers[0].notes[0]


def test_convs_outside_the_patterns_are_unmapped_with_a_reason() -> None:
    shapes = {0: (1, 8, 8, 4), 1: (4, 3, 3, 4), 2: (1, 4, 4, 4), 3: (4, 2, 2, 4), 4: (1, 2, 2, 4)}
    ops = [("CONV_2D", [0, 1], [2], {"act": "RELU", "stride_h": 2, "stride_w": 2, "dilation_h": 2, "dilation_w": 2}),
           ("CONV_2D", [2, 3], [4], {"act": "RELU", "stride_h": 2, "stride_w": 2})]
    mapped = map_graph(_graph(ops, shapes, {1, 3}))
    assert mapped.layers == ()
    assert [op.reason for op in mapped.unmapped] == ["dilated: mnas layers are undilated",
                                                     "kernel 2x2: expected an odd square kernel"]


def test_float16_weights_count_as_float32_and_int8_weights_are_int8() -> None:
    # a stem whose filter is a DEQUANTIZE of a float16 constant (float16 post-training quantization)
    shapes = {0: (1, 8, 8, 3), 1: (4, 3, 3, 3), 2: (4, 3, 3, 3), 3: (1, 4, 4, 4)}
    ops = [("DEQUANTIZE", [1], [2], {}), ("CONV_2D", [0, 2], [3], {"act": "RELU", "stride_h": 2, "stride_w": 2})]
    mapped = map_graph(_graph(ops, shapes, {1}, dtypes={1: "FLOAT16"}))
    assert [layer.sig.key for layer in mapped.layers] == ["stem:conv:8x8x3:o4:k3:s2"]
    assert mapped.layers[0].ops == (0, 1) and mapped.unmapped == () and mapped.dtype == "float32"
    # dynamic-range quantization: float activations, int8 weights (hybrid kernels)
    hybrid_ops = [("CONV_2D", [0, 1], [3], {"act": "RELU", "stride_h": 2, "stride_w": 2})]
    hybrid = map_graph(_graph(hybrid_ops, shapes, {1}, dtypes={1: "INT8"}))
    assert hybrid.dtype == "int8" and len(hybrid.layers) == 1


# ----------------------------------------------------------------------------- refusals

def test_int8_model_is_read_then_refused_with_one_line(tmp_path: Path) -> None:
    model = tmp_path / "small-int8.tflite"
    write_arch(zoo.get("mnasnet-small", 0.35), model, resolution=32, num_classes=10, dtype="int8")
    assert map_graph(read_graph(model.read_bytes())).dtype == "int8"
    with pytest.raises(MnasError, match="an int8 \\(quantized\\) model: the latency predictors are fitted on float32"):
        read_layers(model)
    out = mnas("--db", str(tmp_path / "absent.db"), "predict", str(model), "--device", "pixel1")
    assert out.returncode == 2
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
    assert "int8 (quantized) model" in out.stderr and "Traceback" not in out.stderr


def test_bad_inputs_are_one_line_and_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    db = str(tmp_path / "absent.db")
    cases = [
        ((str(junk),), "not a valid TFLite model"),
        ((str(tmp_path / "missing.tflite"),), "no such file"),
        ((str(FOREIGN), "mnasnet-a1"), "either arch strings / zoo names or .tflite files"),
        ((str(FOREIGN), "--resolution", "224"), "reads 32x32 images"),
        (("mnasnet-a1", "--per-layer"), "--per-layer: expected .tflite arguments"),
        ((str(FOREIGN), "--multiplier", "0.5"), "--multiplier: a .tflite file has its own widths"),
    ]
    for args, message in cases:
        out = mnas("--db", db, "predict", *args, "--device", "pixel1")
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
    with pytest.raises(TfliteFormatError):
        read_graph(FOREIGN.read_bytes()[:200])


def test_a_calibration_that_goes_below_zero_gives_way_to_the_layer_sum() -> None:
    predictor = SyntheticPredictor()
    mapped = read_layers(FOREIGN)
    calibrated_row = predict_mapped(predictor, mapped)
    assert calibrated_row["calibration_applied"] is True
    assert calibrated_row["predicted_ms"] == pytest.approx(
        0.7 + 1.1 * calibrated_row["layer_sum_ms"] + 0.05 * 5
        + 0.3 * sum(layer_cost(layer.sig).params for layer in mapped.layers) / 1e6)
    predictor.calibration_ = Calibration(coef_sum=1.0, coef_layers=0.0, intercept_ms=-100.0, n=10)
    row = predict_mapped(predictor, mapped)
    assert row["calibration_applied"] is False and row["predicted_ms"] == row["layer_sum_ms"] > 0


def test_damaged_files_and_graphs_are_refused_or_mapped_never_a_crash() -> None:
    data = FOREIGN.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"mapped": 0, "refused": 0}
    for _ in range(300):  # the tables lie in the file's first ~9 KB (the weights after them)
        damaged = bytearray(data)
        for position in rng.integers(0, 9000, size=int(rng.integers(1, 4))):
            damaged[int(position)] = int(rng.integers(0, 256))
        try:
            map_graph(read_graph(bytes(damaged)))
            outcomes["mapped"] += 1
        except MnasError:
            outcomes["refused"] += 1
    assert outcomes["mapped"] and outcomes["refused"]
    # indices the structure check allows (-1: an absent optional tensor) in any operator's place
    graph = read_graph(data)
    for op in graph.operators:
        for variant in ({"inputs": ()}, {"outputs": ()}, {"options": {}}, {"op": "CONV_2D"}, {"op": "MEAN"},
                        *({"inputs": op.inputs[:j] + (-1,) + op.inputs[j + 1:]} for j in range(len(op.inputs)))):
            operators = list(graph.operators)
            operators[op.index] = replace(op, **variant)
            map_graph(replace(graph, operators=tuple(operators)))
