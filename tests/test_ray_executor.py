"""The Ray executor on a local cluster: same stored results as the local executor, nothing lost or
duplicated when workers or device actors die mid-task, one measurement at a time per device."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest
from needs import need, ray_installed  # noqa: E402

need("RAY", ray_installed(), "the ray extra is not installed (pip install -e '.[ray]')")
import ray  # noqa: E402
import torch  # noqa: E402
from predictor_fakes import SyntheticDevice, write_arch_text, write_key  # noqa: E402
from search_fakes import (  # noqa: E402
    AlwaysDyingAccuracy,
    BrokenAccuracy,
    DyingAccuracy,
    DyingDevice,
    LoggingDevice,
    SyntheticPredictor,
)

from mnas.bench.ray_devices import cluster_devices, start_device_actor, stop_devices  # noqa: E402
from mnas.bench.store import ResultsStore  # noqa: E402
from mnas.bench.types import BenchConfig  # noqa: E402
from mnas.errors import MnasError  # noqa: E402
from mnas.predictor.build import build_table  # noqa: E402
from mnas.predictor.layers import enumerate_layers  # noqa: E402
from mnas.predictor.ray_build import build_table_ray  # noqa: E402
from mnas.predictor.table import load_table  # noqa: E402
from mnas.search.accuracy import CheapAccuracy  # noqa: E402
from mnas.search.executors import LocalExecutor, RayExecutor  # noqa: E402
from mnas.search.latency import MeasuredLatency, PredictedLatency  # noqa: E402
from mnas.search.loop import run_search  # noqa: E402
from mnas.search.reward import Reward  # noqa: E402
from mnas.search.run_config import AccuracyConfig  # noqa: E402
from mnas.search.run_store import RunStore  # noqa: E402
from mnas.search.runs import SearchSetup  # noqa: E402
from mnas.search.setup import accuracy_factory, build_searcher  # noqa: E402
from mnas.space.search_space import mnasnet  # noqa: E402

RESULT_FIELDS = ("idx", "tokens", "arch", "arch_hash", "accuracy", "accuracy_task", "latency_ms", "latency_source",
                 "reward", "predicted_ms", "measured_ms")
PPO = {"minibatch_size": 5, "learning_rate": 0.05}
SEED = 5


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A one-node Ray cluster with 2 CPUs and two units of a fake phone resource."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the controller's LSTM steps crawl with 2 threads on a busy 2-core box
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             resources={"device:fakephone": 2},
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()
    torch.set_num_threads(previous)


def make_setup(algorithm: str, accuracy, latency=None) -> SearchSetup:
    space = mnasnet()
    return SearchSetup(space=space, searcher=build_searcher(space, algorithm, SEED, ppo=PPO),
                       accuracy=accuracy, latency=latency or PredictedLatency(SyntheticPredictor(), "synthetic"),
                       reward=Reward.soft(40.0), weights_dir=None)


def search(tmp_path: Path, name: str, executor, setup: SearchSetup, budget: int, window: int):
    run_store = RunStore(ResultsStore(tmp_path / f"{name}.db"))
    run_store.create_run(name, setup.searcher.name, {})
    try:
        run_search(run_store, name, setup, budget, executor, window=window, progress=False)
    finally:
        executor.close()
    rows = [tuple(getattr(s, f) for f in RESULT_FIELDS) for s in run_store.samples(name)]
    updates = [{k: v for k, v in u.items() if k != "created"} for u in run_store.updates(name)]
    return rows, updates, run_store.samples(name)


@pytest.mark.parametrize("algorithm", ["ppo", "random"])
def test_search_on_ray_stores_what_the_local_executor_stores(tmp_path: Path, algorithm: str) -> None:
    local = search(tmp_path, "local", LocalExecutor(1), make_setup(algorithm, CheapAccuracy(seed=SEED)), 12, 4)
    markers = tmp_path / "markers"
    markers.mkdir()
    dying = DyingAccuracy(markers, deaths=2, seed=SEED)  # kills its worker process at the first 2 children
    remote = search(tmp_path, "ray", RayExecutor(None, num_cpus_per_child=1, max_retries=3),
                    make_setup(algorithm, dying), 12, 4)
    assert len(list(markers.glob("died-*"))) == 2  # two workers really died mid-task
    assert remote[:2] == local[:2]  # every sample once, same values, same controller updates
    assert [row[0] for row in remote[0]] == list(range(12))
    if algorithm == "ppo":
        assert [u["after_sample"] for u in remote[1]] == [4, 9]
    hosts = {s.extra["executor"] for s in remote[2]}
    assert hosts == {"ray"} and all(s.extra["window"] == 4 for s in remote[2])


def test_workers_build_the_accuracy_source_from_the_run_config(tmp_path: Path) -> None:
    """On Ray the CLI ships the config, not the driver's source: each worker builds its own (its GPU, its data)."""
    local = search(tmp_path, "local", LocalExecutor(1), make_setup("random", CheapAccuracy(seed=SEED)), 6, 3)
    run_store = RunStore(ResultsStore(tmp_path / "cfg.db"))
    run_store.create_run("cfg", "random", {})
    executor = RayExecutor(None)
    try:  # the driver's own source would fail: only the config-built one can produce these results
        factory = accuracy_factory(AccuracyConfig.from_dict({"kind": "cheap", "params": {"seed": SEED}}))
        run_search(run_store, "cfg", make_setup("random", BrokenAccuracy()), 6, executor, window=3,
                   accuracy_factory=factory, progress=False)
    finally:
        executor.close()
    assert [tuple(getattr(s, f) for f in RESULT_FIELDS) for s in run_store.samples("cfg")] == local[0]


