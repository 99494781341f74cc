"""Where children are trained and latencies measured: in this process, or on a Ray cluster.

The paper trained ~8K children on 64 TPUs while phones timed them; one machine is not enough
for that, and the search loop should not care. An executor does two things for the search
(`mnas.search.loop`) and the table builder:

* `submit(idx, arch)` trains one child somewhere and, later, puts a `ChildDone` (the
  `AccuracyResult`, or the error that ended it) on the loop's event queue;
* `devices(spec)` gives the measurement devices: local `Device` objects, or Ray actors
  wrapped as `Device`s (one per phone, on the node it is attached to; see
  `mnas.bench.ray_devices`), so `MeasuredLatency`/`HybridLatency`/`build_table` run unchanged.

`LocalExecutor` trains in this process (`workers` threads; default one, i.e. the plain
sequential cost). `RayExecutor` trains each child as a Ray task with `num_cpus_per_child` /
`num_gpus_per_child`; a task whose worker process or node dies is re-run by Ray up to
`max_retries` times (an exception raised by the training itself is not retried: it would
fail again). Only the driver writes the results store: tasks return results.

The `Executor` interface and `ChildDone` live in `mnas.search.types`, which both this module
and the loop import; the loop never needs to be imported here.
"""

from __future__ import annotations

import functools
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnas.errors import MeasurementError, MnasError
from mnas.search.types import ChildDone, Executor
from mnas.space.arch import Arch

__all__ = ["EXECUTORS", "ExecutorOptions", "LocalExecutor", "RayExecutor"]

EXECUTORS = ("local", "ray")


def _evaluate(accuracy: Any, arch: Arch, wants_model: bool) -> Any:
    return accuracy.accuracy(arch, return_model=True) if wants_model else accuracy.accuracy(arch)


