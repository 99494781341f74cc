"""benchmarks/proxy_validity.py: tau and sd figures against hand-computed values, resume without re-training."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mnas.errors import MnasError
from mnas.search.accuracy import ProxyTask
from mnas.space.arch import Arch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "proxy_validity.py"
_spec = importlib.util.spec_from_file_location("proxy_validity", BENCH)
assert _spec is not None and _spec.loader is not None
pv = importlib.util.module_from_spec(_spec)
sys.modules["proxy_validity"] = pv
_spec.loader.exec_module(pv)

# three tiny networks that differ only in width (~10K parameters each)
ARCHS = [(f"w{w}", Arch.parse(f"stem8,r1_k3_s11_e1_i8_o8_noskip,r1_k3_s22_e3_i8_o{w},r1_k3_s22_e3_i{w}_o24,head64"))
         for w in (12, 16, 20)]
TINY = {"resolution": 16, "batch_size": 32, "max_train_samples": 256, "max_val_samples": 100,
        "bn_recalibration_samples": 64, "threads": 1}
SETTINGS = {"good": {**TINY, "steps": 2}, "bad": {**TINY, "steps": 3}}
REFERENCE = {**TINY, "steps": 4}
REFERENCE_ACC = {"w12": 0.5, "w16": 0.6, "w20": 0.7}
# per setting, arch -> accuracy of seed 0; seeds 1 and 2 add 0.02 and 0.04
SEED0 = {"good": {"w12": 0.30, "w16": 0.40, "w20": 0.50}, "bad": {"w12": 0.50, "w16": 0.40, "w20": 0.30}}


class FakeTrainer:
    """Accuracies from the tables above by (arch, steps, seed); counts every call."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_after = fail_after
        self.names = {str(arch): name for name, arch in ARCHS}

    def __call__(self, arch: Arch, task: ProxyTask) -> dict[str, Any]:
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt  # the run is killed mid-way
        self.calls.append((str(arch), task.key()))
        name = self.names[str(arch)]
        if task.steps == 4:
            accuracy = REFERENCE_ACC[name]
        else:
            accuracy = SEED0["good" if task.steps == 2 else "bad"][name] + 0.02 * task.seed
        return {"accuracy": accuracy, "train_seconds": 1.0, "eval_seconds": 0.5}


def jobs() -> list[Any]:
    return pv.make_jobs(ARCHS, SETTINGS, 3, REFERENCE, "digits")


def test_tau_and_sd_against_hand_computed_values(tmp_path: Path) -> None:
    store = pv.ResultStore(tmp_path / "runs.jsonl")
    pv.run_jobs(jobs(), store, FakeTrainer(), progress=False)
    summary = pv.summarize(store.records, jobs(), list(SETTINGS))
    good, bad = summary["settings"]["good"], summary["settings"]["bad"]
    assert good["kendall_tau"] == pytest.approx(1.0) and bad["kendall_tau"] == pytest.approx(-1.0)
    assert good["kendall_tau_single_seed"] == pytest.approx([1.0, 1.0, 1.0])
    assert good["per_arch"]["w16"]["mean"] == pytest.approx(0.42)
    assert good["per_arch"]["w16"]["accuracies"] == pytest.approx([0.40, 0.42, 0.44])
    assert good["seed_sd"] == pytest.approx(0.02)  # every arch: sd of (x, x+.02, x+.04) = .02
    assert good["across_arch_sd"] == pytest.approx(0.1)  # sd of (.32, .42, .52)
    assert good["seed_sd_over_spread"] == pytest.approx(0.2)
    assert good["seconds_per_child"] == pytest.approx(1.5) and good["archs"] == 3 and good["seeds"] == 3
    assert summary["reference"]["accuracy"] == pytest.approx(REFERENCE_ACC)
    # wider networks have more parameters and score higher in the reference: tau +1
    assert summary["zero_cost_baselines"]["params"]["kendall_tau"] == pytest.approx(1.0)


def test_restart_trains_only_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    first = FakeTrainer(fail_after=8)
    with pytest.raises(KeyboardInterrupt):
        pv.run_jobs(jobs(), pv.ResultStore(path), first, progress=False)
    assert len(path.read_text().splitlines()) == 8  # every finished training was stored
    second = FakeTrainer()
    counts = pv.run_jobs(jobs(), pv.ResultStore(path), second, progress=False)
    assert counts == {"trained": 21 - 8, "skipped": 8, "left": 0}  # 3 archs x (1 reference + 2 x 3 seeds)
    assert not set(first.calls) & set(second.calls)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({(r["arch"], r["task_key"]) for r in lines}) == len(lines) == 21
    third = FakeTrainer()
    assert pv.run_jobs(jobs(), pv.ResultStore(path), third, progress=False)["trained"] == 0 and not third.calls


def test_budget_leaves_complete_architectures(tmp_path: Path) -> None:
    store = pv.ResultStore(tmp_path / "runs.jsonl")
    trainer = FakeTrainer()
    # each fake training takes 1.5 fake seconds: an arch (7 trainings) 10.5 s; the second would end at 21 s
    counts = pv.run_jobs(jobs(), store, trainer, budget_s=15.0, progress=False,
                         clock=lambda: 1.5 * len(trainer.calls))
    assert counts == {"trained": 7, "skipped": 0, "left": 14}  # the first arch only, all of it
    summary = pv.summarize(store.records, jobs(), list(SETTINGS))
    assert summary["settings"]["good"]["archs"] == 1 and summary["settings"]["good"]["kendall_tau"] is None


def test_a_damaged_store_line_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text('{"arch": "x", "task_key": "k", "accuracy": 0.5}\n{"arch": \n')
    with pytest.raises(MnasError, match=r"runs.jsonl: line 2: expected a JSON training record"):
        pv.ResultStore(path)


def test_unknown_setting_exits_2_with_one_line() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--settings", "full99", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("proxy_validity: error: --settings 'full99': unknown ['full99']: expected names "
                                   "from full32, reduced16, full16, reduced32, full16-torchinit")


def test_real_proxy_trainer_on_digits(tmp_path: Path) -> None:
    store = pv.ResultStore(tmp_path / "runs.jsonl")
    two = ARCHS[:2]
    settings = {"s": {**TINY, "steps": 2}}
    real_jobs = pv.make_jobs(two, settings, 2, {**TINY, "steps": 3}, "digits")
    pv.run_jobs(real_jobs, store, pv.proxy_trainer_fn(), progress=False)
    assert len(store.records) == 6
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["val_samples"] == 100 for r in store.records)
    assert {r["steps"] for r in store.records} == {2, 3}
    summary = pv.summarize(store.records, real_jobs, ["s"])
    assert summary["settings"]["s"]["archs"] == 2 and summary["settings"]["s"]["seed_sd"] >= 0.0
