"""Device configs: the shipped Pixel files, strict validation with exact messages, round-trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mnas.bench.device_config import (
    CONFIG_DIR_ENV,
    DeviceConfig,
    config_to_yaml,
    default_config_dir,
    dump_config,
    load_all,
    load_config,
    match_config,
)
from mnas.bench.topology import fastest_core
from mnas.errors import MnasError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "device_configs"

# name: (ro.product.model, ro.product.device, cores, pinned core, its max kHz, the cores sharing
# that frequency) -- the facts of docs/architecture.md "Devices and their facts"
PIXELS = {
    "pixel1": ("Pixel", "sailfish", 4, 3, 2150400, (2, 3)),
    "pixel2": ("Pixel 2", "walleye", 8, 7, 2457600, (4, 5, 6, 7)),
    "pixel3": ("Pixel 3", "blueline", 8, 7, 2803200, (4, 5, 6, 7)),
    "pixel4": ("Pixel 4", "flame", 8, 7, 2841600, (7,)),
    "pixel5": ("Pixel 5", "redfin", 8, 7, 2400000, (7,)),
    "pixel6": ("Pixel 6", "oriole", 8, 7, 2802000, (6, 7)),
    "pixel7": ("Pixel 7", "panther", 8, 7, 2850000, (6, 7)),
    "pixel8": ("Pixel 8", "shiba", 9, 8, 2910000, (8,)),
}


def test_shipped_pixels_load_with_the_documented_topology():
    configs = load_all(REPO_CONFIGS)
    assert sorted(configs) == sorted(PIXELS)
    for name, (model, device, ncores, pin, freq, fastest) in PIXELS.items():
        config = configs[name]
        assert config.properties["ro.product.model"] == model
        assert config.properties["ro.product.device"] == device
        assert config.properties["ro.product.name"] == device
        assert config.match == {"ro.product.model": (model,), "ro.product.device": (device,)}
        assert config.cores == list(range(ncores))
        assert config.pin_core == pin and config.max_freq_khz() == freq
        assert config.clusters[-1].cores == fastest
        # the rule: the single fastest core, ties to the highest id
        assert config.pin_core == fastest_core({c: config.max_freq_khz(c) for c in config.cores})
        assert config.source == REPO_CONFIGS / f"{name}.yaml"
    assert configs["pixel4"].pin_mask == "80" and configs["pixel8"].pin_mask == "100"
    assert configs["pixel1"].pin_mask == "8"
    # the cluster facts of docs/architecture.md
    assert configs["pixel4"].cluster_of(5).max_freq_khz == 2419200
    assert configs["pixel5"].max_freq_khz(6) == 2208000
    assert configs["pixel6"].cluster_of(4).cores == (4, 5)
    assert configs["pixel8"].cluster_of(4).cores == (4, 5, 6, 7)


def test_default_folder_is_the_repo_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    assert default_config_dir() == REPO_CONFIGS
    (tmp_path / "pixel4.yaml").write_text((REPO_CONFIGS / "pixel4.yaml").read_text())
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert list(load_all()) == ["pixel4"]


def test_match_config():
    configs = load_all(REPO_CONFIGS)
    for name, config in configs.items():
        assert match_config(dict(config.properties), configs).name == name
    assert match_config({"ro.product.model": "Pixel 4 XL", "ro.product.device": "coral"},
                        configs) is None
    assert match_config({"ro.product.model": "Pixel 4"}, configs) is None  # device missing
    twin = dataclasses.replace(configs["pixel4"], name="twin")
    with pytest.raises(MnasError, match=r"matches several device configs equally \(pixel4, twin\)"):
        match_config(configs["pixel4"].properties, [configs["pixel4"], twin])
    narrower = dataclasses.replace(configs["pixel4"], name="narrow",
                                   match={"ro.product.model": ("Pixel 4",)})
    assert match_config(configs["pixel4"].properties, [narrower, configs["pixel4"]]).name == "pixel4"


@pytest.mark.parametrize("name", sorted(PIXELS))
def test_dump_round_trips(tmp_path, name):
    config = load_config(REPO_CONFIGS / f"{name}.yaml")
    out = dump_config(config, tmp_path / f"{name}.yaml")
    assert load_config(out) == config
    assert list(yaml.safe_load(out.read_text())) == [
        "schema_version", "name", "description", "properties", "match", "clusters", "pin_core",
        "thermal", "benchmark_binary"]
    assert out.read_text() == config_to_yaml(config)  # stable text
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.yaml"]  # no temp file left


def test_dump_refuses_invalid_config_without_writing(tmp_path):
    config = load_config(REPO_CONFIGS / "pixel4.yaml")
    bad = dataclasses.replace(config, pin_core=12)
    with pytest.raises(MnasError) as info:
        dump_config(bad, tmp_path / "pixel4.yaml")
    assert str(info.value) == (f"{tmp_path / 'pixel4.yaml'}: field 'pin_core' = 12: expected a "
                               "core id listed in clusters (0..7)")
    with pytest.raises(MnasError, match=r"field 'name' = 'pixel4': expected 'other'"):
        dump_config(config, tmp_path / "other.yaml")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- validation

BASE = (REPO_CONFIGS / "pixel4.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "pixel4") -> Path:
    folder = tmp_path / "device_configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def edited(**changes) -> str:
    data = yaml.safe_load(BASE)
    for dotted, value in changes.items():
        target = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return yaml.safe_dump(data, sort_keys=False)


_DELETE = object()


def test_readme_example_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, BASE.replace("pin_core: 7 ", "pin_core: 9 "))
    with pytest.raises(MnasError) as info:
        load_config("device_configs/pixel4.yaml")
    assert str(info.value) == ("device_configs/pixel4.yaml: field 'pin_core' = 9: expected a core id "
                               "listed in clusters (0..7)")


CASES = [
    (edited(pin_cores=7),
     "field 'pin_cores' = 7: expected no such field (known: schema_version, name, description, "
     "properties, match, clusters, pin_core, thermal, benchmark_binary)"),
    (edited(pin_core=_DELETE), "field 'pin_core' is missing"),
    (edited(pin_core="7"), "field 'pin_core' = '7': expected an integer"),
    (edited(pin_core=True), "field 'pin_core' = True: expected an integer"),
    (edited(schema_version=2),
     "field 'schema_version' = 2: expected 1 (the device-config schema this mnas reads)"),
    (edited(name="pixel-4"), "field 'name' = 'pixel-4': expected 'pixel4' (the file name without .yaml)"),
    (edited(name="Pixel4"), "field 'name' = 'Pixel4': expected a name made of [a-z0-9_-]"),
    (edited(properties__ro_sdk=29).replace("ro_sdk", "ro.build.version.sdk"),
     "field 'properties.ro.build.version.sdk' = 29: expected a string (quote values YAML reads as numbers)"),
    (edited(match={}), "field 'match' = {}: expected at least one property to match (an empty "
                       "match would claim every phone)"),
    (edited(match={"ro.product.model": "Pixel 4"}),
     "field 'match.ro.product.model' = 'Pixel 4': expected a non-empty list of property values"),
    (edited(match={"ro.product.model": ["Pixel 4 XL"]}),
     "field 'match.ro.product.model' = ['Pixel 4 XL']: expected a list containing "
     "properties.ro.product.model ('Pixel 4')"),
    (edited(clusters__1__max_freq_khz="2.42 GHz"),
     "field 'clusters[1].max_freq_khz' = '2.42 GHz': expected an integer"),
    (edited(clusters__2__max_freq_khz=2000000),
     "field 'clusters[2].max_freq_khz' = 2000000: expected >= 2419200 (clusters are listed slowest first)"),
    (edited(clusters__1__cores=[3, 4, 5, 6]),
     "field 'clusters[1].cores[0]' = 3: expected a core id not already in cluster 'little'"),
    (edited(clusters__1__cores=[4, 6]),
     "field 'clusters' = 'cores [0, 1, 2, 3, 4, 6, 7]': expected core ids 0..7 each listed once (missing [5])"),
    (edited(clusters__1__cores=[]), "field 'clusters[1].cores' = []: expected a non-empty list of core ids"),
    (edited(clusters__0__name="big"), "field 'clusters[1].name' = 'big': expected a cluster name not used before"),
    (edited(clusters__0__speed=1), "field 'clusters[0].speed' = 1: expected no such field (known: name, cores, max_freq_khz)"),
    (edited(clusters__0__cores=[-1, 0, 1, 2, 3]), "field 'clusters[0].cores[0]' = -1: expected an integer >= 0"),
    (edited(thermal__throttle_ratio=1.5), "field 'thermal.throttle_ratio' = 1.5: expected a ratio in 0..1"),
    (edited(thermal__cooldown_below_c=_DELETE), "field 'thermal.cooldown_below_c' is missing"),
    (edited(thermal__cooldown_timeout_s="2m"),
     "field 'thermal.cooldown_timeout_s' = '2m': expected a number (seconds in 0..86400)"),
    (edited(benchmark_binary=""), "field 'benchmark_binary' = '': expected null or a host path"),
    (edited(benchmark_binary=5), "field 'benchmark_binary' = 5: expected a string (quote values YAML reads as numbers)"),
    ("schema_version: 1\nname: pixel4\nname: pixel5\n",
     "not valid YAML: duplicate key 'name' (line 3, column 1)"),
    ("name: [unclosed\n", "not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("- just\n- a list\n", "expected a YAML mapping of config fields, got ['just', 'a list']"),
]


@pytest.mark.parametrize(("text", "message"), CASES, ids=[m[:40] for _, m in CASES])
def test_validation_errors_name_file_field_value_and_expectation(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(MnasError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_optional_fields_and_binary(tmp_path):
    text = edited(description=_DELETE, benchmark_binary=_DELETE)
    config = load_config(write(tmp_path, text))
    assert config.description == "" and config.benchmark_binary is None
    config = load_config(write(tmp_path, edited(benchmark_binary="~/tools/benchmark_model")))
    assert config.benchmark_binary == "~/tools/benchmark_model"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MnasError, match=r"nope.yaml: device config not found$"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(MnasError, match=r"device-config folder not found"):
        load_all(tmp_path / "none")


def test_cluster_lookup_errors():
    config: DeviceConfig = load_config(REPO_CONFIGS / "pixel1.yaml")
    with pytest.raises(MnasError, match=r"pixel1.yaml: core 4 is not listed in clusters \(0..3\)"):
        config.max_freq_khz(4)
