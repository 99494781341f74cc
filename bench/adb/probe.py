"""What a phone is: its properties (getprop), its CPU topology, and a device config built from both.

These are pure: the shell command to send and the parser of its output, so the rules are
tested without a phone; `AdbDevice` runs the commands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mnas.bench.device_config import SCHEMA_VERSION, DeviceConfig, ThermalPolicy, parse_config
from mnas.bench.sysfs import int_or_none
from mnas.bench.topology import clusters_by_frequency, fastest_core, parse_cpu_list
from mnas.errors import MnasError

__all__ = [
    "PROBED_PROPERTIES",
    "build_probed_config",
    "cluster_names",
    "cpu_probe_command",
    "parse_cpu_probe",
    "parse_getprop",
]

PROBED_PROPERTIES = (
    "ro.product.model",
    "ro.product.device",
    "ro.product.name",
    "ro.product.manufacturer",
    "ro.product.cpu.abi",
    "ro.board.platform",
)
_CPU = "/sys/devices/system/cpu"


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output (`[key]: [value]` lines) as a dict."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[([^\]\n]+)\]: \[(.*?)\]$", text, re.M | re.S)}


def cpu_probe_command() -> str:
    """One shell command printing possible/online cores and every core's cpuinfo_max_freq."""
    return (
        f'echo "__POSSIBLE|$(cat {_CPU}/possible 2>/dev/null)"; '
        f'echo "__ONLINE|$(cat {_CPU}/online 2>/dev/null)"; '
        f"for c in {_CPU}/cpu[0-9]*; do "
        'echo "__C|${c##*/}|$(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null)"; done; '
        f"for p in {_CPU}/cpufreq/policy*; do "
        'echo "__P|$(cat "$p/related_cpus" 2>/dev/null)|$(cat "$p/cpuinfo_max_freq" 2>/dev/null)"; '
        "done"
    )


def _cores(text: str, source: str) -> list[int]:
    try:
        return parse_cpu_list(text)
    except ValueError as exc:
        raise MnasError(f"{source}: {exc}") from None


def parse_cpu_probe(text: str, source: str = "phone") -> dict[int, int]:
    """cpuinfo_max_freq (kHz) of every possible core from `cpu_probe_command` output.

    Offline cores have no readable cpufreq folder; their frequency comes from the cpufreq
    policy whose related_cpus (a space-separated list) names them.
    """
    possible: list[int] = []
    per_core: dict[int, int] = {}
    per_policy: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if parts[0] == "__POSSIBLE" and len(parts) == 2 and parts[1].strip():
            possible = _cores(parts[1], source)
        elif parts[0] == "__C" and len(parts) == 3:
            match = re.fullmatch(r"cpu(\d+)", parts[1].strip())
            freq = int_or_none(parts[2])
            if match and freq:
                per_core[int(match.group(1))] = freq
        elif parts[0] == "__P" and len(parts) == 3:
            freq = int_or_none(parts[2])
            if freq:
                for core in _cores(parts[1].replace(" ", ","), source):
                    per_policy[core] = freq
    cores = possible or sorted(set(per_core) | set(per_policy))
    if not cores:
        raise MnasError(f"{source}: /sys/devices/system/cpu lists no cores")
    result: dict[int, int] = {}
    for core in cores:
        freq = per_core.get(core) or per_policy.get(core)
        if not freq:
            raise MnasError(f"{source}: cpu{core} has no readable cpuinfo_max_freq (is it offline? "
                            "bring it online or write the config by hand)")
        result[core] = freq
    return result


def cluster_names(count: int) -> list[str]:
    """Names for `count` clusters, slowest first."""
    return {1: ["all"], 2: ["little", "big"], 3: ["little", "big", "prime"]}.get(
        count, [f"cluster{i}" for i in range(count)]
    )


def build_probed_config(name: str, serial: str, props: Mapping[str, str],
                        max_freq_khz: Mapping[int, int], label: str | None = None) -> DeviceConfig:
    """A validated device config from a phone's getprop values and per-core max frequencies."""
    label = label or f"device config '{name}'"
    for key in ("ro.product.model", "ro.product.device"):
        if not props.get(key):
            raise MnasError(f"phone {serial}: getprop {key} is empty; cannot build a config "
                            "that matches it")
    groups = clusters_by_frequency(max_freq_khz)
    names = cluster_names(len(groups))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "description": f"probed from {serial}",
        "properties": {key: props[key] for key in PROBED_PROPERTIES if props.get(key)},
        "match": {key: [props[key]] for key in ("ro.product.model", "ro.product.device")},
        "clusters": [
            {"name": cname, "cores": list(cores), "max_freq_khz": freq}
            for cname, (cores, freq) in zip(names, groups, strict=True)
        ],
        "pin_core": fastest_core(max_freq_khz),
        "thermal": {
            "cooldown_below_c": ThermalPolicy.cooldown_below_c,
            "cooldown_timeout_s": ThermalPolicy.cooldown_timeout_s,
            "throttle_ratio": ThermalPolicy.throttle_ratio,
            "throttle_above_c": ThermalPolicy.throttle_above_c,
        },
        "benchmark_binary": None,
    }
    return parse_config(doc, label, expected_name=name)
