"""AdbDevice against a fake adbutils phone: exact commands, masks, pushes, cleanup, failures."""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import time
from pathlib import Path

import pytest
from adbutils.errors import AdbConnectionError
from click.testing import CliRunner
from elf_fixtures import elf_header
from fake_adb import TRUNCATED_OUTPUT, FakeAdbClient, FakePhone, Reply

from mnas.bench import adb as ad
from mnas.bench.adb import (
    AdbDevice,
    adb_client,
    build_probed_config,
    discover_phones,
    parse_cpu_probe,
    parse_getprop,
    parse_thermal_output,
)
from mnas.bench.device_config import dump_config, load_all, load_config
from mnas.bench.topology import parse_cpu_list
from mnas.bench.types import BenchConfig, Measurement, latency_ms
from mnas.errors import MeasurementError, MnasError

CONFIGS = load_all()
REMOTE = "/data/local/tmp/mnas"
BINARY = f"{REMOTE}/benchmark_model"
STALE_MODELS_SWEEP = (f'for f in {REMOTE}/models/*.tflite; do case "${{f##*/}}" in {"[0-9a-f]" * 16}.tflite) '
                      'rm -f "$f" && echo "${f##*/}";; esac; done; true')
FAST = BenchConfig(warmup_runs=5, num_runs=50, min_secs=1.0, timeout_s=5.0)


def make_phone(tmp_path: Path, name: str = "pixel4", **kwargs) -> FakePhone:
    config = CONFIGS[name]
    phone = FakePhone(serial=kwargs.pop("serial", "SER" + name.upper()),
                      props=dict(config.properties), root=tmp_path / "phone", **kwargs)
    freqs = {core: config.max_freq_khz(core) for core in config.cores}
    phone.set_cpus(freqs)
    phone.set_temps({"cpu-1-0-usr": 38000, "battery": 30500, "skin-therm": 33000})
    return phone


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(elf_header() + b"fake benchmark_model v1")
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 fake model bytes")
    return {"binary": binary, "model": model}


def device_for(phone: FakePhone, binary: Path | None, name: str | None = "pixel4",
               **kwargs) -> AdbDevice:
    kwargs.setdefault("retry_delay_s", 0.0)
    kwargs.setdefault("poll_s", 0.0)
    config = CONFIGS[name] if name else None
    return AdbDevice(phone.serial, config, FakeAdbClient(phone), benchmark_binary=binary, **kwargs)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def thermal_cmd(core: int) -> str:
    cpufreq = f"/sys/devices/system/cpu/cpu{core}/cpufreq"
    return (
        "for z in /sys/class/thermal/thermal_zone*; do "
        'echo "__Z|${z##*/}|$(cat "$z/type" 2>/dev/null)|$(cat "$z/temp" 2>/dev/null)"; done; '
        f'echo "__F|$(cat {cpufreq}/scaling_cur_freq 2>/dev/null)|$(cat {cpufreq}/scaling_max_freq 2>/dev/null)"'
    )


# --------------------------------------------------------------------------- the happy path


