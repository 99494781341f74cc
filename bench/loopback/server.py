"""A phone on loopback: an adbd stand-in that the real adb server connects to.

`python -m mnas.bench.loopback.server --config pixel4 --root DIR` listens on 127.0.0.1
(port 0 = any free port, written to `--ready-file`); `adb connect 127.0.0.1:PORT` then
lists it as a device whose getprop, CPU/thermal sysfs files, shell, sync and taskset behave
like the phone in the device config, and whose `benchmark_model` runs real LiteRT timings
on a pinned host core. `faults.py` lists the failures it can be told to show.

Why asyncio: one adb connection multiplexes many streams (a shell, a push, a getprop at
once), each with its own flow control (one WRTE in flight, one OKAY per WRTE) and each
possibly tied to a subprocess. One event loop per device handles all of it in a single
thread: no locks around the stream table, cancellation of a stream's task is how a closed
stream kills its process group, and a "hang" is simply not answering. Blocking work (file
writes of a push) is done in place in small chunks; it never holds the loop for long.

Every child shell runs in its own session (process group), with PR_SET_PDEATHSIG, and the
whole group gets SIGKILL when its stream closes, when the connection dies and when the
device stops (SIGTERM/SIGINT), so no stray process outlives a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from mnas.bench.loopback import protocol as p
from mnas.bench.loopback.devicefs import (
    DEFAULT_BM_RUNNER,
    DeviceFS,
    ShellSettings,
    conditions_from_faults,
    resolve_config,
)
from mnas.bench.loopback.faults import FaultControl, FaultSet
from mnas.bench.loopback.services import run_service
from mnas.errors import MnasError

# Largest payload accepted from the host, whatever was negotiated (adb hosts send <= 1 MiB).
_READ_LIMIT = 16 * 1024 * 1024


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} loopback[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class StreamClosed(Exception):
    """The stream (or its whole connection) is gone."""


class Stream:
    """One adb stream on the device side: flow-controlled writes, acknowledged reads."""

    def __init__(self, transport: Transport, local_id: int, remote_id: int, service: str) -> None:
        self.transport = transport
        self.local_id = local_id
        self.remote_id = remote_id
        self.service = service
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self._can_send = asyncio.Event()
        self._can_send.set()
        self._write_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    @property
    def max_payload(self) -> int:
        return self.transport.max_payload

    async def accept(self) -> None:
        await self.transport.send_packet(p.Packet(p.A_OKAY, self.local_id, self.remote_id))

    async def refuse(self) -> None:
        self.closed = True
        await self.transport.send_packet(p.Packet(p.A_CLSE, 0, self.remote_id))

    async def write(self, data: bytes) -> None:
        """Send bytes as WRTEs of at most max_payload, waiting for each one's OKAY."""
        async with self._write_lock:
            view = memoryview(data)
            for offset in range(0, len(view), self.max_payload):
                while not self._can_send.is_set():
                    await self._can_send.wait()
                if self.closed:
                    raise StreamClosed(self.service)
                self._can_send.clear()
                chunk = bytes(view[offset : offset + self.max_payload])
                await self.transport.send_packet(p.Packet(p.A_WRTE, self.local_id, self.remote_id, chunk))

    async def recv(self) -> bytes | None:
        """The next WRTE payload from the host (acknowledged now), or None once closed."""
        data = await self._inbox.get()
        if data is None:
            self._inbox.put_nowait(None)  # later calls see the end too
            return None
        if not self.closed:
            await self.transport.send_packet(p.Packet(p.A_OKAY, self.local_id, self.remote_id))
        return data

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()
            with contextlib.suppress(StreamClosed, ConnectionError):
                await self.transport.send_packet(p.Packet(p.A_CLSE, self.local_id, self.remote_id))

    # ---- called by the transport's packet loop
    def on_okay(self) -> None:
        self._can_send.set()

    def on_write(self, data: bytes) -> None:
        self._inbox.put_nowait(data)

    def on_close(self) -> None:
        """The host closed the stream: stop its service (and so its process group)."""
        self.closed = True
        self._wake()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _wake(self) -> None:
        self._can_send.set()
        self._inbox.put_nowait(None)


