"""Start, list and stop loopback phones, and connect them to the adb server.

`start` runs N `python -m mnas.bench.loopback.server` processes in the background (each in
its own session, logging to a file), each on a free port of 127.0.0.1 that the server picks
itself and reports in a ready file (no port race), then `adb connect`s each one to the adb
server adbutils would use (ANDROID_ADB_SERVER_PORT, default 5037; the binary from
ADBUTILS_ADB_PATH, else `adb` on PATH) and waits until adb lists it as `device`. Every phone
is recorded in a state file, `$MNAS_LOOPBACK_DIR/state.json` (default
`results/loopback/state.json`), written atomically under a lock, so `stop` in another
process can disconnect and end exactly the processes `start` made (it checks each recorded
pid still runs the loopback server on the recorded folder before signalling it), and
`set_faults` can switch a running phone's faults through its control file.

Every wait here is bounded; a phone that fails to come up is stopped before the error is
raised, so a failed `start` leaves nothing running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnas.bench.loopback.devicefs import resolve_config
from mnas.bench.loopback.faults import FaultSet, write_control_file
from mnas.errors import MnasError

STATE_DIR_ENV = "MNAS_LOOPBACK_DIR"
DEFAULT_STATE_DIR = Path("results") / "loopback"
HANDSHAKE_FAULTS = ("refuse_auth", "hang")  # phones that never reach the `device` state
SERVER_MODULE = "mnas.bench.loopback.server"


@dataclass(frozen=True)
class AdbServer:
    """The adb server (and binary) that loopback phones are connected to."""

    adb_path: str
    port: int

    @classmethod
    def from_env(cls, adb_path: str | None = None, port: int | None = None) -> AdbServer:
        """The one adbutils would use: ADBUTILS_ADB_PATH / PATH, ANDROID_ADB_SERVER_PORT / 5037."""
        path = adb_path or os.environ.get("ADBUTILS_ADB_PATH") or shutil.which("adb")
        if not path:
            raise MnasError("adb binary not found: install Debian's `adb` package or set ADBUTILS_ADB_PATH")
        if port is None:
            raw = os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")
            try:
                port = int(raw)
            except ValueError:
                raise MnasError(f"ANDROID_ADB_SERVER_PORT={raw!r}: expected a TCP port number") from None
        return cls(adb_path=path, port=port)

    def is_running(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def ensure_running(self, timeout_s: float = 20.0) -> None:
        if self.is_running():
            return
        try:
            subprocess.run(
                [self.adb_path, "-P", str(self.port), "start-server"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise MnasError(f"{self.adb_path} -P {self.port} start-server failed: {exc.stderr.decode(errors='replace').strip()}") from None
        except subprocess.TimeoutExpired:
            raise MnasError(f"{self.adb_path} -P {self.port} start-server did not finish in {timeout_s:g} s") from None

    def client(self, timeout_s: float = 10.0) -> Any:
        import adbutils

        return adbutils.AdbClient(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)

    def states(self, timeout_s: float = 5.0) -> dict[str, str]:
        """serial -> state (`device`, `offline`, `unauthorized`...) of every listed device."""
        if not self.is_running():
            return {}
        return {info.serial: info.state for info in self.client(timeout_s).list()}


@dataclass(frozen=True)
class LoopbackPhone:
    """One running loopback phone as recorded in the state file."""

    serial: str
    port: int
    pid: int
    config: str
    config_path: str
    folder: str  # holds root/, server.log, ready.json
    root: str
    control_file: str
    log: str
    host_core: int
    faults: tuple[str, ...] = ()
    adb_path: str = ""
    adb_port: int = 5037
    started_at: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopbackPhone:
        data = dict(data)
        data["faults"] = tuple(data.get("faults") or ())
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def adb_server(self) -> AdbServer:
        return AdbServer(self.adb_path, self.adb_port)

    def is_running(self) -> bool:
        """True when the recorded pid still runs this phone's server (not a zombie)."""
        return _runs_server(self.pid, self.root)


def state_dir(explicit: str | Path | None = None) -> Path:
    chosen = explicit or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(chosen).resolve()


