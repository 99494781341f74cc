"""Phones and the host as Ray actors, so a cluster's devices serve one search or table build.

Why actors: an actor runs one method call at a time, so the measurements sent to one phone
queue there and two never overlap on one phone (or on the host's pinned core), whatever the
number of drivers' threads asking. A `RemoteDevice` wraps one actor in the ordinary `Device`
protocol, so `build_table`, `MeasuredLatency` and `HybridLatency` run on a cluster unchanged:
the driver writes the model, ships its bytes, gets a whole `Measurement` back and stores it
itself (the driver alone writes the results store).

Placement is by custom resource. The node a phone is attached to is started with one unit
per phone, named after the device config (or the serial):
`ray start --address HEAD:6379 --resources '{"device:pixel4": 2}'`. `cluster_devices("pixel4")`
starts one actor per unit, each asking for `{"device:pixel4": 1}`; on its node the actor
opens a matching phone that no other process holds and keeps it locked for the actor's life
(the phone's lock of `bench.device_lock`, released when the actor's process dies, so a
`mnas bench` on that node waits for the actor too). `host` is one actor pinned to the
driver's node; the driver locks `host` for each run like any local device, while a phone's
`RemoteDevice` has no lock key on the driver (its lock is the actor's, on the phone's node).

A lost actor (phone node gone, worker killed) is restarted up to `max_restarts` times and Ray
re-runs the call it was serving (`max_task_retries`); a call either returns a whole
measurement or raises, so nothing half-measured is ever stored. Ray is imported lazily: it
is the optional `ray` extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mnas.bench.contention import ContentionGuard
from mnas.bench.device_lock import device_lock_key, try_lock
from mnas.bench.tempdirs import owned_temp_dir
from mnas.bench.types import BenchConfig, Device, DeviceProfile, Measurement
from mnas.errors import MeasurementError, MnasError

RESOURCE_PREFIX = "device:"
DeviceFactory = Callable[[], Device]


def require_ray() -> Any:
    """The `ray` module, or a one-line MnasError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MnasError("--executor ray: the ray package is not installed: expected `pip install 'mnas[ray]'` "
                        "(or `pip install 'ray[default]'`)") from None
    return ray


