"""Proxy validity: does the short proxy training rank architectures like a longer training?

The search trusts one short proxy training per child (`search/accuracy.py`, `ProxyTrainer`).
This benchmark measures whether that is evidence: for N architectures (zoo models from
`mnas.space.zoo` interleaved with seeded samples of the MnasNet space) it trains each proxy
setting under several seeds and one longer *reference* training (more steps, more images,
higher resolution), then reports per setting

- Kendall tau (scipy) between the proxy's seed-mean accuracy and the reference accuracy, and the
  mean tau of single-seed proxies (what a search that trains each child once sees);
- the seed sd (pooled over architectures: sqrt of the mean per-architecture variance) against
  the spread of the seed means across architectures (their sd): a proxy whose seed noise is as
  large as the differences between networks cannot rank them;
- seconds per child (training + BN re-calibration + evaluation, this process, one thread).

Several proxy settings are compared on the same architectures and held-out images; the default
pair shows the reduced-stride option (`ProxyTask.reduced_strides`) on vs off at the same
resolution, plus the full strides at twice the resolution (about the same cost per step).

Every finished training is one line of a JSONL file, rewritten atomically (temp file + rename)
after each training, keyed by (architecture string, `ProxyTask.key()`): a restarted run skips
what is stored and never trains a (network, task) twice; a changed setting has a new key and is
trained afresh. Work runs architecture by architecture, so a run stopped by `--budget-s` leaves
complete architectures. Outputs: a JSON of every number and a scatter PNG (default under
`results/`, git-ignored).

    nice -n 10 python benchmarks/proxy_validity.py [--archs 30] [--seeds 3] [--budget-s 4000]
        [--settings full32,reduced16,full16] [--store results/proxy_validity.jsonl]
        [--out results/proxy_validity.json] [--png results/plots/proxy_validity.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnas.bench.files import write_text_atomic
from mnas.errors import MnasError
from mnas.search.accuracy import ProxyData, ProxyTask, ProxyTrainer
from mnas.space import zoo
from mnas.space.arch import Arch
from mnas.space.cost import arch_cost
from mnas.space.search_space import mnasnet

# Shared by every setting: the same 1,000 held-out training images (same split seed) score all.
COMMON: dict[str, Any] = {"batch_size": 64, "max_val_samples": 1000, "threads": 1, "device": "cpu"}
PROXY: dict[str, Any] = {**COMMON, "steps": 16, "max_train_samples": 2048, "bn_recalibration_samples": 256}
SETTINGS: dict[str, dict[str, Any]] = {
    "full32": {**PROXY, "resolution": 32, "reduced_strides": False},
    "reduced16": {**PROXY, "resolution": 16, "reduced_strides": True},
    "full16": {**PROXY, "resolution": 16, "reduced_strides": False},
    "reduced32": {**PROXY, "resolution": 32, "reduced_strides": True},
    # torch's default initialisers: with 10 classes the official classifier init (uniform +-1/sqrt(10))
    # starts at a loss of ~8 (MnasNet-A1), which a 16-step proxy spends its steps undoing
    "full16-torchinit": {**PROXY, "resolution": 16, "reduced_strides": False, "init": "torch"},
}
# 5x the proxy's steps, 4x its images, 48 px (late blocks at 2x2 with the full strides, as reduced16)
REFERENCE: dict[str, Any] = {**COMMON, "steps": 80, "max_train_samples": 8192, "bn_recalibration_samples": 512,
                             "resolution": 48, "reduced_strides": False}
REFERENCE_NAME = "reference"
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


@dataclass(frozen=True)
class Job:
    """One training: `arch` under `task` (a setting at one seed)."""

    arch_name: str
    arch: Arch
    setting: str
    seed: int
    task: ProxyTask

    @property
    def key(self) -> tuple[str, str]:
        return str(self.arch), self.task.key()


# A trainer: (arch, task) -> {"accuracy", "train_seconds", "eval_seconds", ...}
TrainFn = Callable[[Arch, ProxyTask], dict[str, Any]]


def choose_archs(count: int, sample_seed: int = 0) -> list[tuple[str, Arch]]:
    """Zoo models interleaved with seeded samples of the MnasNet space (`sample-<seed>`), `count` in all."""
    if count < 2:
        raise MnasError(f"--archs {count}: expected >= 2 architectures (a rank correlation needs two)")
    models = [(name, zoo.get(name)) for name in zoo.names()]
    space = mnasnet()
    chosen: list[tuple[str, Arch]] = []
    seen: set[str] = set()
    seed = sample_seed
    while len(chosen) < count:
        if models and len(chosen) % 2 == 0:
            name, arch = models.pop(0)
        else:
            name, arch = f"sample-{seed}", space.sample(seed)
            seed += 1
        if str(arch) not in seen:
            seen.add(str(arch))
            chosen.append((name, arch))
    return chosen


def make_jobs(archs: Sequence[tuple[str, Arch]], settings: dict[str, dict[str, Any]], seeds: int,
              reference: dict[str, Any], dataset: str) -> list[Job]:
    """Architecture by architecture: its reference, then every setting under every seed."""
    jobs: list[Job] = []
    for name, arch in archs:
        jobs.append(Job(name, arch, REFERENCE_NAME, 0, ProxyTask(dataset=dataset, seed=0, **reference)))
        for setting, overrides in settings.items():
            jobs.extend(Job(name, arch, setting, seed, ProxyTask(dataset=dataset, seed=seed, **overrides))
                        for seed in range(seeds))
    return jobs


class ResultStore:
    """The finished trainings, one JSON object a line, keyed by (arch string, task key).

    The whole file is rewritten atomically after each training (a few hundred short lines), so
    a killed run leaves the file as it was before or after a training, never half a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    (record["arch"], record["task_key"], float(record["accuracy"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise MnasError(f"{path}: line {number}: expected a JSON training record written by "
                                    "proxy_validity.py (arch, task_key, accuracy)") from None
                self.records.append(record)
        self._keys = {(r["arch"], r["task_key"]) for r in self.records}

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._keys

    def add(self, record: dict[str, Any]) -> None:
        key = (record["arch"], record["task_key"])
        if key in self._keys:
            raise MnasError(f"{self.path}: training {key} stored twice")
        self.records.append(record)
        self._keys.add(key)
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))


def proxy_trainer_fn() -> TrainFn:
    """The real trainer: one `ProxyTrainer` per task, data prepared once per data-defining fields."""
    data: dict[tuple[Any, ...], ProxyData] = {}

    def train(arch: Arch, task: ProxyTask) -> dict[str, Any]:
        data_key = (task.dataset, task.resolution, task.max_train_samples, task.val_fraction,
                    task.max_val_samples, task.split_seed)
        trainer = ProxyTrainer(task, data=data.get(data_key))
        data[data_key] = trainer.data
        result = trainer.accuracy(arch)
        return {"accuracy": result.accuracy, "train_seconds": result.train_seconds,
                "eval_seconds": result.eval_seconds, "steps": result.steps, "diverged": result.diverged,
                "val_samples": result.val_samples, "final_loss": result.final_loss}

    return train


def run_jobs(jobs: Sequence[Job], store: ResultStore, train: TrainFn, *, budget_s: float | None = None,
             progress: bool = True, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Train every job not yet in `store`, storing each as it finishes.

    With `budget_s`, no new architecture is started once the time spent plus the slowest
    architecture so far would exceed it (so the stored architectures are complete).
    Returns counts: trained, skipped (already stored), left (not started for the budget).
    `clock` (seconds) is replaceable so that tests can check the budget rule without waiting.
    """
    from tqdm import tqdm

    todo = [job for job in jobs if job.key not in store]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="proxy validity", unit="training",
               disable=not progress, dynamic_ncols=True)
    start = clock()
    slowest_arch = 0.0
    current, arch_start = None, start
    trained = 0
    try:
        for index, job in enumerate(todo):
            if job.arch_name != current:
                now = clock()
                if current is not None:
                    slowest_arch = max(slowest_arch, now - arch_start)
                current, arch_start = job.arch_name, now
                if budget_s is not None and now - start + slowest_arch > budget_s:
                    return {"trained": trained, "skipped": len(jobs) - len(todo), "left": len(todo) - index}
            wall = clock()
            outcome = train(job.arch, job.task)
            record = {"arch": str(job.arch), "arch_name": job.arch_name, "setting": job.setting, "seed": job.seed,
                      "task_key": job.task.key(), "wall_seconds": clock() - wall, **outcome}
            store.add(record)
            trained += 1
            bar.update(1)
            bar.set_postfix_str(f"{job.arch_name} {job.setting} s{job.seed} acc {outcome['accuracy']:.3f}")
    finally:
        bar.close()
    return {"trained": trained, "skipped": len(jobs) - len(todo), "left": 0}


def _sd(values: Iterable[float]) -> float:
    array = np.asarray(list(values), dtype=float)
    return float(array.std(ddof=1)) if array.size > 1 else 0.0


def kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Kendall tau-b and its p-value; None when undefined (fewer than 2 points or a constant side)."""
    from scipy.stats import kendalltau

    if len(x) < 2:
        return None, None
    tau, p = kendalltau(x, y)
    if tau is None or not math.isfinite(float(tau)):
        return None, None
    return float(tau), float(p)


def summarize(records: Sequence[dict[str, Any]], jobs: Sequence[Job], settings: Sequence[str]) -> dict[str, Any]:
    """Per setting: per-arch mean/sd over seeds, tau against the reference, seed sd vs spread, s/child.

    Only the records of `jobs` count (their keys), and only architectures whose reference and
    every seed of the setting are stored.
    """
    wanted = {job.key: job for job in jobs}
    by_key = {(r["arch"], r["task_key"]): r for r in records}
    seeds: dict[str, set[int]] = {}
    for job in jobs:
        seeds.setdefault(job.setting, set()).add(job.seed)
    runs: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}  # (arch name, setting) -> seed -> record
    for key, job in wanted.items():
        if key in by_key:
            runs.setdefault((job.arch_name, job.setting), {})[job.seed] = by_key[key]
    arch_names = list(dict.fromkeys(job.arch_name for job in jobs))
    reference = {name: runs[(name, REFERENCE_NAME)][0]["accuracy"] for name in arch_names
                 if (name, REFERENCE_NAME) in runs}
    ref_seconds = [r["train_seconds"] + r["eval_seconds"] for (n, s), by in runs.items() if s == REFERENCE_NAME
                   for r in by.values()]
    out: dict[str, Any] = {"reference": {"archs": len(reference), "accuracy": reference,
                                         "seconds_per_child": float(np.mean(ref_seconds)) if ref_seconds else None,
                                         "accuracy_sd_across_archs": _sd(reference.values())},
                           "settings": {}, "zero_cost_baselines": cost_baselines(jobs, reference)}
    for setting in settings:
        per_arch: dict[str, dict[str, Any]] = {}
        for name in arch_names:
            by_seed = runs.get((name, setting), {})
            if name not in reference or set(by_seed) != seeds.get(setting, set()):
                continue
            values = [by_seed[s]["accuracy"] for s in sorted(by_seed)]
            per_arch[name] = {"mean": float(np.mean(values)), "sd": _sd(values), "accuracies": values,
                              "reference": reference[name]}
        names = list(per_arch)
        means = [per_arch[n]["mean"] for n in names]
        refs = [per_arch[n]["reference"] for n in names]
        tau, p = kendall(means, refs)
        single = [kendall([per_arch[n]["accuracies"][i] for n in names], refs)[0]
                  for i in range(len(seeds.get(setting, ())))] if names else []
        single_known = [t for t in single if t is not None]
        seconds = [r["train_seconds"] + r["eval_seconds"] for (n, s), by in runs.items()
                   if s == setting and n in per_arch for r in by.values()]
        seed_sd = math.sqrt(float(np.mean([v["sd"] ** 2 for v in per_arch.values()]))) if per_arch else None
        spread = _sd(means) if len(means) > 1 else None
        out["settings"][setting] = {
            "archs": len(names), "seeds": len(seeds.get(setting, ())), "kendall_tau": tau, "kendall_p": p,
            "kendall_tau_single_seed": single, "kendall_tau_single_seed_mean":
                float(np.mean(single_known)) if single_known else None,
            "seed_sd": seed_sd, "across_arch_sd": spread,
            "seed_sd_over_spread": seed_sd / spread if seed_sd is not None and spread else None,
            "seconds_per_child": float(np.mean(seconds)) if seconds else None,
            "per_arch": per_arch,
        }
    return out


def cost_baselines(jobs: Sequence[Job], reference: dict[str, float]) -> dict[str, Any]:
    """Kendall tau of the reference against zero-cost rankings (params, mult-adds at 224 px):
    a proxy that trains must beat these to be worth its seconds."""
    archs = {job.arch_name: job.arch for job in jobs if job.arch_name in reference}
    names = list(archs)
    refs = [reference[n] for n in names]
    costs = [arch_cost(archs[n], 224, 1000) for n in names]
    out: dict[str, Any] = {}
    for label, values in (("params", [c.params for c in costs]), ("mult_adds_224px", [c.mult_adds for c in costs])):
        tau, p = kendall([float(v) for v in values], refs)
        out[label] = {"kendall_tau": tau, "kendall_p": p}
    return out


def scatter_png(summary: dict[str, Any], path: Path, dataset: str, task_text: dict[str, str]) -> None:
    """One panel per setting: proxy seed mean (+-sd) against the reference accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4.8), squeeze=False)
    for ax, (color, (name, s)) in zip(axes[0], zip(COLORS, settings.items(), strict=False), strict=False):
        xs = [v["reference"] for v in s["per_arch"].values()]
        ys = [v["mean"] for v in s["per_arch"].values()]
        es = [v["sd"] for v in s["per_arch"].values()]
        ax.errorbar(xs, ys, yerr=es, fmt="o", color=color, ecolor="gray", capsize=2, ms=4)
        tau = "n/a" if s["kendall_tau"] is None else f"{s['kendall_tau']:.2f}"
        seconds = "n/a" if s["seconds_per_child"] is None else f"{s['seconds_per_child']:.1f}"
        ax.set_title(f"{name}: tau {tau}, {s['archs']} archs, {seconds} s/child", fontsize=10)
        ax.set_xlabel("reference top-1 accuracy (fraction of held-out images)")
        ax.set_ylabel(f"proxy top-1 accuracy (fraction; mean +-sd of {s['seeds']} seeds)")
        ax.text(0.02, 0.98, task_text.get(name, ""), transform=ax.transAxes, va="top", fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Proxy validity on {dataset}: proxy vs reference ({task_text.get(REFERENCE_NAME, '')})",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(overrides: dict[str, Any]) -> str:
    """A short label of a setting: resolution, strides, steps x batch, images."""
    strides = "reduced" if overrides.get("reduced_strides") else "full"
    init = f", {overrides['init']} init" if overrides.get("init", "official") != "official" else ""
    return (f"{overrides['resolution']} px, {strides} strides, {overrides['steps']} steps x "
            f"{overrides['batch_size']}, {overrides['max_train_samples']} images{init}")


def print_summary(summary: dict[str, Any]) -> None:
    ref = summary["reference"]
    ref_s = "n/a" if ref["seconds_per_child"] is None else f"{ref['seconds_per_child']:.1f}"
    print(f"reference: {ref['archs']} archs, {ref_s} s/child, accuracy sd across archs "
          f"{ref['accuracy_sd_across_archs']:.3f}")
    for label, b in summary["zero_cost_baselines"].items():
        tau = "n/a" if b["kendall_tau"] is None else f"{b['kendall_tau']:.3f}"
        print(f"zero-cost baseline {label}: Kendall tau vs reference {tau}")
    header = (f"{'setting':<16} {'archs':>5} {'seeds':>5} {'tau(mean)':>9} {'p':>8} {'tau(1 seed)':>11} "
              f"{'seed sd':>8} {'spread sd':>9} {'sd/spread':>9} {'s/child':>8}")
    print(header)
    print("-" * len(header))

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for name, s in summary["settings"].items():
        print(f"{name:<16} {s['archs']:>5} {s['seeds']:>5} {fmt(s['kendall_tau'], '.3f'):>9} "
              f"{fmt(s['kendall_p'], '.2g'):>8} {fmt(s['kendall_tau_single_seed_mean'], '.3f'):>11} "
              f"{fmt(s['seed_sd'], '.4f'):>8} {fmt(s['across_arch_sd'], '.4f'):>9} "
              f"{fmt(s['seed_sd_over_spread'], '.2f'):>9} {fmt(s['seconds_per_child'], '.1f'):>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, default=30, help="architectures (zoo models + space samples)")
    parser.add_argument("--sample-seed", type=int, default=0, help="first seed of the space samples")
    parser.add_argument("--seeds", type=int, default=3, help="proxy trainings per architecture and setting")
    parser.add_argument("--settings", default="full32,reduced16,full16",
                        help=f"comma-separated proxy settings, from {', '.join(SETTINGS)}")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new architecture past this many seconds (stored ones stay)")
    parser.add_argument("--store", type=Path, default=Path("results/proxy_validity.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("results/proxy_validity.json"))
    parser.add_argument("--png", type=Path, default=Path("results/plots/proxy_validity.png"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    args = parser.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        raise MnasError(f"--settings {args.settings!r}: unknown {unknown}: expected names from {', '.join(SETTINGS)}")
    if args.seeds < 2:
        raise MnasError(f"--seeds {args.seeds}: expected >= 2 (a seed sd needs two trainings)")
    torch.set_num_threads(1)
    settings = {name: SETTINGS[name] for name in names}
    archs = choose_archs(args.archs, args.sample_seed)
    jobs = make_jobs(archs, settings, args.seeds, REFERENCE, args.dataset)
    store = ResultStore(args.store)
    started = time.time()
    counts = run_jobs(jobs, store, proxy_trainer_fn(), budget_s=args.budget_s, progress=not args.no_progress)
    summary = summarize(store.records, jobs, names)
    task_text = {name: describe(o) for name, o in settings.items()} | {REFERENCE_NAME: describe(REFERENCE)}
    report = {"dataset": args.dataset, "archs_asked": args.archs, "seeds": args.seeds, "counts": counts,
              "wall_seconds_this_run": time.time() - started, "store": str(args.store),
              "settings": {name: {"overrides": o, "label": task_text[name]} for name, o in settings.items()},
              "reference_setting": {"overrides": REFERENCE, "label": task_text[REFERENCE_NAME]},
              "archs": {name: str(arch) for name, arch in archs},
              "host": {"machine": platform.machine(), "processor": platform.processor(), "torch_threads": 1},
              "summary": summary}
    write_text_atomic(args.out, json.dumps(report, indent=1, sort_keys=True) + "\n")
    scatter_png(summary, args.png, args.dataset, task_text)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{counts['trained']} trained, {counts['skipped']} already stored, {counts['left']} left for the budget")
        print_summary(summary)
        print(f"JSON: {args.out}   scatter: {args.png}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MnasError as exc:
        print(f"proxy_validity: error: {exc}", file=sys.stderr)
        sys.exit(2)
