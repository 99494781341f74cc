"""The search loop: the controller keeps proposing while children train (the paper's work queue).

This is the one loop every search runs through: `mnas search`, the tests and the benchmarks.
MnasNet trained children on many workers at once while the controller sampled more and PPO
learned from finished samples in minibatches. `run_search` does that on any executor
(`mnas.search.executors`; by default one in-process worker) and stays reproducible: the stored results depend on the seed and
the pipeline `window` W only, never on the executor, the number of workers or the order in
which children happen to finish.

The schedule is fixed. Sample i is asked for only once samples 0 .. i-W have been told, and
samples are told (and stored) in index order, never completion order. So the searcher sees
one fixed sequence of calls: ask 0 .. W-1, then tell 0, ask W, tell 1, ask W+1, ...; W = 1
is the plain sequential search (ask one, score it, tell it). PPO keeps each asked sample's log-probability under
the policy that drew it and updates on every 20 told samples (`PPOSearcher`), so samples
drawn from a policy up to W samples old are corrected by PPO's ratio, as in the paper.

Latencies are computed by one "latency lane" thread in index order, one child per call, as
soon as a child is submitted (`mnas.search.latency_lane`): the latency source sees the same
calls as in a sequential search (a hybrid source's random choices included) while
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
An interrupt (Ctrl-C) raised while scoring a child propagates as itself: it is not a failure
of the child, and everything told before it is stored.
"""

from __future__ import annotations

import inspect
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mnas.errors import MeasurementError, MnasError
from mnas.search.executors import LocalExecutor
from mnas.search.latency_lane import LatencyDone, LatencyLane
from mnas.search.run_config import check_budget, check_window
from mnas.search.run_store import SampleRow, SampleStore
from mnas.search.runs import RunProgress, RunSummary, SearchSetup
from mnas.search.types import ChildDone, Executor
from mnas.space.arch import Arch

__all__ = ["run_search"]


@dataclass
class _Child:
    idx: int
    tokens: list[int]
    arch: Arch
    accuracy: ChildDone | None = None
    latency: LatencyDone | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _restore(setup: SearchSetup, state: dict[str, Any], next_idx: int, run_id: str) -> list[tuple[int, list[int]]]:
    setup.searcher.load_state_dict(state["searcher"])
    if state.get("latency") is not None and hasattr(setup.latency, "load_state_dict"):
        setup.latency.load_state_dict(state["latency"])
    in_flight = [(int(i), [int(t) for t in tokens]) for i, tokens in state.get("async", {}).get("in_flight", [])]
    expected = list(range(next_idx, next_idx + len(in_flight)))
    if [i for i, _ in in_flight] != expected:
        raise MnasError(f"search run {run_id!r}: checkpoint lists in-flight samples {[i for i, _ in in_flight]}: "
                        f"expected {expected}; the store is inconsistent")
    return in_flight


def _raise_failure(event: ChildDone | LatencyDone) -> None:
    """Stop the run on a child that could not be scored, in one line (Ray appends whole tracebacks)."""
    assert event.error is not None
    if isinstance(event.error, MnasError | KeyboardInterrupt):
        raise event.error
    kind = "training" if isinstance(event, ChildDone) else "latency"
    first_line = (str(event.error).strip().splitlines() or [""])[0]
    raise MeasurementError(f"child {event.idx}: {kind} failed ({type(event.error).__name__}: {first_line}); "
                           "every finished child is stored: resume the run") from event.error


def run_search(run_store: SampleStore, run_id: str, setup: SearchSetup, budget: int,
               executor: Executor | None = None, *, window: int = 1, accuracy_factory: Callable[[], Any] | None = None,
               progress: bool = True, on_sample: Callable[[SampleRow], None] | None = None, latency_retries: int = 2,
               poll_s: float = 0.5) -> RunSummary:
    """Run (or resume) `run_id` until it holds `budget` samples, training children on `executor`.

    `window` W: how many samples may be asked ahead of the last told one (see the module
    docstring); the same seed and W give the same stored samples on every executor.
    `executor`: default one in-process worker, started and closed here; a given executor is
    started here and closed by the caller. `accuracy_factory` (Ray): builds the accuracy
    source on each worker instead of shipping `setup.accuracy`.
    """
    if executor is None:
        local = LocalExecutor(1)
        try:
            return run_search(run_store, run_id, setup, budget, local, window=window, accuracy_factory=accuracy_factory,
                              progress=progress, on_sample=on_sample, latency_retries=latency_retries, poll_s=poll_s)
        finally:
            local.close()
    check_budget(budget)
    check_window(window)
    checkpoint = run_store.checkpoint(run_id)
    told = 0
    in_flight: list[tuple[int, list[int]]] = []
    if checkpoint is not None:
        told, state = checkpoint
        in_flight = _restore(setup, state, told, run_id)
    samples = run_store.samples(run_id)
    if len(samples) != told:
        raise MnasError(f"search run {run_id!r}: {len(samples)} stored samples but checkpoint at {told}: store is inconsistent")
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

    tally = RunProgress(run_id, setup, samples, budget, progress=progress, on_sample=on_sample)
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
                _raise_failure(event)
            child = children[event.idx]
            if isinstance(event, ChildDone):
                child.accuracy = event
            else:
                child.latency = event
            while told in children and children[told].accuracy is not None and children[told].latency is not None:
                child = children.pop(told)
                sample = _finish(run_store, run_id, setup, child, asked, window, executor.name)
                told += 1
                assert child.accuracy is not None
                tally.stored(sample, child.accuracy.result)
                if told < budget:
                    ask_ahead()
    finally:
        tally.close()
        lane.close()
    if len(tally.samples) >= budget:
        run_store.set_status(run_id, "done")
    return tally.summary({"executor": executor.name, "window": window})


def _finish(run_store: SampleStore, run_id: str, setup: SearchSetup, child: _Child, asked: list[tuple[int, list[int]]],
            window: int, executor_name: str) -> SampleRow:
    """Tell one child's reward, then store it with the checkpoint taken right after the tell."""
    assert child.accuracy is not None and child.latency is not None and child.latency.result is not None
    acc, lat = child.accuracy.result, child.latency.result
    reward = setup.reward(float(acc.accuracy), float(lat.latency_ms))
    head = asked.pop(0)
    if head[0] != child.idx:
        raise MnasError(f"search run {run_id!r}: telling sample {child.idx} but the oldest asked one is {head[0]}")
    updates = setup.searcher.tell([child.tokens], [reward]) or []  # PPO: the updates this tell ran
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
    run_store.add_sample(run_id, sample, state, update_stats)
    return sample
