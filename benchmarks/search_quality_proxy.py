"""Search quality on real training: `search_quality.py --accuracy proxy`.

The same comparison as the cheap path of `search_quality.py` (PPO vs random search vs
regularized evolution at an equal budget of children, several seeds, ACC x (LAT / T) ** w),
but ACC is a real short training of each child (`ProxyTrainer`, the proxy task given on the
command line) and each run is a real `mnas search` run in a results database
(`lifecycle.start_run` / `resume_run`), so a killed benchmark resumes where it stopped: a run
with its budget stored is not searched again and `finalize_run` trains only what is missing.
Latency comes from a stored predictor of `--device` (default `pixel1`: the shipped, calibrated
Pixel-1 table, stored on first use, as `mnas search --latency predicted --device pixel1`).

After its search, each run is finalized as `mnas search finalize` does it (`finalize_run`):
its top-K distinct children by search reward are re-trained under S seeds at a longer
schedule, and the finalized reward of a child is the run's reward of its mean accuracy. A
run's "top-K finalized reward" is the mean of those K figures: the quantity a researcher
would pick a model by, free of the single-training luck of the best search reward.

Every finished run's figures are written to `--json` at once. PPO vs random is judged against
seed noise: the difference of the means over seeds counts as real only when it exceeds the sum
of the two algorithms' sample standard deviations over seeds (`versus`).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnas.errors import MnasError
from mnas.search.accuracy import ProxyTask
from mnas.search.reward import Reward
from mnas.search.run_config import AccuracyConfig, LatencyConfig, RunConfig

__all__ = ["ProxyBench", "block_means", "run_bench", "versus"]

LATENCY_RESOLUTION = 224  # the timed network's input, as in `mnas search`
COMPARED = ("best_reward", "top_final_reward", "hypervolume", "last20_reward", "under_t_all")


@dataclass(frozen=True)
class ProxyBench:
    """Everything one proxy comparison depends on; each run's config is derived from it (`run_config`)."""

    database: Path
    samples: int
    seeds: int
    algorithms: list[str]
    kinds: list[str]
    task: ProxyTask  # its seed is replaced by each run's seed
    device: str = "pixel1"
    target_ms: float | None = None  # None: the search_quality target quantile of random children
    ppo: dict[str, Any] = field(default_factory=dict)
    evolution: dict[str, int] = field(default_factory=dict)
    final_top: int = 5
    final_seeds: int = 2
    final_steps: int | None = None  # None: finalize's default (FINAL_STEPS_FACTOR x the search's steps)
    curve_every: int = 10

    def __post_init__(self) -> None:
        if self.samples < 2 or self.seeds < 1 or self.curve_every < 1:
            raise MnasError(f"--samples {self.samples} / --seeds {self.seeds} / --curve-every {self.curve_every}: "
                            "expected >= 2 children, >= 1 seed and a curve block >= 1")


def run_config(bench: ProxyBench, kind: str, algorithm: str, seed: int, target_ms: float) -> RunConfig:
    """The `mnas search` config of one run: the bench's proxy task under the run's seed, predicted latency."""
    task = dataclasses.replace(bench.task, seed=seed)
    return RunConfig(algorithm=algorithm, seed=seed, samples=bench.samples, reward=Reward.preset(kind, target_ms),
                     latency=LatencyConfig(kind="predicted", device=bench.device, resolution=LATENCY_RESOLUTION),
                     accuracy=AccuracyConfig(kind="proxy", task_key=task.key(), threads=task.threads),
                     ppo=dict(bench.ppo) if algorithm == "ppo" else {},
                     evolution=dict(bench.evolution) if algorithm == "evolution" else {})


def _what_decides(config: RunConfig) -> dict[str, Any]:
    """The parts of a config that decide a run's samples, minus the budget and what start_run pins."""
    out = config.to_dict()
    for key in ("samples", "window"):
        out.pop(key, None)
    out["latency"] = {"kind": config.latency.kind, "device": config.latency.device,
                      "resolution": config.latency.resolution}
    return out


def probe_target(bench: ProxyBench) -> tuple[float, dict[str, float], str]:
    """T (given, or the target quantile of 2,000 random children's predicted latency) and that spread."""
    from search_quality import TARGET_QUANTILE, latency_probe

    from mnas.bench.store import ResultsStore
    from mnas.predictor.registry import load_predictor
    from mnas.predictor.selection import ensure_shipped_predictor
    from mnas.search.setup import predictor_device_name

    store = ResultsStore(bench.database)
    try:
        device_name = predictor_device_name(bench.device, store)
        ensure_shipped_predictor(store, device_name, LATENCY_RESOLUTION)
        predictor = load_predictor(store, device=device_name, resolution=LATENCY_RESOLUTION)
    finally:
        store.close()
    probe = latency_probe(predictor)
    spread = {f"p{q}_ms": round(float(np.percentile(probe, q)), 3) for q in (10, 50, 90)}
    target = bench.target_ms or round(float(np.quantile(probe, TARGET_QUANTILE)), 3)
    return target, spread, f"stored predictor #{predictor.predictor_id} of {device_name} ({predictor.kind})"


