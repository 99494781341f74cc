"""The typed run config: validated in one line, JSON round trip, and runs stored before it had a type still resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_search_runs import RES, SEED, TARGET_MS, make_predictor_db

from mnas.bench.store import ResultsStore
from mnas.errors import MnasError
from mnas.search.lifecycle import check_resume_flags, resume_run, start_run
from mnas.search.run_config import RunConfig, new_run_config
from mnas.search.run_store import RunStore

# a config exactly as `mnas search` stored it before RunConfig existed (no keep_top, no timeouts)
OLD_FORM = {"space": "mnasnet", "algorithm": "evolution", "seed": SEED, "samples": 6,
            "reward": {"target_ms": TARGET_MS, "alpha": 0.0, "beta": -1.0, "kind": "hard"},
            "latency": {"kind": "predicted", "device": "host", "predictor_id": None, "share": 0.1, "resolution": RES,
                        "runs": 20, "warmup": 3, "min_secs": 0.5, "device_name": "host"},
            "accuracy": {"kind": "cheap", "params": {"seed": SEED}}, "window": 1}


def test_a_config_survives_json_and_reads_the_old_dict_form() -> None:
    config = new_run_config(algorithm="evolution", seed=SEED, samples=6, target_ms=TARGET_MS, reward="hard",
                            latency_resolution=RES, accuracy="cheap")
    assert RunConfig.from_json(config.to_json()) == config
    old = RunConfig.from_dict(OLD_FORM)
    assert old == RunConfig.from_dict(old.to_dict())
    assert (old.keep_top, old.window, old.latency.timeout_s, old.accuracy.params) == (5, 1, 600.0, {"seed": SEED})
    assert old.latency.bench_config().num_runs == 20 and old.reward.kind == "hard"
    proxy = new_run_config(dataset="digits", threads=2)
    stored = proxy.to_dict()["accuracy"]
    assert set(stored) == {"kind", "task_key", "execution"} and stored["execution"] == {"threads": 2}
    assert RunConfig.from_dict(proxy.to_dict()) == proxy


@pytest.mark.parametrize(("change", "message"), [
    ({"samples": 0}, "--samples 0: expected a budget >= 1"),
    ({"algorithm": "bogo"}, "--algorithm 'bogo': expected one of ppo, random, evolution"),
    ({"window": 0}, "--window 0: expected an integer >= 1"),
    ({"latency": {**OLD_FORM["latency"], "share": 0}}, "--share 0: expected a value in (0, 1]"),
    ({"latency": {**OLD_FORM["latency"], "colour": "red"}},
     "run config: latency key(s) colour unknown: expected some of kind, device, resolution, predictor_id, "
     "device_name, share, runs, warmup, min_secs, benchmark_binary, timeout_s, retries, keep_models, threads, "
     "delegate, bm_args, dtype"),
    ({"accuracy": {"kind": "proxy"}}, "accuracy source proxy: no task key: expected ProxyTask.key()"),
    ({"seed": "eleven"}, "run config: config.seed = 'eleven': expected int"),
])
def test_a_bad_config_fails_in_one_line(change: dict, message: str) -> None:
    with pytest.raises(MnasError) as err:
        RunConfig.from_dict({**OLD_FORM, **change})
    assert str(err.value) == message


def test_resume_refuses_what_it_would_ignore() -> None:
    check_resume_flags("r", ["--samples", "--workers", "--threads"])
    with pytest.raises(MnasError, match=r"^--seed: given with --resume r: expected only --samples, --threads or "
                                        r"executor options \(a resumed run keeps its stored settings\)$"):
        check_resume_flags("r", ["--samples", "--seed", "--algorithm"])


def test_a_run_stored_in_the_old_form_resumes_to_what_a_new_run_stores(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    db = tmp_path / "mnas.db"
    make_predictor_db(db)
    store = ResultsStore(db)
    runs = RunStore(store)
    runs.create_run("old", "evolution", OLD_FORM)
    try:
        first = resume_run(db, "old", samples=3, progress=False)
        whole = resume_run(db, "old", samples=6, progress=False)
        fresh = start_run(db, RunConfig.from_dict(OLD_FORM), run_id="new", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert (first.new_samples, whole.samples, whole.new_samples) == (3, 6, 3)
    assert [(s.tokens, s.reward) for s in runs.samples("old")] == [(s.tokens, s.reward) for s in runs.samples("new")]
    assert fresh.samples == 6
    assert RunConfig.from_dict(runs.run_config("old")).latency.predictor_id is not None  # pinned on resume