def test_training_errors_are_reported_not_retried(tmp_path: Path) -> None:
    run_store = RunStore(ResultsStore(tmp_path / "broken.db"))
    run_store.create_run("broken", "random", {})
    executor = RayExecutor(None, max_retries=3)
    with pytest.raises(MnasError, match=r"^proxy task: dataset folder /nowhere: expected class folders$"):
        run_search(run_store, "broken", make_setup("random", BrokenAccuracy()), 3, executor, window=2,
                         progress=False)
    executor.close()
    assert run_store.samples("broken") == [] and run_store.checkpoint("broken") is None


def test_a_child_whose_worker_keeps_dying_stops_the_run_after_bounded_retries(tmp_path: Path) -> None:
    run_store = RunStore(ResultsStore(tmp_path / "dying.db"))
    run_store.create_run("dying", "random", {})
    executor = RayExecutor(None, max_retries=1)
    with pytest.raises(MnasError) as err:
        run_search(run_store, "dying", make_setup("random", AlwaysDyingAccuracy()), 2, executor, window=1,
                         progress=False)
    executor.close()
    assert str(err.value).startswith("child 0: its Ray worker was lost 2 times (")
    assert str(err.value).endswith("): expected the cluster's nodes to stay up; every finished child is stored, "
                                   "resume the run")
    assert run_store.samples("dying") == [] and run_store.checkpoint("dying") is None


def test_measured_search_on_a_device_actor_that_dies_once(tmp_path: Path) -> None:
    def measured(device) -> MeasuredLatency:
        return MeasuredLatency([device], 224, BenchConfig(), write_arch_text)

    local = search(tmp_path, "local", LocalExecutor(1),
                   make_setup("random", CheapAccuracy(seed=SEED), measured(SyntheticDevice("fake0"))), 6, 3)
    markers = tmp_path / "markers"
    markers.mkdir()
    actor = start_device_actor(functools.partial(DyingDevice, "fake0", markers, 1), "device:fakephone",
                               resources={"device:fakephone": 1})
    try:
        remote = search(tmp_path, "ray", RayExecutor(None),
                        make_setup("random", CheapAccuracy(seed=SEED), measured(actor)), 6, 3)
    finally:
        stop_devices([actor])
    assert len(list(markers.glob("died-*"))) == 1  # the actor's process died during a measurement
    assert remote[:2] == local[:2]
    assert {row[7] for row in remote[0]} == {"measured:fake0"}


