"""A phone over adb: TFLite's `benchmark_model`, pinned to ONE core, with thermal bookkeeping.

Why it is built this way:
- adbutils blocks forever on a hung phone unless every socket has a timeout, and a socket
  timeout only bounds *silence*, not a phone that trickles bytes; so every shell call here
  reads against a deadline and every file transfer runs under a bounded wait.
- A phone that dies mid-command can look like a normal short output. Commands therefore use
  the shell protocol that reports exit codes (shell v2 where the phone advertises `shell_v2`,
  else an exit-code marker appended to the command), and a benchmark output without
  `benchmark_model`'s final timing line counts as a failed run.
- Everything sent to the phone's shell is built with `shlex.quote`.
- A timed-out benchmark keeps running on the phone (adbd does not kill it when the socket
  closes) and would spoil the retry, so the command announces its shell's PID and a timeout
  kills that process tree.
- One bound rules a benchmark call: every adb call it makes (stat, push, thermal reads, rm,
  kill) is bounded by the smaller of the device's timeout and `BenchConfig.timeout_s` (a push
  gets 1 s per MB on top), the benchmark run itself by `BenchConfig.timeout_s`, the wait for
  a dropped phone between retries by the same bound; after a call got no answer at all (a
  hung phone) the clean-up `rm` is skipped rather than waited for again.
- After the last retry fails at the connection level (phone gone, hung or cut off, as opposed
  to a benchmark that ran and failed or ran too long), the device sets `offline`, so the
  harness stops sending it models.

Thermal throttling is detected from the pinned core's frequency *cap* (`scaling_max_freq`,
what thermal mitigation lowers) rather than `scaling_cur_freq`, which drops as soon as the core
goes idle after the run; both are recorded.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import adbutils
from adbutils.errors import AdbConnectionError, AdbError, AdbTimeout

from mnas.bench.device_config import (
    SCHEMA_VERSION,
    DeviceConfig,
    ThermalPolicy,
    load_all,
    match_config,
    parse_config,
)
from mnas.bench.files import sha256_file
from mnas.bench.topology import clusters_by_frequency, core_mask, fastest_core
from mnas.bench.types import BenchConfig, DeviceProfile, Measurement
from mnas.errors import MeasurementError, MnasError

REMOTE_DIR = "/data/local/tmp/mnas"
DEFAULT_TIMEOUT_S = 30.0
RUNTIME = "benchmark_model"
RC_MARKER = "__MNAS_RC="
PID_MARKER = "__MNAS_PID="
PROBED_PROPERTIES = (
    "ro.product.model",
    "ro.product.device",
    "ro.product.name",
    "ro.product.manufacturer",
    "ro.product.cpu.abi",
    "ro.board.platform",
)
_RECONNECT_POLL_S = 0.5
_SANE_TEMP_C = (-40.0, 150.0)  # readings outside are sensor sentinels, not temperatures

T = TypeVar("T")


# --------------------------------------------------------------------------- the adb server


def adb_server_address() -> tuple[str, int]:
    """Host and port of the adb server: $ANDROID_ADB_SERVER_HOST/PORT, else 127.0.0.1:5037."""
    host = os.environ.get("ANDROID_ADB_SERVER_HOST") or "127.0.0.1"
    raw = os.environ.get("ANDROID_ADB_SERVER_PORT") or "5037"
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise MnasError(f"ANDROID_ADB_SERVER_PORT = {raw!r}: expected a TCP port number (1..65535)")
    return host, port


def adb_server_running(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts connections on the adb server's port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class _NoAutoStartClient(adbutils.AdbClient):
    """An AdbClient that never starts an adb server behind the caller's back.

    adbutils runs `adb start-server` whenever a connection fails; for `mnas` a missing server
    is a fact to report ("start one with `adb start-server`"), not a daemon to spawn.
    """

    def make_connection(self, timeout: float | None = None) -> adbutils.AdbConnection:
        if not adb_server_running(self.host, self.port):
            raise AdbConnectionError(f"no adb server on {self.host}:{self.port}")
        return super().make_connection(timeout=timeout)


def adb_client(timeout_s: float = DEFAULT_TIMEOUT_S) -> adbutils.AdbClient:
    """THE way to get an adb client in mnas: server from the environment, socket timeouts set.

    Honours ANDROID_ADB_SERVER_PORT (default 5037), ANDROID_ADB_SERVER_HOST and, for the `adb`
    binary adbutils may run, ADBUTILS_ADB_PATH. No network traffic happens here.
    """
    host, port = adb_server_address()
    return _NoAutoStartClient(host=host, port=port, socket_timeout=timeout_s)


def adb_unavailable_reason(client: Any) -> str | None:
    """None when the client's adb server answers; else one line saying what is missing."""
    host, port = getattr(client, "host", "127.0.0.1"), getattr(client, "port", 5037)
    if adb_server_running(host, port):
        return None
    try:
        binary = adbutils.adb_path()
    except AdbError:
        binary = None
    if binary is None or not os.access(binary, os.X_OK):
        where = f" (ADBUTILS_ADB_PATH={binary})" if binary else ""
        return (f"no adb server on {host}:{port} and no adb binary found{where} "
                "(install adb or set ADBUTILS_ADB_PATH)")
    return f"no adb server on {host}:{port} (start one with `adb start-server`)"


