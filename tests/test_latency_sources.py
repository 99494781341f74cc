"""Latency sources with fake devices, a fake writer and fake predictors (real results store).

The fake writer puts "arch|resolution" in the file, and the fake device derives a known
latency from the file's content, so every figure below is checkable by hand.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement
from mnas.errors import MeasurementError, MnasError
from mnas.search.baselines import RandomSearch
from mnas.search.latency import HybridLatency, MeasuredLatency, PredictedLatency
from mnas.search.reward import Reward
from mnas.search.types import LatencyResult, LatencySource
from mnas.space.arch import Arch
from mnas.space.search_space import mnasnet

SPACE = mnasnet()
CONFIG = BenchConfig(warmup_runs=1, num_runs=5)


def archs(n: int, seed: int = 0) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [SPACE.sample(rng) for _ in range(n)]


def true_ms(arch: Arch, resolution: int = 224) -> float:
    """The fake device's latency: a fixed function of the architecture and resolution."""
    return 5.0 + int(hashlib.sha256(f"{arch}|{resolution}".encode()).hexdigest()[:6], 16) % 1000 / 10.0


def fake_writer(arch: Arch, path: Path, *, resolution: int) -> None:
    path.write_text(f"{arch}|{resolution}")


class FakeDevice:
    def __init__(self, device_id: str = "phone1", delay_s: float = 0.0, fail_on: set[str] | None = None) -> None:
        self.device_id = device_id
        self.delay_s = delay_s
        self.fail_on = fail_on or set()
        self.calls: list[str] = []
        self.profiles = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def profile(self) -> DeviceProfile:
        self.profiles += 1
        return DeviceProfile(self.device_id, "pixel-fake", "adb", "Pixel Fake", "arm", 7, 2_400_000,
                             "benchmark_model", "2.18")

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            text = model_path.read_text()
            self.calls.append(text)
            if self.delay_s:
                time.sleep(self.delay_s)
            arch_text, resolution = text.rsplit("|", 1)
            if arch_text in self.fail_on:
                raise MeasurementError(f"{self.device_id}: benchmark_model died")
            ms = true_ms(Arch.parse(arch_text), int(resolution))
            runs = [ms * 1000 * f for f in (0.98, 1.0, 1.0, 1.01, 1.2)]  # median = ms
            return Measurement(
                device_id=self.device_id, device_name="pixel-fake",
                model_sha256=hashlib.sha256(model_path.read_bytes()).hexdigest(), model_path=str(model_path),
                runtime="benchmark_model", runtime_version="2.18", config=config,
                stats=LatencyStats.from_runs(runs), runs_us=runs,
            )
        finally:
            with self._lock:
                self.active -= 1


class FakePredictor:
    """Predicts the fake device's latency times `scale` (a known relative error)."""

    id = "fake-table"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0

    def predict_ms(self, batch: list[Arch]) -> np.ndarray:
        self.calls += 1
        return np.array([true_ms(a) * self.scale for a in batch])


def test_measured_returns_medians_in_order_and_dedups(tmp_path: Path) -> None:
    device = FakeDevice()
    source = MeasuredLatency([device], 224, CONFIG, fake_writer)
    batch = archs(4)
    results = source.latency_ms([batch[0], batch[1], batch[0], batch[2], batch[3]])
    assert [r.latency_ms for r in results] == pytest.approx([true_ms(a) for a in (batch[0], batch[1], batch[0], batch[2], batch[3])])
    assert len(device.calls) == 4  # the duplicate was written and timed once
    assert all(r.source == "measured:phone1" and r.measured_ms == r.latency_ms and r.predicted_ms is None for r in results)
    assert results[0].model_sha256 == hashlib.sha256(f"{batch[0]}|224".encode()).hexdigest()
    again = source.latency_ms([batch[1]])
    assert again[0].source == "cache:phone1" and again[0].latency_ms == results[1].latency_ms
    assert len(device.calls) == 4 and source.benchmarks == 4


