"""Read this host's CPU model, core frequencies and temperatures from /proc and /sys.

Every reader takes the file-system root as a parameter (default "/") so tests point it at a
fake tree. Many machines (VMs, containers) have no cpufreq or thermal files: a missing or
unreadable file gives None or an empty dict, never an exception, because these figures are
context recorded next to a measurement, not the measurement itself.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

from mnas.bench.topology import parse_cpu_list

__all__ = ["HostSysfs", "int_or_none"]

_CPU_DIR = Path("sys/devices/system/cpu")
_THERMAL_DIR = Path("sys/class/thermal")
# /proc/cpuinfo keys that name the CPU, in order of preference (x86, then ARM variants)
_MODEL_KEYS = ("model name", "Hardware", "Processor", "cpu model")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def int_or_none(text: str | None) -> int | None:
    """One integer sysfs value (a frequency, a temperature), or None when absent or not a number.

    The phone's sysfs values arrive through adb as text and are read with this same rule.
    """
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    return int_or_none(_read_text(path))


class HostSysfs:
    """Readers for one file-system root (the real host by default)."""

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def cpu_model(self) -> str:
        """The CPU's name from /proc/cpuinfo; platform.processor() when it has none."""
        text = _read_text(self.root / "proc" / "cpuinfo")
        if text:
            fields: dict[str, str] = {}
            for line in text.splitlines():
                key, sep, value = line.partition(":")
                if sep and value.strip():
                    fields.setdefault(key.strip(), value.strip())
            for key in _MODEL_KEYS:
                if key in fields:
                    return fields[key]
        return platform.processor() or platform.machine()

    def online_cores(self) -> list[int] | None:
        """Core ids the kernel reports online, or None when the file is missing or malformed."""
        text = _read_text(self.root / _CPU_DIR / "online")
        if text is None:
            return None
        try:
            return parse_cpu_list(text)
        except ValueError:
            return None

    def _cpufreq(self, core: int, name: str) -> int | None:
        return _read_int(self.root / _CPU_DIR / f"cpu{core}" / "cpufreq" / name)

    def max_freq_khz(self, core: int) -> int | None:
        """cpuinfo_max_freq of one core in kHz (None without cpufreq)."""
        return self._cpufreq(core, "cpuinfo_max_freq")

    def cur_freq_khz(self, core: int) -> int | None:
        """scaling_cur_freq of one core in kHz (None without cpufreq)."""
        return self._cpufreq(core, "scaling_cur_freq")

    def max_freqs_khz(self, cores: list[int]) -> dict[int, int | None]:
        return {core: self.max_freq_khz(core) for core in cores}

    def temperatures_c(self) -> dict[str, float]:
        """Every readable thermal zone in degrees Celsius, keyed by its type.

        The kernel reports millidegrees. A type shared by several zones is keyed
        "type/thermal_zoneN" for each of them, so no reading overwrites another; zones whose
        temp cannot be read (sensor off: EINVAL, EAGAIN) are left out.
        """
        base = self.root / _THERMAL_DIR
        try:
            zones = sorted(
                (p for p in base.iterdir() if p.name.startswith("thermal_zone")),
                key=lambda p: int(re.sub(r"\D", "", p.name) or 0),
            )
        except OSError:
            return {}
        readings: list[tuple[str, str, float]] = []
        for zone in zones:
            millideg = _read_int(zone / "temp")
            if millideg is None:
                continue
            kind = (_read_text(zone / "type") or "").strip() or zone.name
            readings.append((kind, zone.name, millideg / 1000.0))
        counts: dict[str, int] = {}
        for kind, _, _ in readings:
            counts[kind] = counts.get(kind, 0) + 1
        return {
            (kind if counts[kind] == 1 else f"{kind}/{zone}"): celsius
            for kind, zone, celsius in readings
        }