# --------------------------------------------------------------------------- shell results


class AdbCallError(MeasurementError):
    """An adb call failed (connection lost, timeout, phone gone); worth a retry."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ShellTimeout(AdbCallError):
    """A shell command ran past its deadline; `output` holds what arrived before it."""


class AdbNoAnswer(AdbCallError):
    """An adb call got no answer within its bound: the phone (or its link) is hung."""


@dataclass
class ShellResult:
    """One finished shell command: exit code and output (stdout + stderr in arrival order)."""

    command: str
    returncode: int
    output: str
    stdout: str
    stderr: str
    protocol: str  # "v2" or "v1"


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else "(no output)"


# --------------------------------------------------------------------------- pure parsers


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output (`[key]: [value]` lines) as a dict."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[([^\]\n]+)\]: \[(.*?)\]$", text, re.M | re.S)}


def parse_cpu_list(text: str) -> list[int]:
    """A sysfs CPU list such as `0-3,6` as sorted core ids."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return sorted(cores)


@dataclass
class ThermalReading:
    """Temperatures of every thermal zone and the pinned core's current frequency and cap."""

    temps_c: dict[str, float] = field(default_factory=dict)
    cur_freq_khz: int | None = None
    cap_khz: int | None = None

    @property
    def hottest_c(self) -> float | None:
        sane = [t for t in self.temps_c.values() if _SANE_TEMP_C[0] < t < _SANE_TEMP_C[1]]
        return max(sane) if sane else None


def thermal_command(core: int) -> str:
    """One shell command printing every thermal zone and the core's cur/max frequency."""
    cpufreq = f"/sys/devices/system/cpu/cpu{int(core)}/cpufreq"
    cur = shlex.quote(f"{cpufreq}/scaling_cur_freq")
    cap = shlex.quote(f"{cpufreq}/scaling_max_freq")
    return (
        "for z in /sys/class/thermal/thermal_zone*; do "
        'echo "__Z|${z##*/}|$(cat "$z/type" 2>/dev/null)|$(cat "$z/temp" 2>/dev/null)"; done; '
        f'echo "__F|$(cat {cur} 2>/dev/null)|$(cat {cap} 2>/dev/null)"'
    )


def parse_thermal_output(text: str) -> ThermalReading:
    """Parse `thermal_command` output; sysfs temperatures are millidegrees Celsius."""
    reading = ThermalReading()
    for line in text.splitlines():
        parts = line.strip().split("|")
        if parts[0] == "__Z" and len(parts) == 4:
            zone, kind, raw = parts[1], parts[2].strip(), parts[3].strip()
            try:
                value = int(raw) / 1000.0
            except ValueError:
                continue  # unreadable zone (disabled sensor, permission)
            key = kind or zone
            if key in reading.temps_c:
                key = f"{key}@{zone}"
            reading.temps_c[key] = value
        elif parts[0] == "__F" and len(parts) == 3:
            reading.cur_freq_khz = _int_or_none(parts[1])
            reading.cap_khz = _int_or_none(parts[2])
    return reading


def cpu_probe_command() -> str:
    """One shell command printing possible/online cores and every core's cpuinfo_max_freq."""
    base = "/sys/devices/system/cpu"
    return (
        f'echo "__POSSIBLE|$(cat {base}/possible 2>/dev/null)"; '
        f'echo "__ONLINE|$(cat {base}/online 2>/dev/null)"; '
        f"for c in {base}/cpu[0-9]*; do "
        'echo "__C|${c##*/}|$(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null)"; done; '
        f"for p in {base}/cpufreq/policy*; do "
        'echo "__P|$(cat "$p/related_cpus" 2>/dev/null)|$(cat "$p/cpuinfo_max_freq" 2>/dev/null)"; '
        "done"
    )