class LocalExecutor:
    """Children trained in this process by `workers` daemon threads (default 1)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise MnasError(f"local executor: workers = {workers!r}: expected an integer >= 1")
        self.workers = workers
        self._jobs: queue.Queue[tuple[int, Arch] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    def start(self, accuracy: Any, events: queue.Queue, *, factory: Callable[[], Any] | None = None,
              wants_model: bool = False) -> None:
        where = {"executor": self.name, "host": socket.gethostname(), "pid": os.getpid()}

        def work() -> None:
            while not self._closed.is_set():
                job = self._jobs.get()
                if job is None:
                    return
                idx, arch = job
                t0 = time.perf_counter()
                try:
                    result = _evaluate(accuracy, arch, wants_model)
                except BaseException as exc:  # reported to the loop, which decides
                    events.put(ChildDone(idx, error=exc, seconds=time.perf_counter() - t0, where=where))
                    continue
                events.put(ChildDone(idx, result=result, seconds=time.perf_counter() - t0, where=where))

        self._threads = [threading.Thread(target=work, name=f"mnas-child-{i}", daemon=True) for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, idx: int, arch: Arch) -> None:
        self._jobs.put((idx, arch))

    def slots(self) -> int:
        return self.workers

    def devices(self, spec: str, **select_options: Any) -> list[Any]:
        from mnas.search.setup import local_devices

        return local_devices(spec, **select_options)

    def close(self) -> None:
        self._closed.set()
        for _ in self._threads:
            self._jobs.put(None)
        # join: a worker thread still alive in torch code at interpreter exit aborts the
        # process ("terminate called without an active exception")
        for thread in self._threads:
            thread.join(timeout=60)


# ------------------------------------------------------------------------------------- Ray

_WORKER_SOURCES: dict[str, Any] = {}  # per Ray worker process: executor token -> accuracy source


def _train_child(token: str, holder: list[Any], arch_text: str, wants_model: bool) -> tuple[Any, float, dict[str, Any]]:
    """The Ray task: build (once per worker process) the accuracy source, train one child."""
    import ray

    source = _WORKER_SOURCES.get(token)
    if source is None:
        shipped = ray.get(holder[0])  # the list keeps Ray from resolving the ref for every task
        source = shipped() if callable(shipped) and not hasattr(shipped, "accuracy") else shipped
        _WORKER_SOURCES.clear()  # one search at a time per worker: drop an earlier run's source
        _WORKER_SOURCES[token] = source
    t0 = time.perf_counter()
    result = _evaluate(source, Arch.parse(arch_text), wants_model)
    where = {"executor": "ray", "host": socket.gethostname(), "pid": os.getpid(),
             "node": ray.get_runtime_context().get_node_id()[:12]}
    return result, time.perf_counter() - t0, where


class RayExecutor:
    """Children trained as Ray tasks; measurement devices as Ray actors.

    `address`: `auto` (the cluster started by `ray start` on this machine), `host:port`,
    `ray://...`, or `local` (a private one-node cluster). When this process is already
    connected (`ray.init` done by the caller), that connection is used and left open.
    """

    name = "ray"

    def __init__(self, address: str | None = "auto", num_cpus_per_child: float = 1.0,
                 num_gpus_per_child: float = 0.0, max_retries: int = 3, max_restarts: int = 3) -> None:
        if not num_cpus_per_child > 0 and not num_gpus_per_child > 0:
            raise MnasError(f"ray executor: {num_cpus_per_child} CPUs and {num_gpus_per_child} GPUs per child: "
                            "expected a child to need some CPU or GPU")
        if num_cpus_per_child < 0 or num_gpus_per_child < 0:
            raise MnasError(f"ray executor: cpus/gpus per child {num_cpus_per_child}/{num_gpus_per_child}: expected >= 0")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise MnasError(f"ray executor: max_retries = {max_retries!r}: expected an integer >= 0")
        from mnas.bench import ray_devices

        self.ray = ray_devices.require_ray()
        self.address = address
        self.num_cpus_per_child = num_cpus_per_child
        self.num_gpus_per_child = num_gpus_per_child
        self.max_retries = max_retries
        self.max_restarts = max_restarts
        self._started_ray = ray_devices.connect(address)
        self._events: queue.Queue | None = None
        self._remote: Any = None
        self._holder: list[Any] = []
        self._token = ""
        self._wants_model = False
        self._pending: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._actors: list[Any] = []

    def start(self, accuracy: Any, events: queue.Queue, *, factory: Callable[[], Any] | None = None,
              wants_model: bool = False) -> None:
        self._events = events
        self._wants_model = wants_model
        self._token = uuid.uuid4().hex
        self._holder = [self.ray.put(factory if factory is not None else accuracy)]
        self._remote = self.ray.remote(_train_child).options(
            num_cpus=self.num_cpus_per_child, num_gpus=self.num_gpus_per_child, max_retries=self.max_retries,
            retry_exceptions=False)

    def submit(self, idx: int, arch: Arch) -> None:
        if self._remote is None or self._events is None:
            raise MnasError("ray executor: submit before start: expected start(accuracy, events) first")
        ref = self._remote.remote(self._token, self._holder, str(arch), self._wants_model)
        with self._lock:
            self._pending[idx] = ref
        ref.future().add_done_callback(functools.partial(self._finished, idx))

    def _finished(self, idx: int, future: Any) -> None:
        assert self._events is not None
        with self._lock:
            self._pending.pop(idx, None)
        try:
            result, seconds, where = future.result()
        except BaseException as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(exc, self.ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
                error: BaseException = cause  # the training's own exception: not retried, it would fail again
            else:  # worker process or node lost more than max_retries times, or the task was cancelled
                error = MeasurementError(f"child {idx}: its Ray worker was lost {self.max_retries + 1} times "
                                         f"({type(exc).__name__}): expected the cluster's nodes to stay up; "
                                         "every finished child is stored, resume the run")
            self._events.put(ChildDone(idx, error=error))
            return
        self._events.put(ChildDone(idx, result=result, seconds=seconds, where=where))

    def slots(self) -> int:
        resources = self.ray.cluster_resources()
        counts = []
        if self.num_cpus_per_child > 0:
            counts.append(int(resources.get("CPU", 0) // self.num_cpus_per_child))
        if self.num_gpus_per_child > 0:
            counts.append(int(resources.get("GPU", 0) // self.num_gpus_per_child))
        return max(1, min(counts))

    def devices(self, spec: str, **select_options: Any) -> list[Any]:
        from mnas.bench.ray_devices import cluster_devices

        devices = cluster_devices(spec, select_options, max_restarts=self.max_restarts)
        self._actors.extend(devices)
        return devices

    def close(self) -> None:
        from mnas.bench.ray_devices import stop_devices

        with self._lock:
            refs = list(self._pending.values())
            self._pending.clear()
        for ref in refs:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # finished or lost meanwhile
                pass
        stop_devices(self._actors)
        self._actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False


@dataclass(frozen=True)
class ExecutorOptions:
    """Where a run's children train (`--executor` and its options); not part of the run config,
    so a resumed run may move to another executor (the stored window keeps its samples)."""

    kind: str = "local"
    address: str | None = "auto"  # ray
    workers: int = 1  # local
    cpus_per_child: float = 1.0  # ray
    gpus_per_child: float = 0.0  # ray
    max_retries: int = 3  # ray

    def build(self) -> Executor:
        if self.kind == "local":
            return LocalExecutor(self.workers)
        if self.kind == "ray":
            return RayExecutor(self.address, self.cpus_per_child, self.gpus_per_child, self.max_retries)
        raise MnasError(f"--executor {self.kind!r}: expected one of {', '.join(EXECUTORS)}")
