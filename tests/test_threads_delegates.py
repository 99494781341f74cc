"""Threads, delegates and extra benchmark_model flags: conditions, reuse key, phone command, host, loopback.

The acceptance test at the bottom runs `mnas bench --threads 2 --delegate xnnpack` on a
loopback Pixel 4 through the real adb server: the runner must receive `--num_threads=2
--use_xnnpack=true` under the mask of the config's two fastest cores (cpu6-7 by the rule:
the prime cpu7 and the fastest A76, mask c0), the measurement must be stored with those
conditions, and a run under other conditions must not reuse it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb
from tflite_fixtures import small_conv

from mnas.bench.adb.run import benchmark_command
from mnas.bench.delegates import benchmark_flags, delegate_fallback, delegated_kernels
from mnas.bench.host import HostDevice, xnnpack_facts
from mnas.bench.host_worker import XNNPACK_LOG_LINE
from mnas.bench.measure import find_reusable
from mnas.bench.store import ResultsStore
from mnas.bench.topology import cores_mask, fastest_cores
from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement, parse_bm_args
from mnas.errors import MnasError

PIXEL4_FREQS = {0: 1785600, 1: 1785600, 2: 1785600, 3: 1785600, 4: 2419200, 5: 2419200, 6: 2419200, 7: 2841600}
QUICK_CONFIG = {"warmup_runs": 1, "num_runs": 3, "min_secs": 0.0}


# ============================================================================ conditions and the reuse key


def test_default_conditions_key_is_unchanged() -> None:
    # the exact key every stored measurement was written under before threads/delegates were options
    assert BenchConfig().conditions_key() == "threads=1;warmup=5;runs=50;min_secs=1;core=auto"
    assert BenchConfig(delegate="default", bm_args=()).conditions_key() == BenchConfig().conditions_key()


def test_threads_delegate_and_flags_enter_the_key() -> None:
    key = BenchConfig(num_threads=2, delegate="xnnpack").conditions_key()
    assert key == "threads=2;warmup=5;runs=50;min_secs=1;core=auto;delegate=xnnpack"
    none = BenchConfig(delegate="none").conditions_key()
    assert none.endswith(";delegate=none") and none != BenchConfig().conditions_key()
    # the order --bm-arg flags were given in does not make another condition
    a = BenchConfig(bm_args=parse_bm_args(["use_caching=true", "max_secs=10"]))
    b = BenchConfig(bm_args=parse_bm_args(["max_secs=10", "use_caching=true"]))
    assert a.conditions_key() == b.conditions_key() == (
        "threads=1;warmup=5;runs=50;min_secs=1;core=auto;bm_args=max_secs=10,use_caching=true")


def test_config_survives_the_json_round_trip_of_a_stored_measurement() -> None:
    config = BenchConfig(num_threads=2, delegate="gpu", bm_args=parse_bm_args(["gpu_precision_loss_allowed=false"]))
    measurement = _measurement(config)
    back = Measurement.from_dict(json.loads(json.dumps(measurement.to_dict())))
    assert back.config == config
    assert back.config.conditions_key() == config.conditions_key()


@pytest.mark.parametrize(("items", "message"), [
    (["use_caching"], "--bm-arg 'use_caching': expected FLAG=VALUE"),
    (["Use-Caching=1"], "flag name 'Use-Caching': expected lowercase letters and underscores"),
    (["num_threads=4"], "mnas sets --num_threads itself: expected --threads"),
    (["use_gpu=true"], "mnas sets --use_gpu itself"),
    (["a_b=1", "a_b=2"], "--bm-arg a_b: given twice"),
    (["a_b="], "expected a non-empty value on one line"),
])
def test_bad_bm_args_are_one_clear_line(items: list[str], message: str) -> None:
    with pytest.raises(MnasError) as info:
        parse_bm_args(items)
    assert message in str(info.value)


def test_unknown_delegate_is_refused() -> None:
    with pytest.raises(MnasError, match="delegate 'hexagon': expected one of default, none, xnnpack, gpu, nnapi"):
        BenchConfig(delegate="hexagon")


def test_find_reusable_matches_only_the_same_execution_conditions(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "mnas.db")
    profile = DeviceProfile("SER", "pixel4", "adb", "Pixel 4", "sm8150 cpu7", 7, 2841600, "benchmark_model", "sha256:x")
    store.upsert_device(profile)
    two = BenchConfig(num_threads=2, delegate="xnnpack", **QUICK_CONFIG)
    stored_id = store.add_measurement(_measurement(two))
    assert [i for _, i in find_reusable(store, profile, "ab" * 32, two)] == [stored_id]
    for other in (BenchConfig(**QUICK_CONFIG), BenchConfig(num_threads=2, **QUICK_CONFIG),
                  BenchConfig(delegate="xnnpack", **QUICK_CONFIG),
                  BenchConfig(num_threads=2, delegate="xnnpack", bm_args=parse_bm_args(["use_caching=true"]),
                              **QUICK_CONFIG)):
        assert find_reusable(store, profile, "ab" * 32, other) == [], other.conditions_key()


def test_measured_search_latency_times_under_the_runs_execution_conditions() -> None:
    from mnas.search.run_config import RunConfig, new_run_config

    config = new_run_config(latency="measured", accuracy="cheap", latency_threads=2, delegate="none",
                            bm_args=("use_caching=true",))
    bench = RunConfig.from_json(config.to_json()).latency.bench_config()  # as a resumed run rebuilds it
    assert (bench.num_threads, bench.delegate, bench.bm_args) == (2, "none", (("use_caching", "true"),))
    assert bench.conditions_key() == "threads=2;warmup=3;runs=20;min_secs=0.5;core=auto;delegate=none;" \
                                     "bm_args=use_caching=true"
    assert new_run_config(accuracy="cheap").latency.bench_config().conditions_key() == \
        "threads=1;warmup=3;runs=20;min_secs=0.5;core=auto"  # a search's default key is unchanged


# ============================================================================ cores


def test_threads_grow_the_mask_through_the_fastest_cores() -> None:
    assert fastest_cores(PIXEL4_FREQS, 1) == [7]
    assert fastest_cores(PIXEL4_FREQS, 2) == [6, 7]  # prime + the highest-id A76
    assert fastest_cores(PIXEL4_FREQS, 4) == [4, 5, 6, 7]
    assert fastest_cores(PIXEL4_FREQS, 2, first=4) == [4, 7]  # --core 4: it, then the fastest other
    assert cores_mask([6, 7]) == "c0" and cores_mask([7]) == "80" and cores_mask([2, 3]) == "c"
    with pytest.raises(ValueError, match="9 threads need 9 cores, but only 8 are available"):
        fastest_cores(PIXEL4_FREQS, 9)


def test_phone_command_carries_threads_mask_delegate_and_quoted_flags() -> None:
    config = BenchConfig(num_threads=2, delegate="xnnpack",
                         bm_args=parse_bm_args(["delegate_serialize_dir=/data/a b;rm -rf /"]), **QUICK_CONFIG)
    command = benchmark_command("/data/local/tmp/mnas/benchmark_model", "/m.tflite", [6, 7], config)
    argv = shlex.split(command.split("; ", 1)[1])
    assert argv[:3] == ["taskset", "c0", "/data/local/tmp/mnas/benchmark_model"]
    assert "--num_threads=2" in argv and "--use_xnnpack=true" in argv
    assert argv[-1] == "--delegate_serialize_dir=/data/a b;rm -rf /"  # one argument: quoted, never run
    assert benchmark_flags(BenchConfig()) == []  # the default adds no flag: today's command
    assert benchmark_flags(BenchConfig(delegate="none")) == ["--use_xnnpack=false"]
    assert benchmark_flags(BenchConfig(delegate="gpu")) == ["--use_gpu=true"]
    assert benchmark_flags(BenchConfig(delegate="nnapi")) == ["--use_nnapi=true"]


# ============================================================================ what the log says about the delegate


def test_fallback_is_read_from_benchmark_model_lines() -> None:
    though = "INFO: Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate."
    assert delegate_fallback("nnapi", "INFO: Created TensorFlow Lite delegate for NNAPI.\n" + though) == though[6:]
    partial = ("INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the "
               "delegate w/ 3 delegate kernels.")
    assert delegate_fallback("gpu", partial) is None and delegated_kernels("gpu", partial) == 3
    full = "INFO: Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate."
    assert delegate_fallback("xnnpack", full) is None and delegated_kernels("xnnpack", full) == 1
    assert delegate_fallback("gpu", "Applied GPU delegate.") is None  # TF <= 2.2 wording
    unsupported = "INFO: GPU acceleration is unsupported on this platform."
    assert delegate_fallback("gpu", "INFO: STARTING!\n" + unsupported) == unsupported[6:]
    assert delegate_fallback("gpu", "INFO: STARTING!") == "the log has no line saying the GPU delegate was applied"
    assert delegate_fallback("default", "") is None and delegate_fallback("none", "") is None


def test_runner_honours_xnnpack_off_and_says_gpu_falls_back(tmp_path: Path) -> None:
    # each run is its own process, as on a phone (LiteRT logs its XNNPACK line once per process)
    model = small_conv(tmp_path)
    base = [f"--graph={model}", "--num_runs=2", "--warmup_runs=1", "--min_secs=0", "--warmup_min_secs=0"]

    def runner(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mnas.bench.bm_runner", *base, *extra], capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    xnnpack = runner("--use_xnnpack=true", "--num_threads=2")
    assert "Num threads: [2]" in xnnpack and "Use xnnpack: [1]" in xnnpack
    assert delegate_fallback("xnnpack", xnnpack) is None
    reason = delegate_fallback("gpu", runner("--use_gpu=true"))
    assert reason is not None and "GPU acceleration is not available in this runner" in reason
    off = runner("--use_xnnpack=false")
    assert "Use xnnpack: [0]" in off and "Explicitly applied" not in off


# ============================================================================ the host


def test_host_turns_xnnpack_off_with_the_resolver_without_default_delegates(tmp_path: Path) -> None:
    # LiteRT logs creating its XNNPACK delegate once per process; every host benchmark is a fresh child
    model, device = small_conv(tmp_path), HostDevice()
    applied = {delegate: device.benchmark(model, BenchConfig(delegate=delegate, **QUICK_CONFIG)).extra
               for delegate in ("default", "xnnpack", "none")}
    assert applied["default"] == {**applied["default"], "xnnpack_applied": True}
    assert (applied["xnnpack"]["xnnpack_applied"], applied["xnnpack"]["delegate_fallback"]) == (True, None)
    assert (applied["none"]["xnnpack_applied"], applied["none"]["delegate_fallback"]) == (False, None)
    on = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    assert XNNPACK_LOG_LINE in on
    assert xnnpack_facts("xnnpack", "")["delegate_fallback"]  # asked for, not created: flagged
    assert xnnpack_facts("none", on)["delegate_fallback"]  # off asked for, yet created: flagged


@pytest.mark.parametrize(("config", "message"), [
    (BenchConfig(delegate="gpu"), "--delegate gpu: the host's LiteRT Python interpreter has no GPU delegate"),
    (BenchConfig(delegate="nnapi"), "has no NNAPI delegate: expected one of default, none, xnnpack on the host"),
    (BenchConfig(bm_args=parse_bm_args(["use_caching=true"])), "--bm-arg use_caching=true: benchmark_model flags go "
                                                               "to phones"),
])
def test_host_refuses_what_it_cannot_run(tmp_path: Path, config: BenchConfig, message: str) -> None:
    with pytest.raises(MnasError) as info:
        HostDevice().benchmark(small_conv(tmp_path), config)
    assert message in str(info.value)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_host_pins_two_threads_to_two_cores(tmp_path: Path) -> None:
    device = HostDevice()
    config = BenchConfig(num_threads=2, delegate="xnnpack", **QUICK_CONFIG)
    measurement = device.benchmark(small_conv(tmp_path), config)
    expected = device.choose_cores(config)
    assert len(expected) == 2 and device.choose_core(config) in expected
    assert list(measurement.pinned_cores) == expected
    assert measurement.extra["xnnpack_applied"] is True and measurement.config.num_threads == 2
    with pytest.raises(MnasError, match=r"host: --threads 99: 99 threads need 99 cores"):
        device.benchmark(small_conv(tmp_path), BenchConfig(num_threads=99))


# ============================================================================ loopback phone (acceptance)

# A benchmark_model stand-in that logs, per call, the taskset mask it ran under and its arguments.
MASK_RUNNER = '''\
import os, runpy, sys
from pathlib import Path

root = Path(os.environ["MNAS_LB_ROOT"])
with open(root.parent / "bm_masks.log", "a") as log:
    log.write(os.environ.get("MNAS_LB_TASKSET_MASK", "-") + " " + " ".join(sys.argv[1:]) + "\\n")
sys.argv = ["benchmark_model", *sys.argv[1:]]
runpy.run_module("mnas.bench.bm_runner", run_name="__main__")
'''


@pytest.fixture(scope="module")
def phone_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from test_phone_integration import cli_env

    folder = tmp_path_factory.mktemp("threads")
    runner = folder / "mask_runner.py"
    runner.write_text(MASK_RUNNER)
    with isolated_adb_server(folder / "adb") as adb, \
            loopback_phones(adb, folder / "phones", "pixel4", bm_runner=str(runner)) as phones:
        yield {"adb": adb, "phone": phones[0], "env": cli_env(adb, folder / "phones"), "folder": folder}


def _calls(phone: Any) -> list[tuple[str, list[str]]]:
    path = Path(phone.root).parent / "bm_masks.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1].split()) for line in lines]


@pytest.mark.adb
@requires_adb
def test_loopback_two_threads_xnnpack_reach_the_runner_and_are_a_condition(phone_lab: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    from test_phone_integration import QUICK, fake_binary, run_cli, stored_rows

    phone, env, db = phone_lab["phone"], phone_lab["env"], tmp_path / "mnas.db"
    model, binary = small_conv(tmp_path), fake_binary(tmp_path)
    common = ("--db", str(db), "bench", str(model), "--device", phone.serial, *QUICK, "--benchmark-binary", str(binary),
              "--json")
    before = len(_calls(phone))
    run = run_cli(env, *common, "--threads", "2", "--delegate", "xnnpack", timeout_s=120)
    assert run.rc == 0, run.describe()
    [row] = run.json()
    # the runner got the flags, under the mask of the config's two fastest cores (prime cpu7 + A76 cpu6)
    [(mask, argv)] = _calls(phone)[before:]
    assert mask == "c0" and "--num_threads=2" in argv and "--use_xnnpack=true" in argv
    assert (row["pinned_cores"], row["taskset_mask"], row["threads"], row["delegate"]) == ([6, 7], "c0", 2, "xnnpack")
    assert row["stored_id"] is not None and row["delegate_fallback"] is False and row["error"] is None
    # stored with those conditions
    [stored] = stored_rows(db)
    assert stored["id"] == row["stored_id"] and stored["threads"] == 2 and stored["pinned_cores"] == "6,7"
    assert stored["conditions_key"].endswith(";delegate=xnnpack") and "threads=2;" in stored["conditions_key"]
    assert stored["measurement"]["config"]["delegate"] == "xnnpack"
    assert stored["measurement"]["extra"]["delegate_fallback"] is None

    # the same conditions again: reused, nothing runs on the phone
    again = run_cli(env, *common, "--threads", "2", "--delegate", "xnnpack", timeout_s=120)
    assert again.rc == 0 and again.json()[0]["reused"] is True and len(_calls(phone)) == before + 1
    # other conditions: not reused, measured again under their own mask and flags
    for extra, expected_mask, absent in ((("--threads", "1", "--delegate", "xnnpack"), "80", "--num_threads=2"),
                                         (("--threads", "2"), "c0", "--use_xnnpack=true")):
        other = run_cli(env, *common, *extra, timeout_s=120)
        assert other.rc == 0, other.describe()
        assert other.json()[0]["reused"] is False and other.json()[0]["stored_id"] not in (None, row["stored_id"])
        mask, argv = _calls(phone)[-1]
        assert mask == expected_mask and absent not in argv
    assert len(stored_rows(db)) == 3


@pytest.mark.adb
@requires_adb
def test_loopback_delegate_that_falls_back_is_flagged_not_stored(phone_lab: dict[str, Any], tmp_path: Path) -> None:
    from test_phone_integration import QUICK, fake_binary, run_cli, stored_rows

    phone, env, db = phone_lab["phone"], phone_lab["env"], tmp_path / "mnas.db"
    model, binary = small_conv(tmp_path), fake_binary(tmp_path)
    run = run_cli(env, "--db", str(db), "bench", str(model), "-s", phone.serial, *QUICK, "--benchmark-binary",
                  str(binary), "--delegate", "gpu", "--json", timeout_s=120)
    assert run.rc == 1, run.describe()
    [row] = run.json()
    assert row["delegate_fallback"] is True and row["stored_id"] is None and row["median_ms"] > 0
    assert "GPU acceleration is not available in this runner" in row["delegate_fallback_reason"]
    assert "--delegate gpu was not applied, the run fell back to the CPU" in row["error"]
    assert len(run.errors) == 1 and "not stored as a gpu result" in run.errors[0]
    assert "--use_gpu=true" in _calls(phone)[-1][1]
    assert stored_rows(db) == []  # never stored as a GPU figure (and not retried: one call)
    assert sum("--use_gpu=true" in argv for _, argv in _calls(phone)) == 1


# ============================================================================ helpers


def _measurement(config: BenchConfig) -> Measurement:
    stats = LatencyStats.from_runs([1000.0, 1100.0, 1200.0])
    return Measurement(device_id="SER", device_name="pixel4", model_sha256="ab" * 32, model_path="/m.tflite",
                       runtime="benchmark_model", runtime_version="sha256:x", config=config, stats=stats,
                       pinned_cores=(6, 7) if config.num_threads == 2 else (7,))