def test_store_reuse_across_sources(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    batch = archs(3, seed=1)
    first_device = FakeDevice()
    first = MeasuredLatency([first_device], 224, CONFIG, fake_writer, store=store).latency_ms(batch)
    assert [r.source for r in first] == ["measured:phone1"] * 3
    assert all(isinstance(r.measurement_id, int) for r in first)
    stored = store.get_measurement(first[0].measurement_id)
    assert stored.median_ms == pytest.approx(true_ms(batch[0]))

    # a new source (e.g. a resumed search) on the same phone does not benchmark again
    second_device = FakeDevice()
    second = MeasuredLatency([second_device], 224, CONFIG, fake_writer, store=store).latency_ms(batch)
    assert second_device.calls == []
    assert [r.source for r in second] == ["store:phone1"] * 3
    assert [r.latency_ms for r in second] == pytest.approx([r.latency_ms for r in first])

    # other timing conditions, another resolution or another phone: measured afresh
    for device, resolution, config in ((FakeDevice(), 224, BenchConfig(warmup_runs=1, num_runs=7)),
                                       (FakeDevice(), 192, CONFIG), (FakeDevice("phone2"), 224, CONFIG)):
        results = MeasuredLatency([device], resolution, config, fake_writer, store=store).latency_ms(batch[:1])
        assert len(device.calls) == 1 and results[0].source == f"measured:{device.device_id}"
    assert results[0].latency_ms == pytest.approx(true_ms(batch[0]))
    store.close()


def test_device_pool_runs_one_worker_per_device() -> None:
    devices = [FakeDevice("phone1", delay_s=0.05), FakeDevice("phone2", delay_s=0.05)]
    source = MeasuredLatency(devices, 224, CONFIG, fake_writer)
    batch = archs(8, seed=2)
    results = source.latency_ms(batch)
    assert [r.latency_ms for r in results] == pytest.approx([true_ms(a) for a in batch])
    assert sum(len(d.calls) for d in devices) == 8 and all(d.calls for d in devices)
    assert all(d.max_active == 1 for d in devices)  # never two benchmarks on one phone at once
    assert {r.device_id for r in results} == {"phone1", "phone2"}
    assert all(d.profiles == 0 for d in devices)  # no store: profiles are not needed


def test_failed_measurement_raises_after_storing_the_others(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    batch = archs(3, seed=3)
    device = FakeDevice(fail_on={str(batch[1])})
    source = MeasuredLatency([device], 224, CONFIG, fake_writer, store=store)
    with pytest.raises(MeasurementError, match="phone1: benchmark_model died"):
        source.latency_ms(batch)
    retry = FakeDevice()
    results = MeasuredLatency([retry], 224, CONFIG, fake_writer, store=store).latency_ms(batch)
    assert [r.source for r in results] == ["store:phone1", "measured:phone1", "store:phone1"]
    assert len(retry.calls) == 1
    store.close()


def test_measured_errors() -> None:
    with pytest.raises(MnasError) as info:
        MeasuredLatency([], 224, CONFIG, fake_writer)
    assert str(info.value) == "measured latency: no devices: expected at least one device to time models on"
    with pytest.raises(MnasError) as info:
        MeasuredLatency([FakeDevice(), FakeDevice()], 224, CONFIG, fake_writer)
    assert str(info.value) == "measured latency: devices ['phone1', 'phone1']: expected each device once"

    def lazy_writer(arch: Arch, path: Path, *, resolution: int) -> None:
        del arch, path, resolution

    arch = archs(1)[0]
    with pytest.raises(MnasError) as info:
        MeasuredLatency([FakeDevice()], 224, CONFIG, lazy_writer).latency_ms([arch])
    assert str(info.value).startswith("model writer: wrote no file at '")
    assert str(info.value).endswith(f"{arch.hash}_r224.tflite' for {arch}: expected a .tflite there")


def test_workdir_keeps_models(tmp_path: Path) -> None:
    arch = archs(1)[0]
    MeasuredLatency([FakeDevice()], 160, CONFIG, fake_writer, workdir=tmp_path / "models",
                    keep_models=True).latency_ms([arch])
    assert (tmp_path / "models" / f"{arch.hash}_r160.tflite").read_text() == f"{arch}|160"


def test_predicted_latency() -> None:
    predictor = FakePredictor(scale=2.0)
    source = PredictedLatency(predictor)
    batch = archs(5)
    results = source.latency_ms(batch)
    assert [r.latency_ms for r in results] == pytest.approx([2 * true_ms(a) for a in batch])
    assert all(r.source == "predicted:fake-table" and r.predicted_ms == r.latency_ms and r.measured_ms is None
               for r in results)
    assert predictor.calls == 1  # one batched call

    class Broken:
        def predict_ms(self, batch: list[Arch]) -> np.ndarray:
            return np.array([10.0, -1.0][: len(batch)])

    with pytest.raises(MnasError) as info:
        PredictedLatency(Broken()).latency_ms(batch[:2])
    assert str(info.value) == f"predictor Broken: predicted -1.0 ms for {batch[1]}: expected a latency > 0"
    with pytest.raises(MnasError) as info:
        PredictedLatency(Broken(), "t1").latency_ms(batch[:3])
    assert str(info.value) == "predictor t1: returned 2 latencies for 3 architectures: expected one each"


def test_hybrid_measures_a_seeded_share_and_logs_errors() -> None:
    device = FakeDevice()
    hybrid = HybridLatency(PredictedLatency(FakePredictor(scale=1.1)), MeasuredLatency([device], 224, CONFIG, fake_writer),
                           share=0.25, seed=3)
    batch = archs(200, seed=4)
    results = hybrid.latency_ms(batch)
    measured = [i for i, r in enumerate(results) if r.measured_ms is not None]
    assert 30 <= len(measured) <= 70  # Binomial(200, 0.25): mean 50, sd 6.1
    assert len(device.calls) == len(measured)
    for i, (arch, r) in enumerate(zip(batch, results, strict=True)):
        assert r.predicted_ms == pytest.approx(1.1 * true_ms(arch))
        if i in measured:
            assert r.source == "measured:phone1" and r.latency_ms == r.measured_ms == pytest.approx(true_ms(arch))
        else:
            assert r.source == "predicted:fake-table" and r.latency_ms == r.predicted_ms
    summary = hybrid.error_summary()
    assert summary["n"] == len(measured) == len(hybrid.errors)
    assert summary["mape_pct"] == pytest.approx(10.0) and summary["bias_pct"] == pytest.approx(10.0)
    assert summary["max_ape_pct"] == pytest.approx(10.0)

    # same seed, same choice; a checkpointed hybrid continues with the same choices
    twin = HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([FakeDevice()], 224, CONFIG, fake_writer),
                         share=0.25, seed=3)
    assert [r.measured_ms is not None for r in twin.latency_ms(batch)] == [i in measured for i in range(200)]
    state = hybrid.state_dict()
    more = archs(50, seed=5)
    expected = [r.measured_ms is not None for r in hybrid.latency_ms(more)]
    resumed = HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([FakeDevice()], 224, CONFIG, fake_writer),
                            share=0.25, seed=99)
    resumed.load_state_dict(state)
    assert resumed.error_summary()["n"] == len(measured)
    assert [r.measured_ms is not None for r in resumed.latency_ms(more)] == expected


