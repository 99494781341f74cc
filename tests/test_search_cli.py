"""`mnas search` end to end on this machine: real proxy training, predicted / measured / hybrid latency.

Every run goes through the real command line in a subprocess, on a fresh database holding a
predictor fitted here from a tiny latency table really measured on the host (12 layers; a
random forest on them predicts every other layer of the space). Children are really trained
on the embedded default dataset (Fashion-MNIST from /usr/share/datasets/fashion-mnist) with
small settings (512 images, 8 steps, 16 px, scored on 500 held-out images). Then `report` (three PNGs, the top-k table,
JSON) and `export` (block strings, a .tflite LiteRT loads, the trained proxy's weights that
reproduce the stored accuracy, and the trained network as .tflite) are checked against what
the store holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_search_runs import (
    Row,
    assert_each_sample_once,
    cli_env,
    query_db,
    run_cli,
    run_row,
    stored,
)

from mnas.bench.host import HostDevice
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.predictor.build import build_table
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.registry import load_predictor, save_predictor
from mnas.predictor.table import load_table
from mnas.search.accuracy import ProxyTask, ProxyTrainer, evaluate
from mnas.search.datasets import fashion_mnist_installed
from mnas.search.reward import Reward
from mnas.space.arch import Arch
from mnas.space.search_space import mnasnet
from mnas.space.torch_model import build_model

RES = 32
TRAINING = ("--train-samples", "512", "--steps", "8", "--proxy-resolution", "16", "--val-samples", "500")
QUICK_TIMING = ("--runs", "3", "--warmup", "1", "--min-secs", "0")
PNG = b"\x89PNG\r\n\x1a\n"

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_installed(), reason="Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def host_db(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A database with a predictor for `host` at RES fitted on 12 layers really timed on this CPU."""
    db = tmp_path_factory.mktemp("host") / "mnas.db"
    store = ResultsStore(db)
    layers = enumerate_layers(mnasnet(), RES, 1000)
    chosen = layers[:: len(layers) // 12][:12]  # spread over the stem, every block and the head
    config = BenchConfig(warmup_runs=1, num_runs=5, min_secs=0)
    result = build_table(mnasnet(), RES, [HostDevice()], store, "host-tiny", config, layers=chosen, progress=False)
    assert result.measured == 12 and not result.failures
    table = load_table(store, "host-tiny")
    # the host's headline statistic (min of runs): a hybrid search refuses a predictor of another one
    predictor = LookupPredictor(table, fallback=LearnedPredictor.from_table(table, model="rf", statistic="min"),
                                statistic="min")
    predictor_id = save_predictor(store, predictor, result.table_id, {"layers": 12})
    rng = np.random.default_rng(0)
    latencies = predictor.predict_tokens(np.asarray([mnasnet().sample_tokens(rng) for _ in range(300)]))
    store.close()
    # T at the median predicted latency: about half of the children on either side
    return {"db": db, "predictor_id": predictor_id, "target_ms": round(float(np.median(latencies)), 4)}


def fresh_db(host_db: dict[str, Any], tmp_path: Path) -> Path:
    from test_search_runs import copy_db

    return copy_db(host_db["db"], tmp_path / "mnas.db")


def hypervolume_by_hand(latency: Sequence[float], accuracy: Sequence[float], reference_ms: float) -> float:
    """Area of the union of the boxes [lat, ref] x [0, acc], normalised by ref (sweep over x)."""
    xs = sorted({x for x in latency if x < reference_ms} | {reference_ms})
    area = 0.0
    for left, right in zip(xs, xs[1:], strict=False):
        height = max([a for x, a in zip(latency, accuracy, strict=True) if x <= left], default=0.0)
        area += (right - left) * height
    return area / reference_ms


def predicted_ms(db: Path, predictor_id: int, arch: str) -> float:
    store = ResultsStore(db)
    try:
        return float(load_predictor(store, predictor_id).predict_ms([Arch.parse(arch)])[0])
    finally:
        store.close()


def measurement_of(db: Path, arch: str) -> list[tuple]:
    # the host's headline latency is the minimum of runs (bench.types.headline_statistic)
    return query_db(db, "SELECT m.device_id, m.min_ms, m.num_runs, m.warmup_runs, d.label FROM measurements m "
                      "JOIN models d ON d.sha256 = m.model_sha256 WHERE d.arch = ? ORDER BY m.id", (arch,))


def check_trained(rows: list[Row], task: dict[str, Any]) -> None:
    for row in rows:
        key = json.loads(row.accuracy_task)
        assert {k: key[k] for k in task} == task
        assert 0.0 < row.accuracy <= 1.0


# ============================================================================ predicted


@pytest.mark.slow
@needs_fashion_mnist
def test_predicted_search_trains_children_then_reports_and_exports(host_db: dict[str, Any], tmp_path: Path) -> None:
    db = fresh_db(host_db, tmp_path)
    env = cli_env()
    target = host_db["target_ms"]
    run = run_cli(env, "--db", str(db), "search", "--latency", "predicted", "--device", "host",
                  "--latency-resolution", str(RES), "--target-ms", str(target), "--samples", "2", *TRAINING,
                  "--proxy-strides", "full",  # the timed strides: the trained proxy has a .tflite form
                  "--name", "real", "--json", timeout_s=600)  # default dataset: fashion-mnist
    assert run.rc == 0, run.describe()
    payload = run.json()
    rows = stored(db, "real")
    assert_each_sample_once(db, "real", 2)
    assert (payload["run_id"], payload["samples"], payload["new_samples"]) == ("real", 2, 2)
    assert payload["best_reward"] == max(r.reward for r in rows)
    assert set(payload) == {"run_id", "samples", "new_samples", "best_reward", "best_arch", "elapsed_s",
                            "samples_per_hour", "executor", "window"}
    check_trained(rows, {"dataset": "fashion-mnist", "resolution": 16, "steps": 8, "max_train_samples": 512,
                         "max_val_samples": 500})
    reward = Reward.soft(target)
    for row in rows:
        assert row.latency_source == f"predicted:predictor-{host_db['predictor_id']}"
        assert row.measured_ms is None and row.latency_ms == row.predicted_ms
        assert row.latency_ms == pytest.approx(predicted_ms(db, host_db["predictor_id"], row.arch), rel=1e-9)
        assert row.reward == pytest.approx(reward(row.accuracy, row.latency_ms), rel=1e-12)
    assert run_row(db, "real")["status"] == "done"
    weights = db.parent / "runs" / "real" / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["0.pt", "1.pt"]  # the top 5 are kept: both

    # ---- report
    report = run_cli(env, "--db", str(db), "search", "report", "real", "--top", "2", "--json")
    assert report.rc == 0, report.describe()
    data = report.json()
    assert set(data) == {"run_id", "samples", "target_ms", "best_reward", "share_under_target", "latency_median_ms",
                         "latency_p10_ms", "latency_p90_ms", "hypervolume", "pareto_size", "latency_sources",
                         "latency_error", "top", "updates", "plots", "accuracy_label", "ranking"}
    assert (data["ranking"], data["accuracy_label"]) == ("search", "proxy accuracy")
    lat = [r.latency_ms for r in rows]
    acc = [r.accuracy for r in rows]
    ranked = sorted(rows, key=lambda r: r.reward, reverse=True)
    assert (data["samples"], data["target_ms"], data["updates"]) == (2, target, 0)  # PPO updates every 20
    assert data["best_reward"] == ranked[0].reward
    assert data["share_under_target"] == pytest.approx(np.mean([x <= target for x in lat]))
    assert data["latency_median_ms"] == pytest.approx(float(np.median(lat)))
    assert data["hypervolume"] == pytest.approx(hypervolume_by_hand(lat, acc, 2 * target), rel=1e-12)
    assert data["latency_sources"] == {"predicted": 2}
    assert data["latency_error"] == {"n": 0, "mape_pct": None, "max_ape_pct": None, "bias_pct": None}
    assert [t["idx"] for t in data["top"]] == [r.idx for r in ranked[:2]]
    assert set(data["top"][0]) == {"idx", "reward", "accuracy", "latency_ms", "latency_source", "arch_hash", "arch"}
    assert set(data["plots"]) == {"pareto_png", "reward_png", "latency_png"}
    for path in data["plots"].values():
        content = Path(path).read_bytes()
        assert content[:8] == PNG and len(content) > 5000
        assert Path(path).parent == db.parent / "runs" / "real" / "report"
    text = run_cli(env, "--db", str(db), "search", "report", "real", "--top", "2", "-o", str(tmp_path / "plots"))
    assert text.rc == 0, text.describe()
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"run real: 2 children, target {target} ms, ")
    assert lines[1] == "latency sources: predicted 2"
    assert lines[2].startswith("ranking: search (one training per child")
    del lines[2]
    assert lines[2].split() == ["idx", "reward", "accuracy", "latency_ms", "source", "arch"]
    assert [int(line.split()[0]) for line in lines[3:5]] == [r.idx for r in ranked[:2]]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["latency_hist.png", "pareto.png", "reward.png"]

    # ---- export
    export = run_cli(env, "--db", str(db), "search", "export", "real", "--top", "2", "-o", str(tmp_path / "out"),
                     "--json")
    assert export.rc == 0, export.describe()
    exported = export.json()
    assert [e["idx"] for e in exported] == [r.idx for r in ranked]
    task = ProxyTask.from_key(rows[0].accuracy_task, threads=1)
    data_split = ProxyTrainer(task).data
    from ai_edge_litert.interpreter import Interpreter

    for entry, row in zip(exported, ranked, strict=True):
        arch = Arch.parse(row.arch)
        lines = Path(entry["blocks_txt"]).read_text().splitlines()
        assert lines == [str(block) for block in arch.blocks] + [f"# {row.arch}"]
        timed = Interpreter(model_path=entry["tflite"])
        timed.allocate_tensors()
        assert list(timed.get_input_details()[0]["shape"]) == [1, RES, RES, 3]
        assert list(timed.get_output_details()[0]["shape"]) == [1, 1000]
        timed.invoke()
        # the trained proxy: loads into build_model(arch, 10) and reproduces the stored accuracy
        assert (entry["num_classes"], entry["proxy_resolution"]) == (10, 16)
        model = build_model(arch, entry["num_classes"])
        model.load_state_dict(torch.load(entry["weights"], weights_only=True))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the search trained and evaluated it
        try:
            assert evaluate(model, data_split.x_val, data_split.y_val) == row.accuracy
        finally:
            torch.set_num_threads(threads)
        trained = Interpreter(model_path=entry["trained_tflite"])
        trained.allocate_tensors()
        image = data_split.x_val[:1]
        trained.set_tensor(trained.get_input_details()[0]["index"], image.permute(0, 2, 3, 1).numpy())
        trained.invoke()
        logits = trained.get_tensor(trained.get_output_details()[0]["index"])
        with torch.no_grad():
            expected = model(image).numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))


