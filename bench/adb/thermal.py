"""A phone's temperatures and pinned-core frequency, and the bounded wait for it to cool down.

Thermal throttling is detected from the pinned core's frequency *cap* (`scaling_max_freq`,
what thermal mitigation lowers) rather than `scaling_cur_freq`, which drops as soon as the core
goes idle after the run; both are read here and recorded. A run is also flagged when its
hottest zone reads above the device config's `thermal.throttle_above_c` right after it
(`AdbDevice` applies both rules and records why in `extra.throttle_reasons`).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from mnas.bench.device_config import ThermalPolicy
from mnas.bench.sysfs import int_or_none

__all__ = ["ThermalReading", "parse_thermal_output", "thermal_command", "wait_until_cool"]

_SANE_TEMP_C = (-40.0, 150.0)  # readings outside are sensor sentinels, not temperatures


@dataclass
class ThermalReading:
    """Temperatures of every thermal zone and the pinned core's current frequency and cap."""

    temps_c: dict[str, float] = field(default_factory=dict)
    cur_freq_khz: int | None = None
    cap_khz: int | None = None

    @property
    def hottest_c(self) -> float | None:
        sane = [t for t in self.temps_c.values() if _SANE_TEMP_C[0] < t < _SANE_TEMP_C[1]]
        return max(sane) if sane else None


def thermal_command(core: int) -> str:
    """One shell command printing every thermal zone and the core's cur/max frequency."""
    cpufreq = f"/sys/devices/system/cpu/cpu{int(core)}/cpufreq"
    cur = shlex.quote(f"{cpufreq}/scaling_cur_freq")
    cap = shlex.quote(f"{cpufreq}/scaling_max_freq")
    return (
        "for z in /sys/class/thermal/thermal_zone*; do "
        'echo "__Z|${z##*/}|$(cat "$z/type" 2>/dev/null)|$(cat "$z/temp" 2>/dev/null)"; done; '
        f'echo "__F|$(cat {cur} 2>/dev/null)|$(cat {cap} 2>/dev/null)"'
    )


def parse_thermal_output(text: str) -> ThermalReading:
    """Parse `thermal_command` output; sysfs temperatures are millidegrees Celsius."""
    reading = ThermalReading()
    for line in text.splitlines():
        parts = line.strip().split("|")
        if parts[0] == "__Z" and len(parts) == 4:
            zone, kind = parts[1], parts[2].strip()
            millideg = int_or_none(parts[3])
            if millideg is None:
                continue  # unreadable zone (disabled sensor, permission)
            key = kind or zone
            if key in reading.temps_c:
                key = f"{key}@{zone}"
            reading.temps_c[key] = millideg / 1000.0
        elif parts[0] == "__F" and len(parts) == 3:
            reading.cur_freq_khz = int_or_none(parts[1])
            reading.cap_khz = int_or_none(parts[2])
    return reading


def wait_until_cool(read: Callable[[], ThermalReading], policy: ThermalPolicy, poll_s: float,
                    sleep: Callable[[float], None], clock: Callable[[], float]
                    ) -> tuple[ThermalReading, float, bool]:
    """Read until every sane zone is below the policy's threshold, for at most its timeout.

    A run started on a hot phone is throttled part-way through; waiting first makes the
    figure depend on the model, not on the previous one. Returns the last reading, the
    seconds waited and whether the wait timed out (the run then counts as throttled).
    """
    start = clock()
    reading = read()
    while True:
        waited = clock() - start
        hottest = reading.hottest_c
        if hottest is None or hottest < policy.cooldown_below_c:
            return reading, waited, False
        if waited >= policy.cooldown_timeout_s:
            return reading, waited, True
        sleep(max(0.0, min(poll_s, policy.cooldown_timeout_s - waited)))
        reading = read()
