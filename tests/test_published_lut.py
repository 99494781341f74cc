"""Published lookup tables (ProxylessNAS format): the key grammar, the mapping onto mnas layers,
the import as a published table (one transaction, provenance, unmapped keys listed), the CLI,
and kernel 7 (which the tables use and the MnasNet search space does not offer)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_run import run_mnas_db

from mnas.bench.store import ResultsStore
from mnas.errors import MnasError
from mnas.predictor import published_lut, table
from mnas.predictor.published_lut import (
    RUNTIME,
    LutEntry,
    default_table_name,
    import_proxylessnas_lut,
    parse_proxylessnas_lut,
)
from mnas.predictor.table import (
    TableMeta,
    export_table,
    import_table,
    list_tables,
    load_table,
    open_table,
    save_table,
    store_table,
)
from mnas.space.arch import Arch, LayerSig
from mnas.space.search_space import KERNELS, mnasnet
from mnas.space.tflite_writer import layer_to_bytes
from mnas.space.torch_model import build_layer, build_model, randomize_batchnorm

SHARED = Path("/work/shared/data/phones")
FIRST = SHARED / "proxylessnas_pixel1_lut.yaml"
SECOND = SHARED / "proxylessnas_pixel1_lut_second_copy.yaml"
need_shared = pytest.mark.skipif(not (FIRST.exists() and SECOND.exists()),
                                 reason="the shared Pixel-1 lookup tables are not on this machine")

STEM = "Conv-input:224x224x3-output:112x112x32"
HEAD_CONV = "Conv_1-input:7x7x320-output:7x7x1280"
LOGITS = "Logits-input:7x7x1280-output:1000"
FIRST_BLOCK = "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0"
E6K7_SKIP = "expanded_conv-input:7x7x192-output:7x7x192-expand:6-kernel:7-stride:1-idskip:1"
E3K5_S2 = "expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:5-stride:2-idskip:0"


def row(mean: float = 2.0, var: float = 0.04, count: int = 100) -> dict[str, Any]:
    return {"count": count, "mean": mean, "var": var}


def small_lut() -> dict[str, Any]:
    return {STEM: row(4.0, 0.25, 982), HEAD_CONV: row(3.0, 0.16, 982), LOGITS: row(0.5, 0.09, 900),
            FIRST_BLOCK: row(3.9, 0.08, 318), E6K7_SKIP: row(1.5), E3K5_S2: row(5.0)}


def write_yaml(path: Path, lut: dict[str, Any]) -> Path:
    lines = []
    for key, value in lut.items():
        lines.append(f"{key}:")
        lines.extend(f"  {k}: {v}" for k, v in value.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def by_key(entries: list[LutEntry]) -> dict[str, LutEntry]:
    return {e.source_keys[0]: e for e in entries}


# ------------------------------------------------------------------------------ the grammar

def test_each_key_maps_to_the_mnas_layer() -> None:
    entries, unmapped = parse_proxylessnas_lut(small_lut())
    assert unmapped == []
    got = by_key(entries)
    assert got[STEM].layer == LayerSig(kind="stem", op="conv", cin=3, cout=32, h=224, w=224, kernel=3, stride=2,
                                       act="relu6")
    # ProxylessNAS's first block (expand 1): mnas's depthwise-separable op, depthwise on the 32 input channels
    assert got[FIRST_BLOCK].layer == LayerSig(kind="block", op="dsconv", cin=32, cout=16, h=112, w=112, kernel=3,
                                              stride=1, expand=1, mid=32, se=0, skip="none", act="relu6")
    assert got[E6K7_SKIP].layer == LayerSig(kind="block", op="mbconv", cin=192, cout=192, h=7, w=7, kernel=7,
                                            stride=1, expand=6, mid=1152, se=0, skip="identity", act="relu6")
    assert got[E3K5_S2].layer == LayerSig(kind="block", op="mbconv", cin=24, cout=40, h=56, w=56, kernel=5,
                                          stride=2, expand=3, mid=72, se=0, skip="none", act="relu6")
    head = got[HEAD_CONV]
    assert head.layer == LayerSig(kind="head", op="head", cin=320, cout=1280, h=7, w=7, act="relu6", classes=1000)
    assert head.source_keys == (HEAD_CONV, LOGITS)
    assert [p["key"] for p in head.parts] == [HEAD_CONV, LOGITS]


def test_stem_and_head_are_the_layers_arch_layers_makes() -> None:
    got = by_key(parse_proxylessnas_lut(small_lut()).entries)
    layers = Arch.parse("stem32,r1_k3_s11_e1_i32_o16_noskip,r1_k3_s22_e6_i16_o320,head1280,relu6").layers(224)
    assert layers[0] == got[STEM].layer
    assert layers[1] == got[FIRST_BLOCK].layer
    assert layers[-1] == replace(got[HEAD_CONV].layer, h=layers[-1].h, w=layers[-1].w)
    assert (layers[-1].h, got[HEAD_CONV].layer.h) == (56, 7)


def test_statistics_mean_std_count_and_the_head_sum() -> None:
    got = by_key(parse_proxylessnas_lut(small_lut()).entries)
    layer, mean, std, count = got[STEM]  # unpacks as (LayerSig, mean_ms, std_ms, count)
    assert (mean, std, count) == (4.0, 0.5, 982)
    head = got[HEAD_CONV]
    assert head.mean_ms == pytest.approx(3.5)
    assert head.std_ms == pytest.approx(math.sqrt(0.16 + 0.09))
    assert head.count == 900
    assert head.parts[1] == {"key": LOGITS, "mean_ms": 0.5, "std_ms": 0.3, "count": 900}


def test_keys_are_parsed_field_by_field_in_any_order() -> None:
    shuffled = "expanded_conv-idskip:0-stride:2-kernel:5-expand:3-output:28x28x40-input:56x56x24"
    (entry,), _ = parse_proxylessnas_lut({shuffled: row()})
    assert entry.layer == by_key(parse_proxylessnas_lut(small_lut()).entries)[E3K5_S2].layer


def test_keys_without_a_mnas_layer_are_listed_with_the_reason() -> None:
    lut = {"Pool-input:7x7x1280-output:1x1x1280": row(), "Conv-input:224x224x4-output:112x112x32": row(),
           "Conv-input:224x224x3-output:224x224x32": row(), HEAD_CONV: row(), E3K5_S2: row(),
           "Logits-input:7x7x960-output:1000": row()}
    entries, unmapped = parse_proxylessnas_lut(lut)
    assert [e.source_keys for e in entries] == [(E3K5_S2,)]
    reasons = dict(unmapped)
    assert list(reasons) == [k for k in lut if k != E3K5_S2]  # in the file's order
    assert reasons["Pool-input:7x7x1280-output:1x1x1280"] == (
        "no mnas layer: layer type 'Pool' (mnas maps Conv, expanded_conv, Conv_1, Logits)")
    assert reasons["Conv-input:224x224x4-output:112x112x32"] == (
        "no mnas layer: input has 4 channels: mnas's stem takes the 3-channel image")
    assert "mnas's stem is a 3x3 stride-2 conv (output 112x112)" in reasons["Conv-input:224x224x3-output:224x224x32"]
    assert reasons[HEAD_CONV] == ("no mnas layer alone: mnas's head is the 1x1 conv + pooling + classifier, and no "
                                  "Logits key takes input 7x7x1280")
    assert "no Conv_1 key gives output 7x7x960" in reasons["Logits-input:7x7x960-output:1000"]


MALFORMED_KEYS = [
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2",
     "field 'idskip' missing: expected expanded_conv fields input, output, expand, kernel, stride, idskip"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0-dilation:1",
     "unknown field 'dilation': expected expanded_conv fields input, output, expand, kernel, stride, idskip"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-kernel:5-stride:2-idskip:0",
     "field 'kernel' repeated: expected each field once"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:4-stride:2-idskip:0",
     "field 'kernel' = '4': expected an odd kernel size such as 3, 5, 7"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:k3-stride:2-idskip:0",
     "field 'kernel' = 'k3': expected an odd kernel size such as 3, 5, 7"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:0-kernel:3-stride:2-idskip:0",
     "field 'expand' = '0': expected an expansion ratio >= 1 such as 1, 3, 6"),
    ("expanded_conv-input:112x112x16-output:38x38x24-expand:3-kernel:3-stride:3-idskip:0",
     "field 'stride' = '3': expected stride 1 or 2"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:yes",
     "field 'idskip' = 'yes': expected idskip 0 or 1"),
    ("expanded_conv-input:112x112-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0",
     "field 'input' = '112x112': expected HxWxC with positive integers such as 112x112x32"),
    ("expanded_conv-input:112x112x16-output:112x112x24-expand:3-kernel:3-stride:2-idskip:0",
     "output 112x112 for input 112x112 at stride 2: expected output 56x56"),
    ("expanded_conv-input:28x28x40-output:28x28x80-expand:3-kernel:3-stride:1-idskip:1",
     "idskip:1 with input 28x28x40, output 28x28x80, stride 1: an identity skip needs stride 1 and input "
     "channels == output channels: expected idskip:0"),
    ("expanded_conv-input:28x28x40-output:14x14x40-expand:3-kernel:3-stride:2-idskip:1",
     "idskip:1 with input 28x28x40, output 14x14x40, stride 2: an identity skip needs stride 1 and input "
     "channels == output channels: expected idskip:0"),
    ("expanded_conv", "no fields: expected 'Type-name:value-...' such as 'Conv-input:224x224x3-output:112x112x32'"),
    ("expanded_conv-input=112x112x16", "field 'input=112x112x16': expected name:value such as 'kernel:3'"),
    ("expanded conv-input:1x1x1", "layer type 'expanded conv': expected a name such as Conv, expanded_conv, Conv_1, Logits"),
    ("Conv_1-input:7x7x320-output:1x1x1280", "output 1x1 for input 7x7: expected the same size (a 1x1 stride-1 conv)"),
    ("Logits-input:7x7x1280-output:many", "field 'output' = 'many': expected the number of classes, an integer >= 1"),
    ("Conv-input:224x224x3", "field 'output' missing: expected Conv fields input, output"),
]


@pytest.mark.parametrize(("key", "expected"), MALFORMED_KEYS, ids=[k for k, _ in MALFORMED_KEYS])
def test_a_malformed_key_is_one_line_naming_the_row_and_key(tmp_path: Path, key: str, expected: str) -> None:
    path = write_yaml(tmp_path / "lut.yaml", {STEM: row(), key: row()})
    with pytest.raises(MnasError) as err:
        parse_proxylessnas_lut(path)
    assert str(err.value) == f"ProxylessNAS LUT {str(path)!r}: line 5: key {key!r}: {expected}"
    with pytest.raises(MnasError, match="^ProxylessNAS LUT: key "):  # a mapping has no lines
        parse_proxylessnas_lut({key: row()})


MALFORMED_ROWS = [
    ({"count": 0, "mean": 1.0, "var": 0.1}, "count = 0: expected an integer >= 1"),
    ({"count": 1.5, "mean": 1.0, "var": 0.1}, "count = 1.5: expected an integer >= 1"),
    ({"count": 3, "mean": 0, "var": 0.1}, "mean = 0: expected milliseconds > 0"),
    ({"count": 3, "mean": "fast", "var": 0.1}, "mean = 'fast': expected milliseconds > 0"),
    ({"count": 3, "mean": 1.0, "var": -0.1}, "var = -0.1: expected a finite number >= 0"),
    ({"count": 3, "mean": 1.0, "var": float("nan")}, "var = nan: expected a finite number >= 0"),
    ({"count": 3, "mean": 1.0}, "row is ['count', 'mean']: expected {count: integer >= 1, mean: ms > 0, var: >= 0}"),
    ({"count": 3, "mean": 1.0, "var": 0.1, "median": 1.0},
     "row is ['count', 'mean', 'median', 'var']: expected {count: integer >= 1, mean: ms > 0, var: >= 0}"),
    (4.2, "row is float: expected {count: integer >= 1, mean: ms > 0, var: >= 0}"),
]


@pytest.mark.parametrize(("value", "expected"), MALFORMED_ROWS, ids=[e for _, e in MALFORMED_ROWS])
def test_a_malformed_row_is_one_line(value: Any, expected: str) -> None:
    with pytest.raises(MnasError) as err:
        parse_proxylessnas_lut({E3K5_S2: value})
    assert str(err.value) == f"ProxylessNAS LUT: key {E3K5_S2!r}: {expected}"


def test_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "lut.yaml"
    path.write_text(f"{STEM}:\n  count: 1\n  mean: 1.0\n  var: 0.1\n{STEM}:\n  count: 2\n  mean: 1.0\n  var: 0.1\n")
    with pytest.raises(MnasError) as err:
        parse_proxylessnas_lut(path)
    assert str(err.value) == (f"ProxylessNAS LUT {str(path)!r}: line 5: key {STEM!r} repeated (first on line 1): "
                              "expected each key once")
    path.write_text(f"{STEM}:\n  count: [1\n")
    with pytest.raises(MnasError, match=r"line \d+: not valid YAML \(.*\): expected a mapping of layer keys"):
        parse_proxylessnas_lut(path)
    for text, have in (("", "empty"), ("- 1\n- 2\n", "a list")):
        path.write_text(text)
        with pytest.raises(MnasError) as err:
            parse_proxylessnas_lut(path)
        assert str(err.value) == (f"ProxylessNAS LUT {str(path)!r}: the document is {have}: expected a mapping of "
                                  "layer keys to {count, mean, var}")
    path.write_text("!!python/object/apply:os.system ['true']\n")  # safe_load: never runs code
    with pytest.raises(MnasError, match="not valid YAML"):
        parse_proxylessnas_lut(path)
    path.write_bytes(b"\xff\xfe" + STEM.encode())
    with pytest.raises(MnasError, match=r"not UTF-8 text \(byte 0\): expected a YAML lookup table"):
        parse_proxylessnas_lut(path)
    with pytest.raises(MnasError, match="No such file or directory: expected a readable .yaml file"):
        parse_proxylessnas_lut(tmp_path / "missing.yaml")


# ----------------------------------------------------------------- the published tables

PROXYLESS_ARCH = ("stem32,r1_k3_s11_e1_i32_o16_noskip,r4_k3_s22_e6_i16_o24,r4_k5_s22_e3_i24_o40,"
                  "r4_k7_s22_e6_i40_o80,r4_k5_s11_e3_i80_o96,r4_k7_s22_e6_i96_o192,r1_k7_s11_e6_i192_o320,"
                  "head1280,relu6")


@need_shared
@pytest.mark.parametrize("path", [FIRST, SECOND], ids=["first", "second_copy"])
def test_the_shared_pixel1_tables_map_completely(path: Path) -> None:
    entries, unmapped = parse_proxylessnas_lut(path)
    assert unmapped == []
    assert len(entries) == 71  # 72 keys: Conv_1 and Logits make one head
    kinds = [e.layer.kind for e in entries]
    assert (kinds.count("stem"), kinds.count("head"), kinds.count("block")) == (1, 1, 69)
    blocks = [e.layer for e in entries if e.layer.kind == "block"]
    assert {b.kernel for b in blocks} == {3, 5, 7} and {b.expand for b in blocks} == {1, 3, 6}
    assert {b.act for b in blocks} == {"relu6"} and {b.se for b in blocks} == {0}
    # every layer of a ProxylessNAS-shaped mnas arch (e1 first block, k3/k5/k7, identity skips) is a table key,
    # stem and head included: the keys are exactly those Arch.layers gives
    keys = {e.layer.key for e in entries}
    arch = Arch.parse(PROXYLESS_ARCH)
    assert [layer.key for layer in arch.layers(224) if layer.key not in keys] == []


@need_shared
def test_both_shared_tables_import_under_their_names(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "s.db") as store:
        first = import_proxylessnas_lut(store, FIRST, device="pixel1")
        second = import_proxylessnas_lut(store, SECOND, device="pixel1", name="pixel1-r224-proxylessnas-lut-2",
                                         source="GitHub itouchz/Neural-Predictor-Tensorflow, proxylessnas/pixel_trim.yaml")
        assert (first.table, first.entries, first.keys, first.unmapped) == ("pixel1-r224-proxylessnas-lut", 71, 72, [])
        assert (second.entries, second.keys) == (71, 72)
        loaded = load_table(store, first.table, resolution=224)
        other = load_table(store, second.table, resolution=224)
    assert loaded.meta.kind == "published" and loaded.meta.runtime == RUNTIME
    assert loaded.meta.provenance["source_file"] == str(FIRST.resolve())
    assert other.meta.provenance["source"].startswith("GitHub itouchz")
    assert set(loaded.entries) == set(other.entries)
    assert loaded.latency_ms("stem:conv:224x224x3:o32:k3:s2:relu6") == pytest.approx(4.083755600814664)


def test_import_stores_a_published_table_with_provenance(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "lut.yaml", {**small_lut(), "Pool-input:7x7x1280-output:1x1x1280": row()})
    with ResultsStore(tmp_path / "s.db") as store:
        result = import_proxylessnas_lut(store, path, device="pixel1")
        loaded = load_table(store, result.table)
        listed = list_tables(store)
    assert result.table == default_table_name("pixel1") == "pixel1-r224-proxylessnas-lut"
    assert (result.keys, result.entries) == (7, 5)
    assert result.unmapped == [("Pool-input:7x7x1280-output:1x1x1280",
                                "no mnas layer: layer type 'Pool' (mnas maps Conv, expanded_conv, Conv_1, Logits)")]
    meta = loaded.meta
    assert (meta.kind, meta.device_name, meta.runtime, meta.resolution, meta.num_classes, meta.device_ids) == (
        "published", "pixel1", "tflite (ProxylessNAS LUT)", 224, 1000, ())
    p = meta.provenance
    assert p["note"] == "published, not measured here" and p["source_file"] == str(path.resolve())
    assert len(p["source_sha256"]) == 64 and p["keys"] == 7 and p["entries"] == 5
    assert p["unmapped"] == [{"key": k, "reason": r} for k, r in result.unmapped]
    assert "sum of the means" in p["head"] and "no median" in p["statistics"]
    stem = loaded.entries["stem:conv:224x224x3:o32:k3:s2:relu6"]
    assert (stem.median_ms, stem.mean_ms, stem.std_ms, stem.runs, stem.measurement_id) == (4.0, 4.0, 0.5, 982, None)
    assert stem.measurement["published"] is True and stem.measurement["source_keys"] == [STEM]
    head = loaded.entries["head:head:7x7x320:o1280:k1:s1:c1000:relu6"]
    assert head.median_ms == pytest.approx(3.5) and [p["key"] for p in head.measurement["parts"]] == [HEAD_CONV, LOGITS]
    assert listed[0]["kind"] == "published" and listed[0]["provenance"] == p and listed[0]["entries"] == 5


def test_nothing_partial_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write_yaml(tmp_path / "good.yaml", small_lut())
    bad = write_yaml(tmp_path / "bad.yaml", {**small_lut(), E3K5_S2.replace("kernel:5", "kernel:6"): row()})
    with ResultsStore(tmp_path / "s.db") as store:
        with pytest.raises(MnasError, match="line 25: key .*expected an odd kernel size"):
            import_proxylessnas_lut(store, bad, device="pixel1")
        assert list_tables(store) == []
        # a failure while writing (here: the 4th entry) rolls the whole table back
        calls = []
        real = table.add_entry

        def failing(*args: Any, **kwargs: Any) -> bool:
            calls.append(1)
            if len(calls) == 4:
                raise OSError("disk gone")
            return real(*args, **kwargs)

        monkeypatch.setattr(table, "add_entry", failing)
        with pytest.raises(OSError):
            import_proxylessnas_lut(store, good, device="pixel1")
        monkeypatch.undo()
        assert list_tables(store) == [] and store.read("SELECT COUNT(*) FROM table_entries") == [(0,)]
        first = import_proxylessnas_lut(store, good, device="pixel1")
        with pytest.raises(MnasError, match="already exists in the store: expected a new name"):
            import_proxylessnas_lut(store, good, device="pixel1")
        assert [t["entries"] for t in list_tables(store)] == [first.entries]
        with pytest.raises(MnasError, match="expected a device name without spaces"):
            import_proxylessnas_lut(store, good, device="pixel 1", name="x")


def test_a_build_never_extends_a_published_table(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "lut.yaml", small_lut())
    with ResultsStore(tmp_path / "s.db") as store:
        result = import_proxylessnas_lut(store, path, device="pixel1")
        measured = TableMeta(name=result.table, device_name="pixel1", runtime=RUNTIME,
                             runtime_version=published_lut.RUNTIME_VERSION, resolution=224,
                             conditions=published_lut.CONDITIONS, space=published_lut.SPACE)
        with pytest.raises(MnasError) as err:
            open_table(store, measured)
    assert str(err.value) == (f"latency table {result.table!r}: kind is 'published': expected 'measured' "
                              "(choose another table name)")


def test_a_published_table_exports_and_imports_with_its_provenance(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "lut.yaml", small_lut())
    with ResultsStore(tmp_path / "s.db") as store:
        result = import_proxylessnas_lut(store, path, device="pixel1")
        original = load_table(store, result.table)
        exported = export_table(original, tmp_path / "t.json.gz")
        save_table(store, import_table(exported), "copy")
        copy = load_table(store, "copy")
        assert copy.entries == original.entries
        assert copy.meta == replace(original.meta, name="copy")
        assert (copy.meta.kind, copy.meta.provenance) == ("published", original.meta.provenance)
        # a repeated layer key stores nothing of the table
        entry = next(iter(original.entries.values()))
        with pytest.raises(MnasError, match="layer key .* repeated: expected each key once"):
            store_table(store, replace(original.meta, name="twice"), [entry, entry])
        assert [t["name"] for t in list_tables(store)] == [result.table, "copy"]


def test_old_table_metadata_reads_as_measured() -> None:
    meta = TableMeta.from_dict({"name": "t", "device_name": "host", "runtime": "r", "runtime_version": "1",
                                "resolution": 224, "conditions": "c"})
    assert (meta.kind, meta.provenance) == ("measured", {})
    assert hash(meta) == hash(TableMeta.from_dict(meta.to_dict()))
    with pytest.raises(MnasError, match="kind 'guessed': expected one of"):
        TableMeta.from_dict({**meta.to_dict(), "kind": "guessed"})


# --------------------------------------------------------------------------------- the CLI

def cli(db: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_mnas_db(capsys, db, *args)


def test_cli_import_list_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    path = write_yaml(tmp_path / "lut.yaml", {**small_lut(), "Pool-input:7x7x1280-output:1x1x1280": row()})
    code, out, err = cli(db, capsys, "table", "import", "--format", "proxylessnas", str(path), "--device", "pixel1")
    assert code == 0, err
    assert out.splitlines() == [
        f"imported published table pixel1-r224-proxylessnas-lut (id 1): 5 mnas layers from 7 keys of {path}, "
        "device pixel1 (published, not measured here)",
        "1 keys have no mnas layer (recorded in the table's provenance):",
        "  Pool-input:7x7x1280-output:1x1x1280: no mnas layer: layer type 'Pool' (mnas maps Conv, expanded_conv, "
        "Conv_1, Logits)"]
    code, out, err = cli(db, capsys, "table", "import", "--format", "proxylessnas", str(path), "--device", "pixel1",
                         "--name", "again", "--source", "a paper", "--json")
    payload = json.loads(out)
    assert (payload["table"], payload["kind"], payload["entries"], payload["keys"]) == ("again", "published", 5, 7)
    assert (payload["source"], len(payload["source_sha256"])) == ("a paper", 64)
    assert payload["unmapped"] == [{"key": "Pool-input:7x7x1280-output:1x1x1280",
                                    "reason": "no mnas layer: layer type 'Pool' (mnas maps Conv, expanded_conv, "
                                              "Conv_1, Logits)"}]
    code, out, err = cli(db, capsys, "table", "list")
    assert code == 0 and " published " in out.splitlines()[2]
    assert f"table again: published, not measured here: a paper ({path.resolve()}); 1 source keys without a mnas layer" in out

    def error(*args: str) -> str:
        code, out, err = cli(db, capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (code, out, err)
        return lines[0]

    bad = write_yaml(tmp_path / "bad.yaml", {STEM: row(), E3K5_S2.replace("stride:2", "stride:1"): row()})
    fresh = tmp_path / "fresh.db"
    code, out, err = cli(fresh, capsys, "table", "import", "--format", "proxylessnas", str(bad), "--device", "pixel1")
    assert code == 2 and err.strip() == (
        f"mnas: error: ProxylessNAS LUT {str(bad)!r}: line 5: key "
        f"{E3K5_S2.replace('stride:2', 'stride:1')!r}: output 28x28 for input 56x56 at stride 1: expected output 56x56")
    assert not fresh.exists()  # a malformed file creates no store
    assert error("table", "import", "--format", "proxylessnas", str(path)) == (
        "mnas: error: --format proxylessnas: --device missing: expected the device the table was measured on, "
        "such as --device pixel1")
    assert error("table", "import", str(path), "--device", "pixel1") == (
        "mnas: error: --device 'pixel1': expected only with --format proxylessnas (an export names its device)")
    assert error("table", "import", "--format", "proxylessnas", str(path), "--device", "pixel1", "--name", "again") == (
        "mnas: error: latency table 'again' already exists in the store: expected a new name")


# ------------------------------------------------------------------------------- kernel 7

def test_the_mnasnet_search_space_does_not_offer_kernel_7() -> None:
    assert KERNELS == (3, 5)
    space = mnasnet()
    kernels = {block.kernel for seed in range(50) for block in space.sample(seed).blocks}
    assert kernels == {3, 5}
    arch = Arch.parse(PROXYLESS_ARCH)
    with pytest.raises(MnasError):
        space.encode(arch)


@pytest.mark.parametrize("key", [E6K7_SKIP, "expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:7-stride:2-idskip:0",
                                 "expanded_conv-input:16x16x32-output:16x16x16-expand:1-kernel:7-stride:1-idskip:0"])
def test_kernel_7_layers_of_a_lut_build_write_and_run(key: str) -> None:
    """A k7 layer from a published key: torch module, .tflite, LiteRT output equal to torch's."""
    from ai_edge_litert.interpreter import Interpreter

    ((sig, _, _, _),), _ = parse_proxylessnas_lut({key: row()})
    assert sig.kernel == 7
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        module = build_layer(sig)
        randomize_batchnorm(module, 3)
        module.eval()
        x = 3 * np.random.default_rng(1).standard_normal((1, sig.cin, sig.h, sig.w), dtype=np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)
    interpreter = Interpreter(model_content=layer_to_bytes(sig, module=module), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"]).transpose(0, 3, 1, 2)
    assert got.shape == (1, sig.cout, sig.out_h, sig.out_w)
    scale = float(np.abs(want).max())
    assert scale > 0 and float(np.abs(got - want).max()) <= 1e-4 * scale


def test_a_proxylessnas_shaped_arch_with_kernel_7_builds_in_torch() -> None:
    model = build_model(Arch.parse(PROXYLESS_ARCH), num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
