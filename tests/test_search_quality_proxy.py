"""`benchmarks/search_quality.py --accuracy proxy`: PPO vs random vs evolution as real, stored,
resumable `mnas search` runs, each finalized; the figures are checked against the store.

The proxy trainer is replaced by a deterministic fake (a function of the network, the seed and
the steps) and latency comes from the synthetic device stored as the `host` lookup predictor
(the shipped Pixel-1 predictor is a learned model that takes ~30 s to fit and store), so the
whole path (start/resume, predicted latency, finalize, the JSON, the curves and the noise
verdict) runs in seconds; the real trainer has its own tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mnas.bench.store import ResultsStore
from mnas.errors import MnasError
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.registry import save_predictor
from mnas.predictor.table import LatencyTable, load_table, save_table
from mnas.search.accuracy import AccuracyResult, CheapAccuracy, ProxyTask
from mnas.search.reward import Reward
from mnas.search.run_store import RunStore
from mnas.search.synthetic_latency import synthetic_predictor
from mnas.space.arch import Arch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


class FakeTrainer:
    """Stands in for `ProxyTrainer`: accuracy = a hash-noisy function of mult-adds, per seed and steps."""

    calls: list[tuple[str, int, int]] = []

    def __init__(self, task: ProxyTask, on_trained: Any = None, *, data: Any = None) -> None:
        self.task = task
        self.data = data if data is not None else "prepared once"

    @property
    def task_key(self) -> str:
        return self.task.key()

    def total_steps(self) -> int:
        assert self.task.steps is not None
        return self.task.steps

    def accuracy(self, arch: Arch) -> AccuracyResult:
        FakeTrainer.calls.append((arch.hash, self.task.seed, self.total_steps()))
        value = CheapAccuracy(noise=0.05, seed=1000 * self.task.seed + self.total_steps()).value(arch)
        return AccuracyResult(accuracy=value, train_seconds=0.01, steps=self.total_steps(), val_samples=10,
                              task_key=self.task_key, final_loss=1.0)


ARGS = ["--accuracy", "proxy", "--samples", "5", "--seeds", "2", "--proxy-steps", "3", "--proxy-batch", "8",
        "--proxy-train-images", "64", "--proxy-val-images", "32", "--final-top", "2", "--final-seeds", "2",
        "--final-steps", "6", "--curve-every", "2", "--ppo-minibatch", "2", "--evolution-population", "3",
        "--evolution-sample-size", "2", "--device", "host"]


def store_host_predictor(db: Path) -> None:
    """The synthetic device's full lookup table and predictor, stored as the `host` device at 224 px."""
    table = synthetic_predictor().table
    store = ResultsStore(db)
    try:
        table_id = save_table(store, LatencyTable(dataclasses.replace(table.meta, device_name="host"), table.entries))
        save_predictor(store, LookupPredictor(load_table(store, table_id)), table_id)
    finally:
        store.close()


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr("mnas.search.accuracy.ProxyTrainer", FakeTrainer)
    FakeTrainer.calls = []
    store_host_predictor(tmp_path / "runs.db")
    import search_quality

    def run(*extra: str) -> dict[str, Any]:
        files = ["--runs-db", str(tmp_path / "runs.db"), "--json", str(tmp_path / "sq.json"),
                 "--png", str(tmp_path / "curves.png")]
        search_quality.main([*ARGS, *files, *extra])
        return json.loads((tmp_path / "sq.json").read_text())

    return run, tmp_path


