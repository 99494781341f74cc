"""Core types shared by every device, the harness and the store.

A `Measurement` carries the figures *and* the conditions they were taken under (device,
runtime and version, threads, pinned core, warm-up/run counts, temperatures, frequencies),
because a latency without its conditions cannot be compared with another one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mnas.errors import MnasError

# How a model is executed, as benchmark_model users say it. "default" is what the runtime does
# unasked (no delegate flag: LiteRT and recent benchmark_model builds apply XNNPACK to float
# models by themselves), so every figure stored before delegates were an option keeps its
# meaning and its reuse key; "none" is the plain CPU kernels (XNNPACK off).
DELEGATES: tuple[str, ...] = ("default", "none", "xnnpack", "gpu", "nnapi")

# benchmark_model flags that mnas sets itself from BenchConfig: `--bm-arg` may not set them
# behind the config's back (the stored conditions would then lie)
OWN_BM_FLAGS: frozenset[str] = frozenset({
    "graph", "num_threads", "warmup_runs", "num_runs", "min_secs", "enable_op_profiling",
    "use_xnnpack", "use_gpu", "use_nnapi",
})
_BM_FLAG_NAME = re.compile(r"[a-z_]+")


def parse_bm_args(items: Iterable[str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """`FLAG=VALUE` texts (or pairs) as validated (flag, value) pairs, in the order given.

    A flag is benchmark_model's name without dashes (`[a-z_]+`), given once, and not one
    that mnas sets from its own options (`OWN_BM_FLAGS`); the value is any text on one line.
    Values reach the phone's shell through `shlex.quote`, so no character needs refusing.
    """
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            flag, sep, value = item.partition("=")
            if not sep:
                raise MnasError(f"--bm-arg {item!r}: expected FLAG=VALUE (e.g. use_caching=true)")
        else:
            flag, value = (str(part) for part in item)
        flag = flag.strip().removeprefix("--")
        if not _BM_FLAG_NAME.fullmatch(flag):
            raise MnasError(f"--bm-arg {flag}={value}: flag name {flag!r}: expected lowercase letters and "
                            "underscores (a benchmark_model flag such as use_caching)")
        if flag in OWN_BM_FLAGS:
            raise MnasError(f"--bm-arg {flag}={value}: mnas sets --{flag} itself: expected --threads, --delegate, "
                            "--runs, --warmup, --min-secs or --profile-ops instead")
        if any(flag == seen for seen, _ in pairs):
            raise MnasError(f"--bm-arg {flag}: given twice: expected each flag once")
        if not value or "\n" in value or "\x00" in value:
            raise MnasError(f"--bm-arg {flag}={value!r}: expected a non-empty value on one line")
        pairs.append((flag, value))
    return tuple(pairs)


@dataclass(frozen=True)
class BenchConfig:
    """How to time one model; mirrors benchmark_model's flags of the same names.

    `num_threads` threads run on as many cores (the pinned core and the next fastest ones);
    `delegate` is one of `DELEGATES`; `bm_args` are further benchmark_model flags (phones only).
    """

    warmup_runs: int = 5
    num_runs: int = 50
    min_secs: float = 1.0
    num_threads: int = 1
    profile_ops: bool = False
    core: int | None = None  # None: the device's fastest (or configured) big core
    timeout_s: float = 600.0  # hard bound on one benchmark call
    delegate: str = "default"
    bm_args: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        """Refuse impossible settings here, once, so every device and command can trust a config."""
        if self.num_runs < 1 or self.warmup_runs < 0 or self.num_threads < 1 or self.min_secs < 0:
            raise MnasError(
                f"invalid benchmark settings: num_runs={self.num_runs} warmup_runs={self.warmup_runs} "
                f"num_threads={self.num_threads} min_secs={self.min_secs:g}: "
                "expected num_runs >= 1, warmup_runs >= 0, num_threads >= 1, min_secs >= 0"
            )
        if self.delegate not in DELEGATES:
            raise MnasError(f"delegate {self.delegate!r}: expected one of {', '.join(DELEGATES)}")
        # stored configs come back from JSON with lists: normalise, and validate either way
        object.__setattr__(self, "bm_args", parse_bm_args(self.bm_args))

    def conditions_key(self) -> str:
        """Stable text of the timing conditions, used to decide whether a stored result can be reused.

        The delegate, extra benchmark_model flags and op profiling are appended only when set, so
        the key of the default conditions (and of every measurement stored before they existed) is
        unchanged. Op profiling is in the key because the profiler's per-op bookkeeping runs inside
        the timed loop: a profiled figure is slower and may not stand in for an unprofiled one.
        """
        key = (
            f"threads={self.num_threads};warmup={self.warmup_runs};runs={self.num_runs};"
            f"min_secs={self.min_secs:g};core={'auto' if self.core is None else self.core}"
        )
        if self.delegate != "default":
            key += f";delegate={self.delegate}"
        if self.bm_args:
            key += ";bm_args=" + ",".join(f"{flag}={value}" for flag, value in sorted(self.bm_args))
        if self.profile_ops:
            key += ";profile_ops=1"
        return key

    def execution(self) -> dict[str, Any]:
        """Threads, delegate and extra flags as JSON-native values (for `--json` and reports)."""
        return {"threads": self.num_threads, "delegate": self.delegate,
                "bm_args": {flag: value for flag, value in self.bm_args}}


@dataclass
class LatencyStats:
    """Aggregates of per-run latencies in microseconds (benchmark_model's unit)."""

    count: int
    mean_us: float
    std_us: float
    min_us: float
    max_us: float
    median_us: float | None = None
    p90_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean)."""
        return self.std_us / self.mean_us if self.mean_us else math.nan

    @classmethod
    def from_runs(cls, runs_us: list[float] | np.ndarray) -> LatencyStats:
        arr = np.asarray(runs_us, dtype=np.float64)
        if arr.size == 0:
            raise ValueError("no runs to summarise")
        return cls(
            count=int(arr.size),
            mean_us=float(arr.mean()),
            std_us=float(arr.std()),
            min_us=float(arr.min()),
            max_us=float(arr.max()),
            median_us=float(np.median(arr)),
            p90_us=float(np.percentile(arr, 90)),
            p5_us=float(np.percentile(arr, 5)),
            p95_us=float(np.percentile(arr, 95)),
        )


@dataclass
class OpProfileRow:
    """One row of benchmark_model's op-profiling table (times in ms, as printed)."""

    node_type: str
    start_ms: float
    first_ms: float
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int
    name: str


