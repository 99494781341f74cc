"""Fakes for the predictor tests: a synthetic additive device and a writer that writes keys.

The synthetic device's latency of a layer is a known function of its features, so a lookup
table built on it must predict every network of the space exactly, and a learned predictor
has a real (non-linear) function to learn. Its "models" are text files: `layer <key>` or
`arch <resolution> <canonical arch string>`; no .tflite is built or run.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement
from mnas.search.synthetic_latency import synthetic_layer_ms
from mnas.space.arch import Arch, LayerSig


def write_key(sig: LayerSig, path: Path) -> None:
    """Stands in for the .tflite writer."""
    Path(path).write_text(f"layer {sig.key}")


def write_arch_text(arch: Arch, path: Path, resolution: int = 224) -> None:
    Path(path).write_text(f"arch {resolution} {arch}")


class SyntheticDevice:
    """Latency = per-model overhead + sum over layers of (synthetic latency + per-layer overhead).

    `fail_after`: the benchmark call with that 0-based index raises `failure` (e.g. a
    KeyboardInterrupt to simulate Ctrl-C, or a MeasurementError for a dead phone).
    """

    def __init__(self, device_id: str = "fake0", *, per_model_ms: float = 0.0, per_layer_ms: float = 0.0,
                 fail_after: int | None = None, failure: BaseException | None = None,
                 device_name: str = "fakephone", runtime: str = "synthetic", runtime_version: str = "1.0",
                 pinned_core: int = 7) -> None:
        self.device_id = device_id
        self.device_name = device_name
        self.per_model_ms = per_model_ms
        self.per_layer_ms = per_layer_ms
        self.fail_after = fail_after
        self.failure = failure
        self.runtime = runtime
        self.runtime_version = runtime_version
        self.pinned_core = pinned_core
        self.calls: list[str] = []  # model descriptions in call order
        self._lock = threading.Lock()

    def profile(self) -> DeviceProfile:
        return DeviceProfile(device_id=self.device_id, device_name=self.device_name, kind="adb", model="Fake 1",
                             cpu_model="fake", pinned_core=self.pinned_core, max_freq_khz=2_000_000,
                             runtime=self.runtime, runtime_version=self.runtime_version)

    def true_ms(self, text: str) -> float:
        kind, _, rest = text.partition(" ")
        if kind == "layer":
            layers = [LayerSig.from_key(rest)]
        else:
            resolution, _, arch = rest.partition(" ")
            layers = Arch.parse(arch).layers(int(resolution))
        return self.per_model_ms + sum(synthetic_layer_ms(layer) + self.per_layer_ms for layer in layers)

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        text = Path(model_path).read_text()
        with self._lock:
            index = len(self.calls)
            if self.fail_after is not None and index == self.fail_after and self.failure is not None:
                self.fail_after = None
                raise self.failure
            self.calls.append(text)
        ms = self.true_ms(text)
        us = ms * 1000.0
        stats = LatencyStats(count=config.num_runs, mean_us=us, std_us=0.01 * us, min_us=0.98 * us,
                             max_us=1.05 * us, median_us=us, p90_us=1.02 * us)
        return Measurement(device_id=self.device_id, device_name=self.device_name,
                           model_sha256=hashlib.sha256(text.encode()).hexdigest(), model_path=str(model_path),
                           runtime=self.runtime, runtime_version=self.runtime_version, config=config, stats=stats,
                           pinned_cores=(self.pinned_core,), temps_before_c={"cpu": 40.0},
                           temps_after_c={"cpu": 41.5}, freq_before_khz=2_000_000, freq_after_khz=2_000_000,
                           max_freq_khz=2_000_000, wall_s=0.01)


def measure_archs(device: SyntheticDevice, archs: list[Arch], tmp: Path, resolution: int = 224) -> list[float]:
    """End-to-end medians of whole networks on the synthetic device."""
    out = []
    for i, arch in enumerate(archs):
        path = tmp / f"arch{i}.txt"
        write_arch_text(arch, path, resolution)
        out.append(device.benchmark(path, BenchConfig()).median_ms)
    return out
