"""Build a latency table on local devices or on every matching phone of a Ray cluster: one entry point.

A table build is hours of phone time per device model; a lab with phones on several machines
should use all of them for one table. `build_table_ray` is `build_table` with the devices
replaced by Ray actors (`mnas.bench.ray_devices`): one actor per phone, on the node it is
attached to, so each phone measures one layer at a time while all phones work at once.
Everything else is `build_table`'s: the layer files are written on the driver and shipped as
bytes, the driver alone stores each entry the moment it arrives (its own transaction), stored
keys are skipped, a device that fails puts its layer back for the others, and a re-run resumes.

`build_table_with_executor` is what `mnas table build --executor local|ray` calls, so the
command line and the tests run the same path: device selection, the default table name and
what an interrupted build reports are decided here, not in the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mnas.bench.contention import LAYER_GUARD
from mnas.bench.types import BenchConfig, Device
from mnas.errors import MnasError
from mnas.predictor.build import BuildResult, LayerWriter, build_table, default_writer
from mnas.predictor.selection import table_name_for
from mnas.space.search_space import SearchSpace

__all__ = ["EXECUTORS", "BuildInterrupted", "build_table_ray", "build_table_with_executor"]

EXECUTORS = ("local", "ray")


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during a table build, with what the user needs to resume: the table and how many layers it holds.

    A KeyboardInterrupt still (whoever does not know this class stops as before); every
    stored layer is whole and kept, so running the same build again resumes.
    """

    def __init__(self, table_name: str, stored: int) -> None:
        super().__init__(f"table {table_name!r} holds {stored} layers")
        self.table_name = table_name
        self.stored = stored


def _stored_count(store: Any, table_name: str) -> int:
    from mnas.predictor.table import find_table, stored_keys

    found = find_table(store, table_name)
    return len(stored_keys(store, found[0])) if found else 0


def _build_on(devices: Sequence[Device], space: SearchSpace, resolution: int, store: Any, table_name: str | None,
              config: BenchConfig, **build_kwargs: Any) -> BuildResult:
    """`build_table` on `devices` under `table_name` (default: named after the devices); Ctrl-C -> BuildInterrupted."""
    name = table_name_for(devices, resolution, table_name, build_kwargs.get("dtype", "float32"))
    try:
        return build_table(space, resolution, list(devices), store, name, config, **build_kwargs)
    except KeyboardInterrupt:
        raise BuildInterrupted(name, _stored_count(store, name)) from None


def build_table_ray(space: SearchSpace, resolution: int, store: Any, table_name: str | None, config: BenchConfig, *,
                    device: str = "all", devices: Sequence[Device] | None = None, address: str | None = "auto",
                    select_options: dict[str, Any] | None = None, max_restarts: int = 3,
                    writer: LayerWriter = default_writer, **build_kwargs: Any) -> BuildResult:
    """`build_table` over the cluster's device actors matching `device` (see `cluster_devices`).

    `devices` (already-started `RemoteDevice`s, or any `Device`s) replaces the discovery; the
    caller then owns them. Otherwise the actors started here are stopped before returning, and
    a Ray connection opened here (`address`, see `ray_devices.connect`) is closed.
    `table_name` None: named after the devices' model and runtime (`default_table_name`).
    `build_kwargs` go to `build_table` (limit, progress, space_name, num_classes, layers);
    its `guard` (the host contention guard) runs inside each discovered actor, next to the device.
    """
    from mnas.bench import ray_devices

    ray = ray_devices.require_ray()
    started = ray_devices.connect(address)
    owned: list[ray_devices.RemoteDevice] = []
    guard = build_kwargs.pop("guard", LAYER_GUARD)
    try:
        if devices is None:
            owned = ray_devices.cluster_devices(device, select_options, max_restarts=max_restarts, guard=guard,
                                                statistic="min")  # build_table's statistic for layers
            devices = owned
        if not devices:
            raise MnasError(f"--device {device}: no device actor started: expected at least one")
        return _build_on(devices, space, resolution, store, table_name, config, writer=writer, guard=None,
                         **build_kwargs)
    finally:
        ray_devices.stop_devices(owned)
        if started:
            ray.shutdown()


def build_table_with_executor(executor: str, space: SearchSpace, resolution: int, device: str, store: Any,
                              table_name: str | None, config: BenchConfig, *, address: str | None = "auto",
                              select_options: dict[str, Any] | None = None,
                              on_unusable: Callable[[str], None] | None = None,
                              **build_kwargs: Any) -> BuildResult:
    """One call for `mnas table build --executor local|ray`: local devices or the cluster's.

    `select_options` (core, benchmark_binary, timeout_s, retries) open the devices either way.
    Locally, `device` is `select_devices`' spec and each phone `all` finds but cannot use is
    passed to `on_unusable` (one line) and left out; on Ray it names a `device:*` resource.
    Ctrl-C raises `BuildInterrupted` once the table is named.
    """
    if executor == "ray":
        return build_table_ray(space, resolution, store, table_name, config, device=device, address=address,
                               select_options=select_options, **build_kwargs)
    if executor != "local":
        raise MnasError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    from mnas.bench.devices import select_devices

    unusable: list[str] = []
    devices = select_devices(device, unusable=unusable, **(select_options or {}))
    for line in unusable:
        if on_unusable is not None:
            on_unusable(line)
    return _build_on(devices, space, resolution, store, table_name, config, **build_kwargs)
