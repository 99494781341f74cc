"""The one device pool: one worker thread per device, jobs from queues, only the caller stores.

Every measuring path of mnas (`mnas bench`, table builds, calibration and evaluation
networks, the search's measured latency, devices that are Ray actors) schedules its work
here, so "what happens when a device fails" and "what survives Ctrl-C" are decided once:

- A job is either *shared* (any device may take it: table layers, networks) or *pinned* to
  one device (`mnas bench` measures every model on every device). A device works through
  its own pinned queue first, then the shared one; it runs one job at a time, so two
  measurements never overlap on one device while all devices work at once.
- Results go back to the calling thread, which alone calls `keep` (SQLite connections and
  progress bars are per thread), the moment each one arrives: a crash loses at most the
  measurements in flight.
- A failure is handled by the pool's `FailurePolicy`:
  `RETIRE_DEVICE` (table builds, calibration/eval networks: the jobs are models mnas wrote
  itself, so a failure says the device is unwell): the device's worker stops and its job
  goes back to the shared queue for the others;
  `FAIL_JOB` (bench and search: a user's model may be what is wrong): the job is reported
  failed and the device carries on, unless it now reports itself `offline` (a phone that
  is gone or hung), in which case it is retired as above, without requeueing the job.
- Workers do not leave when the shared queue is momentarily empty: a job that a failing
  device puts back would otherwise be stranded. Jobs that no device can take any more
  (every device retired, or the one they are pinned to) come back as `unmeasured`.
- KeyboardInterrupt/SystemExit, in a worker or in the caller, stops every worker, keeps
  what had finished and propagates.
- An exception from `keep` (the store refused a write) stops every worker and propagates;
  nothing more is kept, and jobs in flight are measured again by the next run.

See docs/architecture.md ("Measuring") for where this sits in the data flow.
"""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mnas.bench.types import Device, Measurement

__all__ = ["FailurePolicy", "PoolResult", "run_device_pool"]

Job = TypeVar("Job")


class FailurePolicy(enum.Enum):
    """What a failed measurement means (see the module docstring)."""

    RETIRE_DEVICE = "retire-device"
    FAIL_JOB = "fail-job"


@dataclass
class PoolResult(Generic[Job]):
    """How a pool run ended, besides the measurements handed to `keep`."""

    retired: list[tuple[str, BaseException]] = field(default_factory=list)  # (device id, error), once each
    failed_jobs: list[tuple[Job, str, BaseException]] = field(default_factory=list)  # FAIL_JOB: (job, device id, error)
    unmeasured: list[Job] = field(default_factory=list)  # no device left that could take them

    def all_retired(self, devices: Sequence[Device]) -> bool:
        return len(self.retired) == len(devices) > 0


@dataclass
class _Kept(Generic[Job]):
    job: Job
    device_id: str
    measurement: Measurement


@dataclass
class _JobFailed(Generic[Job]):
    job: Job
    device_id: str
    error: BaseException


@dataclass
class _Retired(Generic[Job]):
    device_id: str
    error: BaseException
    job: Job | None  # the job it failed on, to go back to the shared queue (RETIRE_DEVICE)


def _next_job(own: queue.Queue, shared: queue.Queue) -> object | None:
    for source in (own, shared):
        try:
            return source.get_nowait()
        except queue.Empty:
            continue
    return None


def _worker(device: Device, own: queue.Queue, shared: queue.Queue, done: queue.Queue, stop: threading.Event,
            measure: Callable[[Device, Job], Measurement], policy: FailurePolicy) -> None:
    """Measure jobs until `stop` is set or the device is retired (see the module docstring)."""
    while not stop.is_set():
        job = _next_job(own, shared)
        if job is None:
            stop.wait(0.02)
            continue
        try:
            measurement = measure(device, job)
        except BaseException as exc:  # reported to the caller's thread, which decides
            if not isinstance(exc, Exception) or policy is FailurePolicy.RETIRE_DEVICE:
                done.put(_Retired(device.device_id, exc, job))
                return
            done.put(_JobFailed(job, device.device_id, exc))
            if getattr(device, "offline", False):
                done.put(_Retired(device.device_id, exc, None))
                return
            continue
        done.put(_Kept(job, device.device_id, measurement))