@contextlib.contextmanager
def _locked_state(folder: Path) -> Iterator[list[LoopbackPhone]]:
    """The recorded phones, under an exclusive lock; changes to the list are saved."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "state.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        phones = _read_state(path)
        yield phones
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps({"version": 1, "phones": [ph.to_dict() for ph in phones]}, indent=2))
        os.replace(tmp, path)


def _read_state(path: Path) -> list[LoopbackPhone]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [LoopbackPhone.from_dict(item) for item in data["phones"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise MnasError(f"{path}: not a loopback state file ({exc}); delete it after checking no loopback phone runs") from None


def load_phones(folder: str | Path | None = None) -> list[LoopbackPhone]:
    return _read_state(state_dir(folder) / "state.json")


def _proc_state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return None
    return None


def _runs_server(pid: int, root: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if _proc_state(pid) in (None, "Z", "X"):
        return False
    return SERVER_MODULE.encode() in cmdline and os.fsencode(root) in cmdline


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _end_process(pid: int, root: str, timeout_s: float) -> None:
    """SIGTERM (the server kills its shells), then SIGKILL after timeout_s."""
    if not _runs_server(pid, root):
        _reap(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _runs_server(pid, root):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:]) or "(empty log)"


def _spawn(config_path: Path, config_name: str, faults: Sequence[str], folder: Path,
           host_core: int | None, bm_runner: str | None, timeout_s: float) -> dict[str, Any]:
    """Start one server process; return its ready-file contents plus pid/log/folder."""
    phone_dir = folder / "phones" / f"{config_name}-{uuid.uuid4().hex[:8]}"
    phone_dir.mkdir(parents=True)
    ready = phone_dir / "ready.json"
    log_path = phone_dir / "server.log"
    argv = [sys.executable, "-m", SERVER_MODULE, "--config", str(config_path), "--root", str(phone_dir / "root"),
            "--ready-file", str(ready)]
    for spec in faults:
        argv += ["--fault", spec]
    if host_core is not None:
        argv += ["--host-core", str(host_core)]
    if bm_runner:
        argv += ["--bm-runner", bm_runner]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise MnasError(f"loopback phone ({config_name}) exited with code {proc.returncode}: {_last_lines(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise MnasError(f"loopback phone ({config_name}) not listening after {timeout_s:g} s: {_last_lines(log_path)}")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    info.update(pid=proc.pid, log=str(log_path), folder=str(phone_dir))
    return info


def _connect(server: AdbServer, serial: str, expect_online: bool, timeout_s: float) -> str:
    """`adb connect` and (for healthy phones) wait until adb lists it as `device`.

    A phone that hangs in the handshake keeps `adb connect` waiting for adb's own timeout
    (10 s in adb 29); the server registers the transport (state `offline`) at once, so for
    phones not expected online the reply is awaited for 2 s at most.
    """
    if not expect_online:
        import adbutils

        try:
            return str(server.client(timeout_s).connect(serial, timeout=min(timeout_s, 2.0)))
        except adbutils.AdbTimeout:
            return f"connecting to {serial} (no answer yet)"
    reply = str(server.client(timeout_s).connect(serial, timeout=timeout_s))
    if "connected to" not in reply:
        raise MnasError(f"adb connect {serial}: {reply}")
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = server.states(timeout_s).get(serial)
        if state == "device":
            return reply
        time.sleep(0.05)
    raise MnasError(f"adb connect {serial}: state {state!r} after {timeout_s:g} s, expected 'device'")


def start(
    config: str = "pixel4",
    count: int = 1,
    faults: Sequence[str] = (),
    *,
    folder: str | Path | None = None,
    adb: AdbServer | None = None,
    host_core: int | None = None,
    bm_runner: str | None = None,
    timeout_s: float = 20.0,
) -> list[LoopbackPhone]:
    """Start `count` loopback phones of one config, connect them, record them; return them."""
    if count < 1:
        raise MnasError(f"--count {count}: expected at least 1 phone")
    device_config = resolve_config(config)
    assert device_config.source is not None
    fault_set = FaultSet.parse(faults, where="--fault")
    adb = adb or AdbServer.from_env()
    adb.ensure_running(timeout_s)
    base = state_dir(folder)
    expect_online = not any(name in fault_set for name in HANDSHAKE_FAULTS)
    started: list[LoopbackPhone] = []
    try:
        for _ in range(count):
            info = _spawn(Path(device_config.source).resolve(), device_config.name, fault_set.specs(), base,
                          host_core, bm_runner, timeout_s)
            phone = LoopbackPhone(
                serial=info["serial"], port=int(info["port"]), pid=int(info["pid"]), config=device_config.name,
                config_path=str(Path(device_config.source).resolve()), folder=info["folder"], root=info["root"],
                control_file=info["control_file"], log=info["log"], host_core=int(info["host_core"]),
                faults=tuple(fault_set.specs()), adb_path=adb.adb_path, adb_port=adb.port,
            )
            started.append(phone)
            _connect(adb, phone.serial, expect_online, timeout_s)
    except BaseException:
        for phone in started:
            _stop_one(phone, remove_files=False)
        raise
    with _locked_state(base) as phones:
        phones.extend(started)
    return started


def _stop_one(phone: LoopbackPhone, remove_files: bool, timeout_s: float = 5.0) -> None:
    server = phone.adb_server
    if server.is_running():
        with contextlib.suppress(Exception):
            server.client(timeout_s).disconnect(phone.serial)
    _end_process(phone.pid, phone.root, timeout_s)
    if remove_files:
        shutil.rmtree(phone.folder, ignore_errors=True)


def stop(serials: Sequence[str] | None = None, *, folder: str | Path | None = None,
         keep_files: bool = False, timeout_s: float = 5.0) -> list[LoopbackPhone]:
    """Disconnect and end the recorded phones (all, or those serials); return them."""
    base = state_dir(folder)
    with _locked_state(base) as phones:
        chosen = [ph for ph in phones if serials is None or ph.serial in serials]
        unknown = sorted(set(serials or ()) - {ph.serial for ph in phones})
        if unknown:
            raise MnasError(f"{', '.join(unknown)}: not a loopback phone recorded in {base / 'state.json'}")
        for phone in chosen:
            _stop_one(phone, remove_files=not keep_files, timeout_s=timeout_s)
        phones[:] = [ph for ph in phones if ph not in chosen]
    return chosen


def status(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Every recorded phone with `running` (process alive) and `adb_state` (or None)."""
    rows: list[dict[str, Any]] = []
    states: dict[tuple[str, int], dict[str, str]] = {}
    for phone in load_phones(folder):
        key = (phone.adb_path, phone.adb_port)
        if key not in states:
            try:
                states[key] = phone.adb_server.states()
            except Exception:  # noqa: BLE001 - status must report, not fail
                states[key] = {}
        row = phone.to_dict()
        row["faults"] = list(current_faults(phone))
        row["running"] = phone.is_running()
        row["adb_state"] = states[key].get(phone.serial)
        rows.append(row)
    return rows