def parse_cpu_probe(text: str, source: str = "phone") -> dict[int, int]:
    """cpuinfo_max_freq (kHz) of every possible core from `cpu_probe_command` output.

    Offline cores have no readable cpufreq folder; their frequency comes from the cpufreq
    policy whose related_cpus lists them.
    """
    possible: list[int] = []
    per_core: dict[int, int] = {}
    per_policy: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if parts[0] == "__POSSIBLE" and len(parts) == 2 and parts[1].strip():
            possible = parse_cpu_list(parts[1])
        elif parts[0] == "__C" and len(parts) == 3:
            match = re.fullmatch(r"cpu(\d+)", parts[1].strip())
            freq = _int_or_none(parts[2])
            if match and freq:
                per_core[int(match.group(1))] = freq
        elif parts[0] == "__P" and len(parts) == 3:
            freq = _int_or_none(parts[2])
            if freq:
                for core in parse_cpu_list(parts[1].replace(" ", ",")):
                    per_policy[core] = freq
    cores = possible or sorted(set(per_core) | set(per_policy))
    if not cores:
        raise MnasError(f"{source}: /sys/devices/system/cpu lists no cores")
    result: dict[int, int] = {}
    for core in cores:
        freq = per_core.get(core) or per_policy.get(core)
        if not freq:
            raise MnasError(f"{source}: cpu{core} has no readable cpuinfo_max_freq (is it offline? "
                            "bring it online or write the config by hand)")
        result[core] = freq
    return result


def _int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def cluster_names(count: int) -> list[str]:
    """Names for `count` clusters, slowest first."""
    return {1: ["all"], 2: ["little", "big"], 3: ["little", "big", "prime"]}.get(
        count, [f"cluster{i}" for i in range(count)]
    )


def build_probed_config(name: str, serial: str, props: Mapping[str, str],
                        max_freq_khz: Mapping[int, int], label: str | None = None) -> DeviceConfig:
    """A validated device config from a phone's getprop values and per-core max frequencies."""
    label = label or f"device config '{name}'"
    for key in ("ro.product.model", "ro.product.device"):
        if not props.get(key):
            raise MnasError(f"phone {serial}: getprop {key} is empty; cannot build a config "
                            "that matches it")
    groups = clusters_by_frequency(max_freq_khz)
    names = cluster_names(len(groups))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "description": f"probed from {serial}",
        "properties": {key: props[key] for key in PROBED_PROPERTIES if props.get(key)},
        "match": {key: [props[key]] for key in ("ro.product.model", "ro.product.device")},
        "clusters": [
            {"name": cname, "cores": list(cores), "max_freq_khz": freq}
            for cname, (cores, freq) in zip(names, groups, strict=True)
        ],
        "pin_core": fastest_core(max_freq_khz),
        "thermal": {
            "cooldown_below_c": ThermalPolicy.cooldown_below_c,
            "cooldown_timeout_s": ThermalPolicy.cooldown_timeout_s,
            "throttle_ratio": ThermalPolicy.throttle_ratio,
        },
        "benchmark_binary": None,
    }
    return parse_config(doc, label, expected_name=name)


# --------------------------------------------------------------------------- the device


