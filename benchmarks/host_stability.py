"""Host stability: five separate `mnas bench mnasnet-a1` runs on this host.

Prints each run's median, the spread of the medians (coefficient of variation; target <= 3%
on these shared machines) and the harness overhead = wall time / (runs x median latency),
both for the whole command (process start, model preparation, interpreter start, warm-up)
and for the benchmark call alone (the child process the host device spawns).

    .venv/bin/python benchmarks/host_stability.py [--repeats 5] [--model mnasnet-a1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="mnasnet-a1")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    mnas = [sys.executable, "-m", "mnas.cli"]
    medians, minimums, overheads, bench_overheads = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "stability.db")
        for index in range(args.repeats):
            start = time.perf_counter()
            out = subprocess.run([*mnas, "--db", db, "bench", args.model, "--runs", str(args.runs), "--force", "--json"],
                                 check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
            row = json.loads(out.stdout)[0]
            median_s = row["median_ms"] / 1000
            runs = row["runs"]
            medians.append(row["median_ms"])
            minimums.append(row["min_ms"])
            overheads.append(wall / (runs * median_s))
            bench_overheads.append(row["wall_s"] / (runs * median_s))
            print(f"run {index + 1}: median {row['median_ms']:.2f} ms, runs {runs}, cv {row['cv']:.3f}, "
                  f"command wall {wall:.2f} s, benchmark wall {row['wall_s']:.2f} s", flush=True)
    mean = statistics.mean(medians)
    cv = statistics.pstdev(medians) / mean
    print(f"\nmedians: mean {mean:.2f} ms, min {min(medians):.2f}, max {max(medians):.2f}, "
          f"cv of medians {cv * 100:.2f}% (target <= 3%)")
    min_cv = statistics.pstdev(minimums) / statistics.mean(minimums)
    print(f"minimums (the host's headline statistic): mean {statistics.mean(minimums):.2f} ms, "
          f"cv {min_cv * 100:.2f}%")
    print(f"overhead (command wall / (runs x median)): median {statistics.median(overheads):.2f}x")
    print(f"overhead (benchmark call wall / (runs x median)): median {statistics.median(bench_overheads):.2f}x")


if __name__ == "__main__":
    main()