def test_benchmark_sends_exact_commands_and_records_conditions(tmp_path, files):
    phone = make_phone(tmp_path)
    device = device_for(phone, files["binary"])
    m = device.benchmark(files["model"], FAST)

    model_sha = sha(files["model"])
    remote_model = f"{REMOTE}/models/{model_sha[:16]}.tflite"
    assert phone.commands == [
        f"mkdir -p {REMOTE}/models",
        STALE_MODELS_SWEEP,
        f"chmod 755 {BINARY}",
        "getprop",
        thermal_cmd(7),
        f"echo __MNAS_PID=$$; taskset 80 {BINARY} --graph={remote_model} --num_threads=1 "
        "--warmup_runs=5 --num_runs=50 --min_secs=1",
        thermal_cmd(7),
        f"rm -f {remote_model}",
    ]
    assert phone.pushes == [(BINARY, files["binary"].stat().st_size),
                            (remote_model, files["model"].stat().st_size)]
    assert all(s.startswith("shell,v2:") for s in phone.services)
    # every adb transport was opened with a timeout
    assert phone.transport_timeouts and None not in phone.transport_timeouts
    assert remote_model not in phone.files  # cleaned up
    # figures: the sample output's numbers, exactly
    assert m.stats.count == 50
    assert m.stats.mean_us == pytest.approx(20810.2)
    assert m.stats.std_us == 140 and m.stats.min_us == 20598 and m.stats.max_us == 21302
    assert m.median_ms is None  # no median printed: the mean is never passed off as one
    with pytest.raises(MnasError, match=r"no median \(the tool printed only its mean, 20\.810 ms\)"):
        latency_ms(m)  # a phone's headline statistic is the median
    assert (m.init_us, m.first_us, m.warmup_avg_us) == (5123, 31250, 21400.5)
    assert m.peak_memory_mb == pytest.approx(15.1)
    # conditions
    assert (m.device_id, m.device_name, m.runtime) == (phone.serial, "pixel4", "benchmark_model")
    assert m.runtime_version == "sha256:" + sha(files["binary"])[:12]
    assert m.model_sha256 == model_sha and m.pinned_cores == (7,)
    assert m.temps_before_c == {"cpu-1-0-usr": 38.0, "battery": 30.5, "skin-therm": 33.0}
    assert m.temps_after_c == m.temps_before_c
    assert (m.freq_before_khz, m.freq_after_khz, m.max_freq_khz) == (2841600, 2841600, 2841600)
    assert m.throttled is False
    assert m.cpu_model == "msmnile cpu7 (prime)"
    assert m.extra["attempts"] == 1 and m.extra["shell_protocol"] == "v2"
    assert m.extra["taskset_mask"] == "80"
    assert Measurement.from_dict(m.to_dict()) == m


def test_op_profiling_flag_and_core_override(tmp_path, files):
    phone = make_phone(tmp_path)
    device = device_for(phone, files["binary"])
    device.benchmark(files["model"], BenchConfig(num_runs=10, warmup_runs=1, min_secs=0.5,
                                                 profile_ops=True, core=4, num_threads=1))
    argv = phone.benchmarks[-1]
    assert argv[:2] == ["taskset", "10"]
    assert argv[-4:] == ["--warmup_runs=1", "--num_runs=10", "--min_secs=0.5",
                         "--enable_op_profiling=true"]
    with pytest.raises(MnasError, match=r"core 9 requested, but the phone has cores 0\.\.7"):
        device.benchmark(files["model"], BenchConfig(core=9))


EXPECTED_MASKS = {"pixel1": "8", "pixel2": "80", "pixel3": "80", "pixel4": "80",
                  "pixel5": "80", "pixel6": "80", "pixel7": "80", "pixel8": "100"}


@pytest.mark.parametrize("name", sorted(EXPECTED_MASKS))
def test_mask_for_each_shipped_pixel(tmp_path, files, name):
    phone = make_phone(tmp_path, name)
    device = device_for(phone, files["binary"], name)
    m = device.benchmark(files["model"], FAST)
    assert phone.benchmarks[0][:2] == ["taskset", EXPECTED_MASKS[name]]
    assert m.pinned_cores == (int(EXPECTED_MASKS[name], 16).bit_length() - 1,)


def test_unconfigured_phone_pins_to_probed_fastest_core(tmp_path, files):
    phone = make_phone(tmp_path, "pixel8")
    device = device_for(phone, files["binary"], name=None)
    m = device.benchmark(files["model"], FAST)
    assert phone.benchmarks[0][:2] == ["taskset", "100"]
    assert m.device_name == "shiba" and m.max_freq_khz == 2910000


# --------------------------------------------------------------------------- the binary


def test_binary_is_pushed_once_and_skipped_when_hash_matches(tmp_path, files):
    phone = make_phone(tmp_path)
    device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert [p for p, _ in phone.pushes].count(BINARY) == 1

    # a fresh session: same binary on the phone -> hash compared, no push, no chmod
    phone.commands.clear()
    phone.pushes.clear()
    device = device_for(phone, files["binary"])
    device.benchmark(files["model"], FAST)
    device.benchmark(files["model"], FAST)  # same session: not even re-checked
    assert [p for p, _ in phone.pushes].count(BINARY) == 0
    assert phone.commands.count(f"sha256sum {BINARY}") == 1
    assert f"chmod 755 {BINARY}" not in phone.commands

    # same bytes but not executable (pushed by hand with mode 644): chmod, no push
    phone.files[BINARY] = (phone.files[BINARY][0], 0o644)
    phone.commands.clear()
    device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert f"chmod 755 {BINARY}" in phone.commands and phone.files[BINARY][1] == 0o755
    assert [p for p, _ in phone.pushes].count(BINARY) == 0

    # a changed binary is pushed again
    files["binary"].write_bytes(elf_header() + b"fake benchmark_model v2")
    phone.pushes.clear()
    device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert [p for p, _ in phone.pushes].count(BINARY) == 1
    assert phone.files[BINARY] == (files["binary"].read_bytes(), 0o755)


