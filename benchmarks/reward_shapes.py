"""Hard vs soft reward, as in Figure 6 of the MnasNet paper: latency histograms of the samples.

Runs the same PPO search (`mnas.search.loop.run_search`, window 1, in memory) twice, with the
same seed, budget and target T: once with the soft reward (alpha = beta = -0.07) and once with
the hard one (alpha = 0, beta = -1), reward ACC x (LAT / T) ** w. Plots the latency histograms
of all samples of both runs with a line at T and prints, per reward, the share of samples
under T, the median latency, the share within +-10% of T and the mean reward of the last 25%
of the samples. The paper's Fig. 6: the soft reward spreads samples around T, the hard one
piles them just under T.

Latency: the shipped Pixel-1 predictor (`device_configs/tables/pixel1.json.gz`, a table
transferred to the Pixel 1 with its calibration, 224 px: what `mnas search --latency
predicted --device pixel1` uses); `--latency synthetic` uses this host's synthetic additive
device instead. Accuracy: `CheapAccuracy` (`--accuracy cheap`), a cheap stand-in, NOT a
trained accuracy: a saturating function of mult-adds plus 1% hash noise. So the figure shows
how the reward shapes the search given a real latency model and a stand-in accuracy/cost
trade-off, not accuracies. Each run is `search_quality.run_one` (the sibling benchmark's
in-memory search), so both benchmarks search the same way.

    python benchmarks/reward_shapes.py [--samples 5000] [--seed 0] [--target-ms 75]
        [--latency pixel1|synthetic] [--out results/plots/reward_shapes.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from search_quality import run_one

from mnas.errors import MnasError
from mnas.search.accuracy import CheapAccuracy
from mnas.search.latency import PredictedLatency
from mnas.search.reward import PRESETS, Reward
from mnas.space.search_space import mnasnet

REWARDS = ("soft", "hard")
COLORS = {"soft": "tab:blue", "hard": "tab:orange"}


def latency_source(kind: str, resolution: int) -> tuple[PredictedLatency, str]:
    """The latency predictor and a label naming it."""
    if kind == "pixel1":
        from mnas.predictor.selection import shipped_device_predictor

        predictor = shipped_device_predictor("pixel1", resolution)
        if predictor is None:
            raise MnasError("no shipped Pixel-1 table (device_configs/tables/pixel1.json.gz): use --latency synthetic")
        return PredictedLatency(predictor, predictor_id="shipped-pixel1"), f"Pixel 1 (shipped predictor, {resolution} px)"
    if kind == "synthetic":
        from mnas.search.synthetic_latency import synthetic_predictor

        return (PredictedLatency(synthetic_predictor(), predictor_id="synthetic"),
                "synthetic additive device (this host's stand-in)")
    raise MnasError(f"--latency {kind!r}: expected pixel1 or synthetic")


def figures(run: dict[str, Any], target_ms: float) -> dict[str, float]:
    lat, rew = run["latency_ms"], run["reward"]
    n = len(lat)
    last = slice(n - max(1, n // 4), n)
    return {
        "under_t": float(np.mean(lat <= target_ms)),
        "median_ms": float(np.median(lat)),
        "within_10pct_of_t": float(np.mean(np.abs(lat / target_ms - 1.0) <= 0.10)),
        "last25_reward": float(rew[last].mean()),
        "last25_under_t": float(np.mean(lat[last] <= target_ms)),
        "last25_median_ms": float(np.median(lat[last])),
        "last25_within_10pct_of_t": float(np.mean(np.abs(lat[last] / target_ms - 1.0) <= 0.10)),
        "p10_ms": float(np.percentile(lat, 10)),
        "p90_ms": float(np.percentile(lat, 90)),
        "seconds": float(run["seconds"]),
    }


def plot(runs: dict[str, dict[str, Any]], target_ms: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    everything = np.concatenate([r["latency_ms"] for r in runs.values()])
    lo, hi = float(everything.min()), float(everything.max())
    bins = np.linspace(min(lo, 0.5 * target_ms), max(hi, 1.5 * target_ms), 60)
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for kind, run in runs.items():
        alpha, beta = PRESETS[kind]
        ax.hist(run["latency_ms"], bins=bins, alpha=0.55, color=COLORS.get(kind),
                label=f"{kind} reward (alpha={alpha:g}, beta={beta:g}): "
                      f"{np.mean(run['latency_ms'] <= target_ms):.0%} under T")
    ax.axvline(target_ms, color="red", ls="--", lw=1.5, label=f"T = {target_ms:g} ms")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("latency of the sampled model (ms)")
    ax.set_ylabel("number of samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5000, help="children per reward (the same budget for both)")
    parser.add_argument("--seed", type=int, default=0, help="controller seed (the same for both rewards)")
    parser.add_argument("--target-ms", type=float, default=75.0, help="latency target T in ms (paper: 75 ms, Pixel 1)")
    parser.add_argument("--latency", choices=("pixel1", "synthetic"), default="pixel1")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--ppo-lr", type=float, default=0.00035, help="PPO learning rate (paper: 0.00035)")
    parser.add_argument("--ppo-epochs", type=int, default=4, help="Adam steps per minibatch of 20")
    parser.add_argument("--out", type=Path, default=Path("results") / "plots" / "reward_shapes.png")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.samples < 4 or args.target_ms <= 0:
        raise MnasError(f"--samples {args.samples} / --target-ms {args.target_ms}: expected >= 4 samples and T > 0")
    torch.set_num_threads(1)  # the controller's tensors are tiny: more threads only contend

    latency, device = latency_source(args.latency, args.resolution)
    ppo = {"learning_rate": args.ppo_lr, "epochs": args.ppo_epochs}
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    for kind in REWARDS:
        runs[kind] = run_one(mnasnet(), "ppo", args.seed, args.samples, Reward.preset(kind, args.target_ms), latency,
                             CheapAccuracy(), ppo)
        print(f"  {kind}: {args.samples} samples in {runs[kind]['seconds']:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    results = {kind: figures(run, args.target_ms) for kind, run in runs.items()}

    title = (f"MnasNet PPO search, latency: {device}, T = {args.target_ms:g} ms\n"
             f"soft (alpha=beta=-0.07) vs hard (alpha=0, beta=-1) reward, {args.samples} samples each, seed {args.seed}\n"
             "accuracy: cheap stand-in (a function of mult-adds), not trained")
    plot(runs, args.target_ms, title, args.out)

    conditions = {"latency": device, "target_ms": args.target_ms, "samples": args.samples, "seed": args.seed,
                  "ppo": ppo, "accuracy": "CheapAccuracy (cheap stand-in, not trained)",
                  "machine": f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} torch thread",
                  "wall_s": round(wall, 1), "png": str(args.out)}
    if args.json:
        print(json.dumps({"conditions": conditions, "results": results}, indent=2))
        return 0
    print(f"latency: {device}; T = {args.target_ms:g} ms; {args.samples} samples per reward, seed {args.seed}; "
          f"PPO {ppo}; accuracy: cheap stand-in, not trained; wall {wall:.1f} s")
    header = (f"{'reward':<6} {'under T':>8} {'median ms':>10} {'+-10% of T':>11} {'last-25% reward':>16} "
              f"{'last 25%: under T / median ms / +-10%':>38}")
    print(header)
    print("-" * len(header))
    for kind, r in results.items():
        late = f"{r['last25_under_t']:.1%} / {r['last25_median_ms']:.1f} / {r['last25_within_10pct_of_t']:.1%}"
        print(f"{kind:<6} {r['under_t']:>8.1%} {r['median_ms']:>10.1f} {r['within_10pct_of_t']:>11.1%} "
              f"{r['last25_reward']:>16.4f} {late:>38}")
    print(f"latency histograms: {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MnasError as exc:
        sys.exit(f"reward_shapes: error: {exc}")
