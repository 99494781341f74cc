"""Prediction throughput: how many architectures per second the latency predictors answer.

Search scores every sampled architecture (and reward shaping may score many more), so the
predictor must not be the bottleneck: the target is >= 100k predictions/s. This measures

* `predict_tokens` on random token rows of the MnasNet space (the search's path),
* `predict_ms` on `Arch` objects of the space (encoded to tokens, then gathered),
* `predict_ms` on `Arch` objects layer by layer (the path for archs outside the space),

for a lookup predictor (with calibration) and a learned predictor. By default the table is
synthetic (latency = a fixed function of mult-adds and memory traffic: speed does not depend
on the values); `--db/--table` uses a stored table instead.

    python benchmarks/predict_speed.py [--rows 1000000] [--archs 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.calibration import Calibration
from mnas.predictor.features import layer_features, work
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.learned import LearnedPredictor
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.table import LatencyTable, TableEntry, TableMeta, load_table
from mnas.space.search_space import mnasnet


def synthetic_table(resolution: int) -> LatencyTable:
    layers = enumerate_layers(mnasnet(), resolution)
    ms = 0.01 * work(layer_features(layers)) + 0.002
    entries = {layer.key: TableEntry(layer.key, float(v), float(v), 0.0, 50, 0.0) for layer, v in zip(layers, ms, strict=True)}
    meta = TableMeta(name="synthetic", device_name="synthetic", runtime="none", runtime_version="0",
                     resolution=resolution, conditions="synthetic")
    return LatencyTable(meta=meta, entries=entries)


def best_rate(count: int, run: Callable[[], Any], repeats: int) -> float:
    """Items per second of the fastest of `repeats` runs (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def measure(predictor: AdditivePredictor, rows: int, n_archs: int, repeats: int, seed: int) -> dict[str, Any]:
    space = predictor.space
    rng = np.random.default_rng(seed)
    tokens = np.stack([rng.integers(0, n, rows) for _, n in space.decisions], axis=1)
    archs = [space.sample(rng) for _ in range(n_archs)]
    started = time.perf_counter()
    predictor.token_index()
    compile_s = time.perf_counter() - started
    predictor.predict_tokens(tokens[:10])  # warm
    slow = archs[: max(1, n_archs // 10)]
    return {
        "predictor": predictor.kind,
        "compile_s": compile_s,
        "token_rows": rows,
        "tokens_per_s": best_rate(rows, lambda: predictor.predict_tokens(tokens), repeats),
        "archs": n_archs,
        "archs_per_s": best_rate(n_archs, lambda: predictor.predict_ms(archs), repeats),
        "archs_layerwise_per_s": best_rate(len(slow), lambda: predictor.raw_layer_sums(slow), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="random token rows (default 1M)")
    parser.add_argument("--archs", type=int, default=20_000, help="random Arch objects (default 20k)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--db", help="results database holding --table")
    parser.add_argument("--table", help="stored latency table name (default: a synthetic table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.table:
        from mnas.bench.store import ResultsStore

        table = load_table(ResultsStore(args.db or "results/mnas.db", create=False), args.table)
    else:
        table = synthetic_table(args.resolution)
    lookup = LookupPredictor(table)
    lookup.calibration_ = Calibration(coef_sum=0.95, coef_layers=-0.01, intercept_ms=0.5, n=0)
    learned = LearnedPredictor.from_table(table, model="gbr")
    results = [measure(p, args.rows, args.archs, args.repeats, args.seed) for p in (lookup, learned)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"{r['predictor']:>8}: {r['tokens_per_s']:>12,.0f} token rows/s ({r['token_rows']:,} rows)   "
              f"{r['archs_per_s']:>10,.0f} Arch/s   {r['archs_layerwise_per_s']:>8,.0f} Arch/s layer by layer   "
              f"(index compiled in {r['compile_s']:.2f} s)")


if __name__ == "__main__":
    main()