def connect(address: str | None) -> bool:
    """Attach to a Ray cluster unless this process already is; True when this call started Ray.

    `address`: `auto` (the cluster `ray start` runs on this machine), `host:port`, a `ray://`
    client address, or `local` (start a private one-node cluster in this process).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    try:
        if address in (None, "local"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise MnasError(f"--address {address}: no Ray cluster there ({exc}): expected `ray start --head` on the "
                        "head node first, or --address local for a one-machine cluster") from None
    return True


def resource_name(spec: str) -> str:
    """The custom resource a device spec is placed with: `pixel4` -> `device:pixel4`."""
    return spec if spec.startswith(RESOURCE_PREFIX) else RESOURCE_PREFIX + spec


def try_claim(device: Device) -> IO[str] | None:
    """An exclusive, non-blocking lock on this node for `device`; None when another process holds it.

    The same lock as `bench.device_lock` (so `mnas bench` on this node waits for the actor);
    it lives as long as the returned handle (and dies with the process that holds it).
    """
    key = device_lock_key(device)
    return try_lock(key if key is not None else device.device_id)


def open_phone(name: str, select_options: dict[str, Any]) -> tuple[Device, IO[str]]:
    """On this node: an attached phone whose serial or config name is `name`, not held by another actor."""
    from mnas.bench.devices import select_devices

    unusable: list[str] = []
    phones = select_devices("all", unusable=unusable, **select_options)
    matching = [d for d in phones if d.device_id == name or d.profile().device_name == name]
    for device in matching:
        lock = try_claim(device)
        if lock is not None:
            return device, lock
    held = ", ".join(d.device_id for d in matching) or "none"
    raise MeasurementError(f"device {name}: no free matching phone on this node (matching: {held}; "
                           f"unusable: {'; '.join(unusable) or 'none'}): expected as many phones as "
                           f"units of resource {resource_name(name)!r}")


def open_host(select_options: dict[str, Any]) -> Device:
    from mnas.bench.devices import select_devices

    options = {k: v for k, v in select_options.items() if k in ("core", "timeout_s", "retries")}
    return select_devices("host", **options)[0]


class DeviceWorker:
    """The body of a device actor: builds its device on its own node and times models on it.

    `guard` (`bench.contention.ContentionGuard`, e.g. the table builder's) runs here, next to
    the device, because it watches this process's child processes; phones pass through it
    unchanged.
    """

    def __init__(self, factory: Callable[[], Device | tuple[Device, IO[str]]], guard: ContentionGuard | None = None,
                 statistic: str = "median") -> None:
        self.guard = guard
        self.statistic = statistic
        made = factory()
        self._lock: IO[str] | None = None
        if isinstance(made, tuple):
            made, self._lock = made
        self.device: Device = made
        self._profile = self.device.profile()

    def profile(self) -> DeviceProfile:
        return self._profile

    def benchmark(self, file_name: str, data: bytes, config: BenchConfig) -> Measurement:
        with owned_temp_dir("actor") as tmp:
            path = Path(tmp) / Path(file_name).name
            path.write_bytes(data)
            if self.guard is not None:
                return self.guard.benchmark(self.device, path, config, self.statistic)
            return self.device.benchmark(path, config)


class RemoteDevice:
    """A `Device` whose measurements run in a Ray actor (see the module docstring)."""

    def __init__(self, actor: Any, profile: DeviceProfile, label: str) -> None:
        self.actor = actor
        self._profile = profile
        self.device_id = profile.device_id
        self.label = label  # the resource or "host" this actor was placed by
        # the host actor runs on the driver's node, so the driver locks `host`; a phone is locked by its actor
        self.lock_key = "host" if label == "host" else None

    def profile(self) -> DeviceProfile:
        return self._profile

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        ray = require_ray()
        data = Path(model_path).read_bytes()
        ref = self.actor.benchmark.remote(Path(model_path).name, data, config)
        try:
            # the device bounds each call by config.timeout_s; the slack covers queueing behind
            # the calls other threads sent to the same actor
            return ray.get(ref, timeout=4 * config.timeout_s + 60)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise MeasurementError(f"device {self.device_id}: {exc}") from None
        except ray.exceptions.GetTimeoutError:
            raise MeasurementError(f"device {self.device_id}: no result in {4 * config.timeout_s + 60:g} s: "
                                   "expected the actor to answer (phone node hung?)") from None
        except ray.exceptions.RayActorError as exc:
            raise MeasurementError(f"device {self.device_id}: its Ray actor was lost for good "
                                   f"({type(exc).__name__}): expected the phone's node to stay up") from None

    def kill(self) -> None:
        require_ray().kill(self.actor, no_restart=True)


def start_device_actor(factory: Callable[[], Any], label: str, *, resources: dict[str, float] | None = None,
                       num_cpus: float = 0.0, node_id: str | None = None, max_restarts: int = 3,
                       start_timeout_s: float = 600.0, guard: ContentionGuard | None = None, statistic: str = "median") -> RemoteDevice:
    """One device actor built by `factory` on the node Ray places it on; waits for its profile."""
    ray = require_ray()
    options: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": max_restarts, "max_task_retries": max_restarts,
                               "max_concurrency": 1}
    if resources:
        options["resources"] = resources
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    actor = ray.remote(DeviceWorker).options(**options).remote(factory, guard, statistic)
    try:
        profile = ray.get(actor.profile.remote(), timeout=start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.kill(actor, no_restart=True)
        raise MnasError(f"device {label}: its actor did not start in {start_timeout_s:g} s: expected a node "
                        f"offering {resources or 'the driver node'} with free capacity") from None
    except ray.exceptions.RayError as exc:
        ray.kill(actor, no_restart=True)
        cause = getattr(exc, "cause", None)
        raise MnasError(f"device {label}: its actor failed to start: {cause or exc}") from None
    return RemoteDevice(actor, profile, label)


def device_resources() -> dict[str, int]:
    """`device:*` custom resources of the cluster and how many units each has."""
    ray = require_ray()
    return {k: int(v) for k, v in sorted(ray.cluster_resources().items()) if k.startswith(RESOURCE_PREFIX) and v >= 1}


def cluster_devices(spec: str, select_options: dict[str, Any] | None = None, *, max_restarts: int = 3,
                    host_cpus: float = 1.0, guard: ContentionGuard | None = None, statistic: str = "median") -> list[RemoteDevice]:
    """One actor per device unit of the cluster matching `spec`.

    `spec`: comma list of `host`, `all` (every `device:*` unit) and names (`pixel4` or a
    serial, placed by resource `device:<name>`). The host actor reserves `host_cpus` CPUs on
    the driver's node, so training tasks scheduled by Ray do not share its pinned core's time.
    `guard`/`statistic`: see `DeviceWorker`.
    """
    ray = require_ray()
    options = dict(select_options or {})
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise MnasError(f"--device {spec!r}: expected host, all, or device config names / serials")
    available = device_resources()
    wanted: dict[str, int] = {}
    devices: list[RemoteDevice] = []
    for name in names:
        if name == "host":
            node = ray.get_runtime_context().get_node_id()
            devices.append(start_device_actor(functools.partial(open_host, options), "host", num_cpus=host_cpus,
                                              node_id=node, max_restarts=max_restarts, guard=guard,
                                              statistic=statistic))
        elif name == "all":
            if not available:
                raise MnasError("--device all --executor ray: the cluster offers no device:* resource: expected "
                                "`ray start --resources '{\"device:pixel4\": 1}'` on each node with phones")
            wanted.update(available)
        else:
            key = resource_name(name)
            if key not in available:
                offered = ", ".join(available) or "none"
                raise MnasError(f"--device {name}: no Ray node offers resource {key!r} (offered: {offered}): "
                                f"expected `ray start --resources '{{\"{key}\": N}}'` on the node with the phone(s)")
            wanted[key] = available[key]
    for key, units in wanted.items():
        target = key[len(RESOURCE_PREFIX):]
        for _ in range(units):
            factory = functools.partial(open_phone, target, options)
            devices.append(start_device_actor(factory, key, resources={key: 1}, max_restarts=max_restarts, guard=guard,
                                              statistic=statistic))
    return devices


def stop_devices(devices: Sequence[RemoteDevice]) -> None:
    for device in devices:
        try:
            device.kill()
        except Exception:  # already gone; nothing to release
            pass
