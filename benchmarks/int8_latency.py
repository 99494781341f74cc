"""int8 vs float32 latency on the host, side by side, one pinned core, one thread (issue 14 item 2).

Why: the writer now also emits fully-quantized int8 models (space/quantize.py); this says what
int8 buys on this host's LiteRT, for the README. Both files of a model (same arch, same seeded
weights, the int8 one calibrated on the quantizer's default inputs) are loaded into two
interpreters (one thread each, in this process pinned to one core) and timed in alternation:
each round times `--invokes` runs of the float file, then as many of the int8 file (the order
flips every round), so drifts in machine load hit both alike. Per round the mean invoke time
of each is kept; the report is the median over rounds of each and of the per-round ratio
int8 / float, with the 1-minute load average before and after (a loaded machine is reported,
not hidden).

    python benchmarks/int8_latency.py [--models mnasnet-a1,mobilenet-v2] [--resolution 224]
        [--rounds 15] [--invokes 10] [--delegate default|none] [--core N] [--json]

`--delegate default` is LiteRT's default CPU path (XNNPACK applied by the runtime, as `mnas
bench` times models); `none` the builtin kernels without XNNPACK.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from mnas.bench.host_worker import pin_to_core, prepare_inputs, resolver_options
from mnas.bench.runtime import load_runtime
from mnas.space import zoo
from mnas.space.tflite_writer import arch_to_bytes


def _interpreter(model: bytes, delegate: str) -> Any:
    runtime = load_runtime()
    interpreter = runtime.interpreter(model_content=model, num_threads=1,
                                      **resolver_options(runtime.interpreter, delegate))
    interpreter.allocate_tensors()
    prepare_inputs(interpreter, seed=0)
    return interpreter


def _block_ms(interpreter: Any, invokes: int) -> float:
    start = time.perf_counter()
    for _ in range(invokes):
        interpreter.invoke()
    return (time.perf_counter() - start) * 1e3 / invokes


def measure(name: str, resolution: int, rounds: int, invokes: int, delegate: str) -> dict[str, Any]:
    """Median float and int8 invoke times (ms) and the median per-round ratio for zoo model `name`."""
    arch = zoo.get(name)
    models = {dtype: arch_to_bytes(arch, resolution=resolution, dtype=dtype) for dtype in ("float32", "int8")}
    interpreters = {dtype: _interpreter(model, delegate) for dtype, model in models.items()}
    for interpreter in interpreters.values():  # warm-up: first invokes pack weights, fill caches
        _block_ms(interpreter, max(2, invokes // 2))
    times: dict[str, list[float]] = {"float32": [], "int8": []}
    for r in range(rounds):
        order = ("float32", "int8") if r % 2 == 0 else ("int8", "float32")
        for dtype in order:
            times[dtype].append(_block_ms(interpreters[dtype], invokes))
    ratios = [q / f for q, f in zip(times["int8"], times["float32"], strict=True)]
    return {"model": name, "resolution": resolution,
            "float32_median_ms": statistics.median(times["float32"]),
            "int8_median_ms": statistics.median(times["int8"]),
            "int8_over_float_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "float32_size_bytes": len(models["float32"]), "int8_size_bytes": len(models["int8"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mnasnet-a1,mobilenet-v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--invokes", type=int, default=10)
    parser.add_argument("--delegate", choices=("default", "none"), default="default")
    parser.add_argument("--core", type=int, default=None, help="core to pin to (default: the lowest allowed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    pin_to_core(core)
    runtime = load_runtime()
    load_before = os.getloadavg()[0]
    rows = [measure(name, args.resolution, args.rounds, args.invokes, args.delegate)
            for name in args.models.split(",")]
    conditions = {"runtime": f"{runtime.name} {runtime.version}", "threads": 1, "core": core,
                  "delegate": args.delegate, "rounds": args.rounds, "invokes_per_round": args.invokes,
                  "cpu_count": os.cpu_count(), "loadavg_1min_before": load_before,
                  "loadavg_1min_after": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"conditions": conditions, "models": rows}, indent=2))
        return
    print(" ".join(f"{k}={v}" for k, v in conditions.items()))
    for row in rows:
        print(f"{row['model']:>14} {row['resolution']}px  float32 {row['float32_median_ms']:.2f} ms  "
              f"int8 {row['int8_median_ms']:.2f} ms  int8/float {row['int8_over_float_median']:.2f} "
              f"(rounds {row['ratio_min']:.2f}-{row['ratio_max']:.2f})  "
              f"size {row['float32_size_bytes'] / 1e6:.1f} -> {row['int8_size_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
