"""`mnas bench`: every model on every device, results stored as they come.

Each (device, model) pair is a job pinned to its device in the one device pool
(`bench.pool`, policy FAIL_JOB: a model that fails is reported and the device goes on
with the next, unless the device reports itself offline, and then each pair it leaves
unmeasured is reported, naming device and model). Devices are profiled in parallel first;
a pair whose stored measurement passes the one reuse rule (`bench.measure.find_reusable`)
is reused unless `force` is set, so a re-run after a kill resumes and duplicates nothing.
The devices are locked for the whole run before that check (`bench.device_lock`): a second
run on the same phone waits for the first and then reuses its figures; should another
process store a pair meanwhile anyway, the store refuses the duplicate and the pair is
reported as reused.
A run whose delegate fell back to the CPU (`bench.delegates.DelegateFallback`) is reported
with its figures and `delegate_fallback` set, and is never stored under the delegate's conditions.
Every outcome reaches `on_result` the moment it is known.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnas.bench.delegates import DelegateFallback
from mnas.bench.device_lock import hold_devices
from mnas.bench.measure import PreparedModel, find_reusable, profile_devices
from mnas.bench.pool import FailurePolicy, run_device_pool
from mnas.bench.store import DuplicateMeasurement, StoreWriteError
from mnas.bench.types import BenchConfig, Device, DeviceProfile, Measurement, headline_statistic
from mnas.errors import MnasError

__all__ = ["BenchOutcome", "run_benchmarks"]


@dataclass
class BenchOutcome:
    device_id: str
    model: PreparedModel
    measurement: Measurement | None
    stored_id: int | None
    reused: bool = False
    error: str | None = None
    store_error: str | None = None  # the store could not be written: its one line (the same for every pair)
    delegate_fallback: bool = False  # the delegate asked for was not applied: `measurement` is a CPU figure, not stored


def run_benchmarks(
    devices: Sequence[Device],
    models: Sequence[PreparedModel],
    config: BenchConfig,
    store=None,  # mnas.bench.store.ResultsStore | None
    force: bool = False,
    on_result: Callable[[BenchOutcome], None] | None = None,
    lock_timeout_s: float | None = None,
    guard=None,  # mnas.bench.contention.ContentionGuard | None
) -> list[BenchOutcome]:
    """Measure every model on every device; failures are reported per pair, never raised.

    A store that refuses a write (disk full, read-only, locked) stops the run: that pair is
    reported "measured but not stored" with its figure and `store_error` set, nothing more is
    sent to the devices, and every pair left is reported "not measured: store unwritable"
    (a re-run after the cause is fixed measures exactly those). A store opened read-only
    raises StoreWriteError before anything is measured.

    Every device is locked for the whole call first (`bench.device_lock.hold_devices`,
    waiting at most `lock_timeout_s` per device; a device still busy then raises
    `DeviceBusy` naming its holder, before anything is measured).
    """
    if any(getattr(device, "kind", None) == "host" for device in devices):
        from mnas.bench.host import check_host_config

        check_host_config(config)  # --delegate gpu on the host: one line now, not one per model
    if store is not None:
        store.require_writable()  # a read-only store: one line now, before any device time is spent
    with hold_devices(devices, lock_timeout_s):
        return _run_benchmarks(devices, models, config, store, force, on_result, guard)


def _run_benchmarks(devices: Sequence[Device], models: Sequence[PreparedModel], config: BenchConfig, store,
                    force: bool, on_result: Callable[[BenchOutcome], None] | None, guard=None) -> list[BenchOutcome]:
    outcomes: list[BenchOutcome] = []
    lock = threading.Lock()

    def report(outcome: BenchOutcome) -> None:
        with lock:
            outcomes.append(outcome)
            if on_result is not None:
                on_result(outcome)

    jobs: list[tuple[Device, PreparedModel]] = []
    for device, profile in zip(devices, profile_devices(devices), strict=True):
        if store is not None and not isinstance(profile, MnasError):
            try:  # the device row names the phone (model, Android build) beside its figures in exports
                store.upsert_device(profile)
            except StoreWriteError:  # reported by the first measurement's write, with its figure
                pass
        for model in models:
            if isinstance(profile, MnasError):
                report(BenchOutcome(device.device_id, model, None, None,
                                    error=f"{device.device_id}: {model.label}: not measured: {profile}"))
            elif (stored := _reusable(store, force, profile, model, config)) is not None:
                report(BenchOutcome(device.device_id, model, stored, None, reused=True))
            else:
                jobs.append((device, model))

    store_failed: list[StoreWriteError] = []  # the first write the store refused: nothing more is measured

    def measure(device: Device, job: tuple[Device, PreparedModel]) -> Measurement:
        if store_failed:  # a figure that cannot be stored is lost: do not spend device time on it
            raise _NotSent(store_failed[0])
        if guard is None:
            return device.benchmark(job[1].path, config)
        return guard.benchmark(device, job[1].path, config, headline_statistic(getattr(device, "device_name", "host")))

    def keep(job: tuple[Device, PreparedModel], device_id: str, measurement: Measurement) -> None:
        model = job[1]
        if store_failed:  # measured while the first failed write was being reported
            report(BenchOutcome(device_id, model, measurement, None, store_error=str(store_failed[0]),
                                error=f"{device_id}: {model.label}: measured but not stored: store unwritable"))
            return
        if model.resolution is not None:  # a whole network's figure is a figure of (arch, resolution)
            measurement.extra.setdefault("resolution", model.resolution)
        try:
            stored_id = (store.add_measurement(measurement, label=model.label, arch=model.arch, force=force)
                         if store is not None else None)
        except DuplicateMeasurement as duplicate:  # another process stored this pair meanwhile: keep its figure
            report(BenchOutcome(device_id, model, store.get_measurement(duplicate.existing_id), None, reused=True))
            return
        except StoreWriteError as exc:  # disk full, read-only, locked: the figure is reported, not stored
            store_failed.append(exc)
            report(BenchOutcome(device_id, model, measurement, None, store_error=str(exc),
                                error=f"{device_id}: {model.label}: measured but not stored: {exc}"))
            return
        report(BenchOutcome(device_id, model, measurement, stored_id))

    def failed(job: tuple[Device, PreparedModel], device_id: str, error: BaseException) -> None:
        if isinstance(error, _NotSent):
            report(BenchOutcome(device_id, job[1], None, None, store_error=str(error.store_error),
                                error=f"{device_id}: {job[1].label}: not measured: store unwritable"))
            return
        if isinstance(error, DelegateFallback):  # measured on the CPU instead: shown, flagged, never stored
            report(BenchOutcome(device_id, job[1], error.measurement, None, error=_error_line(device_id, job[1], error),
                                delegate_fallback=True))
            return
        report(BenchOutcome(device_id, job[1], None, None, error=_error_line(device_id, job[1], error)))

    def unmeasured(job: tuple[Device, PreparedModel]) -> None:
        report(BenchOutcome(job[0].device_id, job[1], None, None,
                            error=f"{job[0].device_id}: {job[1].label}: not measured: "
                                  "device offline after an earlier failure"))

    if jobs:
        run_device_pool([d for d in devices if any(j[0] is d for j in jobs)], jobs, measure, keep, name="bench",
                        policy=FailurePolicy.FAIL_JOB, pinned_to=lambda job: job[0].device_id,
                        on_failed_job=failed, on_unmeasured=unmeasured)
    order = {(d.device_id, m.path): i for i, (d, m) in enumerate((d, m) for d in devices for m in models)}
    outcomes.sort(key=lambda o: order.get((o.device_id, o.model.path), 0))
    return outcomes


class _NotSent(Exception):
    """A job not sent to its device because the store already refused a write."""

    def __init__(self, store_error: BaseException) -> None:
        super().__init__(str(store_error))
        self.store_error = store_error


def _reusable(store, force: bool, profile: DeviceProfile, model: PreparedModel,
              config: BenchConfig) -> Measurement | None:
    if store is None or force:
        return None
    found = find_reusable(store, profile, model.sha256, config)
    if found:  # the name this run gave the model is kept beside the others (names are labels)
        try:
            store.add_model_label(model.sha256, model.label)
        except StoreWriteError:  # a full disk loses the name, not the reused figure
            pass
    return found[0][0] if found else None


def _error_line(device_id: str, model: PreparedModel, error: BaseException) -> str:
    """A device's own MnasError already names device and model; anything else is named here, never blank."""
    text = " ".join(str(error).split())
    if isinstance(error, MnasError) and text:
        return text
    return f"{device_id}: {model.label}: not measured: {type(error).__name__}" + (f": {text}" if text else "")
