"""`mnas table` against phones: two loopback Pixel 4s behind the real (isolated) adb server.

The flow a user runs with phones plugged in — plan, a build the two phones share, a resumed
build, fit, predict by serial and by device name — through the `mnas` command line as a
subprocess. The phones run the host `benchmark_model`-compatible runner for the pushed
"binary" (any file), so the layer latencies are real LiteRT timings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb
from test_phone_integration import CliRun, cli_env, fake_binary, run_cli

from mnas.bench.store import ResultsStore
from mnas.predictor.table import load_table

pytestmark = [pytest.mark.adb, requires_adb]

TINY = ("--runs", "3", "--warmup", "1", "--min-secs", "0")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("table-lab")
    with isolated_adb_server(folder / "adb") as adb, \
            loopback_phones(adb, folder / "phones", "pixel4", count=2) as phones:
        binary = fake_binary(folder)
        yield {"adb": adb, "env": cli_env(adb, folder / "phones"), "serials": [p.serial for p in phones],
               "binary": str(binary), "db": str(folder / "mnas.db"),
               "table": f"pixel4-r224-benchmark_model-sha256-{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}"}


def mnas(lab: dict[str, Any], *args: str, timeout_s: float = 120.0) -> CliRun:
    return run_cli(lab["env"], "--db", lab["db"], *args, timeout_s=timeout_s)


def test_plan_shared_build_resume_fit_predict(lab: dict[str, Any]) -> None:
    one, two = lab["serials"]
    binary = ("--benchmark-binary", lab["binary"])
    plan = mnas(lab, "table", "plan", "--device", one, *binary, "--json")
    assert plan.rc == 0, plan.describe()
    payload = plan.json()
    assert (payload["table"], payload["stored"], payload["layers"]["total"]) == (lab["table"], 0, 2500)
    assert payload["per_layer_basis"] == "adb overhead 1 s + --min-secs 0.2"

    build = mnas(lab, "table", "build", "--device", f"{one},{two}", "--limit", "6", *TINY, *binary, "--json")
    assert build.rc == 0, build.describe()
    result = build.json()
    assert (result["table"], result["measured"], result["remaining"]) == (lab["table"], 6, 2494)
    assert set(result["per_device"]) == {one, two} and sum(result["per_device"].values()) == 6
    assert min(result["per_device"].values()) >= 1  # both phones took layers from the shared queue

    resumed = mnas(lab, "table", "build", "--device", one, "--limit", "2", *TINY, *binary, "--json")
    assert resumed.rc == 0, resumed.describe()
    assert (resumed.json()["already_stored"], resumed.json()["measured"]) == (6, 2)
    with ResultsStore(lab["db"]) as store:
        table = load_table(store, lab["table"])
    assert len(table) == 8 and set(table.meta.device_ids) == {one, two}
    assert (table.meta.device_name, table.meta.runtime) == ("pixel4", "benchmark_model")
    assert {e.measurement["device_id"] for e in table.entries.values()} == {one, two}

    fit = mnas(lab, "table", "fit", "--device", two, "--json")  # a serial finds its device's table
    assert fit.rc == 0, fit.describe()
    fitted = fit.json()
    assert (fitted["table"], fitted["device_config"], fitted["statistic"], fitted["table_entries"]) == (
        lab["table"], "pixel4", "median", 8)

    by_serial = mnas(lab, "predict", "mnasnet-a1", "--device", one, "--json")
    by_name = mnas(lab, "predict", "mnasnet-a1", "--device", "pixel4", "--json")
    assert by_serial.rc == 0 and by_name.rc == 0, by_serial.describe() + by_name.describe()
    assert by_serial.json() == by_name.json()
    row = by_serial.json()[0]
    assert (row["predictor_id"], row["table"], row["layers"]) == (fitted["predictor_id"], lab["table"], 18)
    assert row["layers_from_table"] + row["layers_from_learned"] == 18 and row["predicted_ms"] > 0


def test_unknown_serial_is_one_line(lab: dict[str, Any]) -> None:
    run = mnas(lab, "table", "build", "--device", "nosuchphone", "--limit", "1", *TINY,
               "--benchmark-binary", lab["binary"])
    assert run.rc == 2, run.describe()
    assert len(run.errors) == 1 and len(run.stderr) == 1
    assert run.errors[0].startswith("mnas: error: unknown device 'nosuchphone': expected host, all or an attached "
                                    "serial (")
    assert all(serial in run.errors[0] for serial in lab["serials"])
