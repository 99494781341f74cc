"""What a finished (or running) search shows: Pareto front, reward curve, latency spread, top-k.

Hypervolume is the area dominated by the (latency, accuracy) Pareto front up to the
reference point (latency = 2 x T, accuracy = 0), in units of ms x accuracy, normalised by
2 x T so runs with different targets compare on [0, 1].
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnas.search.run_config import RunConfig
from mnas.search.run_store import RunStore, SampleRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def accuracy_label(config: RunConfig) -> str:
    """What the run's ACC is, for axes and tables: a trained proxy's accuracy or the cheap stand-in."""
    return "proxy accuracy" if config.accuracy.kind == "proxy" else "cheap stand-in score (NOT an accuracy)"


def latency_origin(config: RunConfig) -> str:
    """Where the run's latencies come from, naming the device, for figure titles."""
    latency = config.latency
    device = latency.device_name or latency.device
    if latency.kind == "predicted":
        return f"latency predicted for {device}"
    return f"latency {latency.kind} on {device}"


def _plots(samples: list[SampleRow], target_ms: float, folder: Path, acc_label: str = "proxy accuracy",
           run: str = "search run") -> dict[str, str]:
    """The report's figures written as PNG files: {"pareto_png": path, ...}."""
    from mnas.bench.plots import save_png

    files = {"pareto_png": "pareto.png", "reward_png": "reward.png", "latency_png": "latency_hist.png"}
    figures = report_figures(samples, target_ms, acc_label, run)
    return {key: str(save_png(figures[key], folder / name)) for key, name in files.items()}