# ============================================================================ measured


@pytest.mark.slow
@needs_fashion_mnist
def test_measured_search_on_the_host_trains_and_times_every_child(host_db: dict[str, Any], tmp_path: Path) -> None:
    db = fresh_db(host_db, tmp_path)
    env = cli_env()
    run = run_cli(env, "--db", str(db), "search", "--latency", "measured", "--device", "host",
                  "--latency-resolution", str(RES), *QUICK_TIMING, "--algorithm", "random", "--samples", "2",
                  "--target-ms", str(host_db["target_ms"]), *TRAINING, "--name", "timed", "--json", timeout_s=600)
    assert run.rc == 0, run.describe()
    rows = stored(db, "timed")
    assert_each_sample_once(db, "timed", 2)
    check_trained(rows, {"dataset": "fashion-mnist", "resolution": 16, "steps": 8})
    for row in rows:
        assert row.latency_source in ("measured:host", "cache:host")
        assert row.predicted_ms is None and row.measured_ms == row.latency_ms > 0
        found = measurement_of(db, row.arch)
        assert [(device, fastest, runs, warmup, label) for device, fastest, runs, warmup, label in found] == [
            ("host", row.latency_ms, 3, 1, "search")]  # timed once, stored with its conditions
    models = db.parent / "runs" / "timed" / "models"
    assert not list(models.glob("*.tflite"))  # each timed model is deleted once stored (--keep-models keeps them)
    listed = run_cli(env, "--db", str(db), "search", "list", "--json")
    assert [(r["run_id"], r["algorithm"], r["status"], r["samples"]) for r in listed.json()] == [
        ("timed", "random", "done", 2)]


