"""The cross-device transfer on synthetic devices whose per-layer ratios are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnas.predictor.features import memory_bytes
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.table import TableMeta
from mnas.predictor.transfer import (
    NetworkFigure,
    RatioModel,
    SourceLatency,
    fit_network_calibration,
    power_law_baseline,
    transfer_table,
)
from mnas.space import zoo
from mnas.space.arch import LayerSig
from mnas.space.cost import layer_cost
from mnas.space.search_space import mnasnet

TOLERANCE = 0.05  # recovered per-layer ratios within 5% of the known ones


def source_ms(layer: LayerSig) -> float:
    """A synthetic 'host': compute plus memory traffic plus a fixed cost."""
    return layer_cost(layer).mult_adds / 2e9 * 1e3 + memory_bytes(layer) / 8e9 * 1e3 + 0.01


def true_ratio(layer: LayerSig) -> float:
    """A synthetic phone: slower by kernel (like the Pixel-1 first look) and by stride."""
    by_kernel = {1: 9.0, 3: 12.0, 5: 10.0, 7: 3.0}[layer.kernel]
    return by_kernel * (1.25 if layer.stride == 2 else 1.0)


def target_ms(layer: LayerSig) -> float:
    return source_ms(layer) * true_ratio(layer)


@pytest.fixture(scope="module")
def space_layers() -> list[LayerSig]:
    return enumerate_layers(mnasnet(), 224)


def _meta() -> TableMeta:
    return TableMeta(name="synthetic-host", device_name="host", runtime="synthetic", runtime_version="1",
                     resolution=224, conditions="synthetic")


def _source(layers: list[LayerSig]) -> SourceLatency:
    return SourceLatency([("synthetic-host", {layer.key: source_ms(layer) for layer in layers})])


def test_ratios_are_recovered_on_layers_the_evidence_lacks(space_layers: list[LayerSig]) -> None:
    rng = np.random.default_rng(0)
    # evidence: 60 layers without squeeze-excite (as the Pixel-1 table), the rest unseen
    no_se = [layer for layer in space_layers if layer.se == 0 and layer.kind == "block"]
    picked = [no_se[i] for i in rng.choice(len(no_se), 60, replace=False)]
    evidence = {layer.key: target_ms(layer) for layer in picked}
    result = transfer_table(_source(space_layers), space_layers, device_name="phone", name="phone-transfer",
                            source_meta=_meta(), layer_evidence=evidence)
    unseen = [layer for layer in space_layers if layer.key not in evidence and layer.kind == "block"]
    got = np.asarray([result.table.entries[layer.key].median_ms for layer in unseen])
    want = np.asarray([target_ms(layer) for layer in unseen])
    relative = np.abs(got / want - 1.0)
    assert np.quantile(relative, 0.95) <= TOLERANCE
    se_layers = [i for i, layer in enumerate(unseen) if layer.se > 0]
    assert se_layers and np.max(relative[se_layers]) <= 2 * TOLERANCE  # a kind never seen: still close
    entry = result.table.entries[unseen[0].key]
    assert entry.measurement["transferred"] is True and entry.runs == 0
    assert entry.measurement["source"] == "synthetic-host"
    assert result.provenance["source_table"] == "synthetic-host"
    assert result.provenance["evidence"]["layers"] == 60
    assert RatioModel.from_dict(result.provenance["ratio_model"]) == result.ratio_model


def test_noisy_evidence_is_shrunk_toward_the_global_ratio(space_layers: list[LayerSig]) -> None:
    rng = np.random.default_rng(1)
    blocks = [layer for layer in space_layers if layer.kind == "block" and layer.se == 0][:80]
    # a phone whose ratio is one constant, seen through per-key noise like two copies of the Pixel-1 table
    evidence = {layer.key: source_ms(layer) * 10.0 * math.exp(rng.normal(0, 0.3)) for layer in blocks}
    result = transfer_table(_source(space_layers), space_layers, device_name="phone", name="p",
                            source_meta=_meta(), layer_evidence=evidence)
    others = [layer for layer in space_layers if layer.key not in evidence]
    ratios = result.ratio_model.ratio(others, [source_ms(layer) for layer in others])
    assert np.all(np.abs(ratios / 10.0 - 1.0) < 0.25)
    assert result.ratio_model.alpha is not None and result.ratio_model.alpha >= 1.0  # the CV chose to shrink


def test_network_calibration_recovers_a_known_gap(space_layers: list[LayerSig]) -> None:
    # the phone's whole networks run 1.3x its layer sum (layers timed alone are faster)
    figures = []
    for multiplier in (0.5, 0.75, 1.0, 1.4):
        for resolution in (128, 224):
            arch = zoo.get("mobilenet-v2", multiplier)
            total = sum(target_ms(layer) for layer in arch.layers(resolution))
            figures.append(NetworkFigure(arch, resolution, 1.3 * total, family="mobilenet-v2"))
    relu6 = {layer.key: layer for f in figures for layer in f.arch.layers(f.resolution)}
    source = SourceLatency([("synthetic-host", {k: source_ms(v) for k, v in relu6.items()})])
    evidence = {k: target_ms(v) for k, v in list(relu6.items())[:40]}
    result = transfer_table(source, list(relu6.values()), device_name="phone", name="p", source_meta=_meta(),
                            layer_evidence=evidence, figures=figures[:6])
    assert result.calibration is not None
    assert result.calibration.coef_sum == pytest.approx(1.3, rel=0.05)
    assert result.provenance["calibration"]["form"] in ("scale", "affine")


def test_calibration_form_choice_and_power_law() -> None:
    sums = np.array([10.0, 20.0, 40.0, 80.0])
    calibration, info = fit_network_calibration(sums, 2.0 * sums)
    assert info["form"] == "scale" and calibration.coef_sum == pytest.approx(2.0)
    calibration, info = fit_network_calibration(sums, 5.0 + 2.0 * sums)
    assert info["form"] == "affine" and calibration.intercept_ms == pytest.approx(5.0)
    assert fit_network_calibration([], [])[0] is None
    law = power_law_baseline([1.0, 2.0, 4.0], [3.0, 3.0 * 2**1.1, 3.0 * 4**1.1])
    assert law(np.array([8.0]))[0] == pytest.approx(3.0 * 8**1.1)


def test_no_layer_evidence_takes_the_ratio_from_networks(space_layers: list[LayerSig]) -> None:
    arch = zoo.get("mnasnet-a1")
    layers = arch.layers(224)
    source = _source(list({layer.key: layer for layer in layers}.values()))
    figure = NetworkFigure(arch, 224, 7.0 * sum(source_ms(layer) for layer in layers))
    result = transfer_table(source, layers, device_name="phone", name="p", source_meta=_meta(), figures=[figure])
    assert math.exp(result.ratio_model.intercept) == pytest.approx(7.0)


def test_shipped_table_answers_without_a_store_and_is_stored_on_first_use(tmp_path, monkeypatch) -> None:
    import json as _json

    from click.testing import CliRunner

    from mnas.bench.store import ResultsStore
    from mnas.cli import cli
    from mnas.predictor import transfer_store
    from mnas.predictor.registry import load_predictor
    from mnas.predictor.selection import ensure_shipped_predictor
    from mnas.predictor.transfer_store import read_transfer_file, write_transfer_file

    a1 = zoo.get("mnasnet-a1", 0.75)
    layers = list({layer.key: layer for r in (192, 224) for layer in a1.layers(r)}.values())
    figures = [NetworkFigure(zoo.get("mnasnet-a1", m), r, 1.2 * sum(target_ms(x) for x in zoo.get("mnasnet-a1", m).layers(r)))
               for m in (0.75, 1.0) for r in (192, 224)]
    layers += [x for f in figures for x in f.arch.layers(f.resolution)]
    evidence = {x.key: target_ms(x) for x in layers[:30]}
    result = transfer_table(_source(layers), layers, device_name="pixel1", name="pixel1-r224-transfer",
                            source_meta=_meta(), layer_evidence=evidence, figures=figures)
    path = write_transfer_file(result, tmp_path / "tables" / "pixel1.json.gz")
    shipped = read_transfer_file(path)
    assert len(shipped.table) == len(result.table) and shipped.table.meta.kind == "transferred"
    assert shipped.calibration == result.calibration
    assert shipped.transfer["ratio_model"]["n"] == len(evidence)
    monkeypatch.setattr(transfer_store, "SHIPPED_DIR", tmp_path / "tables")
    transfer_store._SHIPPED_CACHE.clear()
    want = float(result.calibration.apply(np.array([sum(result.table.entries[x.key].median_ms
                                                        for x in a1.layers(192))]), np.zeros(1))[0])
    db = tmp_path / "none.db"
    out = CliRunner().invoke(cli, ["--db", str(db), "predict", "mnasnet-a1", "--device", "pixel1", "--resolution", "192",
                                   "--multiplier", "0.75", "--json"])
    assert out.exit_code == 0, out.output
    assert _json.loads(out.output)[0]["predicted_ms"] == pytest.approx(want, rel=1e-4)
    assert not db.exists()  # predicting created no store
    store = ResultsStore(tmp_path / "r.db")
    predictor_id = ensure_shipped_predictor(store, "pixel1", 192)
    assert predictor_id is not None and ensure_shipped_predictor(store, "pixel1", 192) is None
    stored = load_predictor(store, device="pixel1", resolution=192)
    assert stored.predictor_id == predictor_id
    assert float(stored.predict_ms([a1])[0]) == pytest.approx(want, rel=1e-4)


def test_a_phone_without_a_layer_table_borrows_another_phones_ratio_shape(space_layers: list[LayerSig]) -> None:
    # phone B = 0.5 x phone A per layer (same kernel/stride shape, another level); B has only networks
    other = [layer for layer in space_layers if layer.kind == "block" and layer.se == 0][:80]
    prior = {layer.key: target_ms(layer) for layer in other}
    figures = []
    for name in ("mnasnet-a1", "mnasnet-b1", "mnasnet-d1", "mobilenet-v2"):
        for multiplier in (0.75, 1.0):
            arch = zoo.get(name, multiplier)
            figures.append(NetworkFigure(arch, 224, 0.5 * sum(target_ms(x) for x in arch.layers(224)), family=name))
    layers = list({x.key: x for f in figures for x in f.arch.layers(224)}.values()) + other
    result = transfer_table(_source(layers), layers, device_name="b", name="b", source_meta=_meta(),
                            figures=figures, prior_evidence=prior, prior_label="a")
    assert result.provenance["evidence"]["prior"] == {"label": "a", "layers": 80}
    assert result.ratio_model.shrink > 0  # the shape helps on B's own networks
    unseen = [x for x in layers if x.key not in prior and x.kind == "block"]
    got = np.asarray([result.table.entries[x.key].median_ms for x in unseen])
    want = np.asarray([0.5 * target_ms(x) for x in unseen])
    assert np.median(np.abs(got / want - 1.0)) <= 2 * TOLERANCE


def roofline_phone_ms(layer: LayerSig) -> float:
    """A synthetic phone that follows the work: its own compute and memory rates, no fixed cost
    (so its ratio to the source changes with layer size, which the kind of layer cannot tell)."""
    return layer_cost(layer).mult_adds / 0.3e9 * 1e3 + memory_bytes(layer) / 3e9 * 1e3


def overhead_source_ms(layer: LayerSig) -> float:
    """A source with a large per-layer cost (an interpreter's dispatch): most of a small layer's time."""
    return source_ms(layer) + 0.05


def test_rate_features_carry_a_work_following_phone_to_other_resolutions() -> None:
    # evidence: a partial table at 224 only (as the Pixel-1 table); asked: the same networks at 96 and 128
    archs = [zoo.get("mobilenet-v2", m) for m in (0.35, 0.5, 0.75, 1.0, 1.4)]
    at224 = list({x.key: x for a in archs for x in a.layers(224) if x.kind == "block"}.values())
    small = list({x.key: x for a in archs for r in (96, 128) for x in a.layers(r) if x.kind == "block"}.values())
    source = SourceLatency([("overhead-host", {x.key: overhead_source_ms(x) for x in at224 + small})])
    evidence = {x.key: roofline_phone_ms(x) for x in at224}
    errors = {}
    for features in ("kind_rates", "kind"):
        result = transfer_table(source, small, device_name="phone", name="p", source_meta=_meta(),
                                layer_evidence=evidence, ratio_features_set=features)
        got = np.asarray([result.table.entries[x.key].median_ms for x in small])
        want = np.asarray([roofline_phone_ms(x) for x in small])
        errors[features] = float(np.quantile(np.abs(got / want - 1.0), 0.9))
    assert errors["kind_rates"] <= TOLERANCE  # 90% of the layers within 5%, at sizes never seen
    assert errors["kind"] > 2 * errors["kind_rates"]  # the kind of layer alone cannot follow the size
