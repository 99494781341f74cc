"""A fake adbutils client/device for unit tests of `bench.adb`.

It speaks the same surface adbutils offers (`AdbClient.list/device`, `AdbDevice.open_transport`
with `shell,v2:` / `shell:` services on a socket-like object, `sync.stat/push`) and records
every shell command exactly as the phone received it. Commands that read `/sys` run in a real
`sh` against a fake sysfs tree under `root` (so the shell snippets themselves are exercised);
`getprop`, `sha256sum`, `chmod`, `rm`, `mkdir`, `kill`, `pkill` and the benchmark are emulated.
The benchmark's reply is scripted per run: complete output, truncated output, a phone that
dies mid-command, a hang, or a trickle of bytes that never ends.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adbutils import AdbDeviceInfo, FileInfo
from adbutils.errors import AdbConnectionError, AdbError

V1_MARKER_SUFFIX = "; echo __MNAS_RC=$?"

BENCH_OUTPUT = """STARTING!
Log parameter values verbosely: [0]
Min num runs: [50]
Num threads: [1]
Min warmup runs: [5]
Graph: [{graph}]
#threads used for CPU inference: [1]
Loaded model {graph}
The input model file size (MB): 3.41
Initialized session in 5.123ms.
Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=24 first=31250 curr=20811 min=20622 max=31250 avg=21400.5 std=2100

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=20901 curr=20756 min=20598 max=21302 avg=20810.2 std=140