@dataclass
class Measurement:
    """One benchmark of one model on one device, with every condition needed to trust it."""

    device_id: str  # "host" or a phone serial
    device_name: str  # device config name (e.g. "pixel4") or "host"
    model_sha256: str
    model_path: str
    runtime: str  # "ai-edge-litert", "tflite-runtime" or "benchmark_model"
    runtime_version: str
    config: BenchConfig
    stats: LatencyStats
    runs_us: list[float] | None = None  # per-run latencies when the runner gives them
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    pinned_cores: tuple[int, ...] = ()
    cpu_model: str = ""
    temps_before_c: dict[str, float] = field(default_factory=dict)
    temps_after_c: dict[str, float] = field(default_factory=dict)
    freq_before_khz: int | None = None
    freq_after_khz: int | None = None
    max_freq_khz: int | None = None
    throttled: bool = False
    peak_memory_mb: float | None = None
    op_profile: list[OpProfileRow] | None = None
    wall_s: float | None = None
    timestamp: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float | None:
        """Median latency in ms: the tool's own median, else the median of the per-run latencies.

        None when neither is known (benchmark_model builds before ~2.4 print only the mean):
        a mean is never passed off as a median; `latency_ms(m, "median")` says so in one line.
        """
        if self.stats.median_us is not None:
            return self.stats.median_us / 1000.0
        if self.runs_us:
            return float(np.median(self.runs_us)) / 1000.0
        return None

    @property
    def mean_ms(self) -> float:
        return self.stats.mean_us / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        data = dict(data)
        data["config"] = BenchConfig(**data["config"])
        data["stats"] = LatencyStats(**data["stats"])
        data["pinned_cores"] = tuple(data.get("pinned_cores") or ())
        if data.get("op_profile") is not None:
            data["op_profile"] = [OpProfileRow(**row) for row in data["op_profile"]]
        return cls(**data)


@dataclass(frozen=True)
class DeviceProfile:
    """What a device is: identity, CPU, the core timings are pinned to, and the runtime."""

    device_id: str
    device_name: str
    kind: str  # "host" or "adb"
    model: str  # ro.product.model, or the host's CPU model
    cpu_model: str
    pinned_core: int
    max_freq_khz: int | None
    runtime: str
    runtime_version: str
    state: str = "online"
    android_build: str | None = None  # phones: ro.build.fingerprint (the exported figures name their build)


@runtime_checkable
class Device(Protocol):
    """Anything that can time a `.tflite` file."""

    device_id: str

    def profile(self) -> DeviceProfile: ...

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement: ...


# Which per-run statistic stands for "the" latency of a model. The median is the standard on a
# dedicated pinned core (phones). On a shared, time-sliced CPU (the host) a run that gets
# preempted is stretched by the other process's slice, and the longer the model the more of its
# runs are: medians of whole networks rose up to 2.3x while single layers stayed put. The
# minimum is the run nobody interrupted, so it measures the model, not the neighbours.
STATISTICS: tuple[str, ...] = ("median", "min")


def check_statistic(statistic: str) -> str:
    """`statistic` itself when it is one of `STATISTICS`, else a one-line MnasError."""
    if statistic not in STATISTICS:
        raise MnasError(f"latency statistic {statistic!r}: expected one of {list(STATISTICS)}")
    return statistic


def headline_statistic(device_name: str) -> str:
    """Which per-run statistic stands for a device's latency: `min` on the host, `median` on phones.

    The host is a shared, time-sliced CPU: runs longer than a scheduler slice get stretched by
    other processes' turns, which moves the median of a whole network far more than that of
    a short layer; the minimum is what the model costs when it has the core. A phone pinned
    to a quiet big core reports the median, as benchmark_model users expect. Tables,
    predictors and measured search latencies all use this one rule, so measured and
    predicted latency stay interchangeable (docs/architecture.md, "Statistics").
    """
    return "min" if device_name == "host" else "median"


def latency_ms(m: Measurement, statistic: str | None = None) -> float:
    """The one answer to "how fast was this measurement", in ms.

    `statistic` is "median" or "min" over the timed runs; None means the headline statistic
    of the measurement's device (`headline_statistic`).
    """
    statistic = check_statistic(statistic or headline_statistic(m.device_name))
    if statistic == "min":
        return m.stats.min_us / 1000.0
    if m.median_ms is None:
        raise MnasError(f"measurement of {m.model_path} on {m.device_id}: no median (the tool printed only its "
                        f"mean, {m.mean_ms:.3f} ms): expected a benchmark_model that prints the median, or the "
                        "statistic 'min'")
    return m.median_ms