def search_and_finalize(bench: ProxyBench, run_id: str, config: RunConfig) -> tuple[Any, Any]:
    """Search `run_id` to its budget (start, resume, or nothing to do), then finalize it; resumable."""
    from mnas.bench.store import ResultsStore
    from mnas.search.finalize import finalize_run
    from mnas.search.lifecycle import resume_run, start_run
    from mnas.search.run_store import RunStore

    runs = RunStore(ResultsStore(bench.database))
    try:
        if run_id not in runs.run_ids():
            start_run(bench.database, config, run_id=run_id, progress=False)
        else:
            stored = RunConfig.from_dict(runs.run_config(run_id))
            if _what_decides(stored) != _what_decides(config):
                raise MnasError(f"{bench.database}: run {run_id!r} was searched with other settings (proxy task, "
                                "target, PPO or evolution): expected the same command line, or another --runs-db")
            if len(runs.samples(run_id)) < bench.samples:
                resume_run(bench.database, run_id, samples=bench.samples, progress=False)
        stored = RunConfig.from_dict(runs.run_config(run_id))
        summary = finalize_run(runs, run_id, stored, top=bench.final_top, seeds=bench.final_seeds,
                               steps=bench.final_steps, progress=False)
        return runs.samples(run_id)[: bench.samples], summary
    finally:
        runs.store.close()


def block_means(values: np.ndarray, every: int) -> list[float]:
    """Mean of each consecutive block of `every` values (a last, shorter block counts too)."""
    return [float(values[i:i + every].mean()) for i in range(0, len(values), every)]


def run_figures(samples: list[Any], summary: Any, target_ms: float, every: int) -> dict[str, Any]:
    from search_quality import metrics

    rewards = np.array([s.reward for s in samples])
    run = {"latency_ms": np.array([s.latency_ms for s in samples]), "accuracy": np.array([s.accuracy for s in samples]),
           "reward": rewards, "seconds": float(sum((s.train_s or 0.0) + (s.latency_s or 0.0) for s in samples))}
    ranking = summary.ranking
    return {
        **metrics(run, target_ms),
        "s_per_child": float(np.mean([s.train_s or 0.0 for s in samples])),
        "top_search_reward": float(np.mean([r["search_reward"] for r in ranking])),
        "top_final_reward": float(np.mean([r["reward"] for r in ranking])),
        "top_final_reward_seed_sd": float(np.mean([r["reward_sd"] for r in ranking])),
        "best_final_reward": float(max(r["reward"] for r in ranking)),
        "top_final_accuracy": float(np.mean([r["accuracy_mean"] for r in ranking])),
        "final": {"children": summary.children, "seeds": summary.seeds, "steps": summary.steps,
                  "trained_now": summary.trained, "reused": summary.reused},
        "curve_every": every, "curve": block_means(rewards, every),
    }


def versus(a: list[float], b: list[float]) -> dict[str, Any]:
    """A - B over seeds, against the seed noise: the sum of both sample standard deviations."""
    sd_a = float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")
    sd_b = float(np.std(b, ddof=1)) if len(b) > 1 else float("nan")
    diff = float(np.mean(a) - np.mean(b))
    noise = sd_a + sd_b
    return {"difference": diff, "seed_sd_a": sd_a, "seed_sd_b": sd_b, "noise": noise,
            "exceeds_noise": bool(np.isfinite(noise) and abs(diff) > noise),
            "wins_a": int(sum(x > y for x, y in zip(a, b, strict=True)))}


def summarize(runs: dict[str, dict[str, Any]], bench: ProxyBench) -> dict[str, Any]:
    """Per reward and algorithm: mean and sd over the finished seeds; PPO vs each other algorithm."""
    out: dict[str, Any] = {}
    for kind in bench.kinds:
        table: dict[str, Any] = {}
        for alg in bench.algorithms:
            done = [runs[k] for k in sorted(runs) if k.startswith(f"{kind}-{alg}-")]
            if done:
                table[alg] = {"seeds": len(done), **{key: {"mean": float(np.mean([r[key] for r in done])),
                                                             "sd": float(np.std([r[key] for r in done], ddof=1))
                                                             if len(done) > 1 else None} for key in COMPARED}}
        comparisons = {}
        for other in bench.algorithms:
            if other == "ppo" or "ppo" not in table or other not in table:
                continue
            pairs = [(runs[f"{kind}-ppo-seed{s}"], runs[f"{kind}-{other}-seed{s}"]) for s in range(bench.seeds)
                     if f"{kind}-ppo-seed{s}" in runs and f"{kind}-{other}-seed{s}" in runs]
            if pairs:
                comparisons[f"ppo_vs_{other}"] = {key: versus([p[key] for p, _ in pairs], [o[key] for _, o in pairs])
                                                  for key in COMPARED}
        out[kind] = {"algorithms": table, **comparisons}
    return out


