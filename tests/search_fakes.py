"""Fakes for the executor tests: a synthetic latency predictor, and sources that kill their worker.

They live in their own module (not a test file) so Ray worker processes can import them: the
Ray tests put this folder on the workers' PYTHONPATH. "Killing a worker" is `os._exit(1)` on
the first attempt, remembered by a marker file, so the re-run succeeds and the test can check
that the retry loses and duplicates nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from predictor_fakes import SyntheticDevice, synthetic_layer_ms

from mnas.bench.types import BenchConfig, Measurement
from mnas.errors import MnasError
from mnas.search.accuracy import AccuracyResult, CheapAccuracy
from mnas.space.arch import Arch


class SyntheticPredictor:
    """Whole-network latency = sum of the synthetic device's layer latencies (exact, microseconds to compute)."""

    kind = "synthetic"
    resolution = 224
    predictor_id = "synthetic"

    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([sum(synthetic_layer_ms(layer) for layer in arch.layers(self.resolution)) for arch in archs])


def _die_once(marker_dir: Path, key: str, deaths: int) -> None:
    """Exit the process (no cleanup, like a killed worker) the first time `key` is seen, `deaths` times in all."""
    marker = Path(marker_dir) / f"died-{key}"
    if marker.exists() or len(list(Path(marker_dir).glob("died-*"))) >= deaths:
        return
    marker.touch()
    os._exit(1)


class DyingAccuracy(CheapAccuracy):
    """CheapAccuracy whose worker process dies on the first attempt at the first `deaths` children."""

    def __init__(self, marker_dir: Path, deaths: int = 2, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.marker_dir = Path(marker_dir)
        self.deaths = deaths

    def accuracy(self, arch: Arch) -> AccuracyResult:
        _die_once(self.marker_dir, arch.hash, self.deaths)
        return super().accuracy(arch)


class DyingDevice(SyntheticDevice):
    """SyntheticDevice whose process dies during its first `deaths` benchmarks (each model once)."""

    def __init__(self, device_id: str, marker_dir: Path, deaths: int = 1) -> None:
        super().__init__(device_id)
        self.marker_dir = Path(marker_dir)
        self.deaths = deaths

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        _die_once(self.marker_dir, f"{self.device_id}-{Path(model_path).name}", self.deaths)
        return super().benchmark(model_path, config)


class BrokenAccuracy(CheapAccuracy):
    """Training that fails with a user-fixable error (not a lost worker: must not be retried)."""

    def accuracy(self, arch: Arch) -> AccuracyResult:
        raise MnasError("proxy task: dataset folder /nowhere: expected class folders")


class LoggingDevice(SyntheticDevice):
    """SyntheticDevice that takes `seconds` per benchmark and logs each call's start/end time to `log`."""

    def __init__(self, device_id: str, log: Path, seconds: float = 0.1) -> None:
        super().__init__(device_id)
        self.log = Path(log)
        self.seconds = seconds

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        start = time.time()
        time.sleep(self.seconds)
        result = super().benchmark(model_path, config)
        with self.log.open("a") as handle:
            handle.write(f"{start} {time.time()}\n")
        return result


class AlwaysDyingAccuracy(CheapAccuracy):
    """Kills its worker process at every attempt (a node that keeps crashing)."""

    def accuracy(self, arch: Arch) -> AccuracyResult:
        os._exit(1)
