"""The paper's work-queue search: the controller keeps proposing while children train.

MnasNet trained children on many workers at once while the controller sampled more and PPO
learned from finished samples in minibatches. `run_search_async` does that on any executor
(`mnas.search.executors`) and stays reproducible: the stored results depend on the seed and
the pipeline `window` W only, never on the executor, the number of workers or the order in
which children happen to finish.

The schedule is fixed. Sample i is asked for only once samples 0 .. i-W have been told, and
samples are told (and stored) in index order, never completion order. So the searcher sees
one fixed sequence of calls: ask 0 .. W-1, then tell 0, ask W, tell 1, ask W+1, ...; W = 1
is exactly the sequential `run_search`. PPO keeps each asked sample's log-probability under
the policy that drew it and updates on every 20 told samples (`PPOSearcher`), so samples
drawn from a policy up to W samples old are corrected by PPO's ratio, as in the paper.

Latencies are computed by one "latency lane" thread in index order, one child per call, as
soon as a child is submitted (they do not depend on its training): the latency source sees
the same calls as in the sequential loop (a hybrid source's random choices included) while
measurements overlap with training. Predicted latency costs microseconds in the driver;
measured latency goes to device actors on Ray (one per phone) or local devices.

Exactly once and resumable: each sample is stored with the checkpoint taken right after its
tell, in one transaction. The checkpoint holds the searcher's state, the latency source's
state as it was right after that sample's latency, and the samples already asked but not yet
told ("in flight"); a resumed run submits those again with the same tokens instead of asking
anew, so it stores exactly what an uninterrupted run would have. A child whose worker dies
is re-run (the executor's bounded retries); a measurement that fails with a
`MeasurementError` is retried `latency_retries` times with the latency source's state
restored first. Nothing is stored for a child until both its accuracy and latency are whole.
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mnas.errors import MeasurementError, MnasError
from mnas.search.executors import ChildDone, Executor
from mnas.search.run_store import RunStore, SampleRow
from mnas.search.runs import RunSummary, SearchSetup, _save_weights
from mnas.search.types import LatencyResult, state_from_bytes, state_to_bytes
from mnas.space.arch import Arch


@dataclass
class LatencyDone:
    idx: int
    result: LatencyResult | None = None
    state: dict[str, Any] | None = None  # the latency source's state right after this child
    seconds: float = 0.0
    error: BaseException | None = None


@dataclass
class _Child:
    idx: int
    tokens: list[int]
    arch: Arch
    accuracy: ChildDone | None = None
    latency: LatencyDone | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _snapshot(source: Any) -> dict[str, Any] | None:
    return source.state_dict() if hasattr(source, "state_dict") else None


class LatencyLane:
    """One thread that asks the latency source for each child, in submission (= index) order."""

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


def _restore(setup: SearchSetup, blob: bytes, next_idx: int, run_id: str) -> list[tuple[int, list[int]]]:
    state = state_from_bytes(blob)
    setup.searcher.load_state_dict(state["searcher"])
    if state.get("latency") is not None and hasattr(setup.latency, "load_state_dict"):
        setup.latency.load_state_dict(state["latency"])
    in_flight = [(int(i), [int(t) for t in tokens]) for i, tokens in state.get("async", {}).get("in_flight", [])]
    expected = list(range(next_idx, next_idx + len(in_flight)))
    if [i for i, _ in in_flight] != expected:
        raise MnasError(f"search run {run_id!r}: checkpoint lists in-flight samples {[i for i, _ in in_flight]}: "
                        f"expected {expected}; the store is inconsistent")
    return in_flight


def run_search_async(run_store: RunStore, run_id: str, setup: SearchSetup, budget: int, executor: Executor, *,
                     window: int = 1, accuracy_factory: Callable[[], Any] | None = None, progress: bool = True,
                     on_sample: Callable[[SampleRow], None] | None = None, latency_retries: int = 2,
                     poll_s: float = 0.5) -> RunSummary:
    """Run (or resume) `run_id` until it holds `budget` samples, training children on `executor`.

    `window` W: how many samples may be asked ahead of the last told one (see the module
    docstring); the same seed and W give the same stored samples on every executor.
    `accuracy_factory` (Ray): builds the accuracy source on each worker instead of shipping
    `setup.accuracy`. `executor.start` is called here; `executor.close` is the caller's.
    """
    from tqdm import tqdm

    if budget < 1:
        raise MnasError(f"--samples {budget}: expected a budget >= 1")
    if not isinstance(window, int) or window < 1:
        raise MnasError(f"--window {window!r}: expected an integer >= 1")
    checkpoint = run_store.checkpoint(run_id)
    told = 0
    in_flight: list[tuple[int, list[int]]] = []
    if checkpoint is not None:
        told, blob = checkpoint
        in_flight = _restore(setup, blob, told, run_id)
    samples = run_store.samples(run_id)
    if len(samples) != told:
        raise MnasError(f"search run {run_id!r}: {len(samples)} stored samples but checkpoint at {told}: store is inconsistent")
    best = max(samples, key=lambda s: s.reward, default=None)
    wants_model = setup.weights_dir is not None and "return_model" in inspect.signature(setup.accuracy.accuracy).parameters

    events: queue.Queue = queue.Queue()
    executor.start(setup.accuracy, events, factory=accuracy_factory, wants_model=wants_model)
    lane = LatencyLane(setup.latency, events, latency_retries)
    children: dict[int, _Child] = {}
    asked: list[tuple[int, list[int]]] = list(in_flight)  # asked, not told: (idx, tokens), index order
    next_ask = told + len(in_flight)

    def submit(idx: int, tokens: list[int]) -> None:
        if idx >= budget:  # asked ahead past the budget: kept in the checkpoint, not trained
            return
        arch = setup.space.decode(tokens)
        children[idx] = _Child(idx, tokens, arch)
        executor.submit(idx, arch)
        lane.submit(idx, arch)

    def ask_ahead() -> None:
        nonlocal next_ask
        while next_ask < told + window:
            tokens = [int(t) for t in setup.searcher.ask(1)[0]]
            asked.append((next_ask, tokens))
            submit(next_ask, tokens)
            next_ask += 1

    start = time.time()
    new = 0
    bar = tqdm(total=budget, initial=told, desc=f"search {run_id}", unit="child", disable=not progress,
               dynamic_ncols=True)
    try:
        for idx, tokens in in_flight:
            submit(idx, tokens)
        if told < budget:
            ask_ahead()
        while told < budget:
            try:
                event = events.get(timeout=poll_s)
            except queue.Empty:
                continue
            if event.error is not None:
                kind = "training" if isinstance(event, ChildDone) else "latency"
                if isinstance(event.error, MnasError):
                    raise event.error
                first_line = (str(event.error).strip().splitlines() or [""])[0]  # Ray appends whole tracebacks
                raise MeasurementError(f"child {event.idx}: {kind} failed ({type(event.error).__name__}: {first_line}); "
                                       "every finished child is stored: resume the run") from event.error
            child = children[event.idx]
            if isinstance(event, ChildDone):
                child.accuracy = event
            else:
                child.latency = event
            while told in children and children[told].accuracy is not None and children[told].latency is not None:
                child = children.pop(told)
                sample = _finish(run_store, run_id, setup, child, asked, window, executor.name)
                told += 1
                samples.append(sample)
                assert child.accuracy is not None
                _save_weights(setup, sample.idx, child.accuracy.result, samples)
                new += 1
                if best is None or sample.reward > best.reward:
                    best = sample
                elapsed = time.time() - start
                bar.update(1)
                bar.set_postfix(best=f"{best.reward:.4f}", arch=best.arch_hash,
                                per_hour=f"{new / elapsed * 3600:.0f}" if elapsed > 0 else "-")
                if on_sample is not None:
                    on_sample(sample)
                if told < budget:
                    ask_ahead()
    finally:
        bar.close()
        lane.close()
    elapsed = time.time() - start
    if len(samples) >= budget:
        run_store.set_status(run_id, "done")
    return RunSummary(run_id, len(samples), new, best.reward if best else None, best.arch if best else None,
                      elapsed, new / elapsed * 3600 if elapsed > 0 else math.nan,
                      extra={"executor": executor.name, "window": window})


def _finish(run_store: RunStore, run_id: str, setup: SearchSetup, child: _Child, asked: list[tuple[int, list[int]]],
            window: int, executor_name: str) -> SampleRow:
    """Tell one child's reward, then store it with the checkpoint taken right after the tell."""
    assert child.accuracy is not None and child.latency is not None and child.latency.result is not None
    acc, lat = child.accuracy.result, child.latency.result
    reward = setup.reward(float(acc.accuracy), float(lat.latency_ms))
    head = asked.pop(0)
    if head[0] != child.idx:
        raise MnasError(f"search run {run_id!r}: telling sample {child.idx} but the oldest asked one is {head[0]}")
    updates = setup.searcher.tell([child.tokens], [reward]) or []
    update_stats = [u.to_dict() if hasattr(u, "to_dict") else dict(u) for u in updates]
    state: dict[str, Any] = {"searcher": setup.searcher.state_dict(),
                             "async": {"window": window, "in_flight": [[i, list(t)] for i, t in asked]}}
    if child.latency.state is not None:
        state["latency"] = child.latency.state
    where = child.accuracy.where
    sample = SampleRow(
        idx=child.idx, tokens=child.tokens, arch=str(child.arch), arch_hash=child.arch.hash, accuracy=float(acc.accuracy),
        accuracy_task=str(getattr(acc, "task_key", "")), latency_ms=float(lat.latency_ms), latency_source=lat.source,
        reward=float(reward), predicted_ms=lat.predicted_ms, measured_ms=lat.measured_ms,
        train_s=child.accuracy.seconds, latency_s=child.latency.seconds,
        extra={"executor": executor_name, "window": window, **({"host": where["host"]} if "host" in where else {})},
    )
    run_store.add_sample(run_id, sample, state_to_bytes(state), update_stats)
    return sample
