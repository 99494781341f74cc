"""One JSON vocabulary (issue 15, point 1): every `--json` command's keys are those of docs/json.md.

The commands are enumerated from the click tree, so a new command with `--json` and no recipe
here fails `test_every_json_command_has_a_recipe`. Each recipe runs the real command on a
small store built once for the module (a 6-layer host table, a fitted predictor, one host
benchmark, a hand-run phone log, published figures, a cheap search, the shipped pixel4
table), and on loopback phones behind an isolated adb server for the `devices` commands.
Every key of every JSON document must be one the vocabulary defines (so a renamed key fails),
none may be a retired name, `*_at` values are ISO-8601 strings, and latencies are `*_ms`
(`*_us` only where `--units us` asked for it).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb

from mnas.bench.contention import ContentionGuard
from mnas.bench.host import HostDevice
from mnas.bench.runtime import load_runtime
from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.predictor.build import build_table
from mnas.predictor.fitting import fit_predictor
from mnas.predictor.registry import save_predictor
from mnas.predictor.table import load_table
from mnas.space.search_space import mnasnet

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "json.md"
LOG = ROOT / "tests" / "data" / "benchmark_model" / "tf2.8_riscv64_qemu_4threads_opprofiling_full.txt"
SHIPPED = ROOT / "device_configs" / "tables" / "pixel4.json.gz"
TINY = ("--runs", "3", "--warmup", "1", "--min-secs", "0", "--tries", "1")
RUNTIME = load_runtime()
TABLE = f"host-r224-{RUNTIME.name}-{RUNTIME.version}"
SMALL_ARCH = "stem32,r1_k3_s11_e1_i32_o16_noskip,head1280"
FIGURES = "model,multiplier,resolution,latency_ms\nmnasnet-a1,1.0,224,78.0\nmobilenet-v2,1.0,224,75.0\n" \
          "mobilenet-v1,1.0,224,113.0\nmobilenet-v2,0.5,224,30.0\nmnasnet-b1,1.0,224,80.0\n"


# --------------------------------------------------------------------------- the vocabulary

def _doc_keys(section: str) -> dict[str, str]:
    """`key -> second cell` of the table rows under `## section` in docs/json.md."""
    text = DOC.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    rows = {}
    for line in text[start:end if end >= 0 else None].splitlines():
        match = re.match(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*(.*?)\s*\|", line)
        if match:
            assert match.group(1) not in rows, f"docs/json.md: `{match.group(1)}` listed twice under {section}"
            rows[match.group(1)] = match.group(2)
    return rows


def vocabulary() -> tuple[set[str], set[str], dict[str, str]]:
    """(every documented key, keys whose value is a free map, retired name -> its replacement)."""
    keys = {key for section in ("Device", "Network", "Time", "Latency and figures", "Other keys")
            for key in _doc_keys(section)}
    maps = set(_doc_keys("Maps"))
    retired = {old: new.strip("`") for old, new in _doc_keys("Retired names").items()}
    return keys | maps, maps, retired


def key_problems(payload: Any, *, units_us: bool = False) -> list[str]:
    """Every way `payload`'s keys break the vocabulary (empty when they all follow it)."""
    keys, maps, retired = vocabulary()
    problems: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, where + "[]")
            return
        if not isinstance(value, dict):
            return
        for key, item in value.items():
            path = f"{where}.{key}"
            if key in retired:
                problems.append(f"{path}: retired name, expected `{retired[key]}`")
            elif key.endswith("_us") and not units_us:
                problems.append(f"{path}: microseconds without --units us, expected `{key[:-3]}_ms`")
            elif key not in keys and not (units_us and key.endswith("_us") and f"{key[:-3]}_ms" in keys):
                problems.append(f"{path}: not in docs/json.md")
            if key.endswith("_at") and item is not None:
                if not isinstance(item, str):
                    problems.append(f"{path}: {item!r} is not an ISO-8601 string")
                else:
                    try:
                        dt.datetime.fromisoformat(item)
                    except ValueError:
                        problems.append(f"{path}: {item!r} is not ISO-8601")
            if key not in maps:
                walk(item, path)

    walk(payload, "$")
    return problems


