"""One reuse rule for every measuring path: a throttled or contended figure is measured again.

`mnas bench` (harness), table builds, calibration and evaluation networks (`measure_networks`)
and the search's measured latency all ask `bench.measure` whether a stored measurement may
stand in for a new one. Each is run twice here on a device whose first measurement of every
model is flagged: the second run must take each model again, and a third run (whose latest
figures are clean) must reuse them.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from predictor_fakes import write_arch_text, write_key

from mnas.bench.harness import run_benchmarks
from mnas.bench.measure import PreparedModel, is_reusable, reuse_blocker
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement
from mnas.predictor.build import build_table
from mnas.predictor.endtoend import CALIBRATION, EVALUATION, measure_networks
from mnas.predictor.table import load_table
from mnas.search.latency import MeasuredLatency
from mnas.space.search_space import SearchSpace, mnasnet

CONFIG = BenchConfig(warmup_runs=1, num_runs=3)
FLAGS = ["throttled", "contended"]


class FlaggingDevice:
    """A phone whose first measurement of each model carries `flag`; later ones are clean."""

    def __init__(self, flag: str) -> None:
        self.device_id = "phone1"
        self.flag = flag
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def profile(self) -> DeviceProfile:
        return DeviceProfile(self.device_id, "pixel-fake", "adb", "Pixel Fake", "arm", 7, 2_400_000,
                             "benchmark_model", "2.18")

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        data = Path(model_path).read_bytes()
        with self._lock:
            first = data not in {c.encode() for c in self.calls}
            self.calls.append(data.decode())
        runs = [1000.0, 1010.0, 1020.0]
        return Measurement(device_id=self.device_id, device_name="pixel-fake",
                           model_sha256=hashlib.sha256(data).hexdigest(), model_path=str(model_path),
                           runtime="benchmark_model", runtime_version="2.18", config=config,
                           stats=LatencyStats.from_runs(runs), runs_us=runs,
                           throttled=first and self.flag == "throttled",
                           extra={"contended": first and self.flag == "contended"})


def test_the_rule_itself() -> None:
    assert reuse_blocker(False, {}) is None and reuse_blocker(False, None) is None
    assert reuse_blocker(True, {"contended": True}) == "throttled"
    assert reuse_blocker(0, {"contended": True}) == "contended"
    device = FlaggingDevice("contended")
    path = Path(__file__)
    assert not is_reusable(device.benchmark(path, CONFIG)) and is_reusable(device.benchmark(path, CONFIG))


@pytest.mark.parametrize("flag", FLAGS)
def test_bench_retakes_flagged(tmp_path: Path, flag: str) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    models = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.tflite"
        path.write_text(name)
        models.append(PreparedModel(path, name, hashlib.sha256(name.encode()).hexdigest()))
    device = FlaggingDevice(flag)
    runs = [run_benchmarks([device], models, CONFIG, store) for _ in range(3)]
    assert [[o.reused for o in outcomes] for outcomes in runs] == [[False, False], [False, False], [True, True]]
    assert len(device.calls) == 4
    store.close()


@pytest.mark.parametrize("flag", FLAGS)
def test_table_build_retakes_flagged_entries(tmp_path: Path, flag: str) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    space = SearchSpace(stages=((1, 16, 1, 1),))
    device = FlaggingDevice(flag)
    results = [build_table(space, 32, [device], store, "t", CONFIG, writer=write_key, progress=False)
               for _ in range(3)]
    total = results[0].total_layers
    assert [(r.already_stored, r.measured, r.retaken) for r in results] == [(0, total, 0), (0, total, total),
                                                                             (total, 0, 0)]
    entries = load_table(store, "t").entries.values()
    assert len(entries) == total and not any(e.measurement[flag] for e in entries)  # replaced, not duplicated
    store.close()


@pytest.mark.parametrize("label", [CALIBRATION, EVALUATION])
@pytest.mark.parametrize("flag", FLAGS)
def test_calibration_and_eval_networks_retake_flagged(tmp_path: Path, flag: str, label: str) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    archs = [mnasnet().sample(seed) for seed in (1, 2)]
    device = FlaggingDevice(flag)
    runs = [measure_networks(archs, [device], store, CONFIG, 64, label, writer=write_arch_text, progress=False,
                             guard=None) for _ in range(3)]
    assert [[n.reused for n in nets] for nets in runs] == [[0, 0], [0, 0], [1, 1]]
    assert len(device.calls) == 4
    store.close()


@pytest.mark.parametrize("flag", FLAGS)
def test_search_latency_retakes_flagged(tmp_path: Path, flag: str) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    archs = [mnasnet().sample(seed) for seed in (1, 2)]
    device = FlaggingDevice(flag)
    sources = [[r.source for r in MeasuredLatency([device], 64, CONFIG, write_arch_text, store=store).latency_ms(archs)]
               for _ in range(3)]
    assert sources == [["measured:phone1"] * 2, ["measured:phone1"] * 2, ["store:phone1"] * 2]
    store.close()
