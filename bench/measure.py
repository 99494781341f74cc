"""Preparing a model for timing, and the one rule for reusing a stored measurement.

Every path that measures (`mnas bench`, table builds, calibration and evaluation networks,
the search's measured latency) asks the same two questions before it times anything:

1. *Which file is this?* An architecture is written to `.tflite` by a deterministic writer,
   so the file's sha256 names "this arch at this resolution" (`write_arch_model`).
2. *Has it been measured already?* A stored measurement stands in for a new one only when
   it was taken on the same device, runtime and version, under the same timing conditions,
   and nothing says it is untrustworthy: not throttled (the phone's core ran below its
   maximum clock) and not contended (another process shared the host's core;
   `bench.contention`). That rule is `reuse_blocker`, and `find_reusable` is the only store
   lookup that applies it; a flagged measurement stays stored (it is evidence of what
   happened) but is measured again.

See docs/architecture.md ("Measuring") for the whole path from an arch string to a stored
measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mnas.bench.files import sha256_file
from mnas.bench.types import BenchConfig, Device, DeviceProfile, Measurement
from mnas.errors import MnasError

if TYPE_CHECKING:
    from mnas.space.arch import Arch

__all__ = [
    "ModelWriter",
    "PreparedModel",
    "default_model_writer",
    "find_reusable",
    "is_reusable",
    "profile_devices",
    "reuse_blocker",
    "write_arch_model",
]


@dataclass(frozen=True)
class PreparedModel:
    """A `.tflite` on disk, ready to time: its path, the label the user knows it by, its sha256."""

    path: Path
    label: str
    sha256: str
    arch: str | None = None
    resolution: int | None = None


class ModelWriter(Protocol):
    """Writes `arch` as a `.tflite` at `path` (e.g. `space.tflite_writer.write_arch`)."""

    def __call__(self, arch: Arch, path: Path, *, resolution: int) -> object: ...


def default_model_writer(arch: Arch, path: Path, *, resolution: int) -> object:
    """The project's `.tflite` writer (imported late: it pulls in the flatbuffer schema)."""
    from mnas.space.tflite_writer import write_arch

    return write_arch(arch, path, resolution=resolution)


def write_arch_model(arch: Arch, resolution: int, path: Path, writer: ModelWriter = default_model_writer, *,
                     label: str | None = None, reuse_file: bool = False) -> PreparedModel:
    """Write `arch` at `resolution` to `path` (or keep the file there with `reuse_file`) and hash it."""
    if not (reuse_file and path.is_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(arch, path, resolution=resolution)
        if not path.is_file():
            raise MnasError(f"model writer: wrote no file at {str(path)!r} for {arch}: expected a .tflite there")
    return PreparedModel(path, label or f"arch-{arch.hash}", sha256_file(path), str(arch), resolution)


def reuse_blocker(throttled: Any, extra: Mapping[str, Any] | None) -> str | None:
    """Why a stored figure must be measured again ("throttled", "contended"), or None when it may be reused.

    Takes the flags rather than a `Measurement` so that table entries (which keep the same
    flags in their conditions) are judged by this same rule.
    """
    if throttled:
        return "throttled"
    if extra and extra.get("contended"):
        return "contended"
    return None


def is_reusable(m: Measurement) -> bool:
    """`reuse_blocker` for a whole measurement."""
    return reuse_blocker(m.throttled, m.extra) is None


def find_reusable(store: Any, profile: DeviceProfile, sha256: str, config: BenchConfig,
                  limit: int = 1) -> list[tuple[Measurement, int]]:
    """Up to `limit` stored measurements of this model on this device that may stand in for new ones.

    Same device, runtime, runtime version and timing conditions; newest first; flagged ones
    (`reuse_blocker`) are skipped.
    """
    found: list[tuple[Measurement, int]] = []
    stored = store.find_measurements(profile.device_id, sha256, profile.runtime, profile.runtime_version,
                                     config.conditions_key())
    for measurement_id, measurement in reversed(stored):
        if is_reusable(measurement):
            found.append((measurement, measurement_id))
            if len(found) >= limit:
                break
    return found


def profile_devices(devices: Sequence[Device]) -> list[DeviceProfile | MnasError]:
    """Every device's profile, asked in parallel so one slow phone does not hold up the others.

    A device that cannot be profiled gives its MnasError in its place (other errors propagate).
    """
    def one(device: Device) -> DeviceProfile | MnasError:
        try:
            return device.profile()
        except MnasError as exc:
            return exc

    if len(devices) <= 1:
        return [one(device) for device in devices]
    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="mnas-profile") as pool:
        return list(pool.map(one, devices))