class AdbDevice:
    """One phone behind the adb server; implements the `Device` protocol of `bench.types`."""

    def __init__(
        self,
        serial: str,
        config: DeviceConfig | None = None,
        adb: Any | None = None,
        benchmark_binary: Path | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        *,
        remote_dir: str = REMOTE_DIR,
        poll_s: float = 5.0,
        retry_delay_s: float = 2.0,
        reconnect_wait_s: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 0:
            raise MnasError(f"retries = {retries}: expected 0 or more")
        self.serial = serial
        self.device_id = serial
        self.config = config
        self.adb = adb if adb is not None else adb_client(timeout_s)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.remote_dir = remote_dir.rstrip("/")
        self.poll_s = poll_s
        self.retry_delay_s = retry_delay_s
        self.reconnect_wait_s = reconnect_wait_s
        self._sleep = sleep
        self._clock = clock
        self._device = self.adb.device(serial)
        self._local_binary = self._resolve_local_binary(benchmark_binary)
        self._features: set[str] | None = None
        self._props: dict[str, str] | None = None
        self._probed_freqs: dict[int, int] | None = None
        self._binary_sha: str | None = None
        self.cleanup_errors: list[str] = []
        self.offline = False  # set after a final connection-level failure (see benchmark)

    # ---- names and paths

    @property
    def remote_binary(self) -> str:
        return f"{self.remote_dir}/benchmark_model"

    @property
    def remote_models_dir(self) -> str:
        return f"{self.remote_dir}/models"

    def remote_model_path(self, model_sha256: str) -> str:
        return f"{self.remote_models_dir}/{model_sha256[:16]}.tflite"

    @property
    def device_name(self) -> str:
        if self.config is not None:
            return self.config.name
        props = self._props or {}
        return props.get("ro.product.device") or "unknown"

    def _label(self) -> str:
        return f"{self.serial} ({self.config.name})" if self.config else self.serial

    def _resolve_local_binary(self, given: Path | str | None) -> Path | None:
        if given is not None:
            path = Path(given).expanduser()
            origin = "benchmark binary"
        elif self.config is not None and self.config.benchmark_binary:
            path = Path(self.config.benchmark_binary).expanduser()
            if not path.is_absolute() and self.config.source is not None:
                path = self.config.source.parent / path
            origin = f"{self.config.label}: field 'benchmark_binary'"
        else:
            return None
        if not path.is_file():
            raise MnasError(f"{origin}: {path} not found (expected the arm64 benchmark_model "
                            "binary on this host)")
        return path

    # ---- bounded adb calls

    def _call(self, what: str, fn: Callable[[], T], timeout_s: float) -> T:
        """Run one adbutils call with a hard deadline; adb failures become AdbCallError."""
        try:
            return _bounded(fn, timeout_s)
        except _CallTimeout:
            raise AdbNoAnswer(f"{self._label()}: {what} timed out after {timeout_s:.1f} s") from None
        except MnasError:
            raise
        except (AdbError, OSError, EOFError) as exc:
            detail = _one_line(str(exc)) or (f"the connection closed without a reply "
                                              f"({type(exc).__name__}; phone disconnected?)")
            raise AdbCallError(f"{self._label()}: {what} failed: {detail}") from None

    def call_bound(self, config: BenchConfig | None = None) -> float:
        """Seconds allowed for one adb call: the device's timeout, or the benchmark's if smaller."""
        return self.timeout_s if config is None else min(self.timeout_s, float(config.timeout_s))

    def features(self, timeout_s: float | None = None) -> set[str]:
        """The adb features the phone advertises (cached); `shell_v2` selects the protocol."""
        if self._features is None:
            timeout = self.timeout_s if timeout_s is None else float(timeout_s)

            def fetch() -> str:
                with self._device.open_transport("features", timeout=timeout) as conn:
                    return conn.read_string_block()

            text = self._call("reading adb features", fetch, timeout)
            self._features = {f.strip() for f in text.split(",") if f.strip()}
        return self._features

    def shell(self, command: str, timeout_s: float | None = None) -> ShellResult:
        """Run `command` (already shell-quoted) and return its exit code and output.

        The whole call, however slowly the phone answers, ends by `timeout_s` (default: the
        device's timeout) with ShellTimeout; a connection that ends before the exit status
        raises AdbCallError.
        """
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        deadline = time.monotonic() + timeout
        v2 = "shell_v2" in self.features(timeout)
        sent = command if v2 else f"{command}; echo {RC_MARKER}$?"
        what = f"`{_one_line(command, 80)}`"
        try:
            conn = self._device.open_transport(timeout=timeout)
        except (AdbError, OSError) as exc:
            raise AdbCallError(f"{self._label()}: {what}: cannot reach the phone: "
                               f"{_one_line(str(exc))}") from None
        try:
            conn.send_command(("shell,v2:" if v2 else "shell:") + sent)
            _arm(conn, deadline)
            conn.check_okay()
            if v2:
                return self._read_v2(conn, command, deadline, what)
            return self._read_v1(conn, command, deadline, what)
        except ShellTimeout as exc:
            raise ShellTimeout(f"{self._label()}: {what} timed out after {timeout:.1f} s",
                               exc.output) from None
        except (AdbTimeout, TimeoutError):
            raise AdbNoAnswer(f"{self._label()}: {what}: no answer from the phone within "
                              f"{timeout:.1f} s") from None
        except (AdbError, OSError, EOFError) as exc:
            raise AdbCallError(f"{self._label()}: {what} failed: {_one_line(str(exc))}") from None
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _recv(self, conn: Any, deadline: float, partial: bytes, what: str) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ShellTimeout(f"{self._label()}: {what} timed out", _decode(partial))
        sock = conn.conn
        sock.settimeout(remaining)
        try:
            return sock.recv(65536)
        except TimeoutError:
            raise ShellTimeout(f"{self._label()}: {what} timed out", _decode(partial)) from None

    def _read_v2(self, conn: Any, command: str, deadline: float, what: str) -> ShellResult:
        buffer = b""
        stdout, stderr, merged = bytearray(), bytearray(), bytearray()
        while True:
            while len(buffer) >= 5:
                kind, length = buffer[0], int.from_bytes(buffer[1:5], "little")
                if len(buffer) < 5 + length:
                    break
                data, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if kind == 1:
                    stdout += data
                    merged += data
                elif kind == 2:
                    stderr += data
                    merged += data
                elif kind == 3:
                    rc = data[0] if data else 255
                    return ShellResult(command, rc, _decode(merged), _decode(stdout),
                                       _decode(stderr), "v2")
            chunk = self._recv(conn, deadline, bytes(merged), what)
            if not chunk:
                raise AdbCallError(f"{self._label()}: {what}: connection closed before the exit "
                                   "status (phone disconnected or adbd died)", _decode(merged))
            buffer += chunk

    def _read_v1(self, conn: Any, command: str, deadline: float, what: str) -> ShellResult:
        data = bytearray()
        while True:
            chunk = self._recv(conn, deadline, bytes(data), what)
            if not chunk:
                break
            data += chunk
        text = _decode(data).replace("\r\n", "\n")
        index = text.rfind(RC_MARKER)
        tail = text[index + len(RC_MARKER):].strip() if index >= 0 else ""
        if index < 0 or not tail.isdigit():
            raise AdbCallError(f"{self._label()}: {what}: output ended without the exit status "
                               "(phone disconnected or adbd died)", text)
        output = text[:index]
        return ShellResult(command, int(tail), output, output, "", "v1")

    def run(self, command: str, timeout_s: float | None = None) -> str:
        """`shell`, but a non-zero exit code is an AdbCallError; returns the output."""
        result = self.shell(command, timeout_s)
        if result.returncode != 0:
            raise AdbCallError(f"{self._label()}: `{_one_line(command, 80)}` exited with code "
                               f"{result.returncode}: {_last_line(result.output)}", result.output)
        return result.output

    # ---- phone facts

    def getprops(self, timeout_s: float | None = None) -> dict[str, str]:
        """All of the phone's properties (one `getprop` call, cached)."""
        if self._props is None:
            self._props = parse_getprop(self.run("getprop", timeout_s))
        return self._props

    def read_cpu_max_freqs(self) -> dict[int, int]:
        """cpuinfo_max_freq (kHz) of every possible core, read from the phone's sysfs."""
        if self._probed_freqs is None:
            self._probed_freqs = parse_cpu_probe(self.run(cpu_probe_command()),
                                                 source=f"phone {self.serial}")
        return self._probed_freqs

    def probe_config(self, name: str, label: str | None = None) -> DeviceConfig:
        """Build a device config from the phone's getprop values and CPU topology."""
        return build_probed_config(name, self.serial, self.getprops(), self.read_cpu_max_freqs(),
                                   label=label)

    def pin_core(self, config: BenchConfig | None = None) -> int:
        """The ONE core to pin to: BenchConfig.core, else the config's pin_core, else probed."""
        if config is not None and config.core is not None:
            cores = self.config.cores if self.config else sorted(self.read_cpu_max_freqs())
            if config.core not in cores:
                raise MnasError(f"{self._label()}: core {config.core} requested, but the phone has "
                                f"cores {cores[0]}..{cores[-1]}")
            return config.core
        if self.config is not None:
            return self.config.pin_core
        return fastest_core(self.read_cpu_max_freqs())

    def max_freq_khz(self, core: int) -> int | None:
        if self.config is not None:
            return self.config.max_freq_khz(core)
        return self.read_cpu_max_freqs().get(core)

    def cpu_model(self, core: int) -> str:
        props = self._props or {}
        soc = props.get("ro.soc.model") or props.get("ro.board.platform") or props.get(
            "ro.hardware", "")
        cluster = ""
        if self.config is not None:
            cluster = f" ({self.config.cluster_of(core).name})"
        return f"{soc} cpu{core}{cluster}".strip()

    def profile(self) -> DeviceProfile:
        props = self.getprops()
        core = self.pin_core()
        version = ""
        if self._binary_sha is not None:
            version = _version_from_sha(self._binary_sha)
        elif self._local_binary is not None:
            version = _version_from_sha(sha256_file(self._local_binary))
        return DeviceProfile(
            device_id=self.serial,
            device_name=self.device_name,
            kind="adb",
            model=props.get("ro.product.model", ""),
            cpu_model=self.cpu_model(core),
            pinned_core=core,
            max_freq_khz=self.max_freq_khz(core),
            runtime=RUNTIME,
            runtime_version=version,
        )

    # ---- thermal

    def read_thermal(self, core: int, timeout_s: float | None = None) -> ThermalReading:
        return parse_thermal_output(self.run(thermal_command(core), timeout_s))

    def _policy(self) -> ThermalPolicy:
        return self.config.thermal if self.config is not None else ThermalPolicy()

    def cooldown(self, core: int, timeout_s: float | None = None) -> tuple[ThermalReading, float, bool]:
        """Wait (bounded) until every thermal zone reads below the policy's threshold.

        Returns the last reading, the seconds waited and whether the wait timed out.
        """
        policy = self._policy()
        start = self._clock()
        reading = self.read_thermal(core, timeout_s)
        while True:
            waited = self._clock() - start
            hottest = reading.hottest_c
            if hottest is None or hottest < policy.cooldown_below_c:
                return reading, waited, False
            if waited >= policy.cooldown_timeout_s:
                return reading, waited, True
            self._sleep(max(0.0, min(self.poll_s, policy.cooldown_timeout_s - waited)))
            reading = self.read_thermal(core, timeout_s)

    # ---- files on the phone

    def _remote_identity(self, remote: str, timeout_s: float
                         ) -> tuple[bool, int | None, str | None, bool]:
        """(exists, size, sha256 or None when the phone has no sha256sum, executable)."""
        info = self._call(f"stat {remote}", lambda: self._device.sync.stat(remote), timeout_s)
        if not info.mode and info.mtime is None:
            return False, None, None, False
        result = self.shell(f"sha256sum {shlex.quote(remote)}", timeout_s)
        digest = None
        if result.returncode == 0:
            first = result.output.split()
            if first and re.fullmatch(r"[0-9a-f]{64}", first[0]):
                digest = first[0]
        return True, int(info.size), digest, bool(info.mode & 0o111)

    def _push(self, local: Path, remote: str, mode: int = 0o644,
              timeout_s: float | None = None) -> None:
        size = local.stat().st_size
        base = self.timeout_s if timeout_s is None else float(timeout_s)
        timeout = base + size / 1e6  # allow 1 MB/s on top of the call timeout
        self._call(f"push {local.name} to {remote}",
                   lambda: self._device.sync.push(local, remote, mode=mode, check=True), timeout)

    def ensure_binary(self, timeout_s: float | None = None) -> str:
        """Make sure benchmark_model is on the phone (push only if its hash differs).

        Returns the binary's sha256 (or `size:N` when neither side can hash it).
        `timeout_s` bounds each adb call (default: the device's timeout).
        """
        if self._binary_sha is not None:
            return self._binary_sha
        bound = self.timeout_s if timeout_s is None else float(timeout_s)
        remote = self.remote_binary
        self.run(f"mkdir -p {shlex.quote(self.remote_models_dir)}", bound)
        exists, size, remote_sha, executable = self._remote_identity(remote, bound)
        local = self._local_binary
        if local is None:
            if not exists:
                hint = (f"set benchmark_binary in {self.config.label}" if self.config
                        else "pass the benchmark_model binary")
                raise MnasError(f"{self._label()}: no benchmark_model on the phone at {remote} and "
                                f"no local binary given ({hint})")
            if not executable:
                self.run(f"chmod 755 {shlex.quote(remote)}", bound)
            self._binary_sha = remote_sha or f"size:{size}"
            return self._binary_sha
        local_sha = sha256_file(local)
        local_size = local.stat().st_size
        same = exists and (remote_sha == local_sha if remote_sha is not None else size == local_size)
        if not same:
            self._push(local, remote, mode=0o755, timeout_s=bound)
        if not same or not executable:
            self.run(f"chmod 755 {shlex.quote(remote)}", bound)
        self._binary_sha = local_sha
        return local_sha

    def _remove(self, remote: str, timeout_s: float | None = None) -> None:
        try:
            result = self.shell(f"rm -f {shlex.quote(remote)}", timeout_s)
            if result.returncode != 0:
                self.cleanup_errors.append(f"rm {remote}: {_last_line(result.output)}")
        except MeasurementError as exc:
            self.cleanup_errors.append(f"rm {remote}: {exc}")

    def _kill_stale(self, partial_output: str, timeout_s: float | None = None) -> bool:
        """Kill the timed-out benchmark's shell and its children (best effort).

        Returns whether the phone answered: False means it is hung or gone (no PID was ever
        printed and a plain `true` gets no answer, or the kill itself got none).
        """
        match = re.search(re.escape(PID_MARKER) + r"(\d+)", partial_output)
        pid = shlex.quote(match.group(1)) if match else None
        command = f"pkill -P {pid}; kill {pid}" if pid else "true"
        try:
            self.shell(command, timeout_s)
        except MeasurementError as exc:
            self.cleanup_errors.append(f"{'kill ' + pid if pid else 'liveness check'}: {exc}")
            return False
        return True

    # ---- benchmarking

    def benchmark_command(self, remote_model: str, core: int, config: BenchConfig) -> str:
        """The exact shell command of one benchmark run; every argument shlex-quoted."""
        argv = [
            "taskset",
            core_mask(core),
            self.remote_binary,
            f"--graph={remote_model}",
            f"--num_threads={config.num_threads}",
            f"--warmup_runs={config.warmup_runs}",
            f"--num_runs={config.num_runs}",
            f"--min_secs={config.min_secs:g}",
        ]
        if config.profile_ops:
            argv.append("--enable_op_profiling=true")
        return f"echo {PID_MARKER}$$; " + " ".join(shlex.quote(arg) for arg in argv)

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        """Time `model_path` on the pinned core; retries, then one-line MeasurementError.

        A final failure at the connection level (AdbCallError other than a benchmark that
        merely ran past its timeout on a phone that still answers) sets `offline`.
        """
        model_path = Path(model_path)
        if not model_path.is_file():
            raise MnasError(f"{model_path}: model file not found")
        model_sha = sha256_file(model_path)
        core = self.pin_core(config)
        bound = self.call_bound(config)
        attempts = self.retries + 1
        last: MeasurementError | None = None
        for attempt in range(1, attempts + 1):
            try:
                measurement = self._attempt(model_path, model_sha, core, config)
                measurement.extra["attempts"] = attempt
                self.offline = False
                return measurement
            except MeasurementError as exc:
                last = exc
                if attempt < attempts:
                    self._sleep(self.retry_delay_s)
                    self.await_online(min(self.reconnect_wait_s, bound), bound)
        assert last is not None
        self.offline = isinstance(last, AdbCallError) and not isinstance(last, ShellTimeout)
        reason = str(last)
        for prefix in (f"{self._label()} {model_path.name}: ", f"{self._label()}: "):
            if reason.startswith(prefix):  # the line names phone and model once
                reason = reason[len(prefix):]
                break
        raise MeasurementError(
            f"{self._label()}: benchmark of {model_path.name} failed after {attempts} "
            f"attempt(s): {_one_line(reason)}"
            + ("; phone marked offline" if self.offline else "")
        )

    def await_online(self, limit_s: float, call_timeout_s: float | None = None) -> bool:
        """Wait (bounded) until the adb server lists this phone as `device` again.

        A phone that dropped off USB, or whose adbd restarted, is usually back within seconds;
        retrying before that would only fail again.
        """
        deadline = self._clock() + limit_s
        call_timeout = self.timeout_s if call_timeout_s is None else call_timeout_s
        while True:
            try:
                entries = list_devices(self.adb, call_timeout)
                state = {entry.serial: entry.state for entry in entries}.get(self.serial)
            except MnasError:
                state = None
            if state == "device":
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(_RECONNECT_POLL_S)

    def _attempt(self, model_path: Path, model_sha: str, core: int,
                 config: BenchConfig) -> Measurement:
        from mnas.bench.bm_output import (
            BenchmarkParseError,
            parse_benchmark_output,
            require_complete,
        )

        bound = self.call_bound(config)
        binary_sha = self.ensure_binary(bound)
        self.getprops(bound)
        remote_model = self.remote_model_path(model_sha)
        link_lost = False
        try:
            self._push(model_path, remote_model, timeout_s=bound)
            before, waited_s, cooldown_timed_out = self.cooldown(core, bound)
            command = self.benchmark_command(remote_model, core, config)
            started = time.monotonic()
            try:
                result = self.shell(command, timeout_s=config.timeout_s)
            except ShellTimeout as exc:
                if not self._kill_stale(exc.output, bound):
                    raise AdbNoAnswer(f"{exc}; the phone stopped answering (hung or "
                                      "disconnected)", exc.output) from None
                raise
            wall_s = time.monotonic() - started
            after = self.read_thermal(core, bound)
        except AdbNoAnswer:
            link_lost = True
            raise
        finally:
            if link_lost:  # the phone is not answering: rm would only wait out another bound
                self.cleanup_errors.append(f"rm {remote_model}: skipped, the phone is not answering")
            else:
                self._remove(remote_model, bound)

        source = f"{self._label()} {model_path.name}"
        output = re.sub(r"^" + re.escape(PID_MARKER) + r"\d+\n?", "", result.output, flags=re.M)
        if result.returncode != 0:
            raise MeasurementError(f"{source}: benchmark_model exited with code "
                                   f"{result.returncode}: {_last_line(output)}")
        try:
            parsed = parse_benchmark_output(output)
        except BenchmarkParseError as exc:
            raise MeasurementError(f"{source}: unreadable benchmark_model output: "
                                   f"{_one_line(str(exc))}") from None
        require_complete(parsed, source=source)
        if parsed.inference is None:
            raise MeasurementError(f"{source}: benchmark_model printed no inference timings")

        max_freq = self.max_freq_khz(core)
        policy = self._policy()
        capped = (after.cap_khz is not None and max_freq is not None
                  and after.cap_khz < policy.throttle_ratio * max_freq)
        version = _runtime_version(parsed.params, binary_sha)
        return Measurement(
            device_id=self.serial,
            device_name=self.device_name,
            model_sha256=model_sha,
            model_path=str(model_path),
            runtime=RUNTIME,
            runtime_version=version,
            config=config,
            stats=parsed.inference,
            init_us=parsed.init_us,
            first_us=parsed.first_us,
            warmup_avg_us=parsed.warmup_avg_us,
            pinned_cores=(core,),
            cpu_model=self.cpu_model(core),
            temps_before_c=before.temps_c,
            temps_after_c=after.temps_c,
            freq_before_khz=before.cur_freq_khz,
            freq_after_khz=after.cur_freq_khz,
            max_freq_khz=max_freq,
            throttled=bool(capped or cooldown_timed_out),
            peak_memory_mb=parsed.peak_memory_mb,
            op_profile=parsed.op_profile,
            wall_s=wall_s,
            extra={
                "shell_protocol": result.protocol,
                "binary_sha256": binary_sha,
                "taskset_mask": core_mask(core),
                "cooldown_waited_s": round(waited_s, 3),
                "cooldown_timed_out": cooldown_timed_out,
                "freq_cap_before_khz": before.cap_khz,
                "freq_cap_after_khz": after.cap_khz,
            },
        )


def _arm(conn: Any, deadline: float) -> None:
    conn.conn.settimeout(max(0.001, deadline - time.monotonic()))


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _version_from_sha(sha: str) -> str:
    return sha if sha.startswith("size:") else f"sha256:{sha[:12]}"


def _runtime_version(params: Mapping[str, str], binary_sha: str) -> str:
    """The binary's identity: a version the tool printed (if any) plus its hash prefix.

    Released benchmark_model builds print no version line, so the hash is what tells two
    builds apart; a build that prints one (`... version: [X]`) gets it in front.
    """
    printed = next((value.strip() for key, value in params.items()
                    if "version" in key.lower() and value.strip()), "")
    identity = _version_from_sha(binary_sha)
    return f"{printed}+{identity}" if printed else identity


# --------------------------------------------------------------------------- discovery


@dataclass
class PhoneInfo:
    """One entry of `adb devices`: serial, state, properties and the matching config."""

    serial: str
    state: str
    props: dict[str, str] = field(default_factory=dict)
    config: DeviceConfig | None = None
    error: str | None = None

    @property
    def model(self) -> str:
        return self.props.get("ro.product.model", "")


def discover_phones(client: Any, configs: Mapping[str, DeviceConfig] | None = None,
                    timeout_s: float = 10.0) -> list[PhoneInfo]:
    """Every phone the adb server knows, with getprop values and matched device config.

    Phones that are not in state `device` (unauthorized, offline) are listed without
    properties; a phone that fails to answer is listed with its error.
    """
    if configs is None:
        configs = load_all()
    entries = list_devices(client, timeout_s)
    phones: list[PhoneInfo] = []
    for entry in entries:
        phone = PhoneInfo(serial=entry.serial, state=entry.state)
        if entry.state == "device":
            try:
                device = AdbDevice(entry.serial, None, client, timeout_s=timeout_s, retries=0)
                phone.props = device.getprops()
                phone.config = match_config(phone.props, configs)
            except MnasError as exc:
                phone.error = _one_line(str(exc))
        phones.append(phone)
    return phones


class _CallTimeout(Exception):
    """A bounded call did not return in time (its thread is left to its socket timeout)."""


def _bounded(fn: Callable[[], T], timeout_s: float) -> T:
    """`fn()` in a daemon thread, waited for at most `timeout_s`; its exception re-raised.

    adbutils calls that take no timeout argument (sync stat/push, `adb devices`) are bounded
    this way; the thread itself ends when the client's socket timeout fires.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="mnas-adb-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _CallTimeout()
    if "error" in box:
        raise box["error"]
    return box["value"]


def list_devices(client: Any, timeout_s: float) -> list[Any]:
    """`adb devices` through the client, bounded; failures are one MnasError line."""
    try:
        return list(_bounded(lambda: client.list(), timeout_s))
    except _CallTimeout:
        raise MnasError(f"adb server: listing devices timed out after {timeout_s:.1f} s") from None
    except (AdbError, OSError) as exc:
        raise MnasError(f"adb server: cannot list devices: {_one_line(str(exc))}") from None


def open_phone(serial: str, client: Any | None = None,
               configs: Mapping[str, DeviceConfig] | None = None, **kwargs: Any) -> AdbDevice:
    """An AdbDevice for `serial` with its device config matched from getprop (if any)."""
    timeout_s = float(kwargs.get("timeout_s", DEFAULT_TIMEOUT_S))
    client = client if client is not None else adb_client(timeout_s)
    probe = AdbDevice(serial, None, client, timeout_s=timeout_s, retries=0)
    props = probe.getprops()
    config = match_config(props, load_all() if configs is None else configs)
    device = AdbDevice(serial, config, client, **kwargs)
    device._props = props
    device._features = probe._features
    return device


__all__ = [
    "AdbCallError",
    "AdbDevice",
    "AdbNoAnswer",
    "PhoneInfo",
    "ShellResult",
    "ShellTimeout",
    "ThermalReading",
    "adb_client",
    "adb_server_address",
    "adb_server_running",
    "adb_unavailable_reason",
    "build_probed_config",
    "discover_phones",
    "list_devices",
    "open_phone",
    "parse_cpu_probe",
    "parse_getprop",
    "parse_thermal_output",
]
