"""The small interfaces the search loop talks to, and how their state is saved.

The search loop (`mnas.search.loop`) only ever sees a `Searcher` (ask for token sequences,
tell their rewards), a `LatencySource` (latencies of architectures) and an `Executor` (where
children train; it reports each one as a `ChildDone`). PPO, random search and regularized
evolution are all `Searcher`s; measured, predicted and hybrid latencies are all
`LatencySource`s; in-process threads and a Ray cluster are both `Executor`s; so one loop runs
every combination and cannot tell them apart. The executor interface lives here, not with the
executors, so that the loop and the executors both depend on it and not on each other.

Every searcher and latency source can save its complete state (RNG states included) as a
plain dict of Python values and tensors; `state_to_bytes`/`state_from_bytes` turn such a
dict into bytes for the database, so a killed search resumes with exactly the samples an
uninterrupted one would have drawn.
"""

from __future__ import annotations

import io
import math
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from mnas.errors import MnasError
from mnas.space.arch import Arch

__all__ = ["ChildDone", "Executor", "LatencyResult", "LatencySource", "Searcher", "Tokens", "check_ask",
           "check_tell", "state_from_bytes", "state_to_bytes"]

Tokens = list[int]


@runtime_checkable
class Searcher(Protocol):
    """Proposes token sequences and learns from their rewards (ask/tell)."""

    name: str

    def ask(self, n: int) -> list[Tokens]: ...

    def tell(self, tokens_list: Sequence[Sequence[int]], rewards: Sequence[float]) -> object:
        """Learn from rewards; the return value (e.g. PPO update stats) is informational."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LatencyResult:
    """The latency the search uses for one architecture, and where it came from.

    `source` is "measured:<device id>", "store:<device id>" (an earlier measurement reused),
    "cache:<device id>" (measured earlier by the same source object) or
    "predicted:<predictor id>". `predicted_ms`/`measured_ms` keep both figures when a
    hybrid source has both; `measurement_id` is the store row when there is one.
    """

    latency_ms: float
    source: str
    predicted_ms: float | None = None
    measured_ms: float | None = None
    device_id: str | None = None
    model_sha256: str | None = None
    measurement_id: int | None = None


@runtime_checkable
class LatencySource(Protocol):
    """Latencies of architectures, measured, predicted or both."""

    name: str  # "measured", "predicted" or "hybrid"

    def latency_ms(self, archs: Sequence[Arch]) -> list[LatencyResult]: ...


@dataclass
class ChildDone:
    """One finished (or finally failed) child training, as an executor reports it to the loop."""

    idx: int
    result: Any = None  # AccuracyResult (with .model when the model was asked for)
    error: BaseException | None = None
    seconds: float = 0.0
    where: dict[str, Any] = field(default_factory=dict)  # provenance: executor, host, pid


class Executor(Protocol):
    """Trains children somewhere and supplies the measurement devices (see `mnas.search.executors`).

    `start` gets the accuracy source (or, with `factory`, how to build one where the child
    trains) and the queue on which each submitted child comes back as a `ChildDone`.
    """

    name: str

    def start(self, accuracy: Any, events: queue.Queue, *, factory: Callable[[], Any] | None = None,
              wants_model: bool = False) -> None: ...

    def submit(self, idx: int, arch: Arch) -> None: ...

    def slots(self) -> int: ...

    def devices(self, spec: str, **select_options: Any) -> list[Any]: ...

    def close(self) -> None: ...


def check_tell(tokens_list: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
    """One-line error when `tell` gets mismatched or non-finite inputs."""
    if len(tokens_list) != len(rewards):
        raise MnasError(f"tell: {len(tokens_list)} token sequences but {len(rewards)} rewards: expected one reward each")
    for i, value in enumerate(rewards):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MnasError(f"tell: reward[{i}] = {value!r}: expected a number") from None
        if not math.isfinite(number):
            raise MnasError(f"tell: reward[{i}] = {value!r}: expected a finite number")


def check_ask(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise MnasError(f"ask: n = {n!r}: expected an integer >= 1")


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a searcher/trainer state dict (tensors, numbers, strings, lists, dicts)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    """Inverse of `state_to_bytes`; loads with torch's safe (weights-only) unpickler."""
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad checkpoint
        raise MnasError(f"checkpoint: cannot be read ({type(exc).__name__}: {exc}): expected bytes from state_to_bytes") from None
    if not isinstance(state, dict):
        raise MnasError(f"checkpoint: holds a {type(state).__name__}: expected a state dict")
    return state
