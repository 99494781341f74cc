"""Arch -> `.tflite` export throughput on ONE pinned core (issue 2 item 7).

Why: the search and the latency tables export thousands of models; the TF converter takes
~10 s per MnasNet-sized model, the hand-written writer (space/tflite_writer.py) must do >= 10
full-size models per second on one core. This script measures it: MnasNet-A1 plus random
samples of the MnasNet search space at 224 px, seeded-initialised weights, written to a
temporary directory (atomic write + sha256 included, as `write_arch` does), and in memory
(`arch_to_bytes`). It prints the median over repeats of models/s and MB/s.

    python benchmarks/export_speed.py [--samples 10] [--repeats 5] [--resolution 224] [--core N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from mnas.space import zoo
from mnas.space.arch import Arch
from mnas.space.search_space import mnasnet
from mnas.space.tflite_writer import arch_to_bytes, write_arch


def pin(core: int | None) -> int:
    """Pin this process to one core (the lowest allowed one by default); return it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[0] if core is None else core
    if chosen not in allowed:
        raise SystemExit(f"--core {chosen}: expected one of the allowed cores {allowed}")
    os.sched_setaffinity(0, {chosen})
    return chosen


def models(samples: int) -> list[tuple[str, Arch]]:
    space = mnasnet()
    return [("mnasnet-a1", zoo.get("mnasnet-a1"))] + [(f"sample{seed}", space.sample(seed)) for seed in range(samples)]


def measure(archs: list[tuple[str, Arch]], resolution: int, repeats: int, to_file: bool) -> dict[str, float]:
    """Median models/s and MB/s over `repeats` passes over `archs`."""
    rates, mbps = [], []
    with tempfile.TemporaryDirectory(prefix="mnas-export-") as tmp:
        for _ in range(repeats):
            total = 0
            start = time.perf_counter()
            for index, (_, arch) in enumerate(archs):
                if to_file:
                    total += write_arch(arch, Path(tmp) / f"m{index}.tflite", resolution=resolution, seed=index).size
                else:
                    total += len(arch_to_bytes(arch, resolution=resolution, seed=index))
            elapsed = time.perf_counter() - start
            rates.append(len(archs) / elapsed)
            mbps.append(total / elapsed / 1e6)
    return {"models_per_s": statistics.median(rates), "mb_per_s": statistics.median(mbps),
            "min_models_per_s": min(rates), "max_models_per_s": max(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10, help="random search-space samples besides mnasnet-a1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--core", type=int, default=None, help="CPU to pin to (default: lowest allowed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    core = pin(args.core)
    archs = models(args.samples)
    arch_to_bytes(archs[0][1], resolution=args.resolution)  # warm imports and caches
    sizes = [len(arch_to_bytes(a, resolution=args.resolution)) / 1e6 for _, a in archs]
    result = {
        "core": core,
        "models": len(archs),
        "resolution": args.resolution,
        "repeats": args.repeats,
        "mean_model_mb": statistics.mean(sizes),
        "file": measure(archs, args.resolution, args.repeats, to_file=True),
        "memory": measure(archs, args.resolution, args.repeats, to_file=False),
    }
    a1 = measure(archs[:1], args.resolution, max(args.repeats, 5), to_file=True)
    result["mnasnet_a1_file"] = a1
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"core {core}, {len(archs)} models (mnasnet-a1 + {args.samples} samples) at {args.resolution} px, "
          f"mean {result['mean_model_mb']:.1f} MB, median of {args.repeats} repeats")
    for label, key in (("write_arch (file, sha256)", "file"), ("arch_to_bytes (memory)", "memory"),
                       ("mnasnet-a1 alone, file", "mnasnet_a1_file")):
        r = result[key]
        print(f"  {label:28s} {r['models_per_s']:6.1f} models/s  {r['mb_per_s']:7.1f} MB/s  "
              f"(range {r['min_models_per_s']:.1f}-{r['max_models_per_s']:.1f})")


if __name__ == "__main__":
    main()