def test_binary_size_compare_without_sha256sum(tmp_path, files):
    phone = make_phone(tmp_path, has_sha256sum=False)
    phone.files[BINARY] = (b"x" * files["binary"].stat().st_size, 0o755)  # same size
    device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert BINARY not in [p for p, _ in phone.pushes]
    phone.files[BINARY] = (b"short", 0o755)
    device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert BINARY in [p for p, _ in phone.pushes]


def test_binary_missing_locally_or_on_phone_is_one_line_error(tmp_path, files):
    phone = make_phone(tmp_path)
    with pytest.raises(MnasError) as info:
        device_for(phone, tmp_path / "nope" / "benchmark_model")
    assert str(info.value) == (f"benchmark binary: {tmp_path / 'nope' / 'benchmark_model'} not "
                               "found (expected the arm64 benchmark_model binary on this host)")
    device = device_for(phone, None)
    with pytest.raises(MnasError) as info:
        device.benchmark(files["model"], FAST)
    assert not isinstance(info.value, MeasurementError)  # user-fixable, not retried
    assert str(info.value).startswith(f"{phone.serial} (pixel4): no benchmark_model on the phone "
                                      f"at {BINARY} and no local binary given (set benchmark_binary")
    assert "\n" not in str(info.value)
    assert not phone.benchmarks
    # a binary already on the phone is used as it is, identified by its hash
    phone.files[BINARY] = (b"already there", 0o755)
    m = device_for(phone, None).benchmark(files["model"], FAST)
    assert m.runtime_version == "sha256:" + hashlib.sha256(b"already there").hexdigest()[:12]


# --------------------------------------------------------------------------- quoting


def test_hostile_paths_are_quoted_not_injected(tmp_path, files):
    hostile = tmp_path / "my model; rm -rf $HOME `x`.tflite"
    hostile.write_bytes(files["model"].read_bytes())
    remote_dir = "/data/local/tmp/mnas dir;echo pwned"
    phone = make_phone(tmp_path)
    device = device_for(phone, files["binary"], remote_dir=remote_dir)
    m = device.benchmark(hostile, FAST)
    assert m.model_path == str(hostile)
    bench = next(c for c in phone.commands if c.startswith("echo __MNAS_PID=$$; "))
    graph = f"{remote_dir}/models/{sha(hostile)[:16]}.tflite"
    # the phone's shell splits it back into exactly the intended argv
    assert shlex.split(bench.split("; ", 1)[1]) == [
        "taskset", "80", f"{remote_dir}/benchmark_model", f"--graph={graph}", "--num_threads=1",
        "--warmup_runs=5", "--num_runs=50", "--min_secs=1"]
    assert f"rm -f {shlex.quote(graph)}" in phone.commands
    assert f"mkdir -p {shlex.quote(remote_dir + '/models')}" in phone.commands
    assert not any("rm -rf" in c for c in phone.commands)
    assert graph not in phone.files and f"{remote_dir}/benchmark_model" in phone.files


# --------------------------------------------------------------------------- failures


def test_truncated_output_fails_and_is_retried(tmp_path, files):
    phone = make_phone(tmp_path, replies=[Reply(output=TRUNCATED_OUTPUT), Reply()])
    m = device_for(phone, files["binary"], retries=2).benchmark(files["model"], FAST)
    assert len(phone.benchmarks) == 2 and m.extra["attempts"] == 2
    assert m.stats.mean_us == pytest.approx(20810.2)


