"""The one search loop with the local executor: at window 1 exactly the sequential search (ask
one, score it, tell it), the same samples for the same seed and window whatever the worker
count, exactly once across a kill and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from predictor_fakes import SyntheticDevice, write_arch_text
from search_fakes import BrokenAccuracy, SyntheticPredictor

from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.errors import MeasurementError, MnasError
from mnas.search.accuracy import CheapAccuracy
from mnas.search.executors import LocalExecutor
from mnas.search.latency import HybridLatency, MeasuredLatency, PredictedLatency
from mnas.search.lifecycle import resolve_window
from mnas.search.loop import run_search
from mnas.search.reward import Reward
from mnas.search.run_config import new_run_config
from mnas.search.run_store import MemoryRunStore, RunStore
from mnas.search.runs import SearchSetup
from mnas.search.setup import build_searcher
from mnas.space.search_space import mnasnet


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The controller's tiny LSTM steps are ~50x slower with 2 intra-op threads on a loaded 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


PPO = {"minibatch_size": 5, "learning_rate": 0.05}  # small batches, big steps: updates change samples fast
RESULT_FIELDS = ("idx", "tokens", "arch", "arch_hash", "accuracy", "accuracy_task", "latency_ms", "latency_source",
                 "reward", "predicted_ms", "measured_ms")


def make_setup(algorithm: str, seed: int = 3, latency=None, accuracy=None) -> SearchSetup:
    space = mnasnet()
    return SearchSetup(space=space, searcher=build_searcher(space, algorithm, seed, ppo=PPO),
                       accuracy=accuracy or CheapAccuracy(seed=seed),
                       latency=latency or PredictedLatency(SyntheticPredictor(), "synthetic"),
                       reward=Reward.soft(40.0), weights_dir=None)


def results(run_store: RunStore | MemoryRunStore, run_id: str) -> tuple[list[tuple], list[dict]]:
    rows = [tuple(getattr(s, f) for f in RESULT_FIELDS) for s in run_store.samples(run_id)]
    updates = [{k: v for k, v in u.items() if k != "created"} for u in run_store.updates(run_id)]
    return rows, updates


def sequential_reference(setup: SearchSetup, budget: int) -> tuple[list[tuple], list[dict]]:
    """The search written out by hand, child by child (ask one, score it, tell it), as `results` shows it."""
    rows, updates = [], []
    for idx in range(budget):
        tokens = [int(t) for t in setup.searcher.ask(1)[0]]
        arch = setup.space.decode(tokens)
        acc = setup.accuracy.accuracy(arch)
        lat = setup.latency.latency_ms([arch])[0]
        reward = setup.reward(float(acc.accuracy), float(lat.latency_ms))
        for update in setup.searcher.tell([tokens], [reward]) or []:
            stats = json.loads(json.dumps(update.to_dict()))  # as the store gives it back
            updates.append({"update_idx": len(updates), "after_sample": idx, **stats})
        rows.append((idx, tokens, str(arch), arch.hash, float(acc.accuracy), acc.task_key, float(lat.latency_ms),
                     lat.source, float(reward), lat.predicted_ms, lat.measured_ms))
    return rows, updates


def new_run(tmp_path: Path, name: str) -> tuple[RunStore, str]:
    run_store = RunStore(ResultsStore(tmp_path / f"{name}.db"))
    run_store.create_run(name, "x", {})
    return run_store, name


def run_async(tmp_path: Path, name: str, algorithm: str, budget: int, window: int, workers: int = 1,
              **setup_kwargs) -> tuple[list[tuple], list[dict]]:
    run_store, run_id = new_run(tmp_path, name)
    executor = LocalExecutor(workers)
    try:
        run_search(run_store, run_id, make_setup(algorithm, **setup_kwargs), budget, executor, window=window,
                   progress=False)
    finally:
        executor.close()
    return results(run_store, run_id)


def test_window_one_is_the_sequential_search(tmp_path: Path) -> None:
    sequential = sequential_reference(make_setup("ppo"), 12)
    assert len(sequential[0]) == 12 and [u["after_sample"] for u in sequential[1]] == [4, 9]
    assert run_async(tmp_path, "async", "ppo", 12, window=1) == sequential
    run_store, run_id = new_run(tmp_path, "default")  # the default executor: one in-process worker, window 1
    run_search(run_store, run_id, make_setup("ppo"), 12, progress=False)
    assert results(run_store, run_id) == sequential


@pytest.mark.parametrize("algorithm", ["ppo", "evolution"])
def test_the_same_seed_stores_the_same_samples(tmp_path: Path, algorithm: str) -> None:
    first = run_async(tmp_path, "first", algorithm, 14, window=3, workers=2)
    assert first == run_async(tmp_path, "again", algorithm, 14, window=3, workers=2)
    assert len({tuple(row[1]) for row in first[0]}) > 1  # the searcher really explored


def test_an_in_memory_store_holds_what_the_database_holds(tmp_path: Path) -> None:
    """Benchmarks run the loop on a MemoryRunStore: the same samples and updates, no checkpoints."""
    memory = MemoryRunStore()
    summary = run_search(memory, "m", make_setup("ppo"), 12, progress=False)
    assert (summary.samples, memory.status["m"]) == (12, "done")
    assert results(memory, "m") == run_async(tmp_path, "db", "ppo", 12, window=1)
    with pytest.raises(MnasError, match=r"^search run 'm': resumed from memory: expected a RunStore to resume runs$"):
        run_search(memory, "m", make_setup("ppo"), 20, progress=False)


@pytest.mark.parametrize("algorithm", ["ppo", "random", "evolution"])
def test_results_depend_on_window_not_on_workers(tmp_path: Path, algorithm: str) -> None:
    one = run_async(tmp_path, "w1", algorithm, 16, window=6, workers=1)
    three = run_async(tmp_path, "w3", algorithm, 16, window=6, workers=3)
    assert one == three
    assert [row[0] for row in one[0]] == list(range(16))
    if algorithm == "ppo":
        assert [u["after_sample"] for u in one[1]] == [4, 9, 14]
        sequential = run_async(tmp_path, "w1seq", algorithm, 16, window=1)
        # samples 0..4 come from the initial policy either way; with window 6 so do samples
        # 5..9 (asked before the first update), which the sequential search draws after it
        assert one[0][:5] == sequential[0][:5] and one[0][5:10] != sequential[0][5:10]
        wide = run_async(tmp_path, "w10", algorithm, 10, window=10)  # no update before sample 13
        assert [row[1] for row in one[0][:10]] == [row[1] for row in wide[0]]


def test_killed_run_resumes_exactly_once_with_in_flight_samples(tmp_path: Path) -> None:
    reference = run_async(tmp_path, "ref", "ppo", 16, window=5, workers=2)
    run_store, run_id = new_run(tmp_path, "killed")

    def stop_at_7(sample) -> None:
        if sample.idx == 7:
            raise KeyboardInterrupt

    executor = LocalExecutor(2)
    with pytest.raises(KeyboardInterrupt):
        run_search(run_store, run_id, make_setup("ppo"), 16, executor, window=5, progress=False, on_sample=stop_at_7)
    executor.close()
    assert len(run_store.samples(run_id)) == 8
    assert run_store.checkpoint(run_id)[0] == 8
    executor = LocalExecutor(1)  # a fresh process would rebuild everything from the config
    summary = run_search(run_store, run_id, make_setup("ppo"), 16, executor, window=5, progress=False)
    executor.close()
    assert (summary.samples, summary.new_samples) == (16, 8)
    assert results(run_store, run_id) == reference


def test_budget_extension_matches_a_longer_run(tmp_path: Path) -> None:
    """Samples asked ahead past the budget are kept in the checkpoint and proposed identically later."""
    reference = run_async(tmp_path, "long", "ppo", 14, window=4)
    run_store, run_id = new_run(tmp_path, "short")
    for budget in (7, 14):
        executor = LocalExecutor(1)
        run_search(run_store, run_id, make_setup("ppo"), budget, executor, window=4, progress=False)
        executor.close()
    assert results(run_store, run_id) == reference


def test_measured_and_hybrid_latency_in_the_lane(tmp_path: Path) -> None:
    """The hybrid source's random choice of what to measure is the same as in the sequential loop."""

    def hybrid() -> HybridLatency:
        measured = MeasuredLatency([SyntheticDevice("fake0")], 224, BenchConfig(), write_arch_text)
        return HybridLatency(PredictedLatency(SyntheticPredictor(), "synthetic"), measured, share=0.3, seed=3)

    sequential = sequential_reference(make_setup("random", latency=hybrid()), 20)
    measured = [row for row in sequential[0] if row[7].startswith("measured:")]
    assert 2 <= len(measured) <= 12
    assert all(row[6] == pytest.approx(row[10]) and row[9] is not None for row in measured)
    assert run_async(tmp_path, "async", "random", 20, window=1, latency=hybrid()) == sequential