def table_entries(store: ResultsStore, name: str) -> dict[str, float]:
    return {key: round(entry.median_ms, 9) for key, entry in load_table(store, name).entries.items()}


def measurement_count(store: ResultsStore) -> int:
    with store.transaction() as conn:
        return conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]


def test_table_build_on_device_actors_matches_local_and_survives_a_death(tmp_path: Path) -> None:
    space = mnasnet()
    layers = enumerate_layers(space, 224, 1000)[:16]
    local_store = ResultsStore(tmp_path / "local.db")
    local = build_table(space, 224, [SyntheticDevice("fake0"), SyntheticDevice("fake1")], local_store, "t",
                        BenchConfig(), writer=write_key, progress=False, layers=layers)
    markers = tmp_path / "markers"
    markers.mkdir()
    actors = [start_device_actor(functools.partial(DyingDevice, "fake0", markers, 1), "device:fakephone",
                                 resources={"device:fakephone": 1}),
              start_device_actor(functools.partial(SyntheticDevice, "fake1"), "device:fakephone",
                                 resources={"device:fakephone": 1})]
    ray_store = ResultsStore(tmp_path / "ray.db")
    try:
        first = build_table_ray(space, 224, ray_store, "t", BenchConfig(), devices=actors, writer=write_key,
                                progress=False, layers=layers, limit=10)
        rest = build_table_ray(space, 224, ray_store, "t", BenchConfig(), devices=actors, writer=write_key,
                               progress=False, layers=layers)  # resumes: stored keys are skipped
    finally:
        stop_devices(actors)
    assert len(list(markers.glob("died-*"))) == 1
    assert (first.measured, rest.already_stored, rest.measured, rest.remaining) == (10, 10, 6, 0)
    assert first.per_device["fake0"] >= 1 and first.per_device["fake1"] >= 1  # both phones worked
    assert local.measured == 16
    assert table_entries(ray_store, "t") == table_entries(local_store, "t")
    assert measurement_count(ray_store) == 16 == measurement_count(local_store)  # no duplicate, no loss


def test_one_measurement_at_a_time_per_device_actor(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    actor = start_device_actor(functools.partial(LoggingDevice, "slow", log, 0.1), "device:fakephone",
                               resources={"device:fakephone": 1})
    model = tmp_path / "m.txt"
    write_key(enumerate_layers(mnasnet(), 224, 1000)[0], model)
    try:
        threads = [threading.Thread(target=actor.benchmark, args=(model, BenchConfig())) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop_devices([actor])
    calls = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(calls) == 6
    assert all(end <= next_start for (_, end), (next_start, _) in zip(calls, calls[1:], strict=False))


def test_cluster_devices_names_the_missing_resource() -> None:
    with pytest.raises(MnasError) as err:
        cluster_devices("pixel4")
    assert str(err.value) == ("--device pixel4: no Ray node offers resource 'device:pixel4' (offered: "
                              "device:fakephone): expected `ray start --resources '{\"device:pixel4\": N}'` "
                              "on the node with the phone(s)")


def test_device_actor_needs_its_resource() -> None:
    """An actor asking for more units than the cluster has never starts: a clear error, not a hang."""
    with pytest.raises(MnasError, match=r"^device device:fakephone: its actor did not start in 3 s: expected a node "
                                        r"offering \{'device:fakephone': 3\} with free capacity$"):
        start_device_actor(functools.partial(SyntheticDevice, "x"), "device:fakephone",
                           resources={"device:fakephone": 3}, start_timeout_s=3)
