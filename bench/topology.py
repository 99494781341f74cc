"""CPU topology rules shared by the host device, device configs and `mnas devices probe`.

One rule decides which core a benchmark is pinned to everywhere: the core with the highest
`cpuinfo_max_freq`; among equals the highest core id (on Linux hosts and on Android phones
the low core ids take most interrupts and housekeeping work, so the last of the fastest
cores is the quietest).
"""

from __future__ import annotations

from collections.abc import Mapping


def fastest_core(max_freq_khz: Mapping[int, int | None]) -> int:
    """The core to pin to: highest max frequency, ties to the highest id.

    Cores whose frequency is unknown (None) rank below every known one; when none is known
    the highest core id is chosen (the documented fixed choice).
    """
    if not max_freq_khz:
        raise ValueError("no cores given")
    return max(max_freq_khz, key=lambda core: (max_freq_khz[core] or -1, core))


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
