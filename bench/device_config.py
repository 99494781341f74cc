"""Device configs: one YAML file per phone model, read strictly.

A config says which phone it is (the `getprop` values to match), its CPU topology and the ONE
core benchmarks are pinned to. A typo in such a file would silently pin timings to the wrong
core or never match a phone, so every field is checked and every error names the file, the
field, the value and what was expected; unknown and duplicate keys are errors too. The schema
is documented in `device_configs/README.md`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnas.bench.files import write_text_atomic
from mnas.bench.topology import core_mask
from mnas.errors import MnasError

SCHEMA_VERSION = 1
CONFIG_DIR_ENV = "MNAS_DEVICE_CONFIGS"

_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_CLUSTER_NAME_RE = re.compile(r"^[a-z0-9_]+$")
_TOP_KEYS = (
    "schema_version",
    "name",
    "description",
    "properties",
    "match",
    "clusters",
    "pin_core",
    "thermal",
    "benchmark_binary",
)
_REQUIRED_TOP = ("schema_version", "name", "properties", "match", "clusters", "pin_core", "thermal")
_CLUSTER_KEYS = ("name", "cores", "max_freq_khz")
_THERMAL_KEYS = ("cooldown_below_c", "cooldown_timeout_s", "throttle_ratio", "throttle_above_c")
_THERMAL_REQUIRED = ("cooldown_below_c", "cooldown_timeout_s", "throttle_ratio")


@dataclass(frozen=True)
class Cluster:
    """Cores that share one maximum frequency."""

    name: str
    cores: tuple[int, ...]
    max_freq_khz: int


@dataclass(frozen=True)
class ThermalPolicy:
    """When a phone counts as cool enough to time, and when a run counts as throttled."""

    cooldown_below_c: float = 45.0
    cooldown_timeout_s: float = 120.0
    throttle_ratio: float = 0.9
    # a run whose hottest thermal zone reads above this right after it counts as throttled
    # (the core may have been slowed during the run even if its cap is back up by then)
    throttle_above_c: float = 85.0


@dataclass(frozen=True)
class DeviceConfig:
    """One phone model: identity (getprop), CPU clusters, the pinned core, thermal policy."""

    name: str
    description: str
    properties: dict[str, str]
    match: dict[str, tuple[str, ...]]
    clusters: tuple[Cluster, ...]
    pin_core: int
    thermal: ThermalPolicy = field(default_factory=ThermalPolicy)
    benchmark_binary: str | None = None
    schema_version: int = SCHEMA_VERSION
    source: Path | None = field(default=None, compare=False)

    @property
    def cores(self) -> list[int]:
        return sorted(core for cluster in self.clusters for core in cluster.cores)

    @property
    def pin_mask(self) -> str:
        """The taskset mask of the pinned core (e.g. '80' for cpu7)."""
        return core_mask(self.pin_core)

    def cluster_of(self, core: int) -> Cluster:
        for cluster in self.clusters:
            if core in cluster.cores:
                return cluster
        raise MnasError(
            f"{self.label}: core {core} is not listed in clusters ({_core_range(self.cores)})"
        )

    def max_freq_khz(self, core: int | None = None) -> int:
        """cpuinfo_max_freq of `core` (default: the pinned core)."""
        return self.cluster_of(self.pin_core if core is None else core).max_freq_khz

    def matches(self, props: Mapping[str, str]) -> bool:
        """True when every `match` property of this config has one of its listed values."""
        return all(props.get(key) in values for key, values in self.match.items())

    @property
    def label(self) -> str:
        return str(self.source) if self.source is not None else f"device config '{self.name}'"

    def to_dict(self) -> dict[str, Any]:
        """The YAML document, keys in schema order."""
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "description": self.description,
            "properties": dict(self.properties),
            "match": {key: list(values) for key, values in self.match.items()},
            "clusters": [
                {"name": c.name, "cores": list(c.cores), "max_freq_khz": c.max_freq_khz}
                for c in self.clusters
            ],
            "pin_core": self.pin_core,
            "thermal": {
                "cooldown_below_c": self.thermal.cooldown_below_c,
                "cooldown_timeout_s": self.thermal.cooldown_timeout_s,
                "throttle_ratio": self.thermal.throttle_ratio,
                "throttle_above_c": self.thermal.throttle_above_c,
            },
            "benchmark_binary": self.benchmark_binary,
        }


# --------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Checker:
    """Builds one-line errors: `FILE: field 'F' = V: expected E`."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, fieldname: str, value: Any, expected: str) -> MnasError:
        return MnasError(f"{self.label}: field '{fieldname}' = {_show(value)}: expected {expected}")

    def mapping(self, fieldname: str, value: Any, allowed: Iterable[str] | None = None,
                required: Iterable[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(fieldname, value, "a mapping")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(f"{fieldname}.{key}", value[key], "string keys")
        if allowed is not None:
            allowed = tuple(allowed)
            for key in value:
                if key not in allowed:
                    raise self.fail(
                        _join(fieldname, key), value[key],
                        f"no such field (known: {', '.join(allowed)})",
                    )
        for key in required:
            if key not in value:
                raise MnasError(f"{self.label}: field '{_join(fieldname, key)}' is missing")
        return value

    def integer(self, fieldname: str, value: Any, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(fieldname, value, "an integer")
        if minimum is not None and value < minimum:
            raise self.fail(fieldname, value, f"an integer >= {minimum}")
        return value

    def number(self, fieldname: str, value: Any, low: float, high: float, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(fieldname, value, f"a number ({what})")
        if not low <= value <= high:
            raise self.fail(fieldname, value, what)
        return float(value)

    def string(self, fieldname: str, value: Any, pattern: re.Pattern[str] | None = None,
               what: str = "") -> str:
        if not isinstance(value, str):
            raise self.fail(fieldname, value, "a string (quote values YAML reads as numbers)")
        if pattern is not None and not pattern.match(value):
            raise self.fail(fieldname, value, what)
        return value


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "{...}" if value else "{}"
    return str(value)


def _core_range(cores: list[int]) -> str:
    return f"{min(cores)}..{max(cores)}" if cores else "none"


def parse_config(data: Any, label: str, expected_name: str | None = None) -> DeviceConfig:
    """Validate a YAML document (already loaded) and build the config; raise MnasError."""
    check = _Checker(label)
    if not isinstance(data, dict):
        raise MnasError(f"{label}: expected a YAML mapping of config fields, got {_show(data)}")
    check.mapping("", data, _TOP_KEYS, _REQUIRED_TOP)

    version = check.integer("schema_version", data["schema_version"])
    if version != SCHEMA_VERSION:
        raise check.fail("schema_version", version,
                         f"{SCHEMA_VERSION} (the device-config schema this mnas reads)")
    name = check.string("name", data["name"], _NAME_RE, "a name made of [a-z0-9_-]")
    if expected_name is not None and name != expected_name:
        raise check.fail("name", name, f"'{expected_name}' (the file name without .yaml)")
    description = data.get("description", "")
    description = "" if description is None else check.string("description", description)

    props_raw = check.mapping("properties", data["properties"])
    properties = {key: check.string(f"properties.{key}", value) for key, value in props_raw.items()}

    match_raw = check.mapping("match", data["match"])
    if not match_raw:
        raise check.fail("match", match_raw, "at least one property to match (an empty match "
                         "would claim every phone)")
    match: dict[str, tuple[str, ...]] = {}
    for key, values in match_raw.items():
        fieldname = f"match.{key}"
        if not isinstance(values, list) or not values:
            raise check.fail(fieldname, values, "a non-empty list of property values")
        match[key] = tuple(check.string(f"{fieldname}[{i}]", v) for i, v in enumerate(values))
        if key in properties and properties[key] not in match[key]:
            raise check.fail(fieldname, list(values),
                             f"a list containing properties.{key} ({properties[key]!r})")

    clusters = _parse_clusters(check, data["clusters"])
    cores = sorted(core for cluster in clusters for core in cluster.cores)

    pin_core = check.integer("pin_core", data["pin_core"])
    if pin_core not in cores:
        raise check.fail("pin_core", pin_core,
                         f"a core id listed in clusters ({_core_range(cores)})")

    thermal_raw = check.mapping("thermal", data["thermal"], _THERMAL_KEYS, _THERMAL_REQUIRED)
    cooldown_below_c = check.number("thermal.cooldown_below_c", thermal_raw["cooldown_below_c"], 1.0, 150.0,
                                    "degrees Celsius in 1..150")
    throttle_above_c = ThermalPolicy.throttle_above_c
    if "throttle_above_c" in thermal_raw:
        throttle_above_c = check.number("thermal.throttle_above_c", thermal_raw["throttle_above_c"], 1.0, 150.0,
                                        "degrees Celsius in 1..150")
        if throttle_above_c <= cooldown_below_c:
            raise check.fail("thermal.throttle_above_c", thermal_raw["throttle_above_c"],
                             f"a temperature above thermal.cooldown_below_c ({cooldown_below_c:g})")
    thermal = ThermalPolicy(
        cooldown_below_c=cooldown_below_c,
        cooldown_timeout_s=check.number("thermal.cooldown_timeout_s",
                                        thermal_raw["cooldown_timeout_s"], 0.0, 86400.0,
                                        "seconds in 0..86400"),
        throttle_ratio=check.number("thermal.throttle_ratio", thermal_raw["throttle_ratio"],
                                    0.0, 1.0, "a ratio in 0..1"),
        throttle_above_c=throttle_above_c,
    )

    binary = data.get("benchmark_binary")
    if binary is not None:
        binary = check.string("benchmark_binary", binary)
        if not binary.strip():
            raise check.fail("benchmark_binary", binary, "null or a host path")

    return DeviceConfig(
        name=name,
        description=description,
        properties=properties,
        match=match,
        clusters=clusters,
        pin_core=pin_core,
        thermal=thermal,
        benchmark_binary=binary,
        schema_version=version,
    )


def _parse_clusters(check: _Checker, raw: Any) -> tuple[Cluster, ...]:
    if not isinstance(raw, list) or not raw:
        raise check.fail("clusters", raw, "a non-empty list of clusters")
    clusters: list[Cluster] = []
    seen_cores: dict[int, str] = {}
    seen_names: set[str] = set()
    for index, item in enumerate(raw):
        prefix = f"clusters[{index}]"
        item = check.mapping(prefix, item, _CLUSTER_KEYS, _CLUSTER_KEYS)
        cname = check.string(f"{prefix}.name", item["name"], _CLUSTER_NAME_RE,
                             "a cluster name made of [a-z0-9_]")
        if cname in seen_names:
            raise check.fail(f"{prefix}.name", cname, "a cluster name not used before")
        seen_names.add(cname)
        core_list = item["cores"]
        if not isinstance(core_list, list) or not core_list:
            raise check.fail(f"{prefix}.cores", core_list, "a non-empty list of core ids")
        cores: list[int] = []
        for j, core in enumerate(core_list):
            core = check.integer(f"{prefix}.cores[{j}]", core, minimum=0)
            if core in seen_cores:
                raise check.fail(f"{prefix}.cores[{j}]", core,
                                 f"a core id not already in cluster '{seen_cores[core]}'")
            seen_cores[core] = cname
            cores.append(core)
        freq = check.integer(f"{prefix}.max_freq_khz", item["max_freq_khz"], minimum=1)
        if clusters and freq < clusters[-1].max_freq_khz:
            raise check.fail(f"{prefix}.max_freq_khz", freq,
                             f">= {clusters[-1].max_freq_khz} (clusters are listed slowest first)")
        clusters.append(Cluster(cname, tuple(cores), freq))
    all_cores = sorted(seen_cores)
    if all_cores != list(range(len(all_cores))):
        missing = sorted(set(range(max(all_cores) + 1)) - set(all_cores))
        raise check.fail("clusters", f"cores {all_cores}",
                         f"core ids 0..{max(all_cores)} each listed once (missing {missing})")
    return tuple(clusters)


def load_config(path: str | Path) -> DeviceConfig:
    """Read and validate one device config; any problem is one MnasError line."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MnasError(f"{label}: device config not found") from None
    except OSError as exc:
        raise MnasError(f"{label}: cannot read device config: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MnasError(f"{label}: not valid YAML: {problem}{where}") from None
    config = parse_config(data, label, expected_name=path.stem)
    return _with_source(config, path)


def _with_source(config: DeviceConfig, path: Path) -> DeviceConfig:
    return dataclasses.replace(config, source=path)


def default_config_dir() -> Path:
    """`$MNAS_DEVICE_CONFIGS`, else the repository's device_configs/, else ./device_configs."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    repo_dir = Path(__file__).resolve().parent.parent / "device_configs"
    if repo_dir.is_dir():
        return repo_dir
    return Path("device_configs")


def load_all(folder: str | Path | None = None) -> dict[str, DeviceConfig]:
    """Every `*.yaml` config in `folder` (default: `default_config_dir()`), by name."""
    folder = default_config_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        raise MnasError(f"{folder}: device-config folder not found (set {CONFIG_DIR_ENV} or "
                        "pass the folder)")
    configs: dict[str, DeviceConfig] = {}
    for path in sorted(folder.glob("*.yaml")):
        config = load_config(path)
        configs[config.name] = config
    return configs


# getprop keys that name one phone (its serial) or one build of one model (its fingerprint)
SERIAL_PROPERTY = "ro.serialno"
FINGERPRINT_PROPERTY = "ro.build.fingerprint"
IDENTITY_PROPERTIES = (SERIAL_PROPERTY, FINGERPRINT_PROPERTY)


def specificity(config: DeviceConfig) -> tuple[bool, bool, int]:
    """How narrowly a config claims phones: by serial, then by build fingerprint, then by key count.

    A config written by `mnas devices probe` for one phone names its serial, so it outranks a
    shipped config of the same model (which matches on model and device only) instead of
    making that phone ambiguous.
    """
    return (SERIAL_PROPERTY in config.match, FINGERPRINT_PROPERTY in config.match, len(config.match))


def match_config(props: Mapping[str, str], configs: Mapping[str, DeviceConfig] | Iterable[DeviceConfig]
                 ) -> DeviceConfig | None:
    """The config whose `match` the phone's properties satisfy; None when none does.

    When several match, the most specific wins (`specificity`: one that names the phone's
    serial, then its build fingerprint, then the most match keys); a tie is an error (two
    configs claim the phone and the pinned core would depend on file order).
    """
    candidates = list(configs.values()) if isinstance(configs, Mapping) else list(configs)
    matching = [c for c in candidates if c.matches(props)]
    if not matching:
        return None
    matching.sort(key=specificity, reverse=True)
    if len(matching) > 1 and specificity(matching[0]) == specificity(matching[1]):
        names = ", ".join(sorted(c.name for c in matching if specificity(c) == specificity(matching[0])))
        raise MnasError(f"phone {props.get('ro.product.model', '?')!r} matches several device "
                        f"configs equally ({names}); make their `match` sections distinct (a config "
                        f"whose match names the phone's {SERIAL_PROPERTY} wins over the others)")
    return matching[0]


def bind_to_phone(config: DeviceConfig, props: Mapping[str, str], generic: bool = False) -> DeviceConfig:
    """`config` with the phone's serial and build fingerprint recorded in `properties` and, unless
    `generic`, the serial (else the fingerprint) added to `match`, so it wins over a config of
    the same model (`specificity`). A phone that reports neither keeps a model-wide match."""
    identity = {key: props[key] for key in IDENTITY_PROPERTIES if props.get(key)}
    match = dict(config.match)
    if not generic:
        for key in IDENTITY_PROPERTIES:
            if key in identity:
                match[key] = (identity[key],)
                break
    bound = dataclasses.replace(config, properties={**config.properties, **identity}, match=match)
    parse_config(bound.to_dict(), bound.label, expected_name=config.name)  # same rules as a load
    return bound


# --------------------------------------------------------------------------- writing


class _ConfigDumper(yaml.SafeDumper):
    """Block mappings, flow lists of scalars (`cores: [4, 5, 6]`), as in the README."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, dict | list) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def config_to_yaml(config: DeviceConfig) -> str:
    return yaml.dump(config.to_dict(), Dumper=_ConfigDumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)


def dump_config(config: DeviceConfig, path: str | Path) -> Path:
    """Write `config` atomically (temp file + rename); the file loads back to an equal config."""
    path = Path(path)
    if config.name != path.stem:
        raise MnasError(f"{path}: field 'name' = {config.name!r}: expected '{path.stem}' "
                        "(the file name without .yaml)")
    # validate what we are about to write with the same rules as a load
    parse_config(config.to_dict(), str(path), expected_name=path.stem)
    return write_text_atomic(path, config_to_yaml(config))