class FlakyDevice(SyntheticDevice):
    """Fails its first benchmark with a MeasurementError (a phone dropping off USB)."""

    def __init__(self) -> None:
        super().__init__("flaky", fail_after=0, failure=MeasurementError("device flaky: adb connection lost"))


def test_latency_failure_is_retried_from_the_same_state(tmp_path: Path) -> None:
    def hybrid(device) -> HybridLatency:
        measured = MeasuredLatency([device], 224, BenchConfig(), write_arch_text)
        return HybridLatency(PredictedLatency(SyntheticPredictor(), "synthetic"), measured, share=1.0, seed=3)

    steady = run_async(tmp_path, "steady", "random", 6, window=3, latency=hybrid(SyntheticDevice("flaky")))
    flaky = run_async(tmp_path, "flaky", "random", 6, window=3, latency=hybrid(FlakyDevice()))
    assert flaky == steady


def test_training_error_stops_the_run_and_stores_nothing_half(tmp_path: Path) -> None:
    run_store, run_id = new_run(tmp_path, "broken")
    executor = LocalExecutor(2)
    with pytest.raises(MnasError, match=r"^proxy task: dataset folder /nowhere: expected class folders$"):
        run_search(run_store, run_id, make_setup("random", accuracy=BrokenAccuracy()), 5, executor, window=2,
                         progress=False)
    executor.close()
    assert run_store.samples(run_id) == [] and run_store.checkpoint(run_id) is None


def test_window_resolution_is_stored_with_the_run() -> None:
    config = new_run_config(accuracy="cheap")
    stored = resolve_window(config, None, LocalExecutor(1))
    assert stored.window == 1 and stored.to_dict()["window"] == 1
    assert resolve_window(stored, None, LocalExecutor(4)).window == 1  # the stored value wins
    assert resolve_window(config, None, LocalExecutor(3)).window == 6
    with pytest.raises(MnasError, match=r"^--window 0: expected an integer >= 1$"):
        resolve_window(config, 0, LocalExecutor(1))


def test_sample_rows_carry_provenance(tmp_path: Path) -> None:
    run_store, run_id = new_run(tmp_path, "prov")
    executor = LocalExecutor(1)
    run_search(run_store, run_id, make_setup("random"), 2, executor, window=2, progress=False)
    executor.close()
    sample = run_store.samples(run_id)[0]
    assert sample.extra["executor"] == "local" and sample.extra["window"] == 2
    assert dataclasses.asdict(sample)["latency_source"] == "predicted:synthetic"