def test_proxy_runs_are_finalized_and_figures_match_the_store(bench: Any) -> None:
    run, tmp_path = bench
    result = run()
    runs = result["runs"]
    assert sorted(runs) == sorted(f"soft-{a}-seed{s}" for a in ("ppo", "random", "evolution") for s in (0, 1))
    target = result["conditions"]["target_ms"]
    reward = Reward.preset("soft", target)
    store = RunStore(ResultsStore(tmp_path / "runs.db", create=False))
    trainings = 0
    for run_id, figures in runs.items():
        samples, finals = store.samples(run_id), store.finals(run_id)
        trainings += len(samples) + len(finals)
        assert len(samples) == 5 and figures["final"] == {"children": 2, "seeds": 2, "steps": 6, "trained_now": 4,
                                                           "reused": 0}
        # the finalized children are the top 2 distinct networks by search reward, each under seeds 0 and 1
        best: dict[str, float] = {}
        for s in samples:
            best[s.arch_hash] = max(best.get(s.arch_hash, -math.inf), s.reward)
        top = sorted(best, key=lambda h: -best[h])[:2]
        assert sorted((f.arch_hash, f.seed, f.steps) for f in finals) == sorted((h, k, 6) for h in top for k in (0, 1))
        # top-K finalized reward = mean over the children of the run's reward of their mean final accuracy
        latency = {s.arch_hash: s.latency_ms for s in samples}
        expected = sum(reward(sum(f.accuracy for f in finals if f.arch_hash == h) / 2, latency[h]) for h in top) / 2
        assert figures["top_final_reward"] == pytest.approx(expected, rel=1e-12)
        assert figures["best_reward"] == pytest.approx(max(s.reward for s in samples))
        rewards = [s.reward for s in samples]
        assert figures["curve"] == pytest.approx([sum(rewards[i:i + 2]) / len(rewards[i:i + 2]) for i in (0, 2, 4)])
        assert store.run_config(run_id)["accuracy"]["kind"] == "proxy"
    assert len(FakeTrainer.calls) == trainings == 6 * (5 + 4)
    summary = result["summary"]["soft"]
    ppo = [runs[f"soft-ppo-seed{s}"]["top_final_reward"] for s in (0, 1)]
    rnd = [runs[f"soft-random-seed{s}"]["top_final_reward"] for s in (0, 1)]
    verdict = summary["ppo_vs_random"]["top_final_reward"]
    assert verdict["difference"] == pytest.approx((ppo[0] + ppo[1] - rnd[0] - rnd[1]) / 2)
    assert verdict["noise"] == pytest.approx(abs(ppo[0] - ppo[1]) / math.sqrt(2) + abs(rnd[0] - rnd[1]) / math.sqrt(2))
    assert verdict["exceeds_noise"] == (abs(verdict["difference"]) > verdict["noise"])
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_rerun_resumes_without_training_and_other_settings_are_refused(bench: Any) -> None:
    run, _ = bench
    first = run()
    FakeTrainer.calls = []
    again = run()
    assert FakeTrainer.calls == []  # every search and every final training is reused from the store
    for run_id, figures in again["runs"].items():
        assert figures["top_final_reward"] == first["runs"][run_id]["top_final_reward"]
        assert figures["final"]["trained_now"] == 0 and figures["final"]["reused"] == 4
    with pytest.raises(MnasError, match="searched with other settings"):
        run("--proxy-steps", "4")
    assert FakeTrainer.calls == []


def test_versus_and_block_means_against_hand_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from search_quality_proxy import block_means, versus

    v = versus([1.0, 2.0], [0.0, 0.0])
    assert v["difference"] == 1.5 and v["noise"] == pytest.approx(math.sqrt(0.5)) and v["exceeds_noise"]
    assert v["wins_a"] == 2
    v = versus([1.0, 3.0], [1.0, 2.0])
    assert v["difference"] == 0.5 and v["noise"] == pytest.approx(math.sqrt(2) + math.sqrt(0.5))
    assert not v["exceeds_noise"] and v["wins_a"] == 1
    assert block_means(__import__("numpy").array([1.0, 2.0, 3.0, 4.0, 5.0]), 2) == [1.5, 3.5, 5.0]


def test_help_prints_and_bad_lists_fail_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import search_quality

    with pytest.raises(SystemExit) as exc:
        search_quality.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "35% quantile of random children" in out and "--accuracy {cheap,proxy}" in out
    with pytest.raises(MnasError, match="expected a subset of ppo,random,evolution / soft,hard"):
        search_quality.main(["--accuracy", "proxy", "--rewards", "medium"])