def print_summary(summary: dict[str, Any], target_ms: float) -> None:
    for kind, part in summary.items():
        print(f"\n{kind} reward (T = {target_ms:.3f} ms), mean +- sd over seeds")
        header = f"{'algorithm':<10} {'seeds':>5} " + " ".join(f"{key:>22}" for key in COMPARED)
        print(header)
        print("-" * len(header))
        for alg, row in part["algorithms"].items():
            cells = [f"{row[k]['mean']:.4f} +- {row[k]['sd']:.4f}" if row[k]["sd"] is not None
                     else f"{row[k]['mean']:.4f}" for k in COMPARED]
            print(f"{alg:<10} {row['seeds']:>5} " + " ".join(f"{c:>22}" for c in cells))
        for name, by_key in part.items():
            if not name.startswith("ppo_vs_"):
                continue
            for key, v in by_key.items():
                verdict = "EXCEEDS seed noise" if v["exceeds_noise"] else "within seed noise"
                print(f"{kind:>4} {name} {key:<17}: diff {v['difference']:+.4f} vs noise (sd+sd) {v['noise']:.4f}: "
                      f"{verdict}; PPO ahead in {v['wins_a']} seed(s)")


def curves_png(runs: dict[str, dict[str, Any]], bench: ProxyBench, title: str, path: Path) -> None:
    """Mean reward per block of children (thin: each seed; thick: mean over seeds), per reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(bench.kinds), figsize=(7.5 * len(bench.kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], bench.kinds, strict=True):
        for i, alg in enumerate(bench.algorithms):
            done = [runs[k]["curve"] for k in sorted(runs) if k.startswith(f"{kind}-{alg}-")]
            if not done:
                continue
            color = f"C{i}"
            n = min(len(c) for c in done)
            x = [min((b + 1) * bench.curve_every, bench.samples) for b in range(n)]
            for c in done:
                ax.plot(x, c[:n], color=color, lw=0.8, alpha=0.35)
            finals = [runs[k]["top_final_reward"] for k in sorted(runs) if k.startswith(f"{kind}-{alg}-")]
            ax.plot(x, np.mean([c[:n] for c in done], axis=0), color=color, lw=2.2, marker="o",
                    label=f"{alg} ({len(done)} seeds; top-{bench.final_top} finalized {np.mean(finals):.4f})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"children searched (end of each block of {bench.curve_every})")
        ax.set_ylabel(f"mean search reward of the block ({kind} reward)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(bench: ProxyBench, json_path: Path | None, png: Path) -> dict[str, Any]:
    """All runs (seed by seed, so that a cut-short benchmark still has whole seeds), the JSON after each."""
    import torch

    torch.set_num_threads(1)
    target, spread, predictor = probe_target(bench)
    task = bench.task
    conditions = {
        "accuracy": "proxy (really trained)", "proxy_task": json.loads(task.key()),
        "latency": predictor, "random_children_latency": spread, "target_ms": target, "samples": bench.samples,
        "seeds": bench.seeds, "ppo": bench.ppo, "evolution": bench.evolution,
        "final": {"top": bench.final_top, "seeds": bench.final_seeds, "steps": bench.final_steps},
        "noise_rule": "difference of the means over seeds exceeds the sum of both sample sds over seeds",
        "machine": f"{platform.node()} {platform.machine()}, 1 torch thread", "runs_db": str(bench.database),
    }
    print(f"latency: {predictor}; random children p10/p50/p90 {spread['p10_ms']}/{spread['p50_ms']}/{spread['p90_ms']} ms;"
          f" T = {target} ms; {bench.samples} children x {bench.seeds} seeds; proxy task {task.key()}")
    runs: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for seed in range(bench.seeds):
        for kind in bench.kinds:
            for alg in bench.algorithms:
                run_id = f"{kind}-{alg}-seed{seed}"
                t0 = time.perf_counter()
                samples, summary = search_and_finalize(bench, run_id, run_config(bench, kind, alg, seed, target))
                runs[run_id] = run_figures(samples, summary, target, bench.curve_every)
                r = runs[run_id]
                print(f"  {run_id}: best {r['best_reward']:.4f}, top-{bench.final_top} finalized "
                      f"{r['top_final_reward']:.4f}, {r['s_per_child']:.1f} s/child, {time.perf_counter() - t0:.0f} s "
                      f"(finalize trained {summary.trained}, reused {summary.reused})", file=sys.stderr, flush=True)
                result = {"conditions": {**conditions, "wall_s": round(time.perf_counter() - started, 1)},
                          "runs": runs, "summary": summarize(runs, bench)}
                if json_path is not None:
                    json_path.parent.mkdir(parents=True, exist_ok=True)
                    json_path.write_text(json.dumps(result, indent=2))
    print_summary(result["summary"], target)
    title = (f"PPO vs random vs evolution on real training: {bench.samples} children x {bench.seeds} seeds\n"
             f"latency: {predictor}, T = {target} ms\nproxy: {task.dataset} {task.resolution} px, {task.steps} steps x "
             f"{task.batch_size} images, <= {task.max_train_samples} train / <= {task.max_val_samples} val images; "
             f"top-{bench.final_top} finalized over {bench.final_seeds} seeds")
    curves_png(runs, bench, title, png)
    print(f"reward curves: {png}" + (f"; figures: {json_path}" if json_path else ""))
    return result
