"""Delegates as benchmark_model flags, and telling from a run's log whether the delegate ran.

A delegate that cannot take a model does not stop benchmark_model: it logs one line and
the graph runs on the CPU kernels, so the latency printed is a CPU latency. Stored under
the delegate's conditions it would be reused as a GPU (or NNAPI) figure forever. So every
run that asked for a delegate is checked against its own log (`delegate_fallback`), and one
that fell back raises `DelegateFallback`: reported with its figures, never stored as a
delegate result.

What benchmark_model logs (benchmark_tflite_model.cc): "Explicitly applied X delegate, and
the model graph will be completely / partially executed by the delegate" when X took nodes,
"Though X delegate is explicitly applied, the model graph will not be executed by the
delegate." when it took none, "Failed to apply X delegate." (the run then fails), and for a
delegate the build or platform lacks, a line such as "GPU acceleration is unsupported on
this platform." and no "applied" line at all. Builds before TF 2.3 said "Applied X delegate.".
"""

from __future__ import annotations

import re

from mnas.bench.types import BenchConfig, Measurement
from mnas.errors import MeasurementError

__all__ = ["DelegateFallback", "benchmark_flags", "delegate_fallback", "delegate_name", "delegated_kernels"]

_FLAGS: dict[str, tuple[str, ...]] = {
    "default": (),  # the runtime's own choice: no flag (today's behaviour, and its reuse key)
    "none": ("--use_xnnpack=false",),  # plain CPU kernels: benchmark_model then skips its default XNNPACK
    "xnnpack": ("--use_xnnpack=true",),
    "gpu": ("--use_gpu=true",),
    "nnapi": ("--use_nnapi=true",),
}
_NAMES = {"xnnpack": "XNNPACK", "gpu": "GPU", "nnapi": "NNAPI"}
_LEVEL = re.compile(r"^(?:INFO|WARN(?:ING)?|ERROR|VERBOSE): ")  # TFLITE_LOG's prefix, dropped from quoted lines
_FALLBACK_HINT = re.compile(r"fall(?:ing|s)? ?back|unsupported on this platform|failed to (?:create|apply)|"
                            r"not (?:available|supported)", re.IGNORECASE)


class DelegateFallback(MeasurementError):
    """The run asked for a delegate, but its log says the graph ran on the CPU instead.

    `measurement` holds the figures the run did produce (a CPU latency, flagged in
    `extra["delegate_fallback"]`), so a caller can show them; no caller stores them.
    """

    def __init__(self, message: str, measurement: Measurement | None = None) -> None:
        super().__init__(message)
        self.measurement = measurement


def benchmark_flags(config: BenchConfig) -> list[str]:
    """benchmark_model's flags for the config's delegate, then its `bm_args`, in order."""
    return [*_FLAGS[config.delegate], *(f"--{flag}={value}" for flag, value in config.bm_args)]


def delegate_name(delegate: str) -> str | None:
    """The delegate's name as benchmark_model logs it (None for default and none: no delegate asked)."""
    return _NAMES.get(delegate)


def _applied(name: str, line: str) -> bool:
    return re.search(rf"\b(?:Explicitly )?[Aa]pplied {name} delegate", line) is not None and "Though" not in line


def delegate_fallback(delegate: str, log: str) -> str | None:
    """Why a run that asked for `delegate` did not run on it (a line of its log), or None when it did.

    None too when no delegate was asked for ("default", "none").
    """
    name = delegate_name(delegate)
    if name is None:
        return None
    lines = [_LEVEL.sub("", line.strip()) for line in log.splitlines() if line.strip()]
    for line in lines:
        if re.search(rf"Though {name} delegate is explicitly applied", line):
            return line
    if any(_applied(name, line) for line in lines):
        return None
    hint = next((line for line in lines if name.lower() in line.lower() and _FALLBACK_HINT.search(line)), None)
    hint = hint or next((line for line in lines if _FALLBACK_HINT.search(line)), None)
    return hint or f"the log has no line saying the {name} delegate was applied"


def delegated_kernels(delegate: str, log: str) -> int | None:
    """How many delegate kernels benchmark_model reported for a partial delegation (None: not said)."""
    name = delegate_name(delegate)
    if name is None:
        return None
    match = re.search(rf"Explicitly applied {name} delegate, and the model graph will be partially executed "
                      r"by the delegate w/ (\d+) delegate kernels", log)
    if match:
        return int(match.group(1))
    if re.search(rf"Explicitly applied {name} delegate, and the model graph will be completely", log):
        return 1
    return None
