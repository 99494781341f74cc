"""Build a latency table on every matching phone of a Ray cluster.

A table build is hours of phone time per device model; a lab with phones on several machines
should use all of them for one table. This is `build_table` with the devices replaced by
Ray actors (`mnas.bench.ray_devices`): one actor per phone, on the node it is attached to,
so each phone measures one layer at a time while all phones work at once. Everything else is
`build_table`'s: the layer files are written on the driver and shipped as bytes, the driver
alone stores each entry the moment it arrives (its own transaction), stored keys are
skipped, a device that fails puts its layer back for the others, and a re-run resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mnas.bench.contention import LAYER_GUARD
from mnas.bench.types import BenchConfig, Device
from mnas.errors import MnasError
from mnas.predictor.build import BuildResult, LayerWriter, build_table, default_writer
from mnas.space.search_space import SearchSpace


def build_table_ray(space: SearchSpace, resolution: int, store: Any, table_name: str, config: BenchConfig, *,
                    device: str = "all", devices: Sequence[Device] | None = None, address: str | None = "auto",
                    select_options: dict[str, Any] | None = None, max_restarts: int = 3,
                    writer: LayerWriter = default_writer, **build_kwargs: Any) -> BuildResult:
    """`build_table` over the cluster's device actors matching `device` (see `cluster_devices`).

    `devices` (already-started `RemoteDevice`s, or any `Device`s) replaces the discovery; the
    caller then owns them. Otherwise the actors started here are stopped before returning, and
    a Ray connection opened here (`address`, see `ray_devices.connect`) is closed.
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
        return build_table(space, resolution, list(devices), store, table_name, config, writer=writer, guard=None,
                           **build_kwargs)
    finally:
        ray_devices.stop_devices(owned)
        if started:
            ray.shutdown()


def build_table_with_executor(executor: str, space: SearchSpace, resolution: int, device: str, store: Any,
                              table_name: str, config: BenchConfig, *, address: str | None = "auto",
                              select_options: dict[str, Any] | None = None, **build_kwargs: Any) -> BuildResult:
    """One call for `mnas table build --executor local|ray`: local devices or the cluster's."""
    if executor == "ray":
        return build_table_ray(space, resolution, store, table_name, config, device=device, address=address,
                               select_options=select_options, **build_kwargs)
    if executor != "local":
        raise MnasError(f"--executor {executor!r}: expected local or ray")
    from mnas.bench.devices import select_devices

    unusable: list[str] = []
    devices = select_devices(device, unusable=unusable, **(select_options or {}))
    return build_table(space, resolution, devices, store, table_name, config, **build_kwargs)