def test_truncated_output_every_time_is_one_line_measurement_error(tmp_path, files):
    phone = make_phone(tmp_path, replies=[Reply(output=TRUNCATED_OUTPUT)] * 3)
    device = device_for(phone, files["binary"], retries=2)
    with pytest.raises(MeasurementError) as info:
        device.benchmark(files["model"], FAST)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{phone.serial} (pixel4): benchmark of model.tflite failed after 3 "
                              "attempt(s): ")
    assert "final timing line" in message
    assert len(phone.benchmarks) == 3
    # the model was removed after every failed attempt
    assert phone.commands.count(f"rm -f {REMOTE}/models/{sha(files['model'])[:16]}.tflite") == 3
    assert not any(path.startswith(f"{REMOTE}/models/") for path in phone.files)


def test_nonzero_exit_and_dead_phone_are_failures(tmp_path, files):
    phone = make_phone(tmp_path, replies=[Reply(rc=1), Reply(rc=None)])
    device = device_for(phone, files["binary"], retries=1)
    with pytest.raises(MeasurementError) as info:
        device.benchmark(files["model"], FAST)
    # the last failure: the stream ended before the exit status although the output was complete
    assert "connection closed before the exit status" in str(info.value)
    assert len(phone.benchmarks) == 2
    assert not any(path.startswith(f"{REMOTE}/models/") for path in phone.files)

    phone.replies = [Reply(rc=3)]
    with pytest.raises(MeasurementError, match=r"benchmark_model exited with code 3: "
                                                r"Overall peak memory footprint"):
        device_for(phone, files["binary"], retries=0).benchmark(files["model"], FAST)


def test_connection_errors_are_retried(tmp_path, files):
    phone = make_phone(tmp_path)
    device = device_for(phone, files["binary"], retries=1)
    device.ensure_binary()
    phone.fail_connects = 1  # the next adb call cannot reach the phone
    m = device.benchmark(files["model"], FAST)
    assert m.extra["attempts"] == 2


def test_retry_waits_for_a_phone_that_went_offline(tmp_path, files):
    phone = make_phone(tmp_path)
    sleeps: list[float] = []
    device = device_for(phone, files["binary"], retries=1, retry_delay_s=1.0,
                        sleep=sleeps.append)
    device.ensure_binary()
    phone.state, phone.offline_polls = "offline", 3  # back on the 3rd `adb devices`
    m = device.benchmark(files["model"], FAST)
    assert m.extra["attempts"] == 2
    assert sleeps == [1.0, 0.5, 0.5]  # retry delay, then two polls while offline


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_hung_benchmark_is_bounded_by_its_timeout_and_killed(tmp_path, files, mode):
    phone = make_phone(tmp_path, replies=[Reply(**{mode: True})])
    device = device_for(phone, files["binary"], retries=0)
    started = time.monotonic()
    with pytest.raises(MeasurementError) as info:
        device.benchmark(files["model"], BenchConfig(timeout_s=0.6))
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 3.0
    assert "timed out" in str(info.value)
    # the stale process tree on the phone is killed, and the model removed
    assert "pkill -P 4242; kill 4242" in phone.commands
    assert not any(path.startswith(f"{REMOTE}/models/") for path in phone.files)


def test_hung_short_call_is_bounded_by_device_timeout(tmp_path):
    phone = make_phone(tmp_path)
    device = device_for(phone, None, timeout_s=0.4)
    device.features()

    class Hung:
        def __init__(self):
            self.conn = self

        def send_command(self, cmd):
            pass

        def settimeout(self, t):
            self.t = t

        def check_okay(self):
            pass

        def recv(self, n):
            time.sleep(self.t)
            raise TimeoutError()

        def close(self):
            pass

    device._device.open_transport = lambda command=None, timeout=None: Hung()
    started = time.monotonic()
    with pytest.raises(MeasurementError, match=r"`getprop` timed out"):
        device.getprops()
    assert time.monotonic() - started < 1.5


# --------------------------------------------------------------------------- shell v1


def test_shell_v1_uses_exit_marker(tmp_path, files):
    phone = make_phone(tmp_path, features=("cmd",))
    m = device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert m.extra["shell_protocol"] == "v1"
    assert all(s.startswith("shell:") and s.endswith("; echo __MNAS_RC=$?") for s in phone.services)
    assert m.stats.mean_us == pytest.approx(20810.2)
    device = device_for(phone, None)
    result = device.shell("sha256sum /nonexistent")
    assert (result.returncode, result.protocol) == (1, "v1")
    assert "No such file" in result.output and "__MNAS_RC" not in result.output


