"""Loopback phones: the wire format by bytes, then the real adb server and adbutils end to end.

The first half checks the pure pieces (packet/banner/shell-frame/sync encodings against
hand-written bytes, fault parsing, the command rewriting and output mapping) and needs no
adb. The `adb`-marked half starts an isolated Debian adb server and loopback phones and
drives them only through the real adb server (adbutils and the adb command line), including
every fault; each wait is bounded and every process is stopped at the end.

Figures (adb connect time, echo round trip, push/pull throughput, fault detection times) are
printed as `FIGURE name=value` lines: run with `-s` to see them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback_fixtures import (
    IsolatedAdb,
    isolated_adb_server,
    loopback_phones,
    requires_adb,
    stop_all,
    wait_until,
)
from needs import need

from mnas.bench.device_config import load_config
from mnas.bench.loopback import manager
from mnas.bench.loopback import protocol as p
from mnas.bench.loopback.devicefs import (
    OutputMapper,
    command_words,
    resolve_config,
    route_benchmark_model,
)
from mnas.bench.loopback.faults import FaultControl, FaultSet, parse_fault, write_control_file
from mnas.bench.loopback.tools import parse_mask, truncate_output
from mnas.errors import MnasError

HOST_CORE = max(os.sched_getaffinity(0))


def figure(name: str, value: float, unit: str) -> None:
    print(f"FIGURE {name}={value:.3f} {unit}")


# ============================================================================ wire format


def test_packet_encoding_matches_hand_written_bytes() -> None:
    packet = p.Packet(p.A_OPEN, 5, 0, b"shell:ls\0")
    expected = struct.pack("<6I", 0x4E45504F, 5, 0, 9, sum(b"shell:ls\0"), 0x4E45504F ^ 0xFFFFFFFF) + b"shell:ls\0"
    assert packet.encode() == expected
    assert p.decode_header(expected[:24], 1024) == (p.A_OPEN, 5, 0, 9)
    assert p.Packet(p.A_OKAY, 1, 2).encode()[:4] == b"OKAY"


def test_decode_header_rejects_bad_magic_and_oversized_payload() -> None:
    good = p.Packet(p.A_WRTE, 1, 2, b"x" * 100).encode()[:24]
    bad_magic = good[:20] + b"\0\0\0\0"
    with pytest.raises(p.ProtocolError, match="bad magic"):
        p.decode_header(bad_magic, 1024)
    with pytest.raises(p.ProtocolError, match="WRTE payload of 100 bytes exceeds 64"):
        p.decode_header(good, 64)


def test_device_banner_and_parse_round_trip() -> None:
    props = {"ro.product.name": "flame", "ro.product.model": "Pixel 4", "ro.product.device": "fl:a;me"}
    banner = p.device_banner(props, ["shell_v2", "cmd"])
    assert banner == b"device::ro.product.name=flame;ro.product.model=Pixel 4;ro.product.device=fl_a_me;features=shell_v2,cmd"
    system, pairs = p.parse_banner(banner)
    assert system == "device"
    assert pairs["ro.product.model"] == "Pixel 4"
    assert pairs["features"] == "shell_v2,cmd"


def test_parse_service_shell_forms() -> None:
    assert p.parse_service("shell:echo a:b") == p.ShellService(v2=False, command="echo a:b")
    assert p.parse_service("shell,v2,raw:ls") == p.ShellService(v2=True, command="ls", args=("v2", "raw"))
    assert p.parse_service("exec:cat x") == p.ShellService(v2=False, command="cat x", raw=True)
    assert p.parse_service("sync:") == "sync:"


def test_shell_frames_parse_across_arbitrary_splits() -> None:
    stream = p.shell_frame(1, b"hello") + p.shell_frame(2, b"") + p.shell_frame(3, b"\x07")
    assert stream[:10] == b"\x01\x05\x00\x00\x00hello"
    for step in range(1, len(stream) + 1):
        parser = p.ShellFrameParser()
        frames = []
        for i in range(0, len(stream), step):
            frames += parser.feed(stream[i : i + step])
        assert frames == [(1, b"hello"), (2, b""), (3, b"\x07")]


def test_sync_records() -> None:
    assert p.sync_stat(0o100644, 10, 7) == b"STAT" + struct.pack("<III", 0o100644, 10, 7)
    assert p.sync_dent(0o40755, 4096, 1, b"ab") == b"DENT" + struct.pack("<IIII", 0o40755, 4096, 1, 2) + b"ab"
    assert p.SYNC_LIST_DONE == b"DONE" + bytes(16)
    assert p.sync_data(b"xyz") == b"DATA\x03\x00\x00\x00xyz"
    assert p.sync_fail("no") == b"FAIL\x02\x00\x00\x00no"
    assert p.parse_sync_request(b"SEND\x10\x00\x00\x00") == (b"SEND", 16)


def test_checksum_is_zero_from_the_skip_checksum_version_on() -> None:
    packet = p.Packet(p.A_WRTE, 1, 2, b"abc")
    assert packet.encode()[16:20] == struct.pack("<I", 294)
    assert packet.encode(with_checksum=False)[16:20] == bytes(4)


# ============================================================================ raw host, no adb


class RawHost:
    """Speaks the host side of the adb protocol to a loopback phone over a bare socket."""

    def __init__(self, port: int, version: int = p.VERSION, max_payload: int = 1 << 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.send(p.Packet(p.A_CNXN, version, max_payload, b"host::features=shell_v2\0"))

    def send(self, packet: p.Packet) -> None:
        self.sock.sendall(packet.encode())

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("phone closed the connection")
            data += chunk
        return data

    def recv(self, timeout_s: float = 5.0) -> tuple[p.Packet, int]:
        """The next packet and the checksum it carried."""
        self.sock.settimeout(timeout_s)
        header = self._exact(p.HEADER_SIZE)
        command, arg0, arg1, length, check, _magic = p.HEADER.unpack(header)
        p.decode_header(header, 1 << 24)
        return p.Packet(command, arg0, arg1, self._exact(length) if length else b""), check

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def raw_phone(tmp_path_factory: pytest.TempPathFactory):
    """One stand-in process, no adb server: the tests below play the host themselves."""
    folder = tmp_path_factory.mktemp("raw")
    ready = folder / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnas.bench.loopback.server", "--config", "pixel4", "--root", str(folder / "root"),
         "--ready-file", str(ready), "--max-payload", "4096"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_until(ready.exists, 15)
        yield json.loads(ready.read_text())["port"]
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_raw_handshake_checksums_follow_the_negotiated_version(raw_phone: int) -> None:
    old = RawHost(raw_phone, version=p.VERSION_MIN)
    reply, check = old.recv()
    old.close()
    assert (reply.command, reply.arg0, reply.arg1) == (p.A_CNXN, p.VERSION_MIN, 4096)
    assert check == p.checksum(reply.payload) != 0
    assert reply.payload.startswith(b"device::ro.product.name=flame;ro.product.model=Pixel 4;")
    new = RawHost(raw_phone)
    reply, check = new.recv()
    new.close()
    assert (reply.arg0, check) == (p.VERSION, 0)


def test_raw_flow_control_one_write_in_flight_and_refused_services(raw_phone: int) -> None:
    host = RawHost(raw_phone, max_payload=1 << 20)
    host.recv()  # CNXN
    host.send(p.Packet(p.A_OPEN, 7, 0, b"reboot:\0"))
    refused, _ = host.recv()
    assert (refused.command, refused.arg0, refused.arg1) == (p.A_CLSE, 0, 7)
    host.send(p.Packet(p.A_OPEN, 9, 0, b"shell:head -c 10000 /dev/zero\0"))
    okay, _ = host.recv()
    assert (okay.command, okay.arg1) == (p.A_OKAY, 9)
    device_id = okay.arg0
    first, _ = host.recv()
    assert (first.command, first.arg0, first.arg1) == (p.A_WRTE, device_id, 9)
    assert 0 < len(first.payload) <= 4096  # capped by the phone's announced max payload
    with pytest.raises(TimeoutError):
        host.recv(timeout_s=0.3)  # no second WRTE before our OKAY
    received = len(first.payload)
    while True:
        host.send(p.Packet(p.A_OKAY, 9, device_id))
        packet, _ = host.recv()
        if packet.command == p.A_CLSE:
            break
        assert packet.command == p.A_WRTE and len(packet.payload) <= 4096
        received += len(packet.payload)
    assert received == 10000
    host.close()


# ============================================================================ faults


def test_fault_parsing_values_and_errors() -> None:
    assert parse_fault("slow_link") == ("slow_link", 256)
    assert parse_fault("die-mid-push=1000") == ("die_mid_push", 1000)
    assert parse_fault("overheat=80.5") == ("overheat", 80.5)
    with pytest.raises(MnasError, match=r"^fault 'melt': unknown fault; expected one of die_mid_push, "):
        parse_fault("melt")
    with pytest.raises(MnasError, match=r"^fault 'hang=3': fault 'hang' takes no value$"):
        parse_fault("hang=3")
    with pytest.raises(MnasError, match=r"^fault 'throttle=2': value 2 out of range; expected 0.01..1$"):
        parse_fault("throttle=2")
    with pytest.raises(MnasError, match=r"^fault 'slow_link=x': value 'x' is not an integer$"):
        parse_fault("slow_link=x")


def test_fault_control_follows_the_file_and_keeps_state_on_a_bad_edit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    control = FaultControl(tmp_path / "faults", FaultSet.parse(["hang"]))
    assert (tmp_path / "faults").read_text() == "hang\n"
    assert "hang" in control.current()
    write_control_file(tmp_path / "faults", ["overheat=90", "no_shell_v2"])
    assert dict(control.current().active) == {"overheat": 90.0, "no_shell_v2": None}
    (tmp_path / "faults").write_text("overheat=90\nmelt\n")
    assert dict(control.current().active) == {"overheat": 90.0, "no_shell_v2": None}
    assert "faults:2: 'melt': unknown fault" in capsys.readouterr().err
    (tmp_path / "faults").unlink()
    assert dict(control.current().active) == {}


# ============================================================================ device file system


def test_command_words_and_benchmark_model_routing() -> None:
    text = "A=1 cd /d && ./benchmark_model --graph='x y' 2>&1 | tail -3; echo done > /x/benchmark_model"
    assert [w for _, w in command_words(text)] == ["cd", "./benchmark_model", "tail", "echo"]
    assert route_benchmark_model(text) == (
        "A=1 cd /d && mnas_lb_bm ./benchmark_model --graph='x y' 2>&1 | tail -3; echo done > /x/benchmark_model"
    )
    # an argument naming the binary is not an execution
    assert route_benchmark_model("sha256sum /t/benchmark_model") == "sha256sum /t/benchmark_model"
    assert route_benchmark_model("exec '/t/my benchmark_model' -h") == "exec mnas_lb_bm '/t/my benchmark_model' -h"


def test_rewrite_maps_phone_prefixes_only(tmp_path: Path) -> None:
    from mnas.bench.loopback.devicefs import DeviceFS, ShellSettings

    fs = DeviceFS(tmp_path / "root", resolve_config("pixel4"), ShellSettings(host_core=HOST_CORE))
    root = str(fs.root)
    assert fs.rewrite_command("cat '/data/local/tmp/a b.txt' /sdcardx /proc/x --graph=/data/local/tmp/m") == (
        f"cat '{root}/data/local/tmp/a b.txt' /sdcardx /proc/x --graph={root}/data/local/tmp/m"
    )
    assert fs.host_path("/data/local/tmp/../../../etc/passwd") == fs.root / "etc/passwd"
    with pytest.raises(MnasError, match="expected a path made of letters"):
        DeviceFS(tmp_path / "a b", resolve_config("pixel4"), ShellSettings(host_core=HOST_CORE))


def test_output_mapper_turns_host_paths_back_at_any_chunking() -> None:
    root = Path("/tmp/lb/root")
    text = b"a /tmp/lb/root/data/x b /tmp/lb/root\n/tmp/lb/root2/y '/tmp/lb/root' end/tmp/lb/ro"
    expected = b"a /data/x b /\n/tmp/lb/root2/y '/' end/tmp/lb/ro"
    for step in range(1, len(text) + 1):
        mapper = OutputMapper(root)
        out = b"".join(mapper.feed(text[i : i + step]) for i in range(0, len(text), step)) + mapper.flush()
        assert out == expected, step


def test_truncate_output_cuts_before_the_last_stats_line() -> None:
    log = (Path(__file__).resolve().parents[2] / "shared/data/benchmark_model/tf2.x_android_1thread_1000runs.txt")
    text = log.read_text() if log.exists() else "count=478 first=2104\n\nRunning benchmark\ncount=1000 avg=1039.66\nInference timings in us: x\n"
    cut = truncate_output(text)
    assert "count=1000" not in cut and "Inference timings" not in cut
    assert "count=478" in cut and text.startswith(cut)
    assert truncate_output("INFO: count=3 a\nINFO: count=5 b\nINFO: Inference\n") == "INFO: count=3 a\n"


def test_parse_mask() -> None:
    assert [parse_mask(m) for m in ("80", "100", "0c", "f0", "0xF0", "zz", "")] == [128, 256, 12, 240, 240, None, None]


# ============================================================================ through the real adb server

@pytest.fixture(scope="module")
def adb(tmp_path_factory: pytest.TempPathFactory):
    need("ADB", Path("/usr/bin/adb").exists(), "Debian's adb is not installed at /usr/bin/adb (apt-get install adb)")
    with isolated_adb_server(tmp_path_factory.mktemp("adb")) as server:
        yield server


@pytest.fixture(scope="module")
def phones(adb: IsolatedAdb, tmp_path_factory: pytest.TempPathFactory):
    """A Pixel 4 and a Pixel 8, healthy."""
    folder = tmp_path_factory.mktemp("phones")
    try:
        start = time.perf_counter()
        four = manager.start("pixel4", 1, folder=folder, adb=adb.server, timeout_s=15)[0]
        figure("start_and_connect_s", time.perf_counter() - start, "s")
        eight = manager.start("pixel8", 1, folder=folder, adb=adb.server, timeout_s=15)[0]
        yield {"pixel4": four, "pixel8": eight}
    finally:
        stop_all(folder)


@pytest.fixture(scope="module")
def victim(adb: IsolatedAdb, tmp_path_factory: pytest.TempPathFactory):
    """A phone whose faults the tests switch through its control file."""
    folder = tmp_path_factory.mktemp("victim")
    with loopback_phones(adb, folder, "pixel4") as started:
        phone = started[0]
        yield phone
        write_control_file(Path(phone.control_file), [])


def _device(adb: IsolatedAdb, phone: manager.LoopbackPhone, timeout_s: float | None = 10.0):
    return adb.client(timeout_s).device(phone.serial)


def _back_online(adb: IsolatedAdb, phone: manager.LoopbackPhone, timeout_s: float = 10.0) -> None:
    """Wait until the phone answers a shell again (adb reconnects a dropped TCP device)."""
    wait_until(lambda: _device(adb, phone, 2).shell2("echo up", timeout=2, v2=True).output.strip() == "up", timeout_s)


@pytest.mark.adb
@requires_adb
def test_adb_connect_time(adb: IsolatedAdb, tmp_path: Path) -> None:
    with loopback_phones(adb, tmp_path, "pixel4") as started:
        serial = started[0].serial
        adb.client().disconnect(serial)
        start = time.perf_counter()
        reply = adb.client().connect(serial, timeout=10)
        wait_until(lambda: adb.server.states().get(serial) == "device", 10, 0.005)
        elapsed = time.perf_counter() - start
    assert reply == f"connected to {serial}"
    figure("adb_connect_s", elapsed, "s")
    assert elapsed < 5


@pytest.mark.adb
@requires_adb
def test_two_phones_listed_with_their_props(adb: IsolatedAdb, phones: dict[str, manager.LoopbackPhone]) -> None:
    client = adb.client()
    listed = {d.serial for d in client.device_list()}
    assert {phones["pixel4"].serial, phones["pixel8"].serial} <= listed
    extended = {info.serial: info.tags for info in client.list(extended=True)}
    for name, phone in phones.items():
        config = load_config(Path(phone.config_path))
        assert config.name == name
        device = client.device(phone.serial)
        assert device.prop.model == config.properties["ro.product.model"]
        assert device.prop.device == config.properties["ro.product.device"]
        assert extended[phone.serial]["model"] == config.properties["ro.product.model"].replace(" ", "_")
        for key, value in config.properties.items():
            assert device.shell(["getprop", key], timeout=10) == value
        dump = device.shell("getprop", timeout=10)
        parsed = dict(line[1:-1].split("]: [") for line in dump.splitlines())
        assert parsed == {**config.properties, "ro.serialno": f"loopback-{name}"}
        assert device.shell("getprop no.such.key; getprop no.such.key fallback", timeout=10) == "\nfallback"


@pytest.mark.adb
@requires_adb
def test_shell_v2_exit_codes_and_separate_stderr(adb: IsolatedAdb, phones: dict[str, manager.LoopbackPhone]) -> None:
    device = _device(adb, phones["pixel4"])
    assert "shell_v2" in device.get_features().split(",")
    result = device.shell2("echo out; echo err >&2; exit 3", v2=True, timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert device.shell2("kill -9 $$", v2=True, timeout=10).returncode == 137
    # the adb command line sees the same exit code
    done = adb.run("-s", phones["pixel4"].serial, "shell", "echo x >&2; exit 42")
    assert (done.returncode, done.stderr) == (42, "x\n")
    latencies = []
    for _ in range(20):
        start = time.perf_counter()
        assert device.shell("echo hi", timeout=10) == "hi"
        latencies.append(time.perf_counter() - start)
    median = sorted(latencies)[10]
    figure("echo_round_trip_median_ms", median * 1000, "ms")
    assert median < 1.0


@pytest.mark.adb
@requires_adb
def test_no_shell_v2_fault_falls_back_to_v1(adb: IsolatedAdb, tmp_path: Path) -> None:
    import adbutils

    with loopback_phones(adb, tmp_path, "pixel4", faults=["no_shell_v2"]) as started:
        device = _device(adb, started[0])
        assert "shell_v2" not in device.get_features().split(",")
        result = device.shell2("echo out; echo err >&2; false", v2=True, timeout=10)
        assert (result.returncode, result.stderr, result.output) == (1, "", "out\nerr\n")  # merged
        conn = device.open_transport(timeout=5)
        conn.send_command("shell,v2:echo hi")
        with pytest.raises(adbutils.AdbError):
            conn.check_okay()  # the phone refuses the v2 service like an old adbd
        conn.close()


@pytest.mark.adb
@requires_adb
def test_push_pull_20mb_byte_identical_stat_and_list(adb: IsolatedAdb, phones: dict[str, manager.LoopbackPhone], tmp_path: Path) -> None:
    device = _device(adb, phones["pixel8"])
    data = os.urandom(20 * 1024 * 1024)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    remote = "/data/local/tmp/mnas dir/big file.bin"
    start = time.perf_counter()
    assert device.sync.push(local, remote, mode=0o640) == len(data)
    push_s = time.perf_counter() - start
    start = time.perf_counter()
    device.sync.pull(remote, tmp_path / "back.bin")
    pull_s = time.perf_counter() - start
    assert (tmp_path / "back.bin").read_bytes() == data
    figure("push_MBps", len(data) / push_s / 1e6, "MB/s")
    figure("pull_MBps", len(data) / pull_s / 1e6, "MB/s")
    sha = device.shell(f"sha256sum '{remote}'", timeout=10)
    assert sha == f"{hashlib.sha256(data).hexdigest()}  {remote}"
    info = device.sync.stat(remote)
    assert (info.size, stat.S_IFMT(info.mode), stat.S_IMODE(info.mode)) == (len(data), stat.S_IFREG, 0o640)
    assert device.sync.stat("/data/local/tmp/nothing").mode == 0
    names = {entry.path for entry in device.sync.list("/data/local/tmp/mnas dir")}
    assert names == {".", "..", "big file.bin"}
    zones = sorted(e.path for e in device.sync.list("/sys/class/thermal") if e.path.startswith("thermal_zone"))
    assert zones == [f"thermal_zone{i}" for i in range(4)]
    assert device.shell2(f"rm '{remote}' && ls '/data/local/tmp/mnas dir' | wc -l", v2=True).stdout.strip() == "0"
    # the adb command line's push/pull (which pipelines SENDs its own way) agree too
    small = tmp_path / "small.bin"
    small.write_bytes(data[:300_000])
    assert adb.run("-s", phones["pixel8"].serial, "push", str(small), "/data/local/tmp/c/small.bin").returncode == 0
    assert adb.run("-s", phones["pixel8"].serial, "pull", "/data/local/tmp/c/small.bin", str(tmp_path / "s2")).returncode == 0
    assert (tmp_path / "s2").read_bytes() == data[:300_000]


@pytest.mark.adb
@requires_adb
def test_slow_link_fault_small_payloads_still_byte_identical(adb: IsolatedAdb, victim: manager.LoopbackPhone, tmp_path: Path) -> None:
    manager.set_faults(victim.serial, ["slow_link=256"], victim_folder(victim), reconnect=True)
    try:
        device = _device(adb, victim)
        data = os.urandom(256 * 1024)
        start = time.perf_counter()
        device.sync.push(data, "/data/local/tmp/slow.bin")
        assert device.sync.read_bytes("/data/local/tmp/slow.bin") == data
        figure("slow_link_push_pull_256KiB_s", time.perf_counter() - start, "s")
        listing = {e.path for e in device.sync.list("/sys/devices/system/cpu")}
        assert {"possible", "online", "cpufreq", "cpu0", "cpu7"} <= listing
        assert device.shell2("seq 1 2000 | wc -l", v2=True).stdout.strip() == "2000"
        assert "max payload 256," in Path(victim.log).read_text()
    finally:
        manager.set_faults(victim.serial, [], victim_folder(victim), reconnect=True)


def victim_folder(phone: manager.LoopbackPhone) -> Path:
    return Path(phone.folder).parent.parent


@pytest.mark.adb
@requires_adb
def test_sysfs_tree_follows_config_and_thermal_faults(adb: IsolatedAdb, victim: manager.LoopbackPhone) -> None:
    device = _device(adb, victim)
    config = load_config(Path(victim.config_path))
    assert device.shell("cat /sys/devices/system/cpu/possible /sys/devices/system/cpu/online", timeout=10) == "0-7\n0-7"
    freqs = device.shell(
        "for c in /sys/devices/system/cpu/cpu[0-9]*; do echo ${c##*/} $(cat $c/cpufreq/cpuinfo_max_freq) "
        "$(cat $c/cpufreq/scaling_cur_freq); done",
        timeout=10,
    )
    expected = {f"cpu{core}": config.max_freq_khz(core) for core in config.cores}
    assert {line.split()[0]: int(line.split()[1]) for line in freqs.splitlines()} == expected
    assert all(int(line.split()[2]) == expected[line.split()[0]] for line in freqs.splitlines())
    temps = [int(t) for t in device.shell("cat /sys/class/thermal/thermal_zone*/temp", timeout=10).split()]
    assert max(temps) < config.thermal.cooldown_below_c * 1000
    write_control_file(Path(victim.control_file), ["overheat=88.5", "throttle=0.5"])
    try:
        temps = [int(t) for t in device.shell("cat /sys/class/thermal/thermal_zone*/temp", timeout=10).split()]
        assert temps == [88500] * 4
        pin = config.pin_core
        cur, cap = device.shell(f"cat /sys/devices/system/cpu/cpu{pin}/cpufreq/scaling_cur_freq "
                                f"/sys/devices/system/cpu/cpu{pin}/cpufreq/scaling_max_freq", timeout=10).split()
        assert int(cur) == int(cap) == config.max_freq_khz(pin) // 2 // 1000 * 1000
    finally:
        write_control_file(Path(victim.control_file), [])
    assert max(int(t) for t in device.shell("cat /sys/class/thermal/thermal_zone*/temp", timeout=10).split()) < 40000


@pytest.mark.adb
@requires_adb
def test_taskset_pins_to_one_real_host_core(adb: IsolatedAdb, phones: dict[str, manager.LoopbackPhone]) -> None:
    four, eight = _device(adb, phones["pixel4"]), _device(adb, phones["pixel8"])
    probe = "sh -c 'cat /proc/self/status | grep Cpus_allowed_list'"
    for device, mask in ((four, "80"), (four, "0c"), (four, "f0"), (eight, "100")):
        result = device.shell2(f"taskset {mask} {probe}", v2=True, timeout=10)
        assert (result.returncode, result.stdout) == (0, f"Cpus_allowed_list:\t{HOST_CORE}\n"), mask
    bad = four.shell2("taskset 100 true", v2=True, timeout=10)  # Pixel 4 has no cpu8
    assert (bad.returncode, bad.stderr) == (1, "taskset: sched_setaffinity: Invalid argument\n")


@pytest.mark.adb
@requires_adb
def test_benchmark_model_runs_the_host_runner_and_truncation_fault(adb: IsolatedAdb, victim: manager.LoopbackPhone, tmp_path: Path) -> None:
    from tflite_fixtures import small_conv

    from mnas.bench import bm_output

    device = _device(adb, victim)
    binary = b"\x7fELF" + os.urandom(4096)  # an arm64 binary would do: it is never executed
    device.sync.push(binary, "/data/local/tmp/mnas/benchmark_model", mode=0o755)
    device.sync.push(small_conv(tmp_path), "/data/local/tmp/mnas/m.tflite")
    assert device.shell("sha256sum /data/local/tmp/mnas/benchmark_model", timeout=10).split()[0] == hashlib.sha256(binary).hexdigest()
    command = ("taskset 80 /data/local/tmp/mnas/benchmark_model --graph=/data/local/tmp/mnas/m.tflite "
               "--num_threads=1 --warmup_runs=1 --num_runs=5 --min_secs=0")
    result = device.shell2(command, v2=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = bm_output.parse_benchmark_output(result.stdout)
    assert out.complete and out.inference is not None and out.inference.count == 5
    assert f"CPU affinity: {HOST_CORE}" in result.stdout
    assert "Graph: [/data/local/tmp/mnas/m.tflite]" in result.stdout  # phone paths, as a phone prints
    write_control_file(Path(victim.control_file), ["truncated_output"])
    try:
        cut = device.shell2(command, v2=True, timeout=60)
    finally:
        write_control_file(Path(victim.control_file), [])
    assert cut.returncode == 0
    partial = bm_output.parse_benchmark_output(cut.stdout)
    assert not partial.complete and partial.inference is None and partial.warmup is not None
    device.shell("chmod 644 /data/local/tmp/mnas/benchmark_model", timeout=10)
    denied = device.shell2("cd /data/local/tmp/mnas && ./benchmark_model --graph=m.tflite", v2=True, timeout=10)
    assert denied.returncode == 126 and "Permission denied" in denied.stderr


@pytest.mark.adb
@requires_adb
def test_die_mid_push_makes_adbutils_raise_quickly(adb: IsolatedAdb, victim: manager.LoopbackPhone) -> None:
    import adbutils

    write_control_file(Path(victim.control_file), ["die_mid_push=200000"])
    device = _device(adb, victim)
    start = time.perf_counter()
    try:
        with pytest.raises((adbutils.AdbError, OSError, EOFError)):
            device.sync.push(os.urandom(2_000_000), "/data/local/tmp/dies.bin")
        detected = time.perf_counter() - start
    finally:
        write_control_file(Path(victim.control_file), [])
    figure("die_mid_push_detected_s", detected, "s")
    assert detected < 5
    _back_online(adb, victim)
    assert _device(adb, victim).sync.stat("/data/local/tmp/dies.bin").mode == 0  # no half file left


@pytest.mark.adb
@requires_adb
def test_die_mid_shell(adb: IsolatedAdb, victim: manager.LoopbackPhone) -> None:
    write_control_file(Path(victim.control_file), ["die_mid_shell"])
    try:
        start = time.perf_counter()
        with pytest.raises(EOFError):  # v2: the exit frame never comes
            _device(adb, victim).shell2("echo first; sleep 0.3; echo second", v2=True, timeout=5)
        figure("die_mid_shell_v2_detected_s", time.perf_counter() - start, "s")
        wait_until(lambda: adb.server.states().get(victim.serial) == "device", 10)
        # adbutils' plain shell() (v1) returns the partial output as if all went well:
        # callers must use an exit-status protocol to notice
        assert _device(adb, victim).shell("echo first; sleep 0.3; echo second", timeout=5) == "first"
    finally:
        write_control_file(Path(victim.control_file), [])
    _back_online(adb, victim)


@pytest.mark.adb
@requires_adb
def test_hang_is_detected_by_socket_timeouts(adb: IsolatedAdb, victim: manager.LoopbackPhone) -> None:
    import adbutils

    write_control_file(Path(victim.control_file), ["hang"])
    try:
        start = time.perf_counter()
        with pytest.raises(adbutils.AdbTimeout):
            _device(adb, victim).shell2("echo hi", v2=True, timeout=1.0)
        detected = time.perf_counter() - start
        with pytest.raises(adbutils.AdbTimeout):
            _device(adb, victim, timeout_s=1.0).sync.stat("/data/local/tmp")
    finally:
        write_control_file(Path(victim.control_file), [])
    figure("hang_detected_s_with_1s_timeout", detected, "s")
    assert 0.9 < detected < 3
    _back_online(adb, victim)


@pytest.mark.adb
@requires_adb
def test_refuse_auth_leaves_the_phone_unauthorized(adb: IsolatedAdb, tmp_path: Path) -> None:
    import adbutils

    with loopback_phones(adb, tmp_path, "pixel4", faults=["refuse_auth"]) as started:
        serial = started[0].serial
        start = time.perf_counter()
        wait_until(lambda: adb.server.states().get(serial) == "unauthorized", 10)
        figure("refuse_auth_detected_s", time.perf_counter() - start, "s")
        assert serial not in {d.serial for d in adb.client().device_list()}
        with pytest.raises(adbutils.AdbError, match="unauthorized"):
            _device(adb, started[0]).shell("echo hi", timeout=5)


@pytest.mark.adb
@requires_adb
def test_closing_a_shell_stream_kills_its_process_group(adb: IsolatedAdb, phones: dict[str, manager.LoopbackPhone]) -> None:
    device = _device(adb, phones["pixel4"])
    conn = device.shell("sleep 1000 & echo $!; wait", stream=True)
    conn.conn.settimeout(10)
    pid = int(conn.conn.makefile().readline())
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00"
    start = time.perf_counter()
    conn.close()

    def killed() -> bool:  # gone, or a zombie waiting for init to reap it
        try:
            return "\tZ" in next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:"))
        except OSError:
            return True

    wait_until(killed, 5, 0.005)
    figure("stream_close_to_process_killed_s", time.perf_counter() - start, "s")


@pytest.mark.adb
@requires_adb
def test_manager_status_stop_and_no_strays(adb: IsolatedAdb, tmp_path: Path) -> None:
    with loopback_phones(adb, tmp_path, "pixel4", count=2, faults=["overheat"]) as started:
        rows = manager.status(tmp_path)
        assert [(r["serial"], r["running"], r["adb_state"], r["faults"]) for r in rows] == [
            (ph.serial, True, "device", ["overheat=95"]) for ph in started
        ]
        stopped = manager.stop([started[0].serial], folder=tmp_path)
        assert [ph.serial for ph in stopped] == [started[0].serial]
        assert not started[0].is_running() and not Path(started[0].folder).exists()
        assert started[0].serial not in adb.server.states()
        with pytest.raises(MnasError, match=r"^127.0.0.1:1: not a loopback phone recorded in "):
            manager.stop(["127.0.0.1:1"], folder=tmp_path)
    assert manager.status(tmp_path) == []
    assert not started[1].is_running()


@pytest.mark.adb
@requires_adb
def test_manager_start_failure_leaves_nothing_running(adb: IsolatedAdb, tmp_path: Path) -> None:
    with pytest.raises(MnasError, match=r"device config 'nosuchphone': no file "):
        manager.start("nosuchphone", folder=tmp_path, adb=adb.server)
    bad_root = tmp_path / "with space"
    with pytest.raises(MnasError, match="expected a path made of letters"):
        manager.start("pixel4", folder=bad_root, adb=adb.server, timeout_s=10)
    assert manager.load_phones(bad_root) == []
