"""The `.tflite` structure check: real models pass, every kind of damage is a reason (issue 11, point 7)."""

from __future__ import annotations

import struct

import flatbuffers
import pytest
import tflite
from tflite_fixtures import add_model_bytes, conv_model_bytes

from mnas.space import zoo
from mnas.space.tflite_reader import TfliteFormatError, check_model_bytes, check_model_file
from mnas.space.tflite_writer import arch_to_bytes


@pytest.fixture(scope="module")
def small_arch_model() -> bytes:
    return arch_to_bytes(zoo.get("mnasnet-small", 0.35), resolution=96)


def _patch_u32(data: bytes, pos: int, value: int, fmt: str = "<I") -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def _field_pos(tab: flatbuffers.table.Table, slot: int) -> int:
    offset = tab.Offset(slot)
    assert offset, "field absent"
    return tab.Pos + offset


@pytest.mark.parametrize("maker", [conv_model_bytes, add_model_bytes])
def test_fixture_models_pass_and_agree_with_the_generated_classes(maker) -> None:
    data = maker()
    summary = check_model_bytes(data)
    model = tflite.Model.GetRootAs(data, 0)
    subgraph = model.Subgraphs(0)
    assert (summary.version, summary.subgraphs, summary.buffers, summary.operator_codes) == (
        model.Version(), model.SubgraphsLength(), model.BuffersLength(), model.OperatorCodesLength())
    assert (summary.tensors, summary.operators) == (subgraph.TensorsLength(), subgraph.OperatorsLength())
    assert summary.size == len(data)


def test_the_projects_writer_output_passes(small_arch_model: bytes) -> None:
    summary = check_model_bytes(small_arch_model)
    assert summary.operators > 10 and summary.buffers > 10 and summary.version == 3


def _reason(data: bytes) -> str:
    with pytest.raises(TfliteFormatError) as info:
        check_model_bytes(data)
    return str(info.value)


def test_truncated_models_name_what_runs_past_the_end(small_arch_model: bytes) -> None:
    size = len(small_arch_model)
    assert _reason(small_arch_model[: size // 2]).endswith(f"lies outside the file ({size // 2} bytes)")
    assert _reason(small_arch_model[: size // 2]).startswith("buffers[")
    # one byte short: the last weight vector runs past the end
    assert _reason(small_arch_model[:-1]).endswith(f"run past the end of the file ({size - 1} bytes)")
    assert "outside the file (100 bytes)" in _reason(small_arch_model[:100])
    assert _reason(small_arch_model[:6]) == "the file is 6 bytes: too short for a flatbuffer"


def test_identifier_root_and_version() -> None:
    data = conv_model_bytes()
    assert _reason(b"\x00" * 64) == "file identifier b'\\x00\\x00\\x00\\x00' at bytes 4..8, expected b'TFL3'"
    assert "the model root table at byte 1000000 lies outside the file" in _reason(_patch_u32(data, 0, 1_000_000))
    version_at = _field_pos(tflite.Model.GetRootAs(data, 0)._tab, 4)
    assert _reason(_patch_u32(data, version_at, 2)) == "schema version 2, expected 3"


def test_garbage_after_a_valid_identifier_is_a_reason_not_a_crash() -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        junk = bytearray(rng.randbytes(rng.randrange(8, 300)))
        junk[4:8] = b"TFL3"
        with pytest.raises(TfliteFormatError):
            check_model_bytes(bytes(junk))


def test_bad_indices_are_named() -> None:
    data = conv_model_bytes()
    model = tflite.Model.GetRootAs(data, 0)
    subgraph = model.Subgraphs(0)
    operator = subgraph.Operators(0)
    # opcode_index 0 is the default and not stored: empty the operator-code list instead
    opcodes_length_at = model._tab.Vector(model._tab.Offset(6)) - 4
    assert _reason(_patch_u32(data, opcodes_length_at, 0)) == (
        "subgraphs[0].operators[0] uses operator code 0; the model has 0")
    tensor = subgraph.Tensors(1)
    buffer_at = _field_pos(tensor._tab, 8)
    assert _reason(_patch_u32(data, buffer_at, 99)) == "subgraphs[0].tensors[1] uses buffer 99; the model has 3 buffers"
    inputs_start = operator._tab.Vector(operator._tab.Offset(6))
    assert _reason(_patch_u32(data, inputs_start, 42, "<i")) == (
        "subgraphs[0].operators[0].inputs names tensor 42; the subgraph has 4 tensors")


def test_a_model_without_subgraphs_or_operators_is_refused() -> None:
    def model(with_subgraph: bool) -> bytes:
        b = flatbuffers.Builder(256)
        subgraphs = []
        if with_subgraph:
            tflite.SubGraphStart(b)
            subgraphs.append(tflite.SubGraphEnd(b))
        tflite.ModelStartSubgraphsVector(b, len(subgraphs))
        for offset in subgraphs:
            b.PrependUOffsetTRelative(offset)
        vector = b.EndVector()
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddSubgraphs(b, vector)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    assert _reason(model(False)) == "the model has no subgraph"
    assert _reason(model(True)) == "the main subgraph has 0 tensors and 0 operators: nothing to run"


def test_check_model_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "cut.tflite"
    path.write_bytes(conv_model_bytes()[:200])
    with pytest.raises(TfliteFormatError) as info:
        check_model_file(path)
    assert str(info.value).startswith(f"{path}: not a valid TFLite model: ")
    assert info.value.exit_code == 2
