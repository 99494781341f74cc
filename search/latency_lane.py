"""The search's latency lane: one thread that asks the latency source for each child, in index order.

A child's latency does not depend on its training, so it is computed as soon as the child
is submitted and overlaps with training. One thread, fed in submission (= index) order,
makes the latency source see exactly the calls of a sequential search, one child per call
(a hybrid source's random choice of what to measure included), whatever the executor. The
source's state right after each child goes back with the result, because the checkpoint
stored with that child must hold it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from mnas.bench.delegates import DelegateFallback
from mnas.errors import MeasurementError
from mnas.search.types import LatencyResult
from mnas.space.arch import Arch

__all__ = ["LatencyDone", "LatencyLane"]


@dataclass
class LatencyDone:
    idx: int
    result: LatencyResult | None = None
    state: dict[str, Any] | None = None  # the latency source's state right after this child
    seconds: float = 0.0
    error: BaseException | None = None


def _snapshot(source: Any) -> dict[str, Any] | None:
    return source.state_dict() if hasattr(source, "state_dict") else None


class LatencyLane:
    """Puts a `LatencyDone` on `events` for each submitted child, in submission order.

    A `MeasurementError` (a device problem) is retried `retries` times from the source's
    state before the child; any other error, a delegate that fell back to the CPU included
    (`bench.delegates.DelegateFallback`), is reported at once (it would fail the same way).
    """

    def __init__(self, source: Any, events: queue.Queue, retries: int = 2) -> None:
        self.source = source
        self.events = events
        self.retries = retries
        self.jobs: queue.Queue[tuple[int, Arch] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="mnas-latency", daemon=True)
        self.thread.start()

    def submit(self, idx: int, arch: Arch) -> None:
        self.jobs.put((idx, arch))

    def close(self) -> None:
        self.jobs.put(None)
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            idx, arch = job
            before = _snapshot(self.source)
            t0 = time.perf_counter()
            for attempt in range(self.retries + 1):
                try:
                    result = self.source.latency_ms([arch])[0]
                except DelegateFallback as exc:  # the delegate cannot take this child: a retry falls back again
                    self.events.put(LatencyDone(idx, error=exc))
                    return
                except MeasurementError as exc:  # a device problem: try again from the same state
                    if before is not None:
                        self.source.load_state_dict(before)
                    if attempt == self.retries:
                        self.events.put(LatencyDone(idx, error=exc))
                        return
                    continue
                except BaseException as exc:  # bad input or a bug: retrying would fail the same way
                    self.events.put(LatencyDone(idx, error=exc))
                    return
                self.events.put(LatencyDone(idx, result=result, state=_snapshot(self.source),
                                            seconds=time.perf_counter() - t0))
                break
