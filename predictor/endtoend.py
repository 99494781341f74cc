"""Whole networks measured end to end: the calibration set and the held-out evaluation set.

A predictor is calibrated on a few measured networks and judged on others. The two sets
must never share an architecture (an evaluation on calibration networks flatters the
predictor), so each purpose draws from its own random stream: the generator of purpose P
and seed S is `numpy.random.default_rng([STREAMS[P], S])`. The purpose is part of the seed
entropy, so calibration seed 3 and eval seed 3 are different, independent streams — no
choice of `--seed` on either side reuses the other's. On top of that, evaluation drops any
architecture whose hash is in the predictor's calibration set (`sample_archs(exclude=...)`),
so an overlap is impossible, not merely improbable.

Every measurement goes to the results store (label `calibration` / `eval`, with the arch
string) the moment it is taken; a network already measured on the device under the same
conditions and runtime is reused, so an interrupted calibration or evaluation resumes where
it stopped. Several devices of one model share the work: one worker thread per device,
only the calling thread touches the store (as in `build.py`). The devices are locked for
the whole call (`bench.device_lock`) before the store is asked what is measured, so a second
calibration on the same phone waits and then reuses; the store refuses more than `repeats`
reusable measurements of one network on one device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnas.bench.contention import NETWORK_GUARD, ContentionGuard
from mnas.bench.device_lock import hold_devices
from mnas.bench.measure import (
    ModelWriter,
    default_model_writer,
    find_reusable,
    is_reusable,
    write_arch_model,
)
from mnas.bench.pool import run_device_pool
from mnas.bench.store import DuplicateMeasurement, StoreWriteError
from mnas.bench.tempdirs import owned_temp_dir
from mnas.bench.types import BenchConfig, Device, Measurement, check_statistic, latency_ms
from mnas.errors import MeasurementError, MnasError
from mnas.space.arch import Arch
from mnas.space.search_space import SearchSpace

CALIBRATION = "calibration"
EVALUATION = "eval"
STREAMS: dict[str, int] = {CALIBRATION: 0xCA11B, EVALUATION: 0xE7A1}
MAX_DRAWS_PER_ARCH = 100  # resampling bound when duplicates / excluded hashes are drawn


def stream_rng(purpose: str, seed: int) -> np.random.Generator:
    """The random generator of `purpose` (calibration or eval) and `seed`; streams never coincide."""
    if purpose not in STREAMS:
        raise MnasError(f"sampling purpose {purpose!r}: expected one of {sorted(STREAMS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MnasError(f"--seed {seed!r}: expected an integer >= 0")
    return np.random.default_rng([STREAMS[purpose], int(seed)])


def sample_archs(space: SearchSpace, n: int, seed: int, purpose: str, exclude: Iterable[str] = ()) -> list[Arch]:
    """`n` distinct random archs of `space` from the `purpose` stream; hashes in `exclude` are skipped."""
    if n < 1:
        raise MnasError(f"--samples {n}: expected at least 1 network")
    rng = stream_rng(purpose, seed)
    banned = set(exclude)
    out: list[Arch] = []
    draws = 0
    while len(out) < n:
        draws += 1
        if draws > MAX_DRAWS_PER_ARCH * n:
            raise MnasError(f"sampling {n} {purpose} networks: only {len(out)} distinct ones not excluded after "
                            f"{draws - 1} draws: expected a larger search space or fewer samples")
        arch = space.sample(rng)
        if arch.hash in banned:
            continue
        banned.add(arch.hash)
        out.append(arch)
    return out


@dataclass
class NetMeasurement:
    """One network measured end to end in `repeats` separate processes (or reused from the store).

    Its latency is the median, over the processes, of each process's statistic: a process
    draws its own memory layout, so on this host one network's minimum moves by about 3%
    (up to 10%) from process to process while runs within a process agree; more runs in
    one process cannot average that out, more processes can.
    """

    arch: Arch
    measurements: list[Measurement]
    measurement_ids: list[int | None]
    reused: int  # how many of the measurements came from the store
    statistic: str = "median"

    @property
    def values_ms(self) -> list[float]:
        return [latency_ms(m, self.statistic) for m in self.measurements]

    @property
    def measured_ms(self) -> float:
        """Median over the processes of the statistic (median or min of each process's timed runs)."""
        return float(np.median(self.values_ms))

    @property
    def measurement(self) -> Measurement:
        """The measurement whose value is closest to `measured_ms`."""
        target = self.measured_ms
        return min(self.measurements, key=lambda m: abs(latency_ms(m, self.statistic) - target))

    def to_dict(self) -> dict[str, Any]:
        shares = [m.extra.get("child_cpu_share") for m in self.measurements]
        flags = [m.extra.get("contended") for m in self.measurements]
        return {"arch": str(self.arch), "arch_hash": self.arch.hash, "measured_ms": self.measured_ms,
                "statistic": self.statistic, "repeats_ms": self.values_ms,
                "median_ms": float(np.median([latency_ms(m, "median") for m in self.measurements])),
                "min_ms": float(np.median([m.stats.min_us / 1000.0 for m in self.measurements])),
                "runs": [m.stats.count for m in self.measurements], "device_id": self.measurements[0].device_id,
                "child_cpu_share": None if None in shares else min(shares),
                "contended": None if None in flags else any(flags),
                "measurement_ids": self.measurement_ids, "reused": self.reused}


class NetworksInterrupted(KeyboardInterrupt):
    """Ctrl-C while networks were measured: `stored` of `total` measurements are in the store and
    a re-run with the same options reuses the `reusable` ones among them (the reuse rule: not
    flagged contended or throttled), measuring only the rest."""

    def __init__(self, label: str, stored: int, reusable: int, total: int) -> None:
        super().__init__(f"{label} networks: {stored} of {total} measurements stored, {reusable} reusable")
        self.label, self.stored, self.reusable, self.total = label, stored, reusable, total


@dataclass
class _Job:
    index: int
    arch: Arch
    path: Path  # written by the worker just before timing, deleted right after (files are ~10 MB)
    resolution: int
    writer: ModelWriter


def measure_networks(archs: Sequence[Arch], devices: Sequence[Device], store: Any, config: BenchConfig,
                     resolution: int, label: str, *, writer: ModelWriter = default_model_writer,
                     progress: bool = True, reuse: bool = True, statistic: str = "median",
                     guard: ContentionGuard | None = NETWORK_GUARD, repeats: int = 1,
                     lock_timeout_s: float | None = None) -> list[NetMeasurement]:
    """Measure each arch end to end `repeats` times (separate processes), storing each result as it comes.

    Repeats go in rounds (every network once, then every network again), so a burst of
    load or heat lands on one repeat of many networks rather than all repeats of one.
    `guard` re-measures host networks timed while other processes shared the core (see
    `contention`); None measures each network once whatever happened. Stored uncontended
    measurements under the same conditions count as repeats already done (resumable).

    A device that raises stops its worker and its network goes back to the queue; when
    every device has failed a MeasurementError names the first failure (what was stored
    stays stored). Ctrl-C stops the workers and propagates; finished measurements are kept.
    """
    if not devices:
        raise MnasError("measure_networks: no devices: expected at least one device to measure on")
    if repeats < 1:
        raise MnasError(f"--repeats {repeats}: expected at least 1 measurement per network")
    check_statistic(statistic)
    if hasattr(store, "require_writable"):
        store.require_writable()  # a read-only store: one line before any network is measured
    with hold_devices(devices, lock_timeout_s):  # before the reuse check: a second run waits, then reuses
        return _measure_networks(archs, devices, store, config, resolution, label, writer, progress, reuse,
                                 statistic, guard, repeats)


def _measure_networks(archs: Sequence[Arch], devices: Sequence[Device], store: Any, config: BenchConfig,
                      resolution: int, label: str, writer: ModelWriter, progress: bool, reuse: bool, statistic: str,
                      guard: ContentionGuard | None, repeats: int) -> list[NetMeasurement]:
    profiles = [device.profile() for device in devices]  # a device that cannot say what it is stops the call
    done: list[list[tuple[Measurement, int | None]]] = [[] for _ in archs]
    reused = [0] * len(archs)
    with owned_temp_dir("nets") as tmp:
        rounds: list[list[_Job]] = [[] for _ in range(repeats)]
        for index, arch in enumerate(archs):
            stored: list[tuple[Measurement, int]] = []
            if reuse:  # the writer is deterministic: the file's hash finds earlier measurements
                probe = write_arch_model(arch, resolution, Path(tmp) / f"{arch.hash}-{resolution}.tflite", writer)
                stored = [(m, i) for profile in profiles
                          for m, i in find_reusable(store, profile, probe.sha256, config, repeats)][:repeats]
                probe.path.unlink(missing_ok=True)
            done[index].extend(stored)
            reused[index] = len(stored)
            for r in range(repeats - len(stored)):
                path = Path(tmp) / f"{arch.hash}-{resolution}-{r}.tflite"
                rounds[r].append(_Job(index, arch, path, resolution, writer))
        jobs = [job for round_jobs in rounds for job in round_jobs]
        if jobs:
            _run(devices, jobs, store, config, label, done, progress, statistic, guard, repeats if reuse else None,
                 already=sum(reused))
    missing = [i for i, d in enumerate(done) if len(d) < repeats]
    if missing:  # cannot happen unless a worker vanished without reporting
        raise MeasurementError(f"{len(missing)} networks were not measured: expected every network measured")
    return [NetMeasurement(arch, [m for m, _ in d], [i for _, i in d], reused[k], statistic)
            for k, (arch, d) in enumerate(zip(archs, done, strict=True))]


def _run(devices: Sequence[Device], jobs: list[_Job], store: Any, config: BenchConfig, label: str,
         results: list[list[tuple[Measurement, int | None]]], progress: bool, statistic: str,
         guard: ContentionGuard | None, max_reusable: int | None, already: int = 0) -> None:
    """Measure `jobs` through the device pool; the bar counts every measurement of the call and
    starts at `already` (those reused from the store), so a resumed run shows where it is."""
    from tqdm import tqdm

    def measure(device: Device, job: _Job) -> Measurement:
        try:
            write_arch_model(job.arch, job.resolution, job.path, job.writer)
            if guard is None:
                return device.benchmark(job.path, config)
            return guard.benchmark(device, job.path, config, statistic)
        finally:
            job.path.unlink(missing_ok=True)

    def keep(job: _Job, device_id: str, measurement: Measurement) -> None:
        measurement.extra.setdefault("resolution", job.resolution)  # read back by `evals.stored_figures`
        try:  # max_reusable None (reuse off): every measurement is stored
            measurement_id = store.add_measurement(measurement, label=label, arch=str(job.arch),
                                                   force=max_reusable is None, max_reusable=max_reusable or 1)
        except DuplicateMeasurement as duplicate:  # another process stored it meanwhile: use that figure
            measurement, measurement_id = store.get_measurement(duplicate.existing_id), duplicate.existing_id
        results[job.index].append((measurement, measurement_id))
        bar.update(1)
        bar.set_postfix_str(f"{latency_ms(measurement, statistic):.2f} ms")

    bar = tqdm(total=already + len(jobs), initial=already, desc=label, unit="net", disable=not progress,
               dynamic_ncols=True)
    try:
        pool = run_device_pool(devices, jobs, measure, keep, name="nets")
    except StoreWriteError as exc:  # disk full, read-only: what was stored stays, a re-run reuses it
        stored = sum(1 for r in results for _, i in r if i is not None)
        raise StoreWriteError(f"{exc}; {label} networks: {stored} measurements stored: fix the cause and "
                              "re-run to resume", exc.cause) from None
    except KeyboardInterrupt:
        stored = [m for r in results for m, i in r if i is not None]
        raise NetworksInterrupted(label, len(stored), sum(1 for m in stored if is_reusable(m)),
                                  already + len(jobs)) from None
    finally:
        bar.close()
    if pool.all_retired(devices):
        device_id, error = pool.retired[0]
        stored = sum(1 for r in results for _, i in r if i is not None)
        raise MeasurementError(f"{label} networks: every device failed (first: device {device_id}: "
                               f"{type(error).__name__}: {error}); {stored} measured and stored: fix the device "
                               "and re-run to resume") from error