class Transport:
    """One adb connection: the handshake, the packet loop and its streams."""

    def __init__(self, device: LoopbackDevice, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.device = device
        self.reader = reader
        self.writer = writer
        self.max_payload = p.DEFAULT_MAX_PAYLOAD
        self.version = p.VERSION_MIN  # until the host's CNXN says otherwise
        self.streams: dict[int, Stream] = {}
        self._next_id = 1
        self._send_lock = asyncio.Lock()
        self.dead = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def faults(self) -> FaultSet:
        return self.device.current_faults()

    async def _read_packet(self) -> p.Packet:
        header = await self.reader.readexactly(p.HEADER_SIZE)
        command, arg0, arg1, length = p.decode_header(header, _READ_LIMIT)
        payload = await self.reader.readexactly(length) if length else b""
        return p.Packet(command, arg0, arg1, payload)

    async def send_packet(self, packet: p.Packet) -> None:
        while not self.dead and "hang" in self.faults():
            await asyncio.sleep(0.05)
        if self.dead:
            raise StreamClosed("connection closed")
        async with self._send_lock:
            self.writer.write(packet.encode(with_checksum=self.version < p.VERSION_SKIP_CHECKSUM))
            await self.writer.drain()

    def die(self, reason: str) -> None:
        """Drop the connection at once (a phone whose adbd died)."""
        if not self.dead:
            log(f"{self.peer}: dying: {reason}")
        self.dead = True
        self.writer.transport.abort()

    async def run(self) -> None:
        log(f"{self.peer}: connected")
        try:
            if await self._handshake():
                await self._packet_loop()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except p.ProtocolError as exc:
            log(f"{self.peer}: protocol error: {exc}")
        finally:
            self.dead = True
            for stream in list(self.streams.values()):
                stream.on_close()
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.writer.transport.abort()
            log(f"{self.peer}: disconnected")

    async def _handshake(self) -> bool:
        """Answer the host's CNXN; False when the connection must only be held (faults)."""
        packet = await self._read_packet()
        while packet.command != p.A_CNXN:
            packet = await self._read_packet()
        faults = self.faults()
        self.version = max(p.VERSION_MIN, min(p.VERSION, packet.arg0))
        host_max = packet.arg1 or p.DEFAULT_MAX_PAYLOAD
        if "hang" in faults:
            await self._drain_forever()
            return False
        if "refuse_auth" in faults:
            await self._refuse_auth()
            return False
        ours = int(faults.value("slow_link")) if "slow_link" in faults else self.device.max_payload  # type: ignore[arg-type]
        self.max_payload = max(p.MIN_MAX_PAYLOAD, min(ours, host_max))
        features = ["shell_v2", "cmd", "fixed_push_mkdir"]
        if "no_shell_v2" in faults:
            features.remove("shell_v2")
        banner = p.device_banner(self.device.fs.config.properties, features)
        await self.send_packet(p.Packet(p.A_CNXN, self.version, ours, banner))
        log(f"{self.peer}: online (max payload {self.max_payload}, features {','.join(features)})")
        return True

    async def _drain_forever(self) -> None:
        while True:
            await self._read_packet()

    async def _refuse_auth(self) -> None:
        """Ask for a signature, reject every one, ignore offered keys: 'unauthorized'."""
        await self.send_packet(p.Packet(p.A_AUTH, p.AUTH_TOKEN, 0, secrets.token_bytes(20)))
        while True:
            packet = await self._read_packet()
            if packet.command == p.A_AUTH and packet.arg0 == p.AUTH_SIGNATURE:
                await self.send_packet(p.Packet(p.A_AUTH, p.AUTH_TOKEN, 0, secrets.token_bytes(20)))

    async def _packet_loop(self) -> None:
        while True:
            packet = await self._read_packet()
            if "hang" in self.faults():
                continue  # a hung phone reads but never answers
            if packet.command == p.A_OPEN:
                name = packet.payload.rstrip(b"\0").decode("utf-8", errors="replace")
                stream = Stream(self, self._next_id, packet.arg0, name)
                self._next_id += 1
                self.streams[stream.local_id] = stream
                stream.task = asyncio.create_task(self._run_stream(stream))
            elif packet.command in (p.A_OKAY, p.A_WRTE, p.A_CLSE):
                stream = self.streams.get(packet.arg1)
                if stream is None or (stream.remote_id != packet.arg0 and packet.command != p.A_CLSE):
                    if packet.command == p.A_WRTE:
                        await self.send_packet(p.Packet(p.A_CLSE, 0, packet.arg0))
                    continue
                if packet.command == p.A_OKAY:
                    stream.on_okay()
                elif packet.command == p.A_WRTE:
                    stream.on_write(packet.payload)
                else:
                    stream.on_close()
            # CNXN again, AUTH, SYNC: nothing to do on an online TCP connection

    async def _run_stream(self, stream: Stream) -> None:
        try:
            await run_service(stream, self)
        except (StreamClosed, ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - one bad stream must not kill the phone
            log(f"{self.peer}: service {stream.service!r} failed: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await stream.close()
        finally:
            self.streams.pop(stream.local_id, None)


class LoopbackDevice:
    """One loopback phone: its files, faults, live connections and child process groups."""

    def __init__(self, fs: DeviceFS, faults: FaultControl, max_payload: int = p.DEFAULT_MAX_PAYLOAD) -> None:
        self.fs = fs
        self.fault_control = faults
        self.max_payload = max_payload
        self.transports: set[Transport] = set()
        self.process_groups: set[int] = set()
        self._server: asyncio.Server | None = None

    def current_faults(self) -> FaultSet:
        faults = self.fault_control.current()
        self.fs.apply_conditions(*conditions_from_faults(faults.active))
        return faults

    async def start(self, host: str, port: int) -> int:
        self.fs.materialise()
        self.current_faults()
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = Transport(self, reader, writer)
        self.transports.add(transport)
        try:
            await transport.run()
        finally:
            self.transports.discard(transport)

    def kill_process_group(self, pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self.process_groups.discard(pgid)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self.transports):
            transport.die("device stopping")
        for pgid in list(self.process_groups):
            self.kill_process_group(pgid)
        await asyncio.sleep(0)


def _loopback_host(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise MnasError(f"--host {text!r}: expected a loopback IP address such as 127.0.0.1") from None
    if not address.is_loopback:
        raise MnasError(f"--host {text!r}: expected a loopback address (127.0.0.0/8 or ::1); loopback phones never listen elsewhere")
    return text


def _write_json_atomic(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mnas.bench.loopback.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="device config name (pixel4) or YAML path")
    parser.add_argument("--root", required=True, type=Path, help="private folder standing in for the phone's /")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--fault", action="append", default=[], help="fault NAME[=VALUE] (repeatable)")
    parser.add_argument("--control-file", type=Path, default=None, help="live fault switch file (default ROOT/.loopback/faults)")
    parser.add_argument("--ready-file", type=Path, default=None, help="JSON written once listening: port, pid, serial")
    parser.add_argument("--host-core", type=int, default=None, help="host core taskset pins to (default: the last allowed one)")
    parser.add_argument("--bm-runner", default=DEFAULT_BM_RUNNER, help="module or .py file run for benchmark_model")
    parser.add_argument("--max-payload", type=int, default=p.DEFAULT_MAX_PAYLOAD, help="max payload announced in CNXN")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    host = _loopback_host(args.host)
    config = resolve_config(args.config)
    allowed = sorted(os.sched_getaffinity(0))
    host_core = allowed[-1] if args.host_core is None else args.host_core
    if host_core not in allowed:
        raise MnasError(f"--host-core {host_core}: expected one of this process's cores {allowed}")
    fs = DeviceFS(args.root, config, ShellSettings(host_core=host_core, bm_runner=args.bm_runner))
    control = args.control_file or (fs.root / ".loopback" / "faults")
    faults = FaultControl(control, FaultSet.parse(args.fault, where="--fault"))
    device = LoopbackDevice(fs, faults, max(p.MIN_MAX_PAYLOAD, args.max_payload))
    port = await device.start(host, args.port)
    serial = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log(f"{config.name} listening on {serial} (root {fs.root}, host core {host_core}, faults {faults.current().specs()})")
    if args.ready_file is not None:
        _write_json_atomic(args.ready_file, {"port": port, "pid": os.getpid(), "serial": serial, "root": str(fs.root), "control_file": str(control), "host_core": host_core})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log("stopping")
    await device.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except MnasError as exc:
        print(f"loopback: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
