"""The one place a `Measurement` is assembled, for the host and for phones alike.

Both devices time a model with a different tool (the LiteRT interpreter in a child process,
`benchmark_model` over adb) but must record the same conditions in the same fields, with the
same throttling rule, or figures from the two could not be compared. Each device gathers its
`Timings` and `Conditions`; `build_measurement` maps them onto the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas.bench.types import BenchConfig, LatencyStats, Measurement, OpProfileRow

__all__ = ["Conditions", "Timings", "build_measurement", "freq_below"]


@dataclass(frozen=True)
class Timings:
    """What the timing tool reported: the timed runs' statistics and the phases around them."""

    stats: LatencyStats
    runs_us: list[float] | None = None  # per-run latencies, when the tool gives them
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    peak_memory_mb: float | None = None
    op_profile: list[OpProfileRow] | None = None


@dataclass(frozen=True)
class Conditions:
    """The state a run was taken under: the pinned core, its frequencies, temperatures, duration."""

    core: int
    cpu_model: str
    max_freq_khz: int | None
    throttled: bool
    wall_s: float
    temps_before_c: dict[str, float] = field(default_factory=dict)
    temps_after_c: dict[str, float] = field(default_factory=dict)
    freq_before_khz: int | None = None
    freq_after_khz: int | None = None
    cores: tuple[int, ...] = ()  # every core of a multi-threaded run (empty: `core` alone)


def freq_below(freq_khz: int | None, max_freq_khz: int | None, ratio: float) -> bool:
    """The throttling rule: a known frequency under `ratio` of the core's known maximum."""
    return freq_khz is not None and bool(max_freq_khz) and freq_khz < ratio * max_freq_khz


def build_measurement(*, device_id: str, device_name: str, model_path: Path, model_sha256: str,
                      runtime: str, runtime_version: str, config: BenchConfig, timings: Timings,
                      conditions: Conditions, extra: dict[str, Any]) -> Measurement:
    """One `Measurement` from a device's identity, its tool's timings and the run's conditions."""
    return Measurement(
        device_id=device_id,
        device_name=device_name,
        model_sha256=model_sha256,
        model_path=str(model_path),
        runtime=runtime,
        runtime_version=runtime_version,
        config=config,
        stats=timings.stats,
        runs_us=timings.runs_us,
        init_us=timings.init_us,
        first_us=timings.first_us,
        warmup_avg_us=timings.warmup_avg_us,
        pinned_cores=conditions.cores or (conditions.core,),
        cpu_model=conditions.cpu_model,
        temps_before_c=conditions.temps_before_c,
        temps_after_c=conditions.temps_after_c,
        freq_before_khz=conditions.freq_before_khz,
        freq_after_khz=conditions.freq_after_khz,
        max_freq_khz=conditions.max_freq_khz,
        throttled=conditions.throttled,
        peak_memory_mb=timings.peak_memory_mb,
        op_profile=timings.op_profile,
        wall_s=conditions.wall_s,
        extra=extra,
    )