def current_faults(phone: LoopbackPhone) -> tuple[str, ...]:
    """The faults in the phone's control file now."""
    from mnas.bench.loopback.faults import read_control_file

    try:
        return tuple(read_control_file(Path(phone.control_file)).specs())
    except (OSError, MnasError):
        return phone.faults


def find_phone(serial: str, folder: str | Path | None = None) -> LoopbackPhone:
    for phone in load_phones(folder):
        if phone.serial == serial:
            return phone
    raise MnasError(f"{serial}: not a loopback phone recorded in {state_dir(folder) / 'state.json'}")


def set_faults(serial: str, faults: Sequence[str], folder: str | Path | None = None, *,
               reconnect: bool = False, timeout_s: float = 10.0) -> LoopbackPhone:
    """Switch a running phone's faults (replacing the current ones) via its control file.

    Faults read at handshake time (refuse_auth, slow_link, no_shell_v2) need a new
    connection: `reconnect=True` does `adb disconnect` + `adb connect` after the switch.
    """
    phone = find_phone(serial, folder)
    fault_set = FaultSet.parse(faults, where="fault")
    write_control_file(Path(phone.control_file), faults)
    if reconnect:
        server = phone.adb_server
        server.ensure_running(timeout_s)
        with contextlib.suppress(Exception):
            server.client(timeout_s).disconnect(phone.serial)
        expect_online = not any(name in fault_set for name in HANDSHAKE_FAULTS)
        _connect(server, phone.serial, expect_online, timeout_s)
    return phone