def report_figures(samples: list[SampleRow], target_ms: float, acc_label: str = "proxy accuracy",
                   run: str = "search run") -> dict[str, Figure]:
    """Pareto scatter, reward curve and latency histogram of a run; every title names `run`
    (the run id and where its latencies come from, with the device), axes carry units, and
    child indices and counts get integer ticks."""
    from mnas.bench.plots import integer_ticks, new_figure

    lat = np.array([s.latency_ms for s in samples])
    acc = np.array([s.accuracy for s in samples])
    rew = np.array([s.reward for s in samples])
    figures: dict[str, Figure] = {}

    fig, ax = new_figure(6, 4.5)
    ax.scatter(lat, acc, s=12, alpha=0.5, label="children")
    front = sorted(pareto_front(lat, acc), key=lambda i: lat[i])
    ax.plot(lat[front], acc[front], "r.-", label="Pareto front")
    ax.axvline(target_ms, color="gray", ls="--", label=f"T = {target_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(acc_label)
    ax.set_title(f"{acc_label.split(' (')[0]} vs latency, {len(samples)} children\n{run}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    figures["pareto_png"] = fig

    fig, ax = new_figure(6, 4)
    ax.plot(np.arange(len(rew)), rew, ".", alpha=0.4, label="reward")
    window = max(1, min(20, len(rew) // 5))
    if len(rew) >= window:
        smooth = np.convolve(rew, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(rew)), smooth, "r-", label=f"moving mean ({window})")
    ax.plot(np.arange(len(rew)), np.maximum.accumulate(rew), "g-", label="best so far")
    ax.set_xlabel("child (sample index)")
    ax.set_ylabel("reward ACC x (LAT/T)^w (unitless)")
    ax.set_title(f"reward per child\n{run}", fontsize=9)
    integer_ticks(ax, x=True)
    ax.legend()
    fig.tight_layout()
    figures["reward_png"] = fig

    fig, ax = new_figure(6, 4)
    ax.hist(lat, bins=min(40, max(5, len(lat) // 3)), alpha=0.8)
    ax.axvline(target_ms, color="r", ls="--", label=f"T = {target_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("children (count)")
    ax.set_title(f"latency of {len(samples)} children\n{run}", fontsize=9)
    integer_ticks(ax, y=True)
    ax.legend()
    fig.tight_layout()
    figures["latency_png"] = fig
    return figures


def latency_error(samples: list[SampleRow]) -> dict[str, Any]:
    """How far the predictor was from the measurements, over samples that have both (hybrid runs).

    Each measured architecture counts once (its first sample); relative error is
    (predicted - measured) / measured, so a positive bias means the predictor is pessimistic.
    """
    seen: dict[str, tuple[float, float]] = {}
    for s in samples:
        if s.predicted_ms is not None and s.measured_ms is not None and s.arch_hash not in seen:
            seen[s.arch_hash] = (s.predicted_ms, s.measured_ms)
    if not seen:
        return {"n": 0, "mape_pct": None, "max_ape_pct": None, "bias_pct": None}
    pred, meas = np.array(list(seen.values())).T
    rel = (pred - meas) / meas * 100.0
    return {"n": len(seen), "mape_pct": float(np.abs(rel).mean()), "max_ape_pct": float(np.abs(rel).max()),
            "bias_pct": float(rel.mean())}


def source_counts(samples: list[SampleRow]) -> dict[str, int]:
    """Samples per latency source kind ("predicted", "measured", "store", "cache")."""
    counts: dict[str, int] = {}
    for s in samples:
        kind = s.latency_source.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


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
        "latency_sources": source_counts(samples),
        "latency_error": latency_error(samples),
        "top": [{"idx": s.idx, "reward": s.reward, "accuracy": s.accuracy, "latency_ms": s.latency_ms,
                 "latency_source": s.latency_source, "arch_hash": s.arch_hash, "arch": s.arch} for s in ranked],
    }


def make_report(runs: RunStore, run_id: str, config: RunConfig, folder: Path, top: int) -> dict[str, Any]:
    """The run's summary; `top` is the finalized ranking when the run has one (`ranking` says which)."""
    from mnas.search.finalize import finalized_ranking

    samples = runs.samples(run_id)
    target = config.reward.target_ms
    report = {"run_id": run_id, **summarise(samples, target, top), "updates": len(runs.updates(run_id)),
              "accuracy_label": accuracy_label(config), "ranking": "search", "plots": {}}
    finalized = finalized_ranking(runs, run_id, config)
    if finalized:
        report["ranking"] = "finalized"
        report["top"] = [{"idx": r["idx"], "reward": r["reward"], "reward_sd": r["reward_sd"],
                          "accuracy": r["accuracy_mean"], "accuracy_sd": r["accuracy_sd"], "seeds": r["seeds"],
                          "steps": r["steps"], "search_reward": r["search_reward"],
                          "search_accuracy": r["search_accuracy"], "latency_ms": r["latency_ms"],
                          "latency_source": r["latency_source"], "arch_hash": r["arch_hash"], "arch": r["arch"]}
                         for r in finalized[:top]]
    if samples:
        report["plots"] = _plots(samples, target, folder, report["accuracy_label"],
                                 f"run {run_id}: {latency_origin(config)}")
    return report


def export_top(runs: RunStore, run_id: str, config: RunConfig, folder: Path, top: int, weights_dir: Path) -> list[dict]:
    """Write the top-K children by reward: the finalized ranking when the run has one
    (`mnas search finalize`: mean final reward over seeds), else the search's; each row says
    which (`ranking`), and with the finalized one carries its mean, spread and seeds.

    Per child: `topN-HASH.txt` (one block string a line, then the canonical arch), `.tflite`
    (at the latency resolution, 1000 classes, seeded weights: the model that was timed) and,
    when the run trained children and kept this one's weights, `.pt` (the trained proxy's
    `state_dict`, loadable into `ProxyTask.model(arch, num_classes)`: the strides it trained
    with) and, when the proxy trained with the timed strides, `-trained.tflite` (the same
    trained network at the proxy resolution; it expects inputs normalised as the proxy task
    normalised them; a reduced-stride proxy has no .tflite form).
    """
    import torch

    from mnas.errors import MnasError
    from mnas.space.arch import Arch
    from mnas.space.tflite_writer import write_arch

    if top < 1:
        raise MnasError(f"--top {top}: expected an integer >= 1")
    from mnas.search.finalize import finalized_ranking

    samples = sorted(runs.samples(run_id), key=lambda s: s.reward, reverse=True)[:top]
    if not samples:
        raise MnasError(f"search run {run_id!r}: no stored children yet: expected a run with samples to export")
    finalized = finalized_ranking(runs, run_id, config)
    figures: list[dict[str, Any]] = [{"ranking": "search"} for _ in samples]
    if finalized:
        by_idx = {s.idx: s for s in runs.samples(run_id)}
        samples = [by_idx[r["idx"]] for r in finalized[:top]]
        figures = [{"ranking": "finalized", "reward": r["reward"], "accuracy": r["accuracy_mean"],
                    "reward_sd": r["reward_sd"], "accuracy_sd": r["accuracy_sd"], "seeds": r["seeds"],
                    "steps": r["steps"], "search_reward": r["search_reward"], "search_accuracy": r["search_accuracy"]}
                   for r in finalized[:top]]
    folder.mkdir(parents=True, exist_ok=True)
    resolution = config.latency.resolution
    task = proxy_resolution = None
    if config.accuracy.kind == "proxy" and config.accuracy.task_key:
        from mnas.search.accuracy import ProxyTask

        task = ProxyTask.from_key(config.accuracy.task_key, device="cpu")
        proxy_resolution = task.resolution
    rows = []
    for rank, (s, figure) in enumerate(zip(samples, figures, strict=True), 1):
        arch = Arch.parse(s.arch)
        base = folder / f"top{rank}-{s.arch_hash}"
        base.with_suffix(".txt").write_text("\n".join(str(b) for b in arch.blocks) + f"\n# {s.arch}\n")
        tflite = base.with_suffix(".tflite")
        write_arch(arch, tflite, resolution=resolution)
        weights = weights_dir / f"{s.idx}.pt"
        exported = trained_tflite = num_classes = None
        if weights.exists():
            exported = base.with_suffix(".pt")
            shutil.copyfile(weights, exported)
            state = torch.load(exported, map_location="cpu", weights_only=True)
            num_classes = int(state["head.fc.weight"].shape[0])
            # a proxy trained with reduced strides (stem and first stride-2 block at stride 1) is
            # not the network the .tflite writer expresses (the timed strides): weights only
            if task is not None and not task.reduced_strides:
                model = task.model(arch, num_classes)
                model.load_state_dict(state)
                model.eval()
                trained_tflite = folder / f"top{rank}-{s.arch_hash}-trained.tflite"
                write_arch(arch, trained_tflite, resolution=proxy_resolution, module=model)
        rows.append({"rank": rank, "idx": s.idx, "reward": s.reward, "accuracy": s.accuracy, "latency_ms": s.latency_ms,
                     "arch": s.arch, "blocks_txt": str(base.with_suffix(".txt")), "tflite": str(tflite),
                     "tflite_resolution": resolution, "weights": str(exported) if exported else None,
                     "num_classes": num_classes, "trained_tflite": str(trained_tflite) if trained_tflite else None,
                     "proxy_resolution": proxy_resolution if exported else None, **figure})
    return rows
