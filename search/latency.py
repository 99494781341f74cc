"""Latency sources: measured on devices, predicted by a model, or both (hybrid).

The search calls `latency_ms(archs)` and gets one `LatencyResult` per architecture; which
source produced it is recorded in `result.source`, but the search code is the same for all
three (the paper measured every sample on a phone; predicting is ~1000x cheaper; hybrid
predicts everything and measures a share to keep the predictor honest).

`MeasuredLatency` is the measuring path every other command uses (docs/architecture.md,
"Measuring"): each architecture's `.tflite` is written by an injected, deterministic writer
(`bench.measure.write_arch_model`: the file's sha256 identifies arch + resolution), a stored
measurement passing the one reuse rule (`bench.measure.find_reusable`) or one this object
already took stands in for a new one, and the rest are timed on the one device pool
(`bench.pool`, FAIL_JOB) under the run's `BenchConfig` (threads, delegate and benchmark_model
flags included: they are part of the reuse key, and a run whose delegate fell back to the
CPU raises `DelegateFallback` instead of being stored). Store reads and writes stay in the calling thread; each fresh
measurement is stored as soon as it completes, so a failure loses only what was in flight.
The devices are locked (`bench.device_lock`) for each call, from the reuse check to the last
measurement, not for the search's life: a search lives for days and mostly trains, so a
`mnas bench` or table build on the same phone gets its turn between two latency batches.

A search asks the latency of float32 or int8 models (`RunConfig.latency.dtype`): measured,
each architecture is written in that dtype (`predictor.build.network_writer`; an int8 file has
its own sha256, so the reuse rule never lets a float figure stand in for it, nor the reverse),
its figures are stored under the label `<label>-int8` as `mnas bench --dtype int8` does, and
the memo is keyed on the dtype too; predicted, the predictor is one fitted on a table of that
dtype (`predictor.selection.load_device_predictor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mnas.bench.device_lock import hold_devices
from mnas.bench.measure import ModelWriter, PreparedModel, find_reusable, write_arch_model
from mnas.bench.pool import FailurePolicy, run_device_pool
from mnas.bench.store import DuplicateMeasurement
from mnas.bench.tempdirs import owned_temp_dir
from mnas.bench.types import (
    BenchConfig,
    Device,
    DeviceProfile,
    Measurement,
    headline_statistic,
    latency_ms,
)
from mnas.errors import MeasurementError, MnasError
from mnas.search.types import LatencyResult, LatencySource
from mnas.space.arch import Arch


class LatencyPredictor(Protocol):
    """Anything that predicts whole-network latency (a fitted latency table, a regressor)."""

    def predict_ms(self, archs: Sequence[Arch]) -> np.ndarray: ...


class MeasuredLatency:
    """Median latency of each architecture's `.tflite`, timed on `devices`.

    `store` (a `ResultsStore`) makes measurements persistent and reusable across runs; the
    arch's canonical string goes with each stored measurement (`arch=str(arch)`). Within one
    object, an architecture measured once is not timed again (source "cache:<device>").
    `workdir`: where the models are written (default: a temporary folder per call, removed
    after). Each model file is deleted once its latency is known and stored (a MnasNet-space
    model at 224 px is ~15 MB: 8,000 children would leave ~120 GB), unless `keep_models`.
    `dtype` ("float32" or "int8") is the models' type: `model_writer` None writes that dtype
    (`predictor.build.network_writer`); int8 figures are stored under `<label>-int8`.
    """

    name = "measured"

    def __init__(self, devices: Sequence[Device], resolution: int, bench_config: BenchConfig,
                 model_writer: ModelWriter | None = None, store: Any = None, *,
                 label: str = "search", workdir: Path | None = None, lock_timeout_s: float | None = None,
                 keep_models: bool = False, dtype: str = "float32") -> None:
        from mnas.predictor.build import network_writer

        if not devices:
            raise MnasError("measured latency: no devices: expected at least one device to time models on")
        if not isinstance(resolution, int) or resolution < 8:
            raise MnasError(f"measured latency: resolution = {resolution!r}: expected an integer >= 8 pixels")
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            raise MnasError(f"measured latency: devices {ids}: expected each device once")
        self.devices = list(devices)
        self.resolution = resolution
        self.bench_config = bench_config
        self.dtype = dtype
        self.model_writer = model_writer if model_writer is not None else network_writer(dtype)
        self.store = store
        self.label = label if dtype == "float32" else f"{label}-{dtype}"
        self.workdir = workdir
        self.keep_models = keep_models
        self.lock_timeout_s = lock_timeout_s
        self._profiles: dict[str, DeviceProfile] = {}
        self._memo: dict[tuple[str, str, str], LatencyResult] = {}  # (device id, dtype, model sha256)
        self.benchmarks = 0  # fresh measurements taken by this object

    def profile(self, device: Device) -> DeviceProfile:
        if device.device_id not in self._profiles:
            self._profiles[device.device_id] = device.profile()
        return self._profiles[device.device_id]

    def _known(self, sha: str) -> LatencyResult | None:
        """A result for this model from memory or the store, on any device of the pool."""
        for device in self.devices:
            memo = self._memo.get((device.device_id, self.dtype, sha))
            if memo is not None:
                return replace(memo, source=f"cache:{device.device_id}")
        if self.store is None:
            return None
        for device in self.devices:
            found = find_reusable(self.store, self.profile(device), sha, self.bench_config)
            if found:
                value = latency_ms(found[0][0])
                result = LatencyResult(latency_ms=value, source=f"store:{device.device_id}",
                                       measured_ms=value, device_id=device.device_id, model_sha256=sha)
                self._memo[(device.device_id, self.dtype, sha)] = result
                return result
        return None

    def latency_ms(self, archs: Sequence[Arch]) -> list[LatencyResult]:
        archs = list(archs)
        if not archs:
            return []
        with hold_devices(self.devices, self.lock_timeout_s):  # from the reuse check to the last measurement
            if self.workdir is not None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                return self._latency(archs, self.workdir)
            with owned_temp_dir("latency") as tmp:
                return self._latency(archs, Path(tmp))

    def _latency(self, archs: list[Arch], folder: Path) -> list[LatencyResult]:
        by_key: dict[str, LatencyResult] = {}
        to_measure: dict[str, tuple[Arch, PreparedModel]] = {}
        written: list[Path] = []
        try:
            for arch in archs:
                key = str(arch)
                if key in by_key or key in to_measure:
                    continue
                path = folder / f"{arch.hash}_r{self.resolution}.tflite"
                written.append(path)
                model = write_arch_model(arch, self.resolution, path, self.model_writer)
                known = self._known(model.sha256)
                if known is not None:
                    by_key[key] = known
                else:
                    to_measure[key] = (arch, model)
            if to_measure:
                by_key.update(self._measure(list(to_measure.values())))
        finally:  # measured and stored (or failed: it is written again on the next try)
            if not self.keep_models:
                for path in written:
                    path.unlink(missing_ok=True)
        return [by_key[str(arch)] for arch in archs]

    def _measure(self, jobs: list[tuple[Arch, PreparedModel]]) -> dict[str, LatencyResult]:
        """Time the models on the device pool (FAIL_JOB); the first failure is raised once the rest are kept."""
        out: dict[str, LatencyResult] = {}

        def keep(job: tuple[Arch, PreparedModel], device_id: str, m: Measurement) -> None:
            arch, model = job
            out[str(arch)] = self._record(arch, model.sha256, m)

        pool = run_device_pool(self.devices, jobs, lambda device, job: device.benchmark(job[1].path, self.bench_config),
                               keep, name="mnas-measure", policy=FailurePolicy.FAIL_JOB)
        if pool.failed_jobs:
            raise pool.failed_jobs[0][2]
        if pool.unmeasured:
            device_id, error = pool.retired[0]
            raise MeasurementError(f"measured latency: {len(pool.unmeasured)} models not measured: every device "
                                   f"went offline (first: {device_id}: {error}): expected a device to measure on")
        return out

    def _record(self, arch: Arch, sha: str, m: Measurement) -> LatencyResult:
        median = latency_ms(m)  # min of runs on the host, median on phones: what predictors predict
        if not math.isfinite(median) or median <= 0:
            raise MnasError(f"measured latency: {m.device_id} gave {median!r} ms for {arch}: expected a latency > 0")
        self.benchmarks += 1
        source = f"measured:{m.device_id}"
        m.extra.setdefault("resolution", self.resolution)  # read back by `predictor.evals.stored_figures`
        try:
            row = self.store.add_measurement(m, label=self.label, arch=str(arch)) if self.store is not None else None
        except DuplicateMeasurement as duplicate:  # another process stored it meanwhile: its figure stands
            row, source = duplicate.existing_id, f"store:{m.device_id}"
            median = latency_ms(self.store.get_measurement(row))
        result = LatencyResult(latency_ms=median, source=source, measured_ms=median,
                               device_id=m.device_id, model_sha256=sha, measurement_id=row)
        self._memo[(m.device_id, self.dtype, sha)] = result
        return result


def check_hybrid_statistic(predicted: LatencySource, measured: LatencySource) -> None:
    """Refuse a predictor fitted on another statistic than the measured devices' headline one.

    A measured latency is the device's headline statistic (`bench.types.headline_statistic`:
    min of the timed runs on the host, median on phones); a predictor fitted on the other one
    predicts a different quantity, and a hybrid search would rank children by a mix of both.
    """
    statistic = getattr(getattr(predicted, "predictor", None), "statistic", None)
    devices = getattr(measured, "devices", None)
    if statistic is None or not devices or not hasattr(measured, "profile"):
        return
    for device in devices:
        name = measured.profile(device).device_name
        expected = headline_statistic(name)
        if statistic != expected:
            who = getattr(predicted, "predictor_id", "the predictor")
            raise MnasError(f"hybrid latency: {who} predicts the {statistic} of timed runs but {device.device_id} "
                            f"({name}) is measured by its {expected}: expected a predictor fitted with --statistic "
                            f"{expected} (mnas table fit --statistic {expected}), or --latency predicted/measured")


class PredictedLatency:
    """Latency from a fitted predictor; `source` is "predicted:<predictor id>"."""

    name = "predicted"

    def __init__(self, predictor: LatencyPredictor, predictor_id: str | None = None) -> None:
        self.predictor = predictor
        self.predictor_id = predictor_id or str(getattr(predictor, "predictor_id", None) or getattr(predictor, "id", None)
                                                or getattr(predictor, "name", None)
                                                or type(predictor).__name__)

    def latency_ms(self, archs: Sequence[Arch]) -> list[LatencyResult]:
        archs = list(archs)
        if not archs:
            return []
        values = np.asarray(self.predictor.predict_ms(archs), dtype=np.float64).reshape(-1)
        if values.size != len(archs):
            raise MnasError(f"predictor {self.predictor_id}: returned {values.size} latencies for {len(archs)} "
                            "architectures: expected one each")
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            i = int(bad[0])
            raise MnasError(f"predictor {self.predictor_id}: predicted {float(values[i])!r} ms for {archs[i]}: expected a latency > 0")
        source = f"predicted:{self.predictor_id}"
        return [LatencyResult(latency_ms=float(v), source=source, predicted_ms=float(v)) for v in values]


@dataclass(frozen=True)
class PredictionError:
    """One measured architecture's prediction against its measurement."""

    arch_hash: str
    predicted_ms: float
    measured_ms: float
    source: str  # the measurement's source, e.g. "measured:host" or "store:host"
    device_id: str

    @property
    def relative_error(self) -> float:
        """(predicted - measured) / measured: positive when the predictor is pessimistic."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


class HybridLatency:
    """Predict every architecture; measure some and use the measurement where there is one.

    Which ones are measured: each with probability `share` (seeded, so a resumed run draws
    the same), or, with `measure_top_k`, the k of each call whose predicted latency is
    closest to `target_ms` (their reward is the most sensitive to a latency error: the hard
    reward's kink and the Pareto front sit at T). `measure(archs)` measures given ones, e.g.
    the search's best by reward. Every measured architecture's prediction error is kept once
    (`errors`, `error_summary()`).
    """

    name = "hybrid"

    def __init__(self, predicted: LatencySource, measured: LatencySource, share: float | None = 0.1, *,
                 measure_top_k: int | None = None, target_ms: float | None = None, seed: int = 0) -> None:
        if measure_top_k is not None:
            if not isinstance(measure_top_k, int) or measure_top_k < 1:
                raise MnasError(f"hybrid latency: measure_top_k = {measure_top_k!r}: expected an integer >= 1")
            if target_ms is None or not target_ms > 0:
                raise MnasError(f"hybrid latency: target_ms = {target_ms!r}: expected a latency > 0 ms with measure_top_k")
            share = None
        elif share is None or not 0.0 <= share <= 1.0:
            raise MnasError(f"hybrid latency: share = {share!r}: expected a fraction in [0, 1]")
        self.predicted = predicted
        self.measured = measured
        self.share = share
        self.measure_top_k = measure_top_k
        self.target_ms = target_ms
        self.rng = np.random.default_rng(seed)
        self.errors: list[PredictionError] = []
        self._logged: set[tuple[str, str]] = set()

    def _chosen(self, predicted: list[LatencyResult]) -> list[int]:
        n = len(predicted)
        if self.measure_top_k is not None:
            assert self.target_ms is not None
            distance = [abs(r.latency_ms - self.target_ms) for r in predicted]
            return sorted(sorted(range(n), key=lambda i: distance[i])[: self.measure_top_k])
        draws = self.rng.random(n)  # drawn for every call, so the stream does not depend on the share
        return [i for i in range(n) if draws[i] < self.share]

    def latency_ms(self, archs: Sequence[Arch]) -> list[LatencyResult]:
        archs = list(archs)
        predicted = self.predicted.latency_ms(archs)
        chosen = self._chosen(predicted)
        results = list(predicted)
        if chosen:
            for i, merged in zip(chosen, self._merge([archs[i] for i in chosen], [predicted[i] for i in chosen]), strict=True):
                results[i] = merged
        return results

    def measure(self, archs: Sequence[Arch]) -> list[LatencyResult]:
        """Measure these architectures (and log their prediction errors) whatever the share."""
        archs = list(archs)
        return self._merge(archs, self.predicted.latency_ms(archs)) if archs else []

    def _merge(self, archs: list[Arch], predicted: list[LatencyResult]) -> list[LatencyResult]:
        measured = self.measured.latency_ms(archs)
        out = []
        for arch, pred, meas in zip(archs, predicted, measured, strict=True):
            out.append(replace(meas, predicted_ms=pred.latency_ms, measured_ms=meas.latency_ms))
            device = meas.device_id or meas.source.split(":", 1)[-1]
            if (arch.hash, device) not in self._logged:
                self._logged.add((arch.hash, device))
                self.errors.append(PredictionError(arch.hash, pred.latency_ms, meas.latency_ms, meas.source, device))
        return out

    def error_summary(self) -> dict[str, float | int]:
        """n, MAPE, max absolute % error and mean signed % error (bias) over measured archs."""
        if not self.errors:
            return {"n": 0, "mape_pct": math.nan, "max_ape_pct": math.nan, "bias_pct": math.nan}
        rel = np.array([e.relative_error for e in self.errors]) * 100.0
        return {"n": len(self.errors), "mape_pct": float(np.abs(rel).mean()), "max_ape_pct": float(np.abs(rel).max()),
                "bias_pct": float(rel.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "errors": [asdict(e) for e in self.errors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("rng", "errors"):
            if key not in state:
                raise MnasError(f"hybrid latency checkpoint: key {key!r} missing: expected a HybridLatency.state_dict()")
        self.rng.bit_generator.state = state["rng"]
        self.errors = [PredictionError(**e) for e in state["errors"]]
        self._logged = {(e.arch_hash, e.device_id) for e in self.errors}