def test_shell_v1_phone_dying_mid_command_is_a_failure(tmp_path, files):
    phone = make_phone(tmp_path, features=("cmd",), replies=[Reply(rc=None)])
    with pytest.raises(MeasurementError, match="output ended without the exit status"):
        device_for(phone, files["binary"], retries=0).benchmark(files["model"], FAST)


# --------------------------------------------------------------------------- thermal


def test_cooldown_waits_until_cool(tmp_path, files):
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(s):
        sleeps.append(s)
        clock[0] += s

    phone = make_phone(tmp_path)
    phone.thermal_sequence = [{"cpu": 61000, "skin": 40000}, {"cpu": 52000, "skin": 40000},
                              {"cpu": 44000, "skin": 40000}]
    device = device_for(phone, files["binary"], poll_s=10.0, sleep=sleep, clock=lambda: clock[0])
    m = device.benchmark(files["model"], FAST)
    assert sleeps == [10.0, 10.0]
    assert m.temps_before_c == {"cpu": 44.0, "skin": 40.0}
    assert m.extra["cooldown_waited_s"] == 20.0 and m.extra["cooldown_timed_out"] is False
    assert m.throttled is False


def test_cooldown_timeout_flags_throttled(tmp_path, files):
    clock = [0.0]

    def sleep(s):
        clock[0] += s

    phone = make_phone(tmp_path)
    phone.thermal_sequence = [{"cpu": 70000}]
    device = device_for(phone, files["binary"], poll_s=50.0, sleep=sleep, clock=lambda: clock[0])
    m = device.benchmark(files["model"], FAST)
    assert clock[0] == 120.0  # bounded by pixel4's cooldown_timeout_s
    assert m.extra["cooldown_timed_out"] is True and m.throttled is True


def test_frequency_cap_below_ratio_flags_throttled(tmp_path, files):
    phone = make_phone(tmp_path)
    freqs = {c: CONFIGS["pixel4"].max_freq_khz(c) for c in range(8)}
    phone.set_cpus(freqs, cur_khz=300000, cap_khz=2400000)  # cap 2.40 < 0.9 x 2.84 GHz
    m = device_for(phone, files["binary"]).benchmark(files["model"], FAST)
    assert m.throttled is True
    assert (m.freq_after_khz, m.extra["freq_cap_after_khz"]) == (300000, 2400000)
    phone.set_cpus(freqs, cur_khz=300000, cap_khz=2841600)  # idle core, no cap: not throttled
    assert device_for(phone, files["binary"]).benchmark(files["model"], FAST).throttled is False


def test_parse_thermal_output_units_duplicates_and_sentinels():
    text = ("__Z|thermal_zone0|cpu|45500\n__Z|thermal_zone1|cpu|46000\n"
            "__Z|thermal_zone2|disabled|\n__Z|thermal_zone3|bogus|-273000\n__F|1785600|2841600\n")
    reading = parse_thermal_output(text)
    assert reading.temps_c == {"cpu": 45.5, "cpu@thermal_zone1": 46.0, "bogus": -273.0}
    assert reading.hottest_c == 46.0  # the -273 sentinel is not a temperature
    assert (reading.cur_freq_khz, reading.cap_khz) == (1785600, 2841600)


# --------------------------------------------------------------------------- probe/discovery


def test_probe_builds_the_shipped_topology_with_offline_core(tmp_path):
    phone = make_phone(tmp_path)
    freqs = {c: CONFIGS["pixel4"].max_freq_khz(c) for c in range(8)}
    phone.set_cpus(freqs, offline=(5, 7))  # offline cores: frequency from their policy
    device = device_for(phone, None, name=None)
    assert device.read_cpu_max_freqs() == freqs
    config = device.probe_config("pixel4")
    shipped = CONFIGS["pixel4"]
    assert config.clusters == shipped.clusters and config.pin_core == 7
    assert config.match == shipped.match and config.properties == shipped.properties
    assert config.description == f"probed from {phone.serial}"
    out = dump_config(config, tmp_path / "cfg" / "pixel4.yaml")
    assert load_config(out) == config


