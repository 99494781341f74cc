"""A synthetic phone whose layer latencies are a known function of the layer: for tests and benchmarks.

Searching against it costs nothing and its latencies are exact, so a benchmark of search
quality (`benchmarks/search_quality.py`) and the search's tests can run thousands of children
with a real latency trade-off and no device. Like `CheapAccuracy`, it is NOT a measurement:
compute per mult-add by op kind, memory traffic, fixed costs for large kernels,
squeeze-and-excite and pooled skips, and a penalty for channel counts off the vector width.
"""

from __future__ import annotations

from mnas.predictor.layers import enumerate_layers
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.table import LatencyTable, TableEntry, TableMeta
from mnas.space.arch import LayerSig
from mnas.space.cost import layer_cost
from mnas.space.search_space import mnasnet

__all__ = ["OP_MS_PER_MMAC", "synthetic_layer_ms", "synthetic_predictor"]

OP_MS_PER_MMAC = {"stem": 0.011, "conv": 0.009, "dsconv": 0.016, "mbconv": 0.013, "head": 0.007}


def synthetic_layer_ms(layer: LayerSig) -> float:
    """A layer's latency on the synthetic device: compute + memory + fixed op costs + misalignment."""
    op = layer.kind if layer.kind in ("stem", "head") else layer.op
    cost = layer_cost(layer)
    ms = OP_MS_PER_MMAC[op] * cost.mult_adds / 1e6
    ms += 2e-7 * (layer.h * layer.w * layer.cin + layer.out_h * layer.out_w * layer.cout)
    ms += 0.004 * layer.kernel * (layer.kernel > 3)
    if layer.se:
        ms += 0.003 + 1e-5 * layer.mid
    if layer.skip == "pool":
        ms += 0.002
    if layer.cout % 8:
        ms *= 1.12  # channel counts off the vector width run slower
    return ms


def synthetic_predictor(resolution: int = 224) -> LookupPredictor:
    """Every layer of the MnasNet space at `resolution` in an in-memory table: the synthetic device, exactly."""
    layers = enumerate_layers(mnasnet(), resolution, 1000)
    meta = TableMeta(name="synthetic", device_name="synthetic", runtime="synthetic", runtime_version="1",
                     resolution=resolution, conditions="synthetic")
    entries = {layer.key: TableEntry(layer.key, synthetic_layer_ms(layer), None, None, 1, 0.0) for layer in layers}
    return LookupPredictor(LatencyTable(meta, entries))