Inference timings in us: Init: 5123, First inference: 31250, Warmup (avg): 21400.5, Inference (avg): 20810.2
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=3.2 overall=12.9
Overall peak memory footprint (MB) via periodic monitoring: 15.1
"""
# the same run cut off before the final timing line (a phone that died, a killed tool)
TRUNCATED_OUTPUT = BENCH_OUTPUT.split("\nInference timings")[0] + "\n"


@dataclass
class Reply:
    """How the phone answers one benchmark run."""

    output: str | None = None  # None: BENCH_OUTPUT for the run's graph
    rc: int | None = 0  # None: the connection ends before the exit status (phone died)
    hang: bool = False  # send the PID line, then nothing until the socket times out
    trickle: bool = False  # send one byte every 20 ms, forever


@dataclass
class FakePhone:
    serial: str = "FAKE0001"
    props: dict[str, str] = field(default_factory=dict)
    features: tuple[str, ...] = ("shell_v2", "cmd", "stat_v2")
    root: Path | None = None  # fake sysfs tree; /sys/... commands run in sh against it
    has_sha256sum: bool = True
    state: str = "device"
    replies: list[Reply] = field(default_factory=list)
    thermal_sequence: list[dict[str, int]] = field(default_factory=list)  # millidegrees by type
    # what happened
    commands: list[str] = field(default_factory=list)  # shell commands, protocol details removed
    services: list[str] = field(default_factory=list)  # the raw service strings
    transport_timeouts: list[float | None] = field(default_factory=list)
    pushes: list[tuple[str, int]] = field(default_factory=list)
    benchmarks: list[list[str]] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    fail_connects: int = 0
    offline_polls: int = 0  # while offline: `adb devices` polls until the phone is back
    next_pid: int = 4242

    # ---- the shell

    def execute(self, command: str) -> tuple[bytes, bytes, int | None, Reply | None]:
        """(stdout, stderr, rc or None, reply for streaming modes)."""
        self.commands.append(command)
        if command.startswith("echo __MNAS_PID=$$; "):
            return self._benchmark(command)
        if "/sys/" in command:
            return self._sh(command)
        argv = shlex.split(command)
        name = argv[0]
        if name == "getprop" and len(argv) == 1:
            text = "".join(f"[{k}]: [{v}]\n" for k, v in self.props.items())
            return text.encode(), b"", 0, None
        if name == "mkdir":
            return b"", b"", 0, None
        if name == "sha256sum":
            if not self.has_sha256sum:
                return b"", b"/system/bin/sh: sha256sum: inaccessible or not found\n", 127, None
            path = argv[1]
            if path not in self.files:
                return b"", f"sha256sum: {path}: No such file or directory\n".encode(), 1, None
            digest = hashlib.sha256(self.files[path][0]).hexdigest()
            return f"{digest}  {path}\n".encode(), b"", 0, None
        if name == "chmod":
            mode, path = int(argv[1], 8), argv[2]
            if path not in self.files:
                return b"", f"chmod: {path}: No such file or directory\n".encode(), 1, None
            self.files[path] = (self.files[path][0], mode)
            return b"", b"", 0, None
        if name == "rm" and argv[1] == "-f":
            for path in argv[2:]:
                self.files.pop(path, None)
            return b"", b"", 0, None
        if name in ("pkill", "kill"):
            return b"", b"", 0, None
        return b"", f"/system/bin/sh: {name}: inaccessible or not found\n".encode(), 127, None

    def _sh(self, command: str) -> tuple[bytes, bytes, int | None, Reply | None]:
        assert self.root is not None, "this fake phone has no sysfs tree"
        if "thermal_zone" in command and self.thermal_sequence:
            temps = self.thermal_sequence.pop(0) if len(self.thermal_sequence) > 1 else self.thermal_sequence[0]
            self.set_temps(temps)
        local = command.replace("/sys/", f"{self.root}/sys/")
        done = subprocess.run(["sh", "-c", local], capture_output=True, timeout=20)
        out = done.stdout.replace(str(self.root).encode(), b"")
        return out, done.stderr, done.returncode, None

    def _benchmark(self, command: str) -> tuple[bytes, bytes, int | None, Reply | None]:
        argv = shlex.split(command.split("; ", 1)[1])
        self.benchmarks.append(argv)
        pid = self.next_pid
        self.next_pid += 1
        head = f"__MNAS_PID={pid}\n".encode()
        binary = argv[2]
        if argv[0] != "taskset" or binary not in self.files:
            return head, f"taskset: exec {binary}: No such file or directory\n".encode(), 1, None
        if not self.files[binary][1] & 0o111:
            return head, f"taskset: exec {binary}: Permission denied\n".encode(), 1, None
        graph = next(a.split("=", 1)[1] for a in argv if a.startswith("--graph="))
        if graph not in self.files:
            text = f"STARTING!\nGraph: [{graph}]\nERROR: Could not open '{graph}'.\nFailed to mmap model {graph}\n"
            return head, text.encode(), 1, None
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.hang or reply.trickle:
            return head, b"", None, reply
        text = (reply.output if reply.output is not None else BENCH_OUTPUT).format(graph=graph)
        return head, text.encode(), reply.rc, None

    # ---- sysfs

    def set_temps(self, temps: dict[str, int]) -> None:
        assert self.root is not None
        base = self.root / "sys/class/thermal"
        if base.exists():
            shutil.rmtree(base)
        for index, (kind, value) in enumerate(temps.items()):
            zone = base / f"thermal_zone{index}"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "type").write_text(kind + "\n")
            (zone / "temp").write_text(f"{value}\n")

    def set_cpus(self, max_freqs: dict[int, int], offline: tuple[int, ...] = (),
                 cur_khz: int | None = None, cap_khz: int | None = None) -> None:
        """Write cpu*/cpufreq files and cpufreq/policy* folders for a topology."""
        assert self.root is not None
        cpu = self.root / "sys/devices/system/cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        cores = sorted(max_freqs)
        (cpu / "possible").write_text(f"0-{cores[-1]}\n")
        online = [c for c in cores if c not in offline]
        (cpu / "online").write_text(",".join(map(str, online)) + "\n")
        groups: dict[int, list[int]] = {}
        for core in cores:
            groups.setdefault(max_freqs[core], []).append(core)
            (cpu / f"cpu{core}").mkdir(exist_ok=True)
            if core in offline:
                continue
            freq_dir = cpu / f"cpu{core}/cpufreq"
            freq_dir.mkdir(exist_ok=True)
            (freq_dir / "cpuinfo_max_freq").write_text(f"{max_freqs[core]}\n")
            (freq_dir / "scaling_cur_freq").write_text(f"{cur_khz or max_freqs[core]}\n")
            (freq_dir / "scaling_max_freq").write_text(f"{cap_khz or max_freqs[core]}\n")
        for freq, members in groups.items():
            policy = cpu / f"cpufreq/policy{members[0]}"
            policy.mkdir(parents=True, exist_ok=True)
            (policy / "related_cpus").write_text(" ".join(map(str, members)) + "\n")
            (policy / "cpuinfo_max_freq").write_text(f"{freq}\n")


class FakeSocket:
    """The socket under a connection: serves prepared bytes, then hangs or trickles."""

    def __init__(self, data: bytes, reply: Reply | None = None) -> None:
        self._data = data
        self._reply = reply
        self.timeouts: list[float | None] = []
        self._timeout: float | None = None
        self._closed = threading.Event()

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self.timeouts.append(value)

    def recv(self, n: int) -> bytes:
        if self._data:
            chunk, self._data = self._data[:n], self._data[n:]
            return chunk
        if self._reply is not None and self._reply.trickle:
            time.sleep(0.02)
            return b"."
        if self._reply is not None and self._reply.hang:
            # block like a dead phone: only the socket timeout ends this (capped so a broken
            # caller fails the test instead of hanging the suite)
            wait = 30.0 if self._timeout is None else min(self._timeout, 30.0)
            self._closed.wait(wait)
            raise TimeoutError("timed out")
        return b""

    def close(self) -> None:
        self._closed.set()


class FakeConnection:
    """What `open_transport` returns: an adb stream to the phone."""

    def __init__(self, phone: FakePhone, timeout: float | None, preset: str | None = None) -> None:
        self.phone = phone
        self.conn = FakeSocket(b"")
        self.conn.settimeout(timeout)
        self._preset = preset
        self._okay = True
        self._fail_message = ""

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send_command(self, cmd: str) -> None:
        phone = self.phone
        phone.services.append(cmd)
        if cmd.startswith("shell,v2:"):
            if "shell_v2" not in phone.features:
                self._okay, self._fail_message = False, "unknown service"
                return
            out, err, rc, reply = phone.execute(cmd[len("shell,v2:"):])
            data = _frame(1, out) + _frame(2, err) + (b"" if rc is None else _frame(3, bytes([rc & 0xFF])))
        elif cmd.startswith("shell:"):
            command = cmd[len("shell:"):]
            marked = command.endswith(V1_MARKER_SUFFIX)
            if marked:
                command = command[: -len(V1_MARKER_SUFFIX)]
            out, err, rc, reply = phone.execute(command)
            data = out + err
            if marked and rc is not None:
                data += f"__MNAS_RC={rc}\n".encode()
        else:
            raise AssertionError(f"unexpected service {cmd!r}")
        timeout = self.conn._timeout
        self.conn = FakeSocket(data, reply)
        self.conn.settimeout(timeout)

    def check_okay(self) -> None:
        if not self._okay:
            raise AdbError(self._fail_message)

    def read_string_block(self) -> str:
        assert self._preset is not None
        return self._preset

    def close(self) -> None:
        self.conn.close()


def _frame(kind: int, data: bytes) -> bytes:
    return bytes([kind]) + len(data).to_bytes(4, "little") + data if data or kind == 3 else b""


class FakeSync:
    def __init__(self, phone: FakePhone) -> None:
        self.phone = phone

    def stat(self, path: str) -> FileInfo:
        if path in self.phone.files:
            data, mode = self.phone.files[path]
            return FileInfo(0o100000 | mode, len(data), None, path)
        return FileInfo(0, 0, None, path)

    def push(self, src: Any, dst: str, mode: int = 0o755, check: bool = False) -> int:
        if self.phone.state != "device":
            raise AdbConnectionError("device offline")
        data = Path(src).read_bytes() if isinstance(src, str | Path) else bytes(src)
        self.phone.files[str(dst)] = (data, mode)
        self.phone.pushes.append((str(dst), len(data)))
        return len(data)


class FakeDevice:
    def __init__(self, phone: FakePhone) -> None:
        self.phone = phone
        self.serial = phone.serial

    def open_transport(self, command: str | None = None, timeout: float | None = None) -> FakeConnection:
        phone = self.phone
        phone.transport_timeouts.append(timeout)
        if phone.fail_connects > 0:
            phone.fail_connects -= 1
            raise AdbConnectionError(f"device '{phone.serial}' not found")
        if phone.state != "device":
            raise AdbError(f"device '{phone.serial}' {phone.state}")
        if command == "features":
            return FakeConnection(phone, timeout, preset=",".join(phone.features))
        assert command is None, f"unexpected transport command {command!r}"
        return FakeConnection(phone, timeout)

    @property
    def sync(self) -> FakeSync:
        return FakeSync(self.phone)


class FakeAdbClient:
    host = "127.0.0.1"
    port = 5037

    def __init__(self, *phones: FakePhone) -> None:
        self.phones = {phone.serial: phone for phone in phones}

    def list(self, extended: bool = False) -> list[AdbDeviceInfo]:
        for phone in self.phones.values():
            if phone.state == "offline" and phone.offline_polls > 0:
                phone.offline_polls -= 1
                if phone.offline_polls == 0:
                    phone.state = "device"
        return [AdbDeviceInfo(serial=p.serial, state=p.state) for p in self.phones.values()]

    def device(self, serial: str | None = None) -> FakeDevice:
        assert serial is not None
        return FakeDevice(self.phones[serial])