def test_build_probed_config_names_clusters_and_rejects_missing_props():
    freqs = {0: 1000, 1: 1000, 2: 2000}
    props = {"ro.product.model": "X", "ro.product.device": "x"}
    config = build_probed_config("x", "S", props, freqs)
    assert [(c.name, c.cores) for c in config.clusters] == [("little", (0, 1)), ("big", (2,))]
    with pytest.raises(MnasError, match=r"phone S: getprop ro.product.device is empty"):
        build_probed_config("x", "S", {"ro.product.model": "X"}, freqs)


def test_discover_phones_matches_configs_and_lists_unauthorized(tmp_path):
    p4 = make_phone(tmp_path, "pixel4", serial="A1")
    p8 = FakePhone(serial="B2", props=dict(CONFIGS["pixel8"].properties), root=tmp_path / "p8")
    odd = FakePhone(serial="C3", props={"ro.product.model": "Nexus 5", "ro.product.device": "hammerhead"})
    locked = FakePhone(serial="D4", state="unauthorized")
    phones = discover_phones(FakeAdbClient(p4, p8, odd, locked), CONFIGS)
    summary = [(p.serial, p.state, p.model, p.config.name if p.config else None) for p in phones]
    assert summary == [("A1", "device", "Pixel 4", "pixel4"), ("B2", "device", "Pixel 8", "pixel8"),
                       ("C3", "device", "Nexus 5", None), ("D4", "unauthorized", "", None)]


def test_parsers():
    assert parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert parse_getprop("[ro.product.model]: [Pixel 4]\n[empty]: []\n[a.b]: [x: [y]]\n") == {
        "ro.product.model": "Pixel 4", "empty": "", "a.b": "x: [y]"}


@pytest.mark.parametrize("text", ["0-a", "3-1", "0 1", "0-3,x"])
def test_one_strict_cpu_list_parser_names_its_input(text):
    with pytest.raises(ValueError) as info:
        parse_cpu_list(text)
    assert str(info.value) == (f"CPU list {text!r}: expected core ids and ascending ranges "
                               "such as '0-3,6'")
    # on a phone the same rule, reported as one line naming the phone
    with pytest.raises(MnasError) as info:
        parse_cpu_probe(f"__POSSIBLE|{text}\n", source="phone S")
    assert str(info.value) == f"phone S: CPU list {text!r}: expected core ids and ascending ranges such as '0-3,6'"
    # related_cpus is space-separated: spaces are separators there, not an error
    assert parse_cpu_probe("__P|0 1|1000\n__P|2|2000\n") == {0: 1000, 1: 1000, 2: 2000}


# --------------------------------------------------------------------------- the adb server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_adb_client_honours_port_and_never_starts_a_server(monkeypatch):
    port = _free_port()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    client = adb_client(2.0)
    assert client.port == port
    assert ad.adb_unavailable_reason(client).startswith(f"no adb server on 127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(AdbConnectionError):
        client.list()
    assert time.monotonic() - started < 2.0
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/nonexistent/adb")
    assert ad.adb_unavailable_reason(client) == (
        f"no adb server on 127.0.0.1:{port} and no adb binary found "
        "(ADBUTILS_ADB_PATH=/nonexistent/adb) (install adb or set ADBUTILS_ADB_PATH)")
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "adb")
    with pytest.raises(MnasError, match=r"ANDROID_ADB_SERVER_PORT = 'adb': expected a TCP port"):
        adb_client()


# --------------------------------------------------------------------------- `mnas devices`


