"""CPU topology rules shared by the host device, device configs and `mnas devices probe`.

One rule decides which core a benchmark is pinned to everywhere: the core with the highest
`cpuinfo_max_freq`; among equals the highest core id (on Linux hosts and on Android phones
the low core ids take most interrupts and housekeeping work, so the last of the fastest
cores is the quietest).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["clusters_by_frequency", "core_mask", "cores_mask", "fastest_core", "fastest_cores", "parse_cpu_list"]

_CPU_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_cpu_list(text: str) -> list[int]:
    """The kernel's CPU list syntax (`0-3,5,7-8`, as in /sys/devices/system/cpu/online) as sorted ids.

    Strict on purpose: a list read wrongly would pin a benchmark to a core that does not exist
    or is offline, so anything but ids and ascending ranges is a ValueError naming the text
    (callers add which file or phone it came from).
    """
    cores: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        match = _CPU_RANGE.fullmatch(part)
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, -1)
        if high < low:  # not a number or range, or a descending range
            raise ValueError(f"CPU list {text.strip()!r}: expected core ids and ascending ranges "
                             "such as '0-3,6'")
        cores.update(range(low, high + 1))
    return sorted(cores)


def fastest_core(max_freq_khz: Mapping[int, int | None]) -> int:
    """The core to pin to: highest max frequency, ties to the highest id.

    Cores whose frequency is unknown (None) rank below every known one; when none is known
    the highest core id is chosen (the documented fixed choice).
    """
    if not max_freq_khz:
        raise ValueError("no cores given")
    return max(max_freq_khz, key=lambda core: (max_freq_khz[core] or -1, core))


def fastest_cores(max_freq_khz: Mapping[int, int | None], count: int, first: int | None = None) -> list[int]:
    """`count` cores for `count` threads: `first` (default: `fastest_core`), then the next fastest.

    The mask of a multi-threaded run grows from the pinned core through the fastest other
    cores (highest max frequency first, ties to the highest id, as `fastest_core` ranks them),
    so 2 threads on a Pixel 4 get the prime core and one A76. Sorted ascending. More threads
    than cores is a ValueError naming both counts (callers add which device).
    """
    if count < 1:
        raise ValueError(f"expected at least 1 core, got {count}")
    if count > len(max_freq_khz):
        listed = ",".join(str(core) for core in sorted(max_freq_khz))
        raise ValueError(f"{count} threads need {count} cores, but only {len(max_freq_khz)} are available ({listed})")
    start = fastest_core(max_freq_khz) if first is None else first
    others = sorted((core for core in max_freq_khz if core != start),
                    key=lambda core: (max_freq_khz[core] or -1, core), reverse=True)
    return sorted([start, *others[:count - 1]])


def clusters_by_frequency(max_freq_khz: Mapping[int, int]) -> list[tuple[list[int], int]]:
    """Group cores into clusters of equal max frequency, slowest cluster first."""
    groups: dict[int, list[int]] = {}
    for core in sorted(max_freq_khz):
        groups.setdefault(max_freq_khz[core], []).append(core)
    return [(cores, freq) for freq, cores in sorted(groups.items(), key=lambda kv: (kv[0], kv[1][0]))]


def core_mask(core: int) -> str:
    """The hexadecimal taskset mask that selects exactly one core (e.g. 7 -> '80')."""
    if core < 0:
        raise ValueError(f"core id must be >= 0, got {core}")
    return format(1 << core, "x")


def cores_mask(cores: Iterable[int]) -> str:
    """The hexadecimal taskset mask that selects exactly `cores` (e.g. [6, 7] -> 'c0')."""
    mask = 0
    for core in cores:
        mask |= int(core_mask(core), 16)
    if not mask:
        raise ValueError("no cores given")
    return format(mask, "x")