def test_a_renamed_or_retired_key_fails() -> None:
    row = {"device_id": "host", "model_name": "mnasnet-a1", "median_ms": 6.5, "measured_at": "2026-11-30T02:00:00"}
    assert key_problems(row) == []
    assert key_problems({**row, "median": 6.5}) == ["$.median: not in docs/json.md"]
    assert key_problems([{"model": "a"}]) == ["$[].model: retired name, expected `model_name`"]
    assert key_problems({"median_us": 6500.0}) == ["$.median_us: microseconds without --units us, expected `median_ms`"]
    assert key_problems({"median_us": 6500.0}, units_us=True) == []
    assert key_problems({"created_at": 1796003674.2}) == ["$.created_at: 1796003674.2 is not an ISO-8601 string"]
    assert key_problems({"layers": {"block:conv": 3}}) == []  # a map: its keys are data


def test_the_vocabulary_names_each_thing_once() -> None:
    keys, _, retired = vocabulary()
    assert not set(retired) & keys
    assert all(new in keys for new in retired.values()), {old: new for old, new in retired.items() if new not in keys}
    for required in ("device_id", "device_config", "phone_model", "model_name", "arch", "model_sha256", "resolution",
                     "multiplier", "pinned_cores", "median_ms", "created_at"):
        assert required in keys


# --------------------------------------------------------------------------- the commands

def json_commands() -> list[str]:
    """Every command (or group) of `mnas` that takes `--json`, as its path ("table build")."""
    from mnas.cli import cli

    found: list[str] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if any(param.name == "as_json" for param in command.params):
            found.append(" ".join(path))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(cli, [])
    return sorted(found)


# Each command's invocations, in the order they run (later ones use what earlier ones stored).
# `{tmp}` is the store's folder; `{phone_id}` the measurement `bench parse --store` kept, `{host_id}` the one
# `bench run` stored, `{fit_id}` the predictor `table fit` stored. Phone commands are in PHONE_RECIPES.
RECIPES: dict[str, list[list[str]]] = {
    "arch list": [["arch", "list"]],
    "arch show": [["arch", "show", "mnasnet-a1"]],
    "arch sample": [["arch", "sample", "--count", "2"]],
    "arch export": [["arch", "export", SMALL_ARCH, "-o", "{tmp}/small.tflite", "--resolution", "224"]],
    "bench parse": [["bench", "parse", str(LOG)], ["bench", "parse", str(LOG), "--units", "us"],
                    ["bench", "parse", str(LOG), "--store", "--device", "pixel4", "--model", "mobilenet-v1"]],
    "bench run": [["bench", "run", "mnasnet-small", "--resolution", "96", *TINY]],
    "results list": [["results", "list"]],
    "results import": [["results", "import", "{tmp}/figures.csv", "--device", "pixel1", "--source", "test"]],
    "results ops": [["results", "ops", "{phone_id}"], ["results", "ops", "{host_id}"]],
    "results compare": [["results", "compare", "pixel4", "host", "--all-models"]],
    "table plan": [["table", "plan", "--device", "host"]],
    "table build": [["table", "build", "--device", "host", "--limit", "1", *TINY]],
    "table fit": [["table", "fit", "--device", "host"]],
    "table calibrate": [["table", "calibrate", "--device", "host", "--samples", "4", "--repeats", "1", *TINY]],
    "table eval": [["table", "eval", "--device", "host", "--samples", "2", "--repeats", "1", *TINY]],
    "table list": [["table", "list"]],
    "table export": [["table", "export", TABLE, "-o", "{tmp}/t.json.gz"]],
    "table import": [["table", "import", str(SHIPPED)]],
    "table transfer": [["table", "transfer", "--from", "pixel4-r224-transfer", "--device", "pixel1", "--no-measure"]],
    "predict": [["predict", "mnasnet-a1", SMALL_ARCH, "--device", "host", "--predictor", "{fit_id}"],
                ["predict", "{tmp}/small.tflite", "--device", "host", "--predictor", "{fit_id}"]],
    "search run": [["search", "run", "--latency", "predicted", "--device", "host", "--predictor", "{fit_id}",
                    "--accuracy", "cheap",
                    "--algorithm", "random", "--samples", "3", "--name", "r", "--target-ms", "20"]],
    "search list": [["search", "list"]],
    "search report": [["search", "report", "r"]],
    "search export": [["search", "export", "r", "-o", "{tmp}/export", "--top", "1"]],
    "search finalize": [["search", "finalize", "r", "--top", "2", "--seeds", "2"]],
}
PHONE_RECIPES: dict[str, list[list[str]]] = {
    "devices loopback start": [["devices", "loopback", "start", "--dir", "{tmp}/phones2"]],
    "devices loopback status": [["devices", "loopback", "status", "--dir", "{tmp}/phones"]],
    "devices": [["devices"]],
    "devices probe": [["devices", "probe", "{serial}", "-o", "{tmp}/probed.yaml"]],
    "devices loopback stop": [["devices", "loopback", "stop", "--dir", "{tmp}/phones2"]],
}


