"""An ESTIMATED per-layer breakdown of a network from a latency table (the host's stand-in for an op profile).

The host has no per-op profiler (`bench/op_profile.py`), but a latency table holds each
layer measured as its own one-layer model, and the additive predictor's premise is that a
network costs about the sum of its layers. So the table's figures, in the network's layer
order, say roughly where the time goes. They are NOT the ops of the measured graph (a layer
timed alone is a different graph: other fusion, caches, partitioning), so every row and the
payload say `estimated`, and the shares are of the sum of layers, not of a measured total.
"""

from __future__ import annotations

from typing import Any

from mnas.bench.types import headline_statistic
from mnas.space.arch import Arch

__all__ = ["ESTIMATE_LABEL", "estimated_breakdown"]

ESTIMATE_LABEL = ("ESTIMATED from the latency table (each layer timed as its own model; not a profile of the "
                  "measured graph)")


def estimated_breakdown(store: Any, device_name: str, arch: str, resolution: int) -> dict[str, Any]:
    """Per-layer figures of `arch` at `resolution` from the device's latency table.

    Returns {"estimated": True, "label", "table", "statistic", "layers": [{layer, key, kind,
    estimated_ms, estimated_percent}], "missing_layers", "sum_estimated_ms"}; a layer the table
    lacks has `estimated_ms` None. MnasError (one line) when the device has no table at that
    resolution.
    """
    from mnas.predictor.selection import choose_table

    table = choose_table(store, device_name, resolution)
    statistic = headline_statistic(device_name)
    latencies = table.latencies(statistic)
    layers = Arch.parse(arch).layers(resolution)
    figures = [latencies.get(layer.key) for layer in layers]
    total = sum(value for value in figures if value is not None)
    rows = [{
        "layer": index,
        "key": layer.key,
        "estimated_ms": value,
        "estimated_percent": None if value is None or total <= 0 else 100.0 * value / total,
    } for index, (layer, value) in enumerate(zip(layers, figures, strict=True))]
    return {
        "estimated": True,
        "label": ESTIMATE_LABEL,
        "table": table.meta.name,
        "statistic": statistic,
        "layers": rows,
        "missing_layers": sum(value is None for value in figures),
        "sum_estimated_ms": total,
    }
