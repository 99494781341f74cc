"""Latency predictors and their evaluation, against a synthetic additive device."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from predictor_fakes import SyntheticDevice, measure_archs, synthetic_layer_ms, write_key

from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.errors import MnasError
from mnas.predictor.additive import LatencyPredictor
from mnas.predictor.build import build_table
from mnas.predictor.calibration import Calibration
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.metrics import evaluate, scatter_png
from mnas.predictor.registry import list_predictors, load_predictor, save_predictor
from mnas.predictor.table import LatencyTable, load_table
from mnas.space.search_space import SearchSpace, mnasnet

SMALL = SearchSpace(stages=((1, 16, 1, 1), (6, 24, 2, 2)))
RES = 64
CONFIG = BenchConfig(warmup_runs=1, num_runs=5)


def small_table(store: ResultsStore, device: SyntheticDevice, name: str = "t", limit: int | None = None) -> LatencyTable:
    build_table(SMALL, RES, [device], store, name, CONFIG, limit=limit, writer=write_key, progress=False)
    return load_table(store, name)


def sample(space: SearchSpace, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "mnas.db")


def test_lookup_predicts_an_additive_device_exactly(store: ResultsStore, tmp_path: Path) -> None:
    device = SyntheticDevice()
    predictor = LookupPredictor(small_table(store, device), space=SMALL)
    assert isinstance(predictor, LatencyPredictor)
    archs = sample(SMALL, 200, seed=1)
    measured = np.asarray(measure_archs(device, archs, tmp_path, RES))
    predicted = predictor.predict_ms(archs)
    np.testing.assert_allclose(predicted, measured, rtol=1e-12, atol=0)
    tokens = np.asarray([SMALL.encode(a) for a in archs])
    np.testing.assert_allclose(predictor.predict_tokens(tokens), measured, rtol=1e-12, atol=0)
    layerwise = predictor.raw_layer_sums(archs)
    np.testing.assert_allclose(layerwise.latency_ms, measured, rtol=1e-12, atol=0)
    assert layerwise.counts is not None and layerwise.counts.tolist() == [len(a.layers(RES)) for a in archs]
    coverage = predictor.layer_coverage(archs)
    assert coverage.from_fallback == 0 and coverage.coverage == 1.0


def test_consistency_predict_tokens_matches_layers_on_the_full_space() -> None:
    layers = enumerate_layers(mnasnet(), 224)
    table = LatencyTable(_meta(224), {layer.key: _entry(layer.key, synthetic_layer_ms(layer)) for layer in layers})
    predictor = LookupPredictor(table)
    rng = np.random.default_rng(3)
    tokens = np.stack([rng.integers(0, n, 300) for _, n in mnasnet().decisions], axis=1)
    archs = [mnasnet().decode([int(t) for t in row]) for row in tokens]
    expected = np.asarray([sum(synthetic_layer_ms(layer) for layer in a.layers(224)) for a in archs])
    np.testing.assert_allclose(predictor.predict_tokens(tokens), expected, rtol=1e-12)
    np.testing.assert_allclose(predictor.predict_tokens(tokens.astype(np.int8)), expected, rtol=1e-12)
    np.testing.assert_allclose(predictor.predict_ms(archs), expected, rtol=1e-12)
    with pytest.raises(MnasError, match=r"^tokens: array of shape \(2, 41\): expected \[n, 42\] \(6 per block\)$"):
        predictor.predict_tokens(tokens[:2, :41])
    bad = tokens[:20].copy()
    bad[13, 10] = 3  # b1.filters has 3 choices
    with pytest.raises(MnasError, match=r"^tokens\[13, 10\] = 3: expected an integer in \[0, 2\]$"):
        predictor.predict_tokens(bad)
    with pytest.raises(MnasError, match=r"^tokens: dtype float64: expected integers$"):
        predictor.predict_tokens(tokens.astype(float))


def test_calibration_recovers_per_model_and_per_layer_overheads(store: ResultsStore, tmp_path: Path) -> None:
    # every single-layer model pays the per-model overhead, a whole network pays it once:
    # measured = table_sum - n * per_model + per_model, i.e. coef 1, -per_model, intercept per_model
    device = SyntheticDevice(per_model_ms=1.5, per_layer_ms=0.05)
    predictor = LookupPredictor(small_table(store, device), space=SMALL)
    train = sample(SMALL, 20, seed=11)
    assert predictor.calibrate(train, measure_archs(device, train, tmp_path, RES)) is predictor
    calibration = predictor.calibration_
    assert calibration is not None
    assert calibration.coef_sum == pytest.approx(1.0, abs=1e-9)
    assert calibration.coef_layers == pytest.approx(-1.5, abs=1e-9)
    assert calibration.intercept_ms == pytest.approx(1.5, abs=1e-9)
    assert calibration.n == 20
    test = sample(SMALL, 100, seed=12)
    measured = np.asarray(measure_archs(device, test, tmp_path, RES))
    np.testing.assert_allclose(predictor.predict_ms(test), measured, rtol=1e-9)
    tokens = np.asarray([SMALL.encode(a) for a in test])
    np.testing.assert_allclose(predictor.predict_tokens(tokens), measured, rtol=1e-9)
    uncalibrated = LookupPredictor(predictor.table, space=SMALL).predict_ms(test)
    assert evaluate(uncalibrated, measured)["mape_pct"] > 50  # the overheads matter
    with pytest.raises(MnasError, match=r"^calibration: 2 measured networks: expected at least 3"):
        predictor.calibrate(train[:2], [1.0, 2.0])


def test_missing_layer_without_fallback_is_named(store: ResultsStore) -> None:
    table = small_table(store, SyntheticDevice(), limit=100)
    predictor = LookupPredictor(table, space=SMALL)
    arch = next(a for a in sample(SMALL, 50, seed=5) if any(layer.key not in table for layer in a.layers(RES)))
    first_missing = next(layer.key for layer in arch.layers(RES) if layer.key not in table)
    message = (f"layer '{first_missing}' is not in latency table 't' (fakephone, resolution {RES}): "
               "expected a table built for this space and resolution, or a learned fallback")
    with pytest.raises(MnasError) as raised:
        predictor.predict_ms([arch])
    assert str(raised.value) == message
    with pytest.raises(MnasError) as raised:
        predictor.predict_tokens(np.asarray([SMALL.encode(arch)]))
    assert str(raised.value) == message
    coverage = predictor.space_coverage()
    assert (coverage["space_layers"], coverage["in_table"], coverage["unpredictable"]) == (580, 100, 480)


def test_missing_layers_go_to_the_fallback_and_are_counted(store: ResultsStore) -> None:
    full = small_table(store, SyntheticDevice(), name="full")
    table = small_table(store, SyntheticDevice(), name="part", limit=300)
    fallback = LearnedPredictor.from_table(full, space=SMALL)
    predictor = LookupPredictor(table, fallback=fallback, space=SMALL)
    archs = sample(SMALL, 60, seed=8)
    layers = [layer for a in archs for layer in a.layers(RES)]
    missing = [layer for layer in layers if layer.key not in table]
    assert missing and len(missing) < len(layers)
    expected = np.asarray([sum(table.latency_ms(layer.key) if layer.key in table else
                               fallback.predict_layers_ms([layer])[0] for layer in a.layers(RES)) for a in archs])
    np.testing.assert_allclose(predictor.predict_ms(archs), expected, rtol=1e-12)
    counted = predictor.layer_coverage(archs)
    assert counted.layers == len(layers)
    assert counted.from_fallback == len(missing)
    assert counted.coverage == pytest.approx(1 - len(missing) / len(layers))
    np.testing.assert_allclose(predictor.raw_layer_sums(archs).latency_ms, expected, rtol=1e-12)  # layer path
    assert sum(counted.fallback_keys.values()) == len(missing)  # counted by key
    assert counted.to_dict() == {"layers": len(layers), "from_table": len(layers) - len(missing),
                                 "from_fallback": len(missing), "coverage_share": counted.coverage}
    coverage = predictor.space_coverage()
    assert (coverage["in_table"], coverage["from_fallback"], coverage["unpredictable"]) == (300, 280, 0)
    assert coverage["coverage_share"] == pytest.approx(300 / 580)


def test_learned_predictor_generalises_to_another_resolution() -> None:
    space = mnasnet()
    layers = enumerate_layers(space, 224)
    ms = np.asarray([synthetic_layer_ms(layer) for layer in layers])
    train = np.random.default_rng(0).permutation(len(layers))[:1200]
    predictor = LearnedPredictor(resolution=192)
    assert predictor.fit([layers[i] for i in train], ms[train]) is predictor
    unseen = enumerate_layers(space, 192)
    layer_metrics = evaluate(predictor.predict_layers_ms(unseen), [synthetic_layer_ms(layer) for layer in unseen])
    assert layer_metrics["within_10pct_share"] >= 0.95
    archs = sample(space, 100, seed=2)
    arch_metrics = evaluate(predictor.predict_ms(archs), [sum(synthetic_layer_ms(layer) for layer in a.layers(192)) for a in archs])
    assert arch_metrics["within_10pct_share"] == 1.0 and arch_metrics["kendall_tau"] > 0.95
    with pytest.raises(MnasError, match=r"^learned predictor model 'svm': expected one of \('rf', 'gbr'\)$"):
        LearnedPredictor(model="svm").fit(layers[:5], ms[:5])
    with pytest.raises(MnasError, match=r"^learned predictor: 5 layers vs 4 latencies: expected one latency per layer$"):
        LearnedPredictor().fit(layers[:5], ms[:4])


def test_save_and_load_round_trip(store: ResultsStore, tmp_path: Path) -> None:
    device = SyntheticDevice(per_model_ms=0.7)
    full = small_table(store, device, name="full")
    part = small_table(store, device, name="part", limit=200)
    learned = LearnedPredictor.from_table(full, model="rf", space=SMALL)
    lookup = LookupPredictor(part, fallback=learned, space=SMALL)
    train = sample(SMALL, 10, seed=4)
    lookup.calibrate(train, measure_archs(device, train, tmp_path, RES))
    archs = sample(SMALL, 50, seed=9)
    tokens = np.asarray([SMALL.encode(a) for a in archs])
    lookup_id = save_predictor(store, lookup, part.table_id, {"mape_pct": 1.25, "kendall_tau": float("nan")})
    learned_id = save_predictor(store, learned, full.table_id, {"mape_pct": 2.5})
    again = load_predictor(store, lookup_id, space=SMALL)
    assert isinstance(again, LookupPredictor) and again.calibration_ == lookup.calibration_
    assert np.array_equal(again.predict_ms(archs), lookup.predict_ms(archs))
    assert np.array_equal(again.predict_tokens(tokens), lookup.predict_tokens(tokens))
    assert again.metrics == {"mape_pct": 1.25, "kendall_tau": None} and again.table_id == part.table_id
    latest = load_predictor(store, device="fakephone", resolution=RES, space=SMALL)
    assert latest.predictor_id == learned_id and isinstance(latest, LearnedPredictor)
    assert np.array_equal(latest.predict_ms(archs), learned.predict_ms(archs))
    assert load_predictor(store, kind="lookup", space=SMALL).predictor_id == lookup_id
    with pytest.raises(MnasError, match=r"^no stored predictor matches device=pixel4, resolution=224: expected one fitted with `mnas table fit`$"):
        load_predictor(store, device="pixel4", resolution=224)
    rows = list_predictors(store)
    assert [(r["id"], r["kind"], r["table"], r["resolution"]) for r in rows] == [
        (lookup_id, "lookup", "part", RES), (learned_id, "learned", "full", RES)]


def test_predicting_changes_nothing_and_parameters_are_kept_as_given(store: ResultsStore) -> None:
    full = small_table(store, SyntheticDevice(), name="full")
    part = small_table(store, SyntheticDevice(), name="part", limit=300)
    learned = LearnedPredictor("rf", seed=3, statistic="median")
    assert (learned.model, learned.seed, learned.model_, dict(learned.trained_on_)) == ("rf", 3, None, {})
    with pytest.raises(MnasError, match=r"^learned predictor: not fitted: expected fit"):
        learned.predict_layers_ms(enumerate_layers(SMALL, RES)[:1])
    learned = LearnedPredictor.from_table(full, model="rf", space=SMALL)
    predictor = LookupPredictor(part, fallback=learned, space=SMALL)
    assert predictor.calibration_ is None and predictor.table_id == part.table_id and learned.table_id == full.table_id
    archs = sample(SMALL, 30, seed=6)
    tokens = np.asarray([SMALL.encode(a) for a in archs])

    def public(p: object) -> dict:
        return {k: v for k, v in vars(p).items() if not k.startswith("_")}

    first = predictor.predict_ms(archs)
    seen, seen_learned, coverage = public(predictor), public(learned), predictor.layer_coverage(archs)
    for _ in range(2):
        np.testing.assert_array_equal(predictor.predict_ms(archs), first)
        np.testing.assert_array_equal(predictor.predict_tokens(tokens), first)
    assert public(predictor) == seen and public(learned) == seen_learned  # memoized indexes only
    assert predictor.layer_coverage(archs) == coverage  # the same answer however often it predicted


def test_a_state_stored_in_the_old_pickle_format_is_refused_not_unpickled(store: ResultsStore) -> None:
    # Format version 1 pickled the state; unpickling runs code, so such a row is refused by
    # its first byte (tests/test_untrusted_files.py: a hostile one creates nothing).
    import pickle
    import time

    from mnas.predictor.features import FEATURE_NAMES

    full = small_table(store, SyntheticDevice(per_model_ms=0.7), name="full")
    old = {"version": 1, "kind": "learned", "model": LearnedPredictor.from_table(full, model="rf").model_,
           "model_name": "rf", "target": "log_per_work", "resolution": RES, "num_classes": 1000,
           "calibration": None, "feature_names": list(FEATURE_NAMES), "sklearn_version": "1.0",
           "trained_on": {"layers": len(full), "seed": 0, "table": "full", "statistic": "median"}}
    with store.transaction() as conn:
        pid = conn.execute("INSERT INTO predictors (table_id, kind, params, metrics, created) VALUES (?, ?, ?, ?, ?)",
                           (full.table_id, "learned", pickle.dumps(old), "{}", time.time())).lastrowid
    with pytest.raises(MnasError, match=rf"^{re.escape(str(store.path))}: stored predictor {pid} was saved in the "
                       r"old pickle format, .*refit it with `mnas table fit`$"):
        load_predictor(store, kind="learned", space=SMALL)


def test_calibration_fit_matches_hand_solution() -> None:
    # measured = 2 + 0.5 * sum + 0.25 * count, exactly
    sums = np.array([10.0, 20.0, 30.0, 15.0])
    counts = np.array([4.0, 6.0, 5.0, 9.0])
    calibration = Calibration.fit(sums, counts, 2 + 0.5 * sums + 0.25 * counts)
    assert (calibration.coef_sum, calibration.coef_layers, calibration.intercept_ms) == pytest.approx((0.5, 0.25, 2.0))
    assert calibration.apply(np.array([8.0]), np.array([4.0])).tolist() == pytest.approx([7.0])


def test_evaluate_against_hand_computed_values() -> None:
    # errors 1, -1, 0, 5 -> RMSE sqrt(27 / 4); relative 0.1, 0.1, 0, 0.2 -> MAPE 10%;
    # within 5%: 1 of 4; within 10%: 3 of 4 (the boundary counts). Kendall tau-b: the 5
    # untied pairs are all concordant, one pair is tied in measured: 5 / sqrt(6 * 5).
    metrics = evaluate([11.0, 9.0, 20.0, 30.0], [10.0, 10.0, 20.0, 25.0])
    assert metrics["n"] == 4
    assert metrics["rmse_ms"] == pytest.approx(math.sqrt(6.75))
    assert metrics["mae_ms"] == pytest.approx(1.75)
    assert metrics["mape_pct"] == pytest.approx(10.0)
    assert metrics["max_error_pct"] == pytest.approx(20.0)
    assert metrics["within_5pct_share"] == 0.25
    assert metrics["within_10pct_share"] == 0.75
    assert metrics["kendall_tau"] == pytest.approx(5 / math.sqrt(30))
    assert evaluate([3.0], [3.0])["kendall_tau"] is None
    with pytest.raises(MnasError, match=r"^evaluate: 2 predictions vs 3 measurements: expected equal counts$"):
        evaluate([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(MnasError, match=r"^evaluate: measurement 1 is 0.0 ms: expected a finite latency > 0$"):
        evaluate([1.0, 2.0], [1.0, 0.0])


def test_scatter_png(tmp_path: Path) -> None:
    import matplotlib.image

    path = scatter_png([11.0, 9.0, 20.0, 30.0], [10.0, 10.0, 20.0, 25.0], tmp_path / "plots/s.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape == (600, 660, 4)  # 5.5 x 5 in at 120 dpi
    assert [p.name for p in path.parent.iterdir()] == ["s.png"]  # no temporary file left


def _meta(resolution: int):
    from mnas.predictor.table import TableMeta

    return TableMeta(name="mem", device_name="synthetic", runtime="none", runtime_version="0",
                     resolution=resolution, conditions="-")


def _entry(key: str, ms: float):
    from mnas.predictor.table import TableEntry

    return TableEntry(key, ms, ms, 0.0, 1, 0.0)