def test_hybrid_share_extremes_and_explicit_measure() -> None:
    batch = archs(20, seed=6)
    never = HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([FakeDevice()], 224, CONFIG, fake_writer), share=0.0)
    assert all(r.source.startswith("predicted:") for r in never.latency_ms(batch))
    assert never.error_summary()["n"] == 0
    verified = never.measure(batch[:3])  # e.g. the search's best by reward
    assert [r.source for r in verified] == ["measured:phone1"] * 3 and never.error_summary()["n"] == 3
    never.measure(batch[:3])  # measured again (from the cache): logged once
    assert len(never.errors) == 3
    always = HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([FakeDevice()], 224, CONFIG, fake_writer), share=1.0)
    assert all(r.source == "measured:phone1" for r in always.latency_ms(batch))


def test_hybrid_top_k_measures_those_nearest_the_target() -> None:
    batch = archs(30, seed=7)
    device = FakeDevice()
    hybrid = HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([device], 224, CONFIG, fake_writer),
                           measure_top_k=4, target_ms=50.0)
    results = hybrid.latency_ms(batch)
    nearest = sorted(range(30), key=lambda i: abs(true_ms(batch[i]) - 50.0))[:4]
    assert sorted(i for i, r in enumerate(results) if r.measured_ms is not None) == sorted(nearest)
    with pytest.raises(MnasError) as info:
        HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([device], 224, CONFIG, fake_writer),
                      measure_top_k=4)
    assert str(info.value) == "hybrid latency: target_ms = None: expected a latency > 0 ms with measure_top_k"
    with pytest.raises(MnasError) as info:
        HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([device], 224, CONFIG, fake_writer), share=1.5)
    assert str(info.value) == "hybrid latency: share = 1.5: expected a fraction in [0, 1]"


def search_loop(source: LatencySource, n: int) -> list[tuple[float, str]]:
    """A minimal search that knows nothing about where latencies come from."""
    searcher = RandomSearch(SPACE, seed=0)
    reward = Reward.soft(60.0)
    out = []
    for _ in range(n):
        tokens = searcher.ask(2)
        batch = [SPACE.decode(t) for t in tokens]
        results = source.latency_ms(batch)
        assert all(isinstance(r, LatencyResult) for r in results)
        rewards = [reward(0.5, r.latency_ms) for r in results]
        searcher.tell(tokens, rewards)
        out += [(rw, r.source) for rw, r in zip(rewards, results, strict=True)]
    return out


def test_sources_are_interchangeable() -> None:
    sources: list[LatencySource] = [
        MeasuredLatency([FakeDevice()], 224, CONFIG, fake_writer),
        PredictedLatency(FakePredictor()),
        HybridLatency(PredictedLatency(FakePredictor()), MeasuredLatency([FakeDevice()], 224, CONFIG, fake_writer), share=0.5),
    ]
    runs = {}
    for source in sources:
        assert isinstance(source, LatencySource)
        runs[source.name] = search_loop(source, 10)
    assert sorted(runs) == ["hybrid", "measured", "predicted"]
    # the fake predictor is exact, so all three give the same rewards; only the sources differ
    for name in ("measured", "hybrid"):
        assert [r for r, _ in runs[name]] == pytest.approx([r for r, _ in runs["predicted"]])
    assert {s for _, s in runs["measured"]} == {"measured:phone1"}
    assert {s for _, s in runs["predicted"]} == {"predicted:fake-table"}
    assert {s for _, s in runs["hybrid"]} == {"measured:phone1", "predicted:fake-table"}
