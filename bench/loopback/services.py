"""The services a loopback phone answers on a stream: shell (v1 and v2), exec and sync.

These are the services adbutils and the adb command line open for what mnas does on a
phone (checked in adbutils 2.12's source: `shell:CMD` for `shell()`, `shell,v2:CMD` for
`shell2(v2=True)`, `sync:` with STAT/LIST/SEND/RECV/QUIT, never STA2/LIS2 since the phone
does not advertise stat_v2); any other service is refused with CLSE, as adbd does for
services it lacks.

- shell v1 / exec: stdout and stderr merged into the stream, no exit code (clients append
  `; echo MARK$?`); shell v2: frames `[id][u32 len][data]`, stdout id 1, stderr id 2, the
  exit code in frame 3, stdin id 0, close-stdin id 4, window-size id 5 (ignored: no pty).
- sync: requests are parsed from a byte buffer, never assuming one request per WRTE (the
  host packs and splits them as it likes, capped by the max payload); each STAT reply and
  each LIST reply is sent in as few WRTEs as the max payload allows, on record boundaries,
  because adbutils reads those replies with single fixed-size `recv` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from mnas.bench.loopback import protocol as p
from mnas.bench.loopback.devicefs import DeviceFS, OutputMapper

if TYPE_CHECKING:
    from mnas.bench.loopback.server import Stream, Transport

_PR_SET_PDEATHSIG = 1
# Resolved once here: the child must not dlopen between fork and exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL me if the phone process dies."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def run_service(stream: Stream, transport: Transport) -> None:
    service = p.parse_service(stream.service)
    if isinstance(service, p.ShellService):
        if service.v2 and "no_shell_v2" in transport.faults():
            await stream.refuse()
            return
        await run_shell(stream, transport, service)
    elif service == "sync:":
        await run_sync(stream, transport)
    else:
        await stream.refuse()


# ---------------------------------------------------------------------- shell


async def run_shell(stream: Stream, transport: Transport, service: p.ShellService) -> None:
    device = transport.device
    faults = transport.faults()
    command = device.fs.rewrite_command(service.command) if service.command.strip() else ""
    argv = ["/bin/sh", "-c", command] if command else ["/bin/sh"]
    await stream.accept()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if service.v2 else asyncio.subprocess.STDOUT,
        cwd=device.fs.root,
        env=device.fs.shell_env(truncate_output="truncated_output" in faults),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    device.process_groups.add(proc.pid)
    die_after_output = "die_mid_shell" in faults
    frame_room = stream.max_payload - (5 if service.v2 else 0)
    stdin_task = asyncio.create_task(_pump_stdin(stream, proc, service.v2))

    async def pump(source: asyncio.StreamReader | None, frame_id: int) -> None:
        if source is None:
            return
        mapper = OutputMapper(device.fs.root)
        while True:
            raw = await source.read(max(1, frame_room))
            data = mapper.feed(raw) if raw else mapper.flush()
            if data:
                await stream.write(p.shell_frame(frame_id, data) if service.v2 else data)
            if not raw:
                return
            if die_after_output and data:
                transport.die("die_mid_shell fault: first output sent")
                return

    try:
        await asyncio.gather(pump(proc.stdout, p.ShellId.STDOUT), pump(proc.stderr, p.ShellId.STDERR))
        if transport.dead:
            return
        code = await proc.wait()
        if service.v2:
            exit_code = code if code >= 0 else 128 - code
            await stream.write(p.shell_frame(p.ShellId.EXIT, bytes([exit_code & 0xFF])))
        await stream.close()
    finally:
        stdin_task.cancel()
        # The group's id is the shell's pid (own session). No proc.kill(): Popen.send_signal
        # polls first and would reap the child behind asyncio's child watcher's back.
        device.kill_process_group(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)


async def _pump_stdin(stream: Stream, proc: asyncio.subprocess.Process, v2: bool) -> None:
    """Host -> process stdin; every WRTE is acknowledged even after the process is gone."""
    assert proc.stdin is not None
    parser = p.ShellFrameParser()
    stdin_open = True
    while True:
        data = await stream.recv()
        if data is None:
            return
        chunks: list[bytes] = []
        if v2:
            for frame_id, payload in parser.feed(data):
                if frame_id == p.ShellId.STDIN:
                    chunks.append(payload)
                elif frame_id == p.ShellId.CLOSE_STDIN and stdin_open:
                    stdin_open = False
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
        else:
            chunks.append(data)
        for chunk in chunks:
            if not stdin_open:
                break
            try:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                stdin_open = False


# ---------------------------------------------------------------------- sync


class _ByteReader:
    """Exact reads over a stream's WRTE payloads (a sync request may span several)."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def read_exact(self, n: int) -> bytes | None:
        while len(self._buffer) < n:
            data = await self._stream.recv()
            if data is None:
                return None
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out


async def _write_records(stream: Stream, records: list[bytes]) -> None:
    """Send records packed into as few WRTEs as the max payload allows, never splitting one
    record unless it alone exceeds the max payload."""
    batch = bytearray()
    for record in records:
        if batch and len(batch) + len(record) > stream.max_payload:
            await stream.write(bytes(batch))
            batch.clear()
        batch += record
    if batch:
        await stream.write(bytes(batch))


