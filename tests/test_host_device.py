"""The host device: sysfs readers, runtime choice, the timing loop and the pinned child."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tflite_fixtures import add_model_bytes, small_conv, write_model

from mnas.bench import runtime as runtime_module
from mnas.bench.host import HostDevice, check_tflite_file
from mnas.bench.host_worker import pin_to_core, prepare_inputs, time_model
from mnas.bench.sysfs import HostSysfs
from mnas.bench.topology import parse_cpu_list
from mnas.bench.types import BenchConfig, Device, Measurement
from mnas.errors import MeasurementError, MnasError

ALLOWED = sorted(os.sched_getaffinity(0))
FAST = BenchConfig(warmup_runs=2, num_runs=20, min_secs=0.0, timeout_s=120.0)


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_host(root: Path, max_khz: dict[int, int], cur_khz: dict[int, int], temps: dict[str, int]) -> HostSysfs:
    """A /proc + /sys tree with cpufreq for the given cores and thermal zones (type -> millideg)."""
    _write(root, "proc/cpuinfo", "processor\t: 0\nvendor_id\t: Fake\nmodel name\t: Fake CPU 9000 @ 3.00GHz\n\n")
    cores = sorted(set(max_khz) | set(cur_khz))
    _write(root, "sys/devices/system/cpu/online", ",".join(str(c) for c in cores) + "\n")
    for core, khz in max_khz.items():
        _write(root, f"sys/devices/system/cpu/cpu{core}/cpufreq/cpuinfo_max_freq", f"{khz}\n")
    for core, khz in cur_khz.items():
        _write(root, f"sys/devices/system/cpu/cpu{core}/cpufreq/scaling_cur_freq", f"{khz}\n")
    for i, (kind, millideg) in enumerate(temps.items()):
        _write(root, f"sys/class/thermal/thermal_zone{i}/type", f"{kind}\n")
        _write(root, f"sys/class/thermal/thermal_zone{i}/temp", f"{millideg}\n")
    return HostSysfs(root)


# ----------------------------------------------------------------------------- sysfs


def test_sysfs_reads_a_fake_tree(tmp_path: Path) -> None:
    fs = fake_host(tmp_path, {0: 1800000, 1: 2400000}, {0: 1200000, 1: 2300000}, {"cpu-0-0": 41500, "battery": 30000})
    # two zones sharing a type are both kept; a zone whose temp cannot be read is left out
    _write(tmp_path, "sys/class/thermal/thermal_zone7/type", "cpu-0-0\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone7/temp", "44000\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone8/type", "gpu\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone8/temp", "invalid\n")
    assert fs.cpu_model() == "Fake CPU 9000 @ 3.00GHz"
    assert fs.online_cores() == [0, 1]
    assert fs.max_freqs_khz([0, 1]) == {0: 1800000, 1: 2400000}
    assert fs.cur_freq_khz(1) == 2300000
    assert fs.temperatures_c() == {"cpu-0-0/thermal_zone0": 41.5, "battery": 30.0, "cpu-0-0/thermal_zone7": 44.0}


def test_sysfs_missing_files_give_none(tmp_path: Path) -> None:
    fs = HostSysfs(tmp_path)
    assert fs.max_freq_khz(0) is None and fs.cur_freq_khz(3) is None
    assert fs.online_cores() is None
    assert fs.temperatures_c() == {}
    assert isinstance(fs.cpu_model(), str)  # platform.processor() fallback


def test_sysfs_arm_cpuinfo_and_cpu_lists(tmp_path: Path) -> None:
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 38.40\n\nHardware\t: Qualcomm Technologies, Inc SM8150\n")
    assert HostSysfs(tmp_path).cpu_model() == "Qualcomm Technologies, Inc SM8150"
    assert parse_cpu_list("0-3,5,7-8\n") == [0, 1, 2, 3, 5, 7, 8]
    with pytest.raises(ValueError):
        parse_cpu_list("0-a")


# ----------------------------------------------------------------------------- runtime


def test_runtime_prefers_litert_with_its_own_version() -> None:
    runtime_module.load_runtime.cache_clear()
    rt = runtime_module.load_runtime()
    assert rt.name == "ai-edge-litert"
    assert rt.version == importlib.metadata.version("ai-edge-litert")
    from ai_edge_litert.interpreter import Interpreter

    assert rt.interpreter is Interpreter


def test_runtime_fallback_never_borrows_litert_version(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = type("Interpreter", (), {})  # type: ignore[attr-defined]
    real_import = importlib.import_module

    def only_tflite_runtime(name: str, *args: object) -> object:
        if name.startswith("ai_edge_litert"):
            raise ImportError(name)
        if name == "tflite_runtime.interpreter":
            return fake
        return real_import(name, *args)

    monkeypatch.setattr(runtime_module.importlib, "import_module", only_tflite_runtime)
    runtime_module.load_runtime.cache_clear()
    try:
        rt = runtime_module.load_runtime()
        assert (rt.interpreter, rt.name) == (fake.Interpreter, "tflite-runtime")  # type: ignore[attr-defined]
        assert rt.version == "unknown"  # not installed as a distribution here: never litert's 2.x
    finally:
        runtime_module.load_runtime.cache_clear()


def test_runtime_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(name: str, *args: object) -> object:
        raise ImportError(name)

    monkeypatch.setattr(runtime_module.importlib, "import_module", nothing)
    runtime_module.load_runtime.cache_clear()
    try:
        with pytest.raises(MnasError) as info:
            runtime_module.load_runtime()
        assert "pip install ai-edge-litert" in str(info.value)
    finally:
        runtime_module.load_runtime.cache_clear()


# ----------------------------------------------------------------------------- model checks


def test_model_file_checks(tmp_path: Path) -> None:
    with pytest.raises(MnasError) as info:
        check_tflite_file(tmp_path / "missing.tflite")
    assert str(info.value) == f"{tmp_path / 'missing.tflite'}: no such model file"
    text = tmp_path / "notes.tflite"
    text.write_text("hello world, not a model")
    with pytest.raises(MnasError) as info:
        check_tflite_file(text)
    assert str(info.value) == (
        f"{text}: not a TFLite model (file identifier b'o wo' at bytes 4..8, expected b'TFL3')"
    )
    with pytest.raises(MnasError, match="not a file"):
        check_tflite_file(tmp_path)
    check_tflite_file(small_conv(tmp_path))


def test_corrupt_flatbuffer_is_one_line_error_from_the_child(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x01" * 200)
    with pytest.raises(MnasError) as info:
        HostDevice().benchmark(bad, FAST)
    message = str(info.value)
    assert message.startswith(f"{bad}: the interpreter could not load the model: ")
    assert "\n" not in message and not isinstance(info.value, MeasurementError)


# ----------------------------------------------------------------------------- timing loop


def test_time_model_follows_benchmark_model_rules(tmp_path: Path) -> None:
    model = small_conv(tmp_path)
    by_count = time_model(model, warmup_runs=3, num_runs=25, min_secs=0.0)
    assert len(by_count.warmup_us) == 3 and len(by_count.runs_us) == 25
    assert by_count.first_us == by_count.warmup_us[0] and by_count.init_us > 0
    assert by_count.runtime == "ai-edge-litert" and by_count.num_threads == 1
    assert all(us > 0 for us in by_count.runs_us)
    # both conditions: at least num_runs AND at least min_secs
    by_time = time_model(model, warmup_runs=0, num_runs=5, min_secs=0.2)
    assert len(by_time.warmup_us) == 1  # the first inference always happens
    assert by_time.timed_wall_s >= 0.2 and len(by_time.runs_us) > 5
    # max_secs ends the phase even when num_runs is not reached
    capped = time_model(model, warmup_runs=1, num_runs=10**9, min_secs=0.0, max_secs=0.05)
    assert 0 < len(capped.runs_us) < 10**9 and capped.timed_wall_s < 1.0
    # the sum of the runs never exceeds the phase's wall time
    assert sum(by_time.runs_us) / 1e6 <= by_time.timed_wall_s


def test_inputs_are_random_with_a_fixed_seed(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    model = write_model(tmp_path / "add.tflite", add_model_bytes())
    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    prepare_inputs(interpreter, seed=0)
    interpreter.invoke()
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.5, 0.5, size=(1, 16, 16, 8)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, size=(1, 16, 16, 8)).astype(np.float32)
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, a + b, rtol=1e-6)


def test_pinning_to_a_missing_core_fails_clearly() -> None:
    with pytest.raises(MeasurementError) as info:
        pin_to_core(100_000)
    assert str(info.value).startswith("could not pin the benchmark process to core 100000: ")


# ----------------------------------------------------------------------------- HostDevice


def test_host_device_measures_pinned_in_a_child(tmp_path: Path) -> None:
    model = small_conv(tmp_path)
    device = HostDevice()
    assert isinstance(device, Device)
    m = device.benchmark(model, FAST)
    assert isinstance(m, Measurement)
    assert (m.device_id, m.device_name, m.runtime) == ("host", "host", "ai-edge-litert")
    assert m.runtime_version == importlib.metadata.version("ai-edge-litert")
    assert m.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    expected_core = device.choose_core(FAST)
    assert m.pinned_cores == (expected_core,)
    assert m.extra["child_last_cpu"] == expected_core  # the child really ran there
    assert m.runs_us is not None and len(m.runs_us) == m.stats.count >= 20
    assert m.stats.min_us <= m.stats.median_us <= m.stats.max_us  # type: ignore[operator]
    assert m.stats.mean_us == pytest.approx(sum(m.runs_us) / len(m.runs_us))
    assert m.first_us is not None and m.first_us > 0 and m.init_us is not None and m.init_us > 0
    assert m.wall_s is not None and m.wall_s >= m.extra["timed_wall_s"]
    assert m.cpu_model == device.sysfs.cpu_model()
    assert Measurement.from_dict(m.to_dict()) == m


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two usable cores")
def test_explicit_core_and_device_core_are_honoured(tmp_path: Path) -> None:
    model = small_conv(tmp_path)
    low = ALLOWED[0]
    m = HostDevice().benchmark(model, BenchConfig(warmup_runs=1, num_runs=5, min_secs=0.0, core=low))
    assert m.pinned_cores == (low,) and m.extra["child_last_cpu"] == low
    m = HostDevice(core=low).benchmark(model, FAST)
    assert m.pinned_cores == (low,)


def test_unavailable_core_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(MnasError) as info:
        HostDevice(core=100_000).benchmark(small_conv(tmp_path), FAST)
    allowed = ",".join(str(c) for c in ALLOWED)
    assert str(info.value) == f"core 100000 is not available to this process (allowed cores: {allowed})"


def test_fastest_core_by_sysfs_and_throttle_flag(tmp_path: Path) -> None:
    # the lowest allowed core is the fastest in this fake tree, and it runs at half speed
    max_khz = {core: (3000000 if core == ALLOWED[0] else 2000000) for core in ALLOWED}
    cur_khz = {core: 1500000 for core in ALLOWED}
    fs = fake_host(tmp_path / "root", max_khz, cur_khz, {"cpu": 55000})
    device = HostDevice(sysfs=fs)
    assert device.choose_core(BenchConfig()) == ALLOWED[0]
    tmp_path.joinpath("m").mkdir()
    m = device.benchmark(small_conv(tmp_path / "m"), FAST)
    assert m.pinned_cores == (ALLOWED[0],)
    assert (m.max_freq_khz, m.freq_before_khz, m.freq_after_khz) == (3000000, 1500000, 1500000)
    assert m.throttled is True
    assert m.temps_before_c == {"cpu": 55.0} == m.temps_after_c
    assert m.cpu_model == "Fake CPU 9000 @ 3.00GHz"
    profile = device.profile()
    assert (profile.pinned_core, profile.max_freq_khz, profile.kind) == (ALLOWED[0], 3000000, "host")


def test_timeout_kills_the_child(tmp_path: Path) -> None:
    model = small_conv(tmp_path)
    with pytest.raises(MeasurementError) as info:
        HostDevice().benchmark(model, BenchConfig(num_runs=10**9, min_secs=0.0, timeout_s=0.5))
    assert str(info.value).startswith(f"{model}: benchmark on host core ")
    assert str(info.value).endswith("did not finish within timeout_s=0.5 s (killed)")


def test_child_runs_with_this_interpreter() -> None:
    assert HostDevice().python == sys.executable


def test_invalid_settings_are_rejected_before_spawning(tmp_path: Path) -> None:
    with pytest.raises(MnasError) as info:
        HostDevice().benchmark(small_conv(tmp_path), BenchConfig(num_runs=0))
    assert str(info.value).startswith("invalid benchmark settings: num_runs=0 warmup_runs=5 num_threads=1")
