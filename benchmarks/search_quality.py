"""Search quality at equal budget: the MnasNet PPO controller vs random search vs regularized evolution.

Each searcher gets the same number of children, searched by the same loop as `mnas search`
(`mnas.search.loop.run_search`, window 1: ask one, ACC x (LAT / T) ** w, tell one), over
several seeds, with the soft and the hard reward of the paper. Reported per (reward,
algorithm), mean +- std over seeds:

* best reward found, and the mean reward of the last 20% of the children (where the search
  spends its budget once it has learned);
* hypervolume of the (latency, accuracy) Pareto front of all children (`search.report`,
  reference point 2T / accuracy 0, normalised to [0, 1]);
* share of children under T and the latency spread (p10 / p50 / p90) of the second half of
  the run: the paper's Fig. 6 shape is that the hard reward concentrates the samples under T
  while the soft reward keeps exploring both sides.

Everything here is cheap, so the budget can be the paper's order of magnitude in minutes:
latency comes from a predictor (by default the synthetic additive device of
`mnas.search.synthetic_latency` as a lookup table over every layer of the space at 224 px;
with `--db` a stored predictor) and accuracy from `CheapAccuracy`, which is NOT an accuracy
but a fixed saturating function of mult-adds (plus 1% hash noise): the searchers face a real
accuracy/latency trade-off at no training cost. The runs are kept in memory
(`MemoryRunStore`): a per-child checkpoint in the database (a torch.save of the controller
and Adam state, ~50 ms) would dominate a 1000-child PPO run here and says nothing about
search quality.

With `--accuracy proxy` each child is really trained (the proxy task set by the `--proxy-*`
options) in resumable `mnas search` runs stored in `--runs-db`, with latency from the stored
or shipped predictor of `--device`, and each run's top children are finalized (re-trained
under more seeds): see `search_quality_proxy.py`.

    python benchmarks/search_quality.py [--samples 1000] [--seeds 3] [--target-ms T]
        [--db results/mnas.db [--predictor ID]] [--ppo-lr 0.00035] [--ppo-epochs 4]
        [--png results/search_quality.png] [--json results/search_quality.json]
    python benchmarks/search_quality.py --accuracy proxy --samples 36 --seeds 3 --rewards soft \
        [--runs-db results/search_quality_proxy.db] [--device pixel1] [--proxy-dataset digits] \
        [--proxy-resolution 8] [--proxy-steps 40] [--proxy-batch 32] [--proxy-train-images 1600] \
        [--proxy-val-images 300] [--final-top 5] [--final-seeds 2] [--final-steps 60] [--curve-every 6] \
        [--ppo-lr 0.02 --ppo-minibatch 5] [--evolution-population 10 --evolution-sample-size 3]
    (the command measured for the README, ~54 min on the loaded 2-core host; the proxy defaults
    without options are Fashion-MNIST at 16 px, slower: 12-35 s per child there)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnas.errors import MnasError
from mnas.predictor.additive import AdditivePredictor
from mnas.predictor.registry import load_predictor
from mnas.search.accuracy import CheapAccuracy
from mnas.search.latency import PredictedLatency
from mnas.search.loop import run_search
from mnas.search.report import hypervolume
from mnas.search.reward import Reward
from mnas.search.run_store import MemoryRunStore
from mnas.search.runs import SearchSetup
from mnas.search.setup import build_searcher
from mnas.search.synthetic_latency import synthetic_predictor
from mnas.space.search_space import SearchSpace, mnasnet

ALGORITHMS = ("ppo", "random", "evolution")
REWARDS = ("soft", "hard")
TARGET_QUANTILE = 0.35  # default T: this quantile of random children's latency (a third of them under T)


def stored_predictor(db: Path, predictor_id: int | None) -> AdditivePredictor:
    from mnas.bench.store import ResultsStore

    store = ResultsStore(db, create=False)
    try:
        return load_predictor(store, predictor_id)
    finally:
        store.close()


def latency_probe(predictor: AdditivePredictor, space: SearchSpace | None = None) -> np.ndarray:
    """Predicted latency (ms) of 2,000 random children (fixed seed): where the target T is cut."""
    space = space or mnasnet()
    rng = np.random.default_rng(12345)
    return predictor.predict_tokens(np.asarray([space.sample_tokens(rng) for _ in range(2000)]))


def run_one(space: SearchSpace, algorithm: str, seed: int, samples: int, reward: Reward,
            latency: PredictedLatency, accuracy: CheapAccuracy, ppo: dict[str, Any],
            evolution: dict[str, int] | None = None) -> dict[str, Any]:
    """One search through `run_search` (in memory); returns the per-child arrays and the time."""
    searcher = build_searcher(space, algorithm, seed, ppo=ppo, evolution=evolution)
    setup = SearchSetup(space=space, searcher=searcher, accuracy=accuracy, latency=latency, reward=reward)
    store = MemoryRunStore()
    started = time.perf_counter()
    run_search(store, f"{algorithm}-{seed}", setup, samples, progress=False)
    seconds = time.perf_counter() - started
    rows = store.samples(f"{algorithm}-{seed}")
    return {"latency_ms": np.array([r.latency_ms for r in rows]), "accuracy": np.array([r.accuracy for r in rows]),
            "reward": np.array([r.reward for r in rows]), "seconds": seconds}


def metrics(run: dict[str, Any], target_ms: float) -> dict[str, float]:
    lat, acc, rew = run["latency_ms"], run["accuracy"], run["reward"]
    n = len(rew)
    half = lat[n // 2:]
    p10, p50, p90 = np.percentile(half, [10, 50, 90])
    return {
        "best_reward": float(rew.max()),
        "last20_reward": float(rew[-max(1, n // 5):].mean()),
        "hypervolume": hypervolume(lat, acc, 2 * target_ms),
        "under_t_all": float(np.mean(lat <= target_ms)),
        "under_t_2nd_half": float(np.mean(half <= target_ms)),
        "lat_p10_ms": float(p10), "lat_p50_ms": float(p50), "lat_p90_ms": float(p90),
        "lat_over_t_p90": float(p90 / target_ms),
        "seconds": float(run["seconds"]),
    }


def mean_std(values: list[float], digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def print_table(results: dict[str, dict[str, list[dict[str, float]]]], target_ms: float) -> None:
    for kind, by_alg in results.items():
        print(f"\n{kind} reward (T = {target_ms:.3f} ms), mean +- std over {len(next(iter(by_alg.values())))} seeds")
        header = (f"{'algorithm':<10} {'best reward':>18} {'last-20% reward':>18} {'hypervolume':>18} "
                  f"{'under T':>8} {'2nd half: under T':>18} {'p10/p50/p90 (ms)':>20} {'s/run':>6}")
        print(header)
        print("-" * len(header))
        for alg, runs in by_alg.items():
            col = {key: [r[key] for r in runs] for key in runs[0]}
            spread = f"{np.mean(col['lat_p10_ms']):.2f}/{np.mean(col['lat_p50_ms']):.2f}/{np.mean(col['lat_p90_ms']):.2f}"
            print(f"{alg:<10} {mean_std(col['best_reward']):>18} {mean_std(col['last20_reward']):>18} "
                  f"{mean_std(col['hypervolume']):>18} {np.mean(col['under_t_all']):>8.2f} "
                  f"{np.mean(col['under_t_2nd_half']):>18.2f} {spread:>20} {np.mean(col['seconds']):>6.1f}")


def ppo_vs(results: dict[str, dict[str, list[dict[str, float]]]], other: str) -> list[str]:
    lines = []
    for kind, by_alg in results.items():
        if "ppo" not in by_alg or other not in by_alg:
            continue
        for key in ("best_reward", "last20_reward", "hypervolume"):
            wins = sum(p[key] > o[key] for p, o in zip(by_alg["ppo"], by_alg[other], strict=True))
            lines.append(f"{kind:>4} {key:<14}: PPO > {other} in {wins}/{len(by_alg['ppo'])} seeds")
    return lines


def histogram_png(runs: dict[str, dict[str, list[dict[str, Any]]]], target_ms: float, path: Path) -> None:
    """Latency histograms of PPO's children (second half, seeds pooled) under the soft and the hard reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = {kind: np.concatenate([r["latency_ms"][len(r["latency_ms"]) // 2:] for r in runs[kind]["ppo"]])
              for kind in REWARDS if "ppo" in runs.get(kind, {})}
    reference = np.concatenate([r["latency_ms"] for r in runs[REWARDS[0]]["random"]]) \
        if "random" in runs.get(REWARDS[0], {}) else None
    everything = np.concatenate(list(pooled.values()) + ([reference] if reference is not None else []))
    bins = np.linspace(everything.min(), everything.max(), 50)
    fig, axes = plt.subplots(1, len(pooled), figsize=(5.5 * len(pooled), 4), sharey=True, squeeze=False)
    for ax, (kind, values) in zip(axes[0], pooled.items(), strict=True):
        if reference is not None:
            ax.hist(reference, bins=bins, density=True, histtype="step", color="gray", label="random search")
        ax.hist(values, bins=bins, density=True, alpha=0.7, label=f"PPO, {kind} reward")
        ax.axvline(target_ms, color="r", ls="--", label=f"T = {target_ms:.2f} ms")
        ax.set_title(f"{kind}: {np.mean(values <= target_ms) * 100:.0f}% under T")
        ax.set_xlabel("latency (ms)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("density (2nd half of each run, seeds pooled)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="children per run (equal budget)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target-ms", type=float, default=None,
                        help=f"latency target T (default: the {TARGET_QUANTILE:.0%}% quantile of random children)")
    parser.add_argument("--db", type=Path, default=None, help="use a stored predictor from this results database")
    parser.add_argument("--predictor", type=int, default=None, help="stored predictor id (default: the latest)")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--rewards", default=None, help="soft,hard (default: both for cheap, soft for proxy)")
    parser.add_argument("--ppo-lr", type=float, default=0.00035, help="PPO learning rate (paper: 0.00035)")
    parser.add_argument("--ppo-epochs", type=int, default=4, help="Adam steps per minibatch")
    parser.add_argument("--ppo-minibatch", type=int, default=20, help="children per PPO update (paper setting: 20)")
    parser.add_argument("--evolution-population", type=int, default=50)
    parser.add_argument("--evolution-sample-size", type=int, default=10)
    parser.add_argument("--png", type=Path, default=None,
                        help="figure (default: results/search_quality.png; proxy: results/search_quality_proxy.png)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's metrics here")
    proxy = parser.add_argument_group("--accuracy proxy (real training; every field is part of the proxy task)")
    proxy.add_argument("--accuracy", choices=("cheap", "proxy"), default="cheap",
                       help="cheap: the mult-adds stand-in (default); proxy: train every child")
    proxy.add_argument("--runs-db", type=Path, default=Path("results") / "search_quality_proxy.db",
                       help="results database of the proxy runs (resumable: re-run the same command)")
    proxy.add_argument("--device", default="pixel1", help="latency: the stored or shipped predictor of this device")
    proxy.add_argument("--proxy-dataset", default="fashion-mnist")
    proxy.add_argument("--proxy-resolution", type=int, default=16)
    proxy.add_argument("--proxy-steps", type=int, default=40, help="training steps per child")
    proxy.add_argument("--proxy-batch", type=int, default=32)
    proxy.add_argument("--proxy-train-images", type=int, default=1280)
    proxy.add_argument("--proxy-val-images", type=int, default=500)
    proxy.add_argument("--proxy-bn-images", type=int, default=256, help="images for BN re-calibration")
    proxy.add_argument("--final-top", type=int, default=5, help="children finalized per run")
    proxy.add_argument("--final-seeds", type=int, default=2, help="re-trainings per finalized child")
    proxy.add_argument("--final-steps", type=int, default=None, help="steps of a final training (default: 4x)")
    proxy.add_argument("--curve-every", type=int, default=10, help="children per point of the reward curves")
    args = parser.parse_args(argv)
    algorithms = [a for a in args.algorithms.split(",") if a]
    kinds = [k for k in (args.rewards or ("soft" if args.accuracy == "proxy" else ",".join(REWARDS))).split(",") if k]
    bad = [a for a in algorithms if a not in ALGORITHMS] + [k for k in kinds if k not in REWARDS]
    if bad or not algorithms or not kinds:
        raise MnasError(f"--algorithms {args.algorithms!r} / --rewards {args.rewards!r}: expected a subset of "
                        f"{','.join(ALGORITHMS)} / {','.join(REWARDS)}")
    torch.set_num_threads(1)  # the controller's tensors are tiny: more threads only contend
    ppo = {"learning_rate": args.ppo_lr, "epochs": args.ppo_epochs, "minibatch_size": args.ppo_minibatch}
    evolution = {"population": args.evolution_population, "sample_size": args.evolution_sample_size}
    if args.accuracy == "proxy":
        from search_quality_proxy import ProxyBench, run_bench

        from mnas.search.accuracy import ProxyTask

        task = ProxyTask(dataset=args.proxy_dataset, resolution=args.proxy_resolution, steps=args.proxy_steps,
                         batch_size=args.proxy_batch, max_train_samples=args.proxy_train_images,
                         max_val_samples=args.proxy_val_images, bn_recalibration_samples=args.proxy_bn_images)
        bench = ProxyBench(database=args.runs_db, samples=args.samples, seeds=args.seeds, algorithms=algorithms,
                           kinds=kinds, task=task, device=args.device, target_ms=args.target_ms, ppo=ppo,
                           evolution=evolution, final_top=args.final_top, final_seeds=args.final_seeds,
                           final_steps=args.final_steps, curve_every=args.curve_every)
        run_bench(bench, args.json, args.png or Path("results") / "search_quality_proxy.png")
        return

    space = mnasnet()
    predictor = stored_predictor(args.db, args.predictor) if args.db else synthetic_predictor()
    latency = PredictedLatency(predictor, predictor_id=str(predictor.predictor_id or "synthetic"))
    accuracy = CheapAccuracy()
    probe = latency_probe(predictor, space)
    target = args.target_ms or round(float(np.quantile(probe, TARGET_QUANTILE)), 3)
    print(f"predictor: {'stored #' + str(predictor.predictor_id) if args.db else 'synthetic additive device'} "
          f"({predictor.kind}, {predictor.resolution} px); random children: latency p10/p50/p90 "
          f"{np.percentile(probe, 10):.2f}/{np.percentile(probe, 50):.2f}/{np.percentile(probe, 90):.2f} ms")
    print(f"accuracy: CheapAccuracy (NOT an accuracy: a function of mult-adds); T = {target} ms; "
          f"{args.samples} children x {args.seeds} seeds; PPO {ppo} (paper: lr 0.00035, epochs not given)")

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for kind in kinds:
        reward = Reward.preset(kind, target)
        for alg in algorithms:
            for seed in range(args.seeds):
                run = run_one(space, alg, seed, args.samples, reward, latency, accuracy, ppo, evolution)
                runs.setdefault(kind, {}).setdefault(alg, []).append(run)
                results.setdefault(kind, {}).setdefault(alg, []).append(metrics(run, target))
                print(f"  {kind} {alg} seed {seed}: best {run['reward'].max():.4f} in {run['seconds']:.1f} s",
                      file=sys.stderr, flush=True)
    print_table(results, target)
    print()
    for other in ("random", "evolution"):
        for line in ppo_vs(results, other):
            print(line)
    if "ppo" in algorithms and "soft" in results and "hard" in results:
        soft, hard = results["soft"]["ppo"], results["hard"]["ppo"]
        print(f"\nPPO soft vs hard, 2nd half of each run: under T {np.mean([r['under_t_2nd_half'] for r in soft]):.2f} "
              f"vs {np.mean([r['under_t_2nd_half'] for r in hard]):.2f}; p90 / T "
              f"{np.mean([r['lat_over_t_p90'] for r in soft]):.2f} vs {np.mean([r['lat_over_t_p90'] for r in hard]):.2f}")
        png = args.png or Path("results") / "search_quality.png"
        histogram_png(runs, target, png)
        print(f"latency histograms: {png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target_ms": target, "samples": args.samples, "seeds": args.seeds,
                                         "ppo": ppo, "evolution": evolution, "results": results}, indent=2))
        print(f"metrics: {args.json}")


if __name__ == "__main__":
    try:
        main()
    except MnasError as exc:
        sys.exit(f"search_quality: error: {exc}")