# ============================================================================ hybrid


@pytest.mark.slow
def test_hybrid_predicts_every_child_measures_a_seeded_share_and_reports_the_error(
        host_db: dict[str, Any], tmp_path: Path) -> None:
    db = fresh_db(host_db, tmp_path)
    env = cli_env()
    args = ["--db", str(db), "search", "--latency", "hybrid", "--share", "0.5", "--device", "host",
            "--latency-resolution", str(RES), *QUICK_TIMING, "--accuracy", "cheap", "--algorithm", "random",
            "--seed", "5", "--target-ms", str(host_db["target_ms"]), "--name", "hybrid", "--json"]
    first = run_cli(env, *args, "--samples", "4")
    assert first.rc == 0, first.describe()
    resumed = run_cli(env, "--db", str(db), "search", "--resume", "hybrid", "--samples", "8", "--json")
    assert resumed.rc == 0, resumed.describe()
    rows = stored(db, "hybrid")
    assert_each_sample_once(db, "hybrid", 8)
    # one uniform draw per child from the run seed, carried across the resume by the checkpoint
    rng = np.random.default_rng(5)
    chosen = [float(rng.random(1)[0]) < 0.5 for _ in rows]
    assert 0 < sum(chosen[:4]) < 4 and sum(chosen[4:]) > 0  # both kinds before the resume, measured after
    predictor_source = f"predicted:predictor-{host_db['predictor_id']}"
    for row, measure in zip(rows, chosen, strict=True):
        assert row.predicted_ms == pytest.approx(predicted_ms(db, host_db["predictor_id"], row.arch), rel=1e-9)
        if measure:
            assert row.latency_source in ("measured:host", "cache:host", "store:host")
            assert row.latency_ms == row.measured_ms == measurement_of(db, row.arch)[0][1]
        else:
            assert (row.latency_source, row.latency_ms, row.measured_ms) == (predictor_source, row.predicted_ms, None)
    timed = query_db(db, "SELECT d.arch FROM measurements m JOIN models d ON d.sha256 = m.model_sha256 "
                       "WHERE d.arch IS NOT NULL")  # the table's 12 layers have no arch
    assert sorted(a for (a,) in timed) == sorted({r.arch for r, m in zip(rows, chosen, strict=True) if m})
    # the error log: every measured arch once, (predicted - measured) / measured
    both = {r.arch: (r.predicted_ms, r.measured_ms) for r in reversed(rows) if r.measured_ms is not None}
    relative = [(p - m) / m * 100 for p, m in both.values()]
    report = run_cli(env, "--db", str(db), "search", "report", "hybrid", "--json")
    assert report.rc == 0, report.describe()
    error = report.json()["latency_error"]
    assert error["n"] == len(both)
    assert error["mape_pct"] == pytest.approx(float(np.mean(np.abs(relative))))
    assert error["max_ape_pct"] == pytest.approx(float(np.max(np.abs(relative))))
    assert error["bias_pct"] == pytest.approx(float(np.mean(relative)))
    sources = report.json()["latency_sources"]
    assert sources["predicted"] == 8 - sum(chosen) and sum(sources.values()) == 8
    text = run_cli(env, "--db", str(db), "search", "report", "hybrid")
    assert (f"predicted vs measured latency ({len(both)} measured archs): MAPE {error['mape_pct']:.1f}%, "
            f"max {error['max_ape_pct']:.1f}%, bias {error['bias_pct']:+.1f}%") in text.stdout.splitlines()