def _drain(source: queue.Queue) -> list:
    items = []
    while True:
        try:
            items.append(source.get_nowait())
        except queue.Empty:
            return items


def run_device_pool(devices: Sequence[Device], jobs: Sequence[Job], measure: Callable[[Device, Job], Measurement],
                    keep: Callable[[Job, str, Measurement], None], name: str, *,
                    policy: FailurePolicy = FailurePolicy.RETIRE_DEVICE,
                    pinned_to: Callable[[Job], str | None] | None = None,
                    on_failed_job: Callable[[Job, str, BaseException], None] | None = None,
                    on_unmeasured: Callable[[Job], None] | None = None) -> PoolResult[Job]:
    """Run `measure(device, job)` over `jobs` on every device at once; `keep` each result in this thread.

    `pinned_to(job)` names the one device a job must run on (None: any device). Failed jobs
    (FAIL_JOB) and jobs no device can take any more are reported through `on_failed_job` /
    `on_unmeasured` as soon as that is known, and listed in the returned `PoolResult`.
    """
    ids = [d.device_id for d in devices]
    shared: queue.Queue = queue.Queue()
    own: dict[str, queue.Queue] = {device_id: queue.Queue() for device_id in ids}
    for job in jobs:
        target = pinned_to(job) if pinned_to is not None else None
        if target is not None and target not in own:
            raise ValueError(f"job pinned to device {target!r}: expected one of {ids}")
        (own[target] if target is not None else shared).put(job)
    done: queue.Queue = queue.Queue()
    stop = threading.Event()
    result: PoolResult[Job] = PoolResult()
    alive = set(ids)

    def unmeasured(items: list) -> None:
        for job in items:
            result.unmeasured.append(job)
            if on_unmeasured is not None:
                on_unmeasured(job)

    threads = [threading.Thread(target=_worker, name=f"{name}-{d.device_id}", daemon=True,
                                args=(d, own[d.device_id], shared, done, stop, measure, policy)) for d in devices]
    for thread in threads:
        thread.start()
    unfinished = len(jobs)
    try:
        while unfinished:
            try:
                item = done.get(timeout=0.1)
            except queue.Empty:
                if not alive:
                    break
                continue
            if isinstance(item, _Kept):
                keep(item.job, item.device_id, item.measurement)
                unfinished -= 1
            elif isinstance(item, _JobFailed):
                result.failed_jobs.append((item.job, item.device_id, item.error))
                if on_failed_job is not None:
                    on_failed_job(item.job, item.device_id, item.error)
                unfinished -= 1
            else:
                if not isinstance(item.error, Exception):  # KeyboardInterrupt, SystemExit
                    raise item.error
                alive.discard(item.device_id)
                result.retired.append((item.device_id, item.error))
                if item.job is not None:
                    if pinned_to is not None and pinned_to(item.job) is not None:
                        unmeasured([item.job])
                        unfinished -= 1
                    else:
                        shared.put(item.job)
                left = _drain(own[item.device_id])
                unmeasured(left)
                unfinished -= len(left)
                if not alive:
                    left = _drain(shared)
                    unmeasured(left)
                    unfinished -= len(left)
    except BaseException as exc:
        stop.set()
        if not isinstance(exc, Exception):
            # an interrupt: keep what finished before it; what was in flight is measured next run
            for item in _drain(done):
                if isinstance(item, _Kept):
                    keep(item.job, item.device_id, item.measurement)
        # else `keep` itself failed (the store refused a write): keeping more would fail the same way
        for thread in threads:
            thread.join(timeout=1.0)
        raise
    finally:
        stop.set()
    return result
