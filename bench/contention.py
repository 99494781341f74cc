"""A guard against timing on a CPU core that other processes are using at the same time.

The host is shared: when other processes run on the benchmark's pinned core, the scheduler
time-slices them, and every run longer than a scheduler slice (about a millisecond or two)
is stretched by the others' turns — whole networks by 2x and more, while sub-millisecond
layers mostly slip between the slices. No statistic of wall-clock runs undoes that. What
can be seen is *that* it happened: the host device times each model in a child process,
so the child's CPU time (`getrusage(RUSAGE_CHILDREN)` around the call) over the call's
wall time is the share of the core it actually got — about 1.0 on a quiet core, 0.4 on
this 2-core machine with 7 runnable processes. A measurement of a model slower than
`short_ms` whose child got less than `min_cpu_share` is taken again after a pause, up to
`tries` times; the one with the lowest latency is kept, and every measurement records its
share (`extra["child_cpu_share"]`, `extra["contended"]`), so figures taken under contention
can be counted and reported instead of silently trusted.

Phones (adb) run nothing else on their pinned core and spawn no host child: they pass
through unchanged.
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnas.bench.types import BenchConfig, Device, Measurement, latency_ms
from mnas.errors import MnasError

_CHILDREN_LOCK = threading.Lock()  # RUSAGE_CHILDREN is per process: one guarded host call at a time


@dataclass(frozen=True)
class ContentionGuard:
    """Re-measure host models that did not get the core to themselves (see the module docstring)."""

    min_cpu_share: float = 0.85
    tries: int = 3
    pause_s: float = 2.0
    short_ms: float = 1.0  # models faster than this fit in a scheduler slice: never re-measured

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_cpu_share <= 1.0:
            raise MnasError(f"min_cpu_share = {self.min_cpu_share}: expected a share in [0, 1]")
        if self.tries < 1:
            raise MnasError(f"tries = {self.tries}: expected at least 1 measurement")

    def benchmark(self, device: Device, path: Path, config: BenchConfig, statistic: str = "median",
                  sleep: Any = time.sleep) -> Measurement:
        """`device.benchmark`, retried while a host measurement was contended; the best is returned."""
        if getattr(device, "kind", None) != "host":
            return device.benchmark(path, config)
        best: Measurement | None = None
        for attempt in range(1, self.tries + 1):
            measurement = self._timed(device, path, config)
            measurement.extra["attempt"] = attempt
            if best is None or latency_ms(measurement, statistic) < latency_ms(best, statistic):
                best = measurement
            if not measurement.extra["contended"]:
                return measurement
            if latency_ms(measurement, statistic) < self.short_ms:
                return best
            if attempt < self.tries:
                sleep(self.pause_s)
        assert best is not None
        return best

    def _timed(self, device: Device, path: Path, config: BenchConfig) -> Measurement:
        with _CHILDREN_LOCK:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            measurement = device.benchmark(path, config)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        share = cpu / wall if wall > 0 else 1.0
        measurement.extra["child_cpu_share"] = share
        measurement.extra["contended"] = share < self.min_cpu_share
        return measurement


NETWORK_GUARD = ContentionGuard()  # whole networks: up to 3 tries
LAYER_GUARD = ContentionGuard(tries=2)  # table layers: one retry (most layers fit in a slice anyway)


def contended_share(measurements: list[Measurement]) -> float | None:
    """Share of host measurements flagged as contended (None when none carries the flag)."""
    flags = [m.extra.get("contended") for m in measurements if "contended" in m.extra]
    return None if not flags else sum(bool(f) for f in flags) / len(flags)


NOISY_CV = 0.05  # a coefficient of variation above this: the runs disagree too much to trust one figure

FLAG_HINTS = {
    "contended": "contended = other processes shared the pinned core (the guard's cpu_share below the minimum): "
                 "the figure is inflated",
    "throttled": "throttled = the clock dropped below its maximum during the run",
    "noisy": f"noisy = the runs' CV exceeds {NOISY_CV}: the spread is too wide to trust one figure",
}


def figure_flags(measurement: Measurement, noisy_cv: float = NOISY_CV) -> list[str]:
    """Why a shown figure should not be trusted at a glance: "contended", "throttled", "noisy" (in that order).

    The same verdict wherever a figure is shown (`mnas bench` text and JSON), so a user never has
    to compare a CV or a CPU share against a threshold by hand. Contended comes from the guard
    (`extra["contended"]`, host only); throttled from the device's clock; noisy from the runs' CV.
    """
    flags = []
    if measurement.extra.get("contended"):
        flags.append("contended")
    if measurement.throttled:
        flags.append("throttled")
    cv = measurement.stats.cv
    if cv is not None and cv > noisy_cv:
        flags.append("noisy")
    return flags


def flags_hint(flags: set[str] | list[str]) -> str | None:
    """One line explaining the flags that were shown (None when none was), with what to do about them."""
    shown = [name for name in FLAG_HINTS if name in set(flags)]
    if not shown:
        return None
    return "note: " + "; ".join(FLAG_HINTS[name] for name in shown) + ". Re-run on a quiet machine (--force) before " \
        "trusting these figures."
