"""One worker thread per device pulling jobs from a shared queue; only the caller's thread stores.

Both the latency-table build (single layers) and end-to-end network measurement run this
way: several phones share the work, a device that raises stops its worker and its job goes
back to the queue for the others, Ctrl-C keeps every measurement that finished before it,
and the caller learns which devices failed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mnas.bench.types import Device, Measurement

Job = TypeVar("Job")


@dataclass
class _Done(Generic[Job]):
    job: Job
    device_id: str
    measurement: Measurement | None = None
    error: BaseException | None = None


def _worker(device: Device, jobs: queue.Queue, done: queue.Queue, stop: threading.Event,
            measure: Callable[[Device, Job], Measurement]) -> None:
    """Measure jobs until `stop` is set or the device fails.

    An empty queue does not end the worker: a job that fails on another device comes back
    to the queue, and a worker that had already left would strand it.
    """
    while not stop.is_set():
        try:
            job = jobs.get(timeout=0.05)
        except queue.Empty:
            continue
        try:
            measurement = measure(device, job)
        except BaseException as exc:  # reported to the caller's thread, which decides
            done.put(_Done(job, device.device_id, error=exc))
            return
        done.put(_Done(job, device.device_id, measurement=measurement))


def run_device_pool(devices: Sequence[Device], jobs: Sequence[Job], measure: Callable[[Device, Job], Measurement],
                    keep: Callable[[Job, str, Measurement], None], name: str) -> list[tuple[str, BaseException]]:
    """Run `measure(device, job)` over `jobs` on every device at once; `keep` each result in this thread.

    Returns (device id, error) of every device that failed (at most one each); when all of
    them failed, some jobs were not measured. Workers stop once every job is kept. A KeyboardInterrupt or SystemExit from a worker
    or from this thread stops the workers, keeps what finished and propagates.
    """
    pending: queue.Queue = queue.Queue()
    for job in jobs:
        pending.put(job)
    done: queue.Queue[_Done] = queue.Queue()
    stop = threading.Event()
    failures: list[tuple[str, BaseException]] = []
    threads = [threading.Thread(target=_worker, name=f"{name}-{d.device_id}", daemon=True,
                                args=(d, pending, done, stop, measure)) for d in devices]
    for thread in threads:
        thread.start()
    unfinished = len(jobs)
    try:
        while unfinished:
            try:
                item = done.get(timeout=0.1)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and done.empty():
                    break
                continue
            if item.error is not None:
                if not isinstance(item.error, Exception):  # KeyboardInterrupt, SystemExit
                    raise item.error
                failures.append((item.device_id, item.error))
                pending.put(item.job)
                continue
            assert item.measurement is not None
            keep(item.job, item.device_id, item.measurement)
            unfinished -= 1
    except BaseException:
        stop.set()
        # keep what finished before the interrupt; what was in flight is measured next run
        while not done.empty():
            item = done.get_nowait()
            if item.measurement is not None:
                keep(item.job, item.device_id, item.measurement)
        for thread in threads:
            thread.join(timeout=1.0)
        raise
    finally:
        stop.set()
    return failures
