"""`mnas search finalize`: the top children re-trained under several seeds with a longer
schedule, each training stored once (resumable after a kill, never trained twice), ranked by
mean reward with its spread; `report` and `export` use that ranking and say so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from search_fakes import SyntheticPredictor

from mnas.bench.store import ResultsStore
from mnas.errors import MnasError
from mnas.search.accuracy import CheapAccuracy, ProxyTask
from mnas.search.baselines import RandomSearch
from mnas.search.finalize import FINAL_STEPS_FACTOR, finalize_run, finalized_ranking, top_children
from mnas.search.latency import PredictedLatency
from mnas.search.loop import run_search
from mnas.search.report import export_top, make_report
from mnas.search.run_config import RunConfig, new_run_config
from mnas.search.run_store import MIGRATIONS, RunStore
from mnas.search.runs import SearchSetup
from mnas.space.arch import Arch
from mnas.space.search_space import mnasnet

SPACE = mnasnet()


def make_run(db: Path, run_id: str = "r", samples: int = 12, config: RunConfig | None = None) -> tuple[RunStore, RunConfig]:
    """A stored random search with the cheap stand-in and synthetic predicted latency."""
    config = config or new_run_config(algorithm="random", accuracy="cheap", seed=3, samples=samples, target_ms=40.0)
    runs = RunStore(ResultsStore(db))
    runs.create_run(run_id, config.algorithm, config.to_dict())
    setup = SearchSetup(space=SPACE, searcher=RandomSearch(SPACE, seed=3), accuracy=CheapAccuracy(seed=3),
                        latency=PredictedLatency(SyntheticPredictor(), "synthetic"), reward=config.reward)
    run_search(runs, run_id, setup, samples, progress=False)
    return runs, config


def expected_ranking(runs: RunStore, config: RunConfig, top: int, seeds: int) -> list[tuple[str, float, float]]:
    """(arch hash, mean reward, reward sd) by hand: CheapAccuracy under seeds 0 .. S-1 at the stored latency."""
    out = []
    for child in top_children(runs.samples("r"), top):
        arch = Arch.parse(child.arch)
        rewards = [config.reward(CheapAccuracy(seed=s).value(arch), child.latency_ms) for s in range(seeds)]
        mean = sum(rewards) / seeds
        sd = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (seeds - 1)) if seeds > 1 else 0.0
        out.append((child.arch_hash, mean, sd))
    return sorted(out, key=lambda t: -t[1])


class CountingCheap(CheapAccuracy):
    """CheapAccuracy that counts its calls and raises KeyboardInterrupt (Ctrl-C) at call `stop_at`."""

    calls: list[tuple[str, int]] = []
    stop_at: int | None = None

    def accuracy(self, arch: Arch):
        if CountingCheap.stop_at is not None and len(CountingCheap.calls) == CountingCheap.stop_at:
            raise KeyboardInterrupt
        CountingCheap.calls.append((arch.hash, self.seed))
        return super().accuracy(arch)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch):
    import mnas.search.accuracy as accuracy_module

    CountingCheap.calls, CountingCheap.stop_at = [], None
    monkeypatch.setattr(accuracy_module, "CheapAccuracy", CountingCheap)
    return CountingCheap


def test_finalize_ranks_by_mean_reward_over_seeds(tmp_path: Path) -> None:
    runs, config = make_run(tmp_path / "m.db")
    summary = finalize_run(runs, "r", config, top=3, seeds=3, progress=False)
    assert (summary.children, summary.seeds, summary.trained, summary.reused) == (3, 3, 9, 0)
    assert summary.steps == 0  # the cheap stand-in trains nothing
    expected = expected_ranking(runs, config, 3, 3)
    assert [r["arch_hash"] for r in summary.ranking] == [h for h, _, _ in expected]
    for row, (_, mean, sd) in zip(summary.ranking, expected, strict=True):
        assert row["reward"] == pytest.approx(mean, rel=1e-12) and row["reward_sd"] == pytest.approx(sd, rel=1e-9)
        assert row["seeds"] == [0, 1, 2] and len(row["accuracies"]) == 3
        assert row["reward"] == pytest.approx(config.reward(row["accuracy_mean"], row["latency_ms"]), rel=1e-12)
    assert [r["rank"] for r in summary.ranking] == [1, 2, 3]
    finals = runs.finals("r")
    assert len(finals) == 9 and len({(f.arch_hash, f.seed, f.steps) for f in finals}) == 9


def test_finalize_resumes_after_ctrl_c_and_never_trains_twice(tmp_path: Path, counting) -> None:
    runs, config = make_run(tmp_path / "m.db")
    counting.stop_at = 4
    with pytest.raises(KeyboardInterrupt):
        finalize_run(runs, "r", config, top=3, seeds=2, progress=False)
    assert len(runs.finals("r")) == 4  # each stored as it finished
    counting.stop_at = None
    again = finalize_run(runs, "r", config, top=3, seeds=2, progress=False)
    assert (again.trained, again.reused) == (2, 4)
    assert finalize_run(runs, "r", config, top=3, seeds=2, progress=False).trained == 0
    more = finalize_run(runs, "r", config, top=4, seeds=3, progress=False)  # more seeds and children: only the new
    assert (more.trained, more.reused) == (12 - 6, 6)
    assert len(counting.calls) == len(set(counting.calls)) == 12  # no (child, seed) trained twice
    assert len(runs.finals("r")) == 12
    # another schedule is another training: stored beside, ranked apart
    other = finalize_run(runs, "r", config, top=3, seeds=2, steps=50, progress=False)
    assert (other.trained, other.steps) == (6, 50)
    assert {r["steps"] for r in other.ranking} == {50}


def test_report_and_export_use_the_finalized_figures_and_say_so(tmp_path: Path) -> None:
    runs, config = make_run(tmp_path / "m.db")
    before = make_report(runs, "r", config, tmp_path / "rep0", 3)
    assert before["ranking"] == "search"
    assert [t["idx"] for t in before["top"]] == [s.idx for s in sorted(runs.samples("r"), key=lambda s: -s.reward)[:3]]
    exported = export_top(runs, "r", config, tmp_path / "ex0", 2, tmp_path / "weights")
    assert {e["ranking"] for e in exported} == {"search"}
    summary = finalize_run(runs, "r", config, top=4, seeds=2, progress=False)
    report = make_report(runs, "r", config, tmp_path / "rep1", 3)
    assert report["ranking"] == "finalized"
    assert [t["arch_hash"] for t in report["top"]] == [r["arch_hash"] for r in summary.ranking[:3]]
    assert [t["reward"] for t in report["top"]] == [r["reward"] for r in summary.ranking[:3]]
    assert all(t["seeds"] == [0, 1] and "reward_sd" in t and "search_reward" in t for t in report["top"])
    exported = export_top(runs, "r", config, tmp_path / "ex1", 2, tmp_path / "weights")
    assert [e["ranking"] for e in exported] == ["finalized"] * 2
    assert [e["arch"] for e in exported] == [r["arch"] for r in summary.ranking[:2]]
    assert [e["reward"] for e in exported] == [r["reward"] for r in summary.ranking[:2]]


def test_cli_finalize_json_report_and_errors(tmp_path: Path) -> None:
    from mnas.cli import cli

    db = tmp_path / "m.db"
    make_run(db)[0].store.close()
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", str(db), "search", "finalize", "r", "--top", "2", "--seeds", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert (payload["children"], payload["seeds"], payload["trained"], payload["reused"]) == (2, 2, 4, 0)
    assert payload["accuracy_kind"] == "cheap" and len(payload["ranking"]) == 2
    again = runner.invoke(cli, ["--db", str(db), "search", "finalize", "r", "--top", "2", "--seeds", "2"])
    assert again.exit_code == 0, again.output
    assert "(0 trained now, 4 already stored); cheap stand-in: NOT accuracies" in again.output
    report = runner.invoke(cli, ["--db", str(db), "search", "report", "r", "--top", "2", "-o", str(tmp_path / "p")])
    assert report.exit_code == 0, report.output
    assert "ranking: finalized (mean of 2 seed(s) x 0 steps" in report.output
    bad = runner.invoke(cli, ["--db", str(db), "search", "finalize", "r", "--seeds", "0"])
    assert isinstance(bad.exception, MnasError) and str(bad.exception) == "--seeds 0: expected an integer >= 1"


def test_finalize_with_a_tiny_proxy_task(tmp_path: Path) -> None:
    """Real trainings (digits, 12 px, a few steps): each seed and the longer schedule are in the stored key."""
    config = new_run_config(algorithm="random", accuracy="proxy", dataset="digits", proxy_resolution=12, steps=2,
                            batch_size=16, train_samples=64, val_samples=50, seed=3, samples=3, target_ms=40.0)
    runs, config = make_run(tmp_path / "m.db", samples=3, config=config)
    summary = finalize_run(runs, "r", config, top=1, seeds=2, progress=False)
    assert summary.steps == FINAL_STEPS_FACTOR * 2 and summary.trained == 2
    finals = runs.finals("r")
    tasks = [ProxyTask.from_key(f.accuracy_task) for f in finals]
    assert [(t.seed, t.steps, t.resolution, t.reduced_strides) for t in tasks] == [(0, 8, 12, True), (1, 8, 12, True)]
    assert all(0.0 <= f.accuracy <= 1.0 and f.train_s is not None for f in finals)
    again = finalize_run(runs, "r", config, top=1, seeds=2, progress=False)
    assert (again.trained, again.reused) == (0, 2)
    assert finalized_ranking(runs, "r", config)[0]["accuracies"] == [f.accuracy for f in finals]


def test_finals_table_is_an_appended_migration(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "old.db")
    store.ensure_component_schema("search", MIGRATIONS[:1])  # a store written before finalize existed
    with store.transaction() as conn:
        conn.execute("INSERT INTO search_runs (run_id, created, algorithm, config) VALUES ('old', 0, 'ppo', '{}')")
    store.close()
    runs = RunStore(ResultsStore(tmp_path / "old.db"))
    assert runs.run_ids() == ["old"] and runs.finals("old") == []
    assert runs.store.schema_version("search") == len(MIGRATIONS) == 2


def test_finalize_refuses_bad_options_and_empty_runs(tmp_path: Path) -> None:
    runs = RunStore(ResultsStore(tmp_path / "e.db"))
    config = new_run_config(accuracy="cheap")
    runs.create_run("empty", "ppo", config.to_dict())
    with pytest.raises(MnasError, match="no stored children yet"):
        finalize_run(runs, "empty", config, progress=False)
    with pytest.raises(MnasError, match="--top 0: expected an integer >= 1"):
        finalize_run(runs, "empty", config, top=0, progress=False)
    with pytest.raises(MnasError, match="--steps 0: expected an integer >= 1"):
        finalize_run(runs, "empty", config, steps=0, progress=False)


def test_cli_ctrl_c_keeps_what_finished_and_says_how_to_continue(tmp_path: Path, counting) -> None:
    from mnas.cli import cli

    db = tmp_path / "m.db"
    make_run(db)[0].store.close()
    counting.stop_at = 3
    runner = CliRunner()
    stopped = runner.invoke(cli, ["--db", str(db), "search", "finalize", "r", "--top", "2", "--seeds", "2"])
    assert stopped.exit_code == 130
    assert ("mnas: finalize r interrupted (3 final training(s) stored in all): run the same command again to train "
            "only what is missing") in stopped.output
    counting.stop_at = None
    done = runner.invoke(cli, ["--db", str(db), "search", "finalize", "r", "--top", "2", "--seeds", "2", "--json"])
    assert done.exit_code == 0, done.output
    assert (json.loads(done.output)["trained"], json.loads(done.output)["reused"]) == (1, 3)
    assert len(counting.calls) == len(set(counting.calls)) == 4
