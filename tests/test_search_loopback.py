"""`mnas search` with a phone: latency measured through the real adb server on a loopback Pixel 4.

An isolated Debian adb server (its own port, HOME and TMPDIR) and one loopback phone stand in
for a plugged-in phone; the search runs as a user would run it (`mnas search --device SERIAL`
in a subprocess). Each child's `.tflite` is pushed, timed by the phone's benchmark_model
(pinned with taskset to the config's big core) and stored with its conditions; a hybrid run
predicts with the predictor of the phone's model (found from its serial) and measures a
seeded share on the phone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elf_fixtures import arm64_binary
from loopback_fixtures import IsolatedAdb, isolated_adb_server, loopback_phones, requires_adb
from test_search_runs import (
    RES,
    assert_each_sample_once,
    make_predictor_db,
    query_db,
    run_cli,
    run_in_process,
    run_row,
    stored,
)

from mnas.bench.device_config import load_config

pytestmark = [pytest.mark.adb, pytest.mark.slow, requires_adb]

QUICK_TIMING = ("--runs", "3", "--warmup", "1", "--min-secs", "0")


@pytest.fixture(scope="module")
def adb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedAdb]:
    with isolated_adb_server(tmp_path_factory.mktemp("adb")) as server:
        yield server


@pytest.fixture(scope="module")
def phone(adb: IsolatedAdb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("phone")
    binary = folder / "benchmark_model"  # pushed, never executed: the loopback phone runs the host runner
    arm64_binary(binary)
    core = sorted(os.sched_getaffinity(0))[0]
    with loopback_phones(adb, folder / "phones", "pixel4", host_core=core) as phones:
        env = {k: v for k, v in adb.env.items() if k not in ("PYTHONPATH", "MNAS_DB", "MNAS_DEVICE_CONFIGS")}
        env["MNAS_LOOPBACK_DIR"] = str(folder / "phones")
        env["MPLBACKEND"] = "Agg"
        yield {"serial": phones[0].serial, "config": load_config(Path(phones[0].config_path)), "binary": binary,
               "env": env}


def phone_measurements(db: Path) -> list[dict[str, Any]]:
    rows = query_db(db, "SELECT d.arch, m.device_id, m.device_name, m.runtime, m.pinned_core, m.num_runs, m.warmup_runs, "
                      "m.median_ms FROM measurements m JOIN models d ON d.sha256 = m.model_sha256 ORDER BY m.id")
    keys = ("arch", "device_id", "device_name", "runtime", "pinned_core", "num_runs", "warmup_runs", "median_ms")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def test_measured_search_times_every_child_on_the_phone(phone: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "mnas.db"
    serial = phone["serial"]
    run = run_cli(phone["env"], "--db", str(db), "search", "--latency", "measured", "--device", serial,
                  "--benchmark-binary", str(phone["binary"]), "--latency-resolution", str(RES), *QUICK_TIMING,
                  "--accuracy", "cheap", "--algorithm", "random", "--samples", "3", "--target-ms", "1",
                  "--name", "phone", "--json", timeout_s=300)
    assert run.rc == 0, run.describe()
    assert run.json()["samples"] == 3
    assert_each_sample_once(db, "phone", 3)
    rows = stored(db, "phone")
    measured = phone_measurements(db)
    assert [m["arch"] for m in measured] == [r.arch for r in rows]  # each child pushed and timed once, in order
    for row, m in zip(rows, measured, strict=True):
        assert row.latency_source == f"measured:{serial}"
        assert row.latency_ms == row.measured_ms == m["median_ms"] > 0
        assert (m["device_id"], m["device_name"], m["runtime"], m["pinned_core"], m["num_runs"], m["warmup_runs"]) == (
            serial, "pixel4", "benchmark_model", phone["config"].pin_core, 3, 1)
    config = run_row(db, "phone")["config"]["latency"]
    assert (config["device"], config["benchmark_binary"]) == (serial, str(phone["binary"].resolve()))


def test_hybrid_search_predicts_for_the_phone_model_and_measures_a_share_on_it(phone: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    db = tmp_path / "mnas.db"
    predictor_id = make_predictor_db(db, RES, device="pixel4")
    serial = phone["serial"]
    run = run_cli(phone["env"], "--db", str(db), "search", "--latency", "hybrid", "--share", "0.5", "--device", serial,
                  "--benchmark-binary", str(phone["binary"]), "--latency-resolution", str(RES), *QUICK_TIMING,
                  "--accuracy", "cheap", "--algorithm", "evolution", "--seed", "3", "--samples", "4",
                  "--target-ms", "1", "--name", "hybrid", "--json", timeout_s=300)
    assert run.rc == 0, run.describe()
    config = run_row(db, "hybrid")["config"]["latency"]
    assert (config["device_name"], config["predictor_id"]) == ("pixel4", predictor_id)  # serial -> phone model
    rows = stored(db, "hybrid")
    rng = np.random.default_rng(3)
    chosen = [float(rng.random(1)[0]) < 0.5 for _ in rows]
    assert len(rows) == 4 and 0 < sum(chosen) < 4
    for row, measure in zip(rows, chosen, strict=True):
        assert row.predicted_ms is not None and row.predicted_ms > 0
        if measure:
            assert row.latency_source in (f"measured:{serial}", f"cache:{serial}")
            assert row.latency_ms == row.measured_ms
        else:
            assert row.latency_source == f"predicted:predictor-{predictor_id}" and row.measured_ms is None
    assert sorted(m["arch"] for m in phone_measurements(db)) == sorted({r.arch for r, m in zip(rows, chosen, strict=True)
                                                                         if m})


def test_unknown_device_with_a_live_adb_server_fails_before_the_run(phone: dict[str, Any], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "mnas.db"
    for name, value in phone["env"].items():
        if name.startswith(("ANDROID_", "ADBUTILS_")):
            monkeypatch.setenv(name, value)
    for kind in ("measured", "predicted"):
        run = run_in_process(capsys, "--db", str(db), "search", "--latency", kind, "--device", "nosuch",
                             "--accuracy", "cheap", "--name", "bad")
        assert (run.rc, run.stderr_lines) == (2, [f"mnas: error: unknown device 'nosuch': expected host, all or an "
                                                  f"attached serial ({phone['serial']})"]), run.describe()
        assert run.elapsed_s < 10 and run_row(db, "bad") is None
