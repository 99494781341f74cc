"""What a finished (or running) search shows: Pareto front, reward curve, latency spread, top-k.

Hypervolume is the area dominated by the (latency, accuracy) Pareto front up to the
reference point (latency = 2 x T, accuracy = 0), in units of ms x accuracy, normalised by
2 x T so runs with different targets compare on [0, 1].
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnas.search.run_store import RunStore, SampleRow


def pareto_front(latency_ms: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both lower latency and higher accuracy."""
    order = np.lexsort((-np.asarray(accuracy), np.asarray(latency_ms)))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(int(i))
            best = accuracy[i]
    return front


def hypervolume(latency_ms: Sequence[float], accuracy: Sequence[float], reference_ms: float) -> float:
    """Normalised area dominated by the front within latency <= reference_ms, accuracy >= 0."""
    lat, acc = np.asarray(latency_ms, dtype=float), np.asarray(accuracy, dtype=float)
    front = [i for i in pareto_front(lat, acc) if lat[i] < reference_ms]
    area, best = 0.0, 0.0
    # sweep from the slowest front point to the fastest: each adds a slab of new accuracy
    for i in sorted(front, key=lambda i: lat[i]):
        if acc[i] > best:
            area += (reference_ms - lat[i]) * (acc[i] - best)
            best = acc[i]
    return area / reference_ms


def _plots(samples: list[SampleRow], target_ms: float, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    lat = np.array([s.latency_ms for s in samples])
    acc = np.array([s.accuracy for s in samples])
    rew = np.array([s.reward for s in samples])
    paths = {}

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(lat, acc, s=12, alpha=0.5, label="children")
    front = sorted(pareto_front(lat, acc), key=lambda i: lat[i])
    ax.plot(lat[front], acc[front], "r.-", label="Pareto front")
    ax.axvline(target_ms, color="gray", ls="--", label=f"T = {target_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("proxy accuracy")
    ax.set_title("accuracy vs latency")
    ax.legend()
    fig.tight_layout()
    paths["pareto_png"] = str(folder / "pareto.png")
    fig.savefig(paths["pareto_png"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(len(rew)), rew, ".", alpha=0.4, label="reward")
    window = max(1, min(20, len(rew) // 5))
    if len(rew) >= window:
        smooth = np.convolve(rew, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(rew)), smooth, "r-", label=f"moving mean ({window})")
    ax.plot(np.arange(len(rew)), np.maximum.accumulate(rew), "g-", label="best so far")
    ax.set_xlabel("child")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    paths["reward_png"] = str(folder / "reward.png")
    fig.savefig(paths["reward_png"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(lat, bins=min(40, max(5, len(lat) // 3)), alpha=0.8)
    ax.axvline(target_ms, color="r", ls="--", label=f"T = {target_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("children")
    ax.legend()
    fig.tight_layout()
    paths["latency_png"] = str(folder / "latency_hist.png")
    fig.savefig(paths["latency_png"], dpi=110)
    plt.close(fig)
    return paths


def summarise(samples: list[SampleRow], target_ms: float, top: int) -> dict[str, Any]:
    lat = [s.latency_ms for s in samples]
    acc = [s.accuracy for s in samples]
    ranked = sorted(samples, key=lambda s: s.reward, reverse=True)[:top]
    return {
        "samples": len(samples),
        "target_ms": target_ms,
        "best_reward": ranked[0].reward if ranked else None,
        "share_under_target": float(np.mean([x <= target_ms for x in lat])) if lat else 0.0,
        "latency_median_ms": float(np.median(lat)) if lat else None,
        "latency_p10_ms": float(np.percentile(lat, 10)) if lat else None,
        "latency_p90_ms": float(np.percentile(lat, 90)) if lat else None,
        "hypervolume": hypervolume(lat, acc, 2 * target_ms) if lat else 0.0,
        "pareto_size": len(pareto_front(lat, acc)) if lat else 0,
        "top": [{"idx": s.idx, "reward": s.reward, "accuracy": s.accuracy, "latency_ms": s.latency_ms,
                 "latency_source": s.latency_source, "arch_hash": s.arch_hash, "arch": s.arch} for s in ranked],
    }


def make_report(runs: RunStore, run_id: str, cfg: dict[str, Any], folder: Path, top: int) -> dict[str, Any]:
    samples = runs.samples(run_id)
    target = float(cfg["reward"]["target_ms"])
    report = {"run_id": run_id, **summarise(samples, target, top), "updates": len(runs.updates(run_id)), "plots": {}}
    if samples:
        report["plots"] = _plots(samples, target, folder)
    return report


def export_top(runs: RunStore, run_id: str, cfg: dict[str, Any], folder: Path, top: int, weights_dir: Path) -> list[dict]:
    """Write the top-K children: block strings (arch.txt), .tflite (latency resolution), proxy weights."""
    from mnas.space.arch import Arch
    from mnas.space.tflite_writer import write_arch

    samples = sorted(runs.samples(run_id), key=lambda s: s.reward, reverse=True)[:top]
    folder.mkdir(parents=True, exist_ok=True)
    resolution = int(cfg["latency"]["resolution"])
    rows = []
    for rank, s in enumerate(samples, 1):
        arch = Arch.parse(s.arch)
        base = folder / f"top{rank}-{s.arch_hash}"
        base.with_suffix(".txt").write_text("\n".join(str(b) for b in arch.blocks) + f"\n# {s.arch}\n")
        tflite = base.with_suffix(".tflite")
        write_arch(arch, tflite, resolution=resolution)
        weights = weights_dir / f"{s.idx}.pt"
        exported = None
        if weights.exists():
            exported = base.with_suffix(".pt")
            shutil.copyfile(weights, exported)
        rows.append({"rank": rank, "idx": s.idx, "reward": s.reward, "accuracy": s.accuracy, "latency_ms": s.latency_ms,
                     "arch": s.arch, "blocks_txt": str(base.with_suffix(".txt")), "tflite": str(tflite),
                     "weights": str(exported) if exported else None})
    return rows