def test_mnas_devices_without_adb_server_lists_host_and_a_note(monkeypatch, capsys):
    from mnas.cli import main

    port = _free_port()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    main(["devices", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert [row["device_id"] for row in payload["devices"]] == ["host"]
    assert payload["notes"][-1] == (f"no adb server on 127.0.0.1:{port} (start one with "
                                    "`adb start-server`); listing the host only")
    main(["devices"])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split() == ["id", "kind", "state", "model", "config",
                                                    "pin_core", "max_freq_khz", "runtime"]
    assert captured.err.strip().endswith("listing the host only")


@pytest.fixture()
def fake_server(monkeypatch, tmp_path):
    p4 = make_phone(tmp_path, "pixel4", serial="A1")
    odd = FakePhone(serial="C3", props={"ro.product.model": "Nexus 5",
                                        "ro.product.device": "hammerhead"})
    locked = FakePhone(serial="D4", state="unauthorized")
    client = FakeAdbClient(p4, odd, locked)
    monkeypatch.setattr(ad, "adb_client", lambda timeout_s=30.0: client)
    monkeypatch.setattr(ad, "adb_unavailable_reason", lambda c: None)
    monkeypatch.setenv("MNAS_DEVICE_CONFIGS", str(CONFIGS["pixel4"].source.parent))
    return client


def test_mnas_devices_lists_phones_with_config_and_pin_core(fake_server):
    from mnas.cli_devices import devices

    result = CliRunner().invoke(devices, ["--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    phones = [(r["device_id"], r["state"], r["phone_model"], r["device_config"], r["pinned_cores"], r["max_freq_khz"])
              for r in payload["devices"][1:]]
    assert phones == [("A1", "device", "Pixel 4", "pixel4", [7], 2841600),
                      ("C3", "device", "Nexus 5", None, [], None),
                      ("D4", "unauthorized", "", None, [], None)]
    notes = [n for n in payload["notes"] if n.startswith(("C3", "D4"))]
    assert notes == [
        "C3: no device config matches ro.product.model 'Nexus 5'; write one with "
        "`mnas devices probe C3 -o device_configs/NAME.yaml`",
        "D4: state 'unauthorized' (unlock the phone and accept the USB debugging prompt)"]


def test_mnas_devices_probe_writes_a_loadable_config(fake_server, tmp_path):
    from mnas.cli_devices import devices

    out = tmp_path / "configs" / "flame.yaml"
    result = CliRunner().invoke(devices, ["probe", "A1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"wrote {out}: Pixel 4 (flame), 8 cores: little [0, 1, 2, 3] 1785600 kHz, big [4, 5, 6] "
        "2419200 kHz, prime [7] 2841600 kHz; pin core 7 (mask 80)")
    assert "the existing device config 'pixel4' also matches this phone" in result.output
    config = load_config(out)
    assert config.name == "flame" and config.clusters == CONFIGS["pixel4"].clusters

    again = CliRunner().invoke(devices, ["probe", "A1", "-o", str(out)])
    assert isinstance(again.exception, MnasError)
    assert str(again.exception) == f"{out}: already exists (pass --force to overwrite it)"
    assert CliRunner().invoke(devices, ["probe", "A1", "-o", str(out), "--force"]).exit_code == 0
    missing = CliRunner().invoke(devices, ["probe", "ZZ", "-o", str(tmp_path / "zz.yaml")])
    assert str(missing.exception) == "phone ZZ is not attached (attached: A1, C3, D4)"
    locked = CliRunner().invoke(devices, ["probe", "D4", "-o", str(tmp_path / "d4.yaml")])
    assert str(locked.exception) == "phone D4 is in state 'unauthorized', expected 'device'"


# --------------------------------------------------------------------------- no answer = lost


def test_an_adbutils_socket_timeout_is_no_answer_and_ends_the_attempts(tmp_path, files, monkeypatch):
    """adbutils' own socket timeout (AdbTimeout) is the same silence as the call bound: no answer.

    Before issue 11 it was an ordinary call error, so the phone was retried and cleaned up
    after, each waiting out another bound.
    """
    from adbutils.errors import AdbTimeout

    from mnas.bench.adb.transport import AdbNoAnswer, PhoneTransport

    def silent() -> None:
        raise AdbTimeout("socket timed out")

    with pytest.raises(AdbNoAnswer, match="x: stat: no answer from the phone within 1.0 s"):
        PhoneTransport(object(), "x", 5.0).call("stat", silent, 1.0)
    phone = make_phone(tmp_path)
    device = device_for(phone, files["binary"], retries=3)
    device.ensure_binary()
    monkeypatch.setattr(device, "push", lambda *a, **k: device.transport.call("push", silent, 1.0))
    with pytest.raises(MeasurementError) as info:
        device.benchmark(files["model"], FAST)
    assert "failed after 1 attempt(s)" in str(info.value) and device.offline
    assert not any(c.startswith("rm -f") for c in phone.commands)  # no clean-up call waits on it