def _stat_record(path: Path) -> bytes:
    try:
        st = os.lstat(path)
    except OSError:
        return p.sync_stat(0, 0, 0)
    return p.sync_stat(st.st_mode, st.st_size, int(st.st_mtime))


def _list_records(path: Path) -> list[bytes]:
    records: list[bytes] = []
    try:
        names = [".", "..", *sorted(os.listdir(path))]
    except OSError:
        names = []
    for name in names:
        try:
            st = os.lstat(path / name)
        except OSError:
            continue
        records.append(p.sync_dent(st.st_mode, st.st_size, int(st.st_mtime), os.fsencode(name)))
    records.append(p.SYNC_LIST_DONE)
    return records


async def run_sync(stream: Stream, transport: Transport) -> None:
    fs = transport.device.fs
    reader = _ByteReader(stream)
    await stream.accept()
    while True:
        header = await reader.read_exact(p.SYNC_REQUEST_SIZE)
        if header is None:
            return
        request, length = p.parse_sync_request(header)
        if request == b"QUIT":
            break
        if length > p.SYNC_PATH_MAX:
            await stream.write(p.sync_fail(f"path too long: {length} bytes (max {p.SYNC_PATH_MAX})"))
            break
        raw_path = await reader.read_exact(length)
        if raw_path is None:
            return
        path_text = raw_path.decode("utf-8", errors="replace")
        if request == b"STAT":
            host = _safe_host_path(fs, path_text)
            await stream.write(_stat_record(host) if host else p.sync_stat(0, 0, 0))
        elif request == b"LIST":
            host = _safe_host_path(fs, path_text)
            await _write_records(stream, _list_records(host) if host else [p.SYNC_LIST_DONE])
        elif request == b"SEND":
            if not await _receive_file(stream, transport, reader, path_text):
                return
        elif request == b"RECV":
            await _send_file(stream, _safe_host_path(fs, path_text), path_text)
        else:
            await stream.write(p.sync_fail(f"unknown sync request {request!r}"))
            break
    await stream.close()


def _safe_host_path(fs: DeviceFS, device_path: str) -> Path | None:
    try:
        return fs.host_path(device_path)
    except Exception:  # noqa: BLE001 - a bad path reads as a missing file
        return None


async def _receive_file(stream: Stream, transport: Transport, reader: _ByteReader, spec: str) -> bool:
    """SEND "path,mode": DATA... DONE(mtime) -> OKAY or FAIL. False when the stream ended."""
    device_path, _, mode_text = spec.rpartition(",")
    error: str | None = None
    try:
        mode = int(mode_text)
    except ValueError:
        device_path, mode, error = spec, 0o644, f"bad SEND mode in {spec!r}"
    host = _safe_host_path(transport.device.fs, device_path or "?")
    if host is None and error is None:
        error = f"{device_path}: expected an absolute path"
    handle = None
    if error is None and host is not None:
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
            if host.is_dir():
                raise IsADirectoryError(f"{device_path}: Is a directory")
            handle = open(host, "wb")  # noqa: SIM115 - closed below on every path
        except OSError as exc:
            error = f"{device_path}: {exc.strerror or exc}"
    faults = transport.faults()
    die_after = faults.value("die_mid_push") if "die_mid_push" in faults else None
    received = 0
    try:
        while True:
            header = await reader.read_exact(p.SYNC_REQUEST_SIZE)
            if header is None:
                return False
            request, length = p.parse_sync_request(header)
            if request == b"DATA":
                data = await reader.read_exact(length)
                if data is None:
                    return False
                if handle is not None:
                    handle.write(data)
                received += len(data)
                if die_after is not None and received >= die_after:
                    transport.die(f"die_mid_push fault after {received} bytes of {device_path}")
                    return False
            elif request == b"DONE":
                if handle is not None:
                    handle.close()
                    handle = None
                    assert host is not None
                    os.chmod(host, stat.S_IMODE(mode) or 0o644)
                    os.utime(host, (length, length))
                await stream.write(p.sync_fail(error) if error else p.SYNC_OKAY)
                return True
            else:
                await stream.write(p.sync_fail(f"expected DATA or DONE in a push, got {request!r}"))
                await stream.close()
                return False
    finally:
        if handle is not None:  # push cut short: leave no half file behind
            handle.close()
            if host is not None:
                with contextlib.suppress(OSError):
                    host.unlink()


async def _send_file(stream: Stream, host: Path | None, device_path: str) -> None:
    """RECV path -> DATA... DONE, or FAIL with the reason."""
    try:
        if host is None:
            raise FileNotFoundError(2, "No such file or directory")
        handle = open(host, "rb")  # noqa: SIM115
    except OSError as exc:
        await stream.write(p.sync_fail(f"open failed: {exc.strerror or exc}"))
        return
    chunk_size = max(1, min(p.SYNC_DATA_MAX, stream.max_payload - p.SYNC_REQUEST_SIZE))
    with handle:
        batch = bytearray()
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                break
            record = p.sync_data(chunk)
            if batch and len(batch) + len(record) > stream.max_payload:
                await stream.write(bytes(batch))
                batch.clear()
            batch += record
        batch += p.SYNC_DONE
        await stream.write(bytes(batch))