def test_every_json_command_has_a_recipe() -> None:
    assert json_commands() == sorted([*RECIPES, *PHONE_RECIPES])


def report(problems: dict[str, list[str]]) -> str:
    """Every command's problems, one line each, so a failure names every key to fix at once."""
    return "\n".join(f"mnas {command[:60]}: {'; '.join(dict.fromkeys(found))}" for command, found in problems.items())


def run_json(db: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    from mnas.cli import main

    capsys.readouterr()
    try:
        main(["--db", str(db), *args, "--json"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert code == 0, f"mnas {' '.join(args)} --json: exit {code}: {out.err}"
    return json.loads(out.out)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-layer host table with a fitted predictor, and the figures file `results import` reads."""
    tmp = tmp_path_factory.mktemp("vocabulary")
    db = tmp / "mnas.db"
    with ResultsStore(db) as opened:
        build_table(mnasnet(), 224, [HostDevice()], opened, TABLE, BenchConfig(warmup_runs=1, num_runs=3, min_secs=0),
                    limit=6, progress=False, guard=ContentionGuard(tries=1))
        predictor, metrics = fit_predictor(load_table(opened, TABLE))
        save_predictor(opened, predictor, predictor.table_id, metrics)
    (tmp / "figures.csv").write_text(FIGURES)
    return db


@pytest.mark.slow
def test_every_command_speaks_the_vocabulary(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems: dict[str, list[str]] = {}
    ids = {"{tmp}": str(store.parent)}
    for runs in RECIPES.values():
        for recipe in runs:
            args = [ids.get(a, a).replace("{tmp}", str(store.parent)) for a in recipe]
            payload = run_json(store, args, capsys)
            if args[:2] == ["bench", "parse"] and "--store" in args:
                ids["{phone_id}"] = str(payload["stored"]["measurement_id"])
            if args[:2] == ["bench", "run"]:
                ids["{host_id}"] = str(payload[0]["stored_id"])
            if args[:2] == ["table", "fit"]:  # uncalibrated: a calibration on 4 loaded-host networks may be wild
                ids["{fit_id}"] = str(payload["predictor_id"])
            found = key_problems(payload, units_us="--units" in args)
            if found:
                problems[" ".join(args)] = found
    assert problems == {}, report(problems)


@pytest.mark.slow
@requires_adb
def test_every_devices_command_speaks_the_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "mnas.db"
    problems: dict[str, list[str]] = {}
    with isolated_adb_server(tmp_path / "adb") as adb, loopback_phones(adb, tmp_path / "phones", "pixel4") as phones:
        for runs in PHONE_RECIPES.values():
            for args in runs:
                args = [a.replace("{tmp}", str(tmp_path)).replace("{serial}", phones[0].serial) for a in args]
                found = key_problems(run_json(db, args, capsys))
                if found:
                    problems[" ".join(args)] = found
    assert problems == {}, report(problems)


# --------------------------------------------------------------------------- results export

def _figure(device_id: str, device_name: str, i: int, extra: dict[str, Any]) -> Any:
    import hashlib

    from mnas.bench.types import LatencyStats, Measurement

    return Measurement(device_id=device_id, device_name=device_name, model_sha256=hashlib.sha256(bytes([i])).hexdigest(),
                       model_path=f"/m{i}.tflite", runtime="benchmark_model" if device_name != "host" else "ai-edge-litert",
                       runtime_version="v1", config=BenchConfig(), pinned_cores=(7,) if device_name != "host" else (1,),
                       stats=LatencyStats(count=20, mean_us=5000.0 + i, std_us=50.0, min_us=4000.0 + i, max_us=6000.0,
                                          median_us=4900.0 + i),
                       timestamp=1_790_000_000.0 + i, extra=extra)


def test_results_export_carries_the_figure_and_csv_and_parquet_agree_on_types(tmp_path: Path) -> None:
    import pandas as pd

    from mnas.bench.types import DeviceProfile
    from mnas.cli import main

    db = tmp_path / "mnas.db"
    build = "google/flame/flame:11/RQ3A.211001.001/7641976:user/release-keys"
    with ResultsStore(db) as opened:
        opened.upsert_device(DeviceProfile("SER4", "pixel4", "adb", "Pixel 4", "Snapdragon 855 cpu7", 7, 2841600,
                                           "benchmark_model", "v1", android_build=build))
        opened.upsert_device(DeviceProfile("host", "host", "host", "AMD EPYC", "AMD EPYC", 1, None, "ai-edge-litert", "v1"))
        opened.add_measurement(_figure("SER4", "pixel4", 1, {"resolution": 224}), label="mnasnet-a1", arch=SMALL_ARCH)
        opened.add_measurement(_figure("host", "host", 2, {"resolution": 96, "contended": True, "child_cpu_share": 0.5}),
                               label="small.tflite")
    frames = {}
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"all.{suffix}"
        with _no_exit():
            main(["--db", str(db), "results", "export", "-o", str(out)])
        frames[suffix] = pd.read_csv(out) if suffix == "csv" else pd.read_parquet(out)
    csv, parquet = frames["csv"], frames["parquet"]
    assert dict(csv.dtypes.astype(str)) == dict(parquet.dtypes.astype(str))
    for frame in (csv, parquet):
        phone, host = frame.iloc[0], frame.iloc[1]
        assert (phone["model_name"], phone["resolution"], phone["phone_model"], phone["android_build"]) == (
            "mnasnet-a1", 224, "Pixel 4", build)
        assert (phone["headline_statistic"], phone["headline_ms"]) == ("median", pytest.approx(4.901))
        assert (host["headline_statistic"], host["headline_ms"], host["resolution"]) == ("min", pytest.approx(4.002), 96)
        assert pd.isna(host["phone_model"]) and pd.isna(host["android_build"])
        assert (host["contended"], host["child_cpu_share"]) == (True, 0.5) and pd.isna(phone["contended"])
        assert list(frame["pinned_cores"]) == ["[7]", "[1]"]
        assert phone["measured_at"] == "2026-09-21T14:13:21+00:00"


class _no_exit:
    """`mnas.cli.main` returns on success; a SystemExit here is a failure with its code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, _tb: Any) -> bool:
        if isinstance(value, SystemExit):
            raise AssertionError(f"mnas exited {value.code}")
        return False
