"""Faults of the search found in review (issue 13), each with the test that catches it.

- the proxy trains the timed network with reduced early strides on small inputs, so its late
  blocks see feature maps of their timed sizes; the option is part of the proxy task key;
- children start from the official MnasNet initialisers, not torch's defaults;
- a measured search deletes each timed model once its latency is stored (unless kept);
- random search draws every distinct network equally often (one-layer blocks: layer choices
  n-1 / n and identity / none skips give the same network);
- a hybrid search refuses a predictor fitted on another statistic than the device's;
- `mnas search --help` names an option that exists; the Pareto plot names the cheap stand-in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from predictor_fakes import SyntheticDevice, write_arch_text
from search_fakes import SyntheticPredictor

from mnas.bench.store import ResultsStore
from mnas.bench.types import BenchConfig
from mnas.errors import MnasError
from mnas.search import accuracy as acc
from mnas.search.accuracy import CheapAccuracy, ProxyTask
from mnas.search.baselines import RandomSearch, RegularizedEvolution
from mnas.search.distinct import DistinctSampler
from mnas.search.latency import (
    HybridLatency,
    MeasuredLatency,
    PredictedLatency,
    check_hybrid_statistic,
)
from mnas.search.loop import run_search
from mnas.search.reward import Reward
from mnas.search.run_config import new_run_config
from mnas.search.run_store import RunStore
from mnas.search.runs import SearchSetup
from mnas.space import zoo
from mnas.space.search_space import SearchSpace, mnasnet
from mnas.space.torch_model import build_model

SPACE = mnasnet()


# ================================================================ reduced strides (feature maps)


def block_output_sizes(model: torch.nn.Module, resolution: int) -> list[int]:
    sizes: list[int] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: sizes.append(int(o.shape[-1]))) for layer in model.layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for hook in hooks:
        hook.remove()
    return sizes


def test_reduced_strides_give_late_blocks_feature_maps_of_their_timed_scale() -> None:
    arch = SPACE.sample(0)
    timed = [sig.out_h for sig in arch.layers(224)[1:-1]]  # what the timed network's layers output
    assert timed[-1] == 7  # total stride 32
    full = block_output_sizes(build_model(arch, 10), 32)
    reduced = block_output_sizes(build_model(arch, 10, reduced_strides=True), 32)
    assert full == [math.ceil(s * 32 / 224) for s in timed]  # 1x1 at the end: a 5x5 kernel sees one pixel
    assert full[-1] == 1
    # stem and the first stride-2 block at stride 1: total stride 8, the last blocks see 4x4 (7x7 timed)
    assert reduced[-1] == 4
    first = next(i for i, sig in enumerate(arch.layers(224)[1:-1]) if sig.stride == 2)
    assert reduced[:first + 1] == [32] * (first + 1)  # the input size up to the first stride-2 block
    # from there on 4x the full-stride sizes: (timed size) x 32 / 224 x 4, i.e. 4/7 of the timed maps
    assert reduced[first:] == [math.ceil(s * 32 * 4 / 224) for s in timed[first:]]
    # the same network otherwise: same module tree, so one state dict fits both
    assert build_model(arch, 10).state_dict().keys() == build_model(arch, 10, reduced_strides=True).state_dict().keys()
    assert [tuple(p.shape) for p in build_model(arch, 10).parameters()] == [
        tuple(p.shape) for p in build_model(arch, 10, reduced_strides=True).parameters()]


def test_reduced_strides_default_below_64_px_and_separate_the_keys() -> None:
    small, large = ProxyTask(dataset="digits", resolution=32), ProxyTask(dataset="digits", resolution=64)
    assert small.reduced_strides is True and large.reduced_strides is False
    full = ProxyTask(dataset="digits", resolution=32, reduced_strides=False)
    assert small.key() != full.key()  # accuracies of the two settings are never mixed
    assert json.loads(small.key())["reduced_strides"] is True
    assert ProxyTask.from_key(small.key()) == small and ProxyTask.from_key(full.key()) == full
    model = small.model(SPACE.sample(1), 10)
    assert block_output_sizes(model, 32)[-1] == 4
    # the network the trainer really trains (one step on digits at 32 px)
    task = ProxyTask(dataset="digits", resolution=32, steps=1, batch_size=16, max_train_samples=32, max_val_samples=20,
                     bn_recalibration_samples=32)
    trained = acc.ProxyTrainer(task).accuracy(SPACE.sample(1), return_model=True).model
    assert trained is not None and trained.reduced_strides is True
    assert block_output_sizes(trained, 32)[-1] == 4
    config = new_run_config(dataset="digits", proxy_strides="full")
    assert json.loads(config.accuracy.task_key)["reduced_strides"] is False
    with pytest.raises(MnasError, match="--proxy-strides 'half'"):
        new_run_config(dataset="digits", proxy_strides="half")


def test_version_1_keys_still_mean_the_old_training() -> None:
    """A run started before the change resumes with what it began: torch's init, full strides, the same key."""
    old = dict(json.loads(ProxyTask(dataset="digits").key()))
    del old["reduced_strides"], old["init"]
    old["proxy"] = 1
    key = json.dumps(old, sort_keys=True, separators=(",", ":"))
    task = ProxyTask.from_key(key)
    assert (task.reduced_strides, task.init) == (False, "torch")
    assert task.key() == key
    assert json.loads(ProxyTask(dataset="digits").key())["proxy"] == acc.PROXY_VERSION == 2


# ====================================================================== official initialisers


def test_children_start_from_the_official_initialisers() -> None:
    torch.manual_seed(0)
    model = build_model(zoo.get("mnasnet-a1"), 1000).requires_grad_(False)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.numel() > 2000:
            kh, kw = module.kernel_size
            fan_out = kh * kw * module.out_channels // module.groups  # TF: depthwise fan_out is k x k
            assert float(module.weight.std()) == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.15)
            assert abs(float(module.weight.mean())) < 0.2 * math.sqrt(2.0 / fan_out)
    fc = model.head.fc
    bound = 1.0 / math.sqrt(1000)
    assert float(fc.weight.abs().max()) <= bound and float(fc.weight.abs().max()) > 0.95 * bound
    assert float(fc.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)  # uniform, not torch's 1/sqrt(in)
    assert torch.count_nonzero(fc.bias) == 0
    depthwise = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels)
    kh, kw = depthwise.kernel_size
    assert float(depthwise.weight.std()) == pytest.approx(math.sqrt(2.0 / (kh * kw)), rel=0.2)


# ============================================================================ timed models


def measured_setup(tmp_path: Path, keep_models: bool) -> tuple[SearchSetup, Path]:
    folder = tmp_path / "models"
    latency = MeasuredLatency([SyntheticDevice("fake0")], 224, BenchConfig(), write_arch_text,
                              store=ResultsStore(tmp_path / "m.db"), workdir=folder, keep_models=keep_models)
    setup = SearchSetup(space=SPACE, searcher=RandomSearch(SPACE, seed=1), accuracy=CheapAccuracy(seed=1),
                        latency=latency, reward=Reward.soft(40.0), weights_dir=None)
    return setup, folder


@pytest.mark.parametrize("keep", [False, True])
def test_measured_search_leaves_no_model_files_unless_asked(tmp_path: Path, keep: bool) -> None:
    setup, folder = measured_setup(tmp_path, keep)
    runs = RunStore(ResultsStore(tmp_path / "runs.db"))
    runs.create_run("r", "random", {})
    run_search(runs, "r", setup, 4, progress=False)
    stored = runs.samples("r")
    assert len(stored) == 4 and all(s.latency_source.startswith(("measured:", "store:", "cache:")) for s in stored)
    left = sorted(p.name for p in folder.glob("*.tflite"))
    if keep:
        assert left == sorted({f"{SPACE.decode(s.tokens).hash}_r224.tflite" for s in stored})
    else:
        assert left == []


def test_run_config_carries_keep_models() -> None:
    config = new_run_config(latency="measured", accuracy="cheap", keep_models=True)
    assert config.latency.keep_models is True
    assert type(config).from_json(config.to_json()).latency.keep_models is True
    assert new_run_config(latency="measured", accuracy="cheap").latency.keep_models is False


# ======================================================================= distinct networks


def test_random_search_is_uniform_over_distinct_networks_chi_square() -> None:
    """A one-block space (MobileNetV2's first stage, one layer): 432 token choices, 240 networks."""
    space = SearchSpace(stages=((1, 16, 1, 1),))
    sampler = DistinctSampler(space)
    assert sampler.count() == 240  # 48 x {pool x 1|2 layers, identity(=none) x 1, identity x 2, none x 2}
    draws = 240 * 40
    tokens = RandomSearch(space, seed=0).ask(draws)
    counts: dict[tuple[int, ...], int] = {}
    for t in tokens:
        key = tuple(sampler.canonical(t))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 240
    expected = draws / 240
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    # 239 degrees of freedom: mean 239, sd ~21.9; uniform tokens give ~2000 here
    assert chi2 < 239 + 4 * math.sqrt(2 * 239)
    assert all(sampler.canonical(t) == list(t) for t in tokens)  # each network as its canonical tokens


def test_whole_space_one_layer_first_block_share() -> None:
    """Block 0 (one layer in MobileNetV2): of its 5 networks per (op, kernel, SE, width) 2 have one layer."""
    tokens = np.array(RandomSearch(SPACE, seed=3).ask(3000))
    one_layer = np.isin(tokens[:, 5], [0, 1]).mean()  # layer choices n-1 and n: one layer
    assert one_layer == pytest.approx(2 / 5, abs=0.03)  # uniform tokens: 2/3
    evolution = np.array(RegularizedEvolution(SPACE, population=500, sample_size=10, seed=3).ask(500))
    assert np.isin(evolution[:, 5], [0, 1]).mean() == pytest.approx(2 / 5, abs=0.07)
    sampler = DistinctSampler(SPACE)
    assert sampler.multiplicity([0] * 42) == 4  # blocks 0 and 6: layers n-1 / n
    assert sampler.canonical([0, 0, 0, 2, 0, 1] + [0] * 36)[:6] == [0, 0, 0, 1, 0, 0]  # none(1 layer) = identity


def test_canonical_tokens_give_the_same_network() -> None:
    sampler = DistinctSampler(SPACE)
    rng = np.random.default_rng(7)
    for _ in range(50):
        tokens = SPACE.sample_tokens(rng)
        canonical = sampler.canonical(tokens)
        assert SPACE.decode(canonical).layers(224) == SPACE.decode(tokens).layers(224)


def test_the_controller_rule_is_over_tokens() -> None:
    """Documented rule (search/distinct.py): the controller is a policy over tokens, so at
    initialisation block 0's one-layer networks (two layer tokens each) get ~2/3, not 2/5."""
    from mnas.search.controller import Controller

    torch.manual_seed(0)
    controller = Controller.from_space(SPACE)
    tokens, _, _ = controller.sample(3000, torch.Generator().manual_seed(1))
    one_layer = float(np.isin(tokens[:, 5].numpy(), [0, 1]).mean())
    assert one_layer == pytest.approx(2 / 3, abs=0.05)
    same = [[0] * 42, [0] * 5 + [1] + [0] * 36]  # layer choices n-1 and n of block 0: one network
    assert SPACE.decode(same[0]).layers(224) == SPACE.decode(same[1]).layers(224)
    log_probs, _ = controller.log_prob(same)
    assert torch.isfinite(log_probs).all()  # both sequences stay reachable; PPO sees one reward for both


# =================================================================== hybrid statistic


class StatPredictor(SyntheticPredictor):
    def __init__(self, statistic: str) -> None:
        self.statistic = statistic


def test_hybrid_refuses_a_predictor_of_another_statistic() -> None:
    host = MeasuredLatency([SyntheticDevice("host", device_name="host")], 224, BenchConfig(), write_arch_text)
    phone = MeasuredLatency([SyntheticDevice("p1", device_name="pixel")], 224, BenchConfig(), write_arch_text)
    with pytest.raises(MnasError) as info:
        check_hybrid_statistic(PredictedLatency(StatPredictor("median"), "predictor-3"), host)
    assert str(info.value) == (
        "hybrid latency: predictor-3 predicts the median of timed runs but host (host) is measured by its min: "
        "expected a predictor fitted with --statistic min (mnas table fit --statistic min), or --latency "
        "predicted/measured")
    with pytest.raises(MnasError, match="p1 \\(pixel\\) is measured by its median"):
        check_hybrid_statistic(PredictedLatency(StatPredictor("min"), "predictor-4"), phone)
    check_hybrid_statistic(PredictedLatency(StatPredictor("min"), "predictor-5"), host)
    check_hybrid_statistic(PredictedLatency(StatPredictor("median"), "predictor-6"), phone)
    HybridLatency(PredictedLatency(StatPredictor("median")), phone)


def test_build_latency_refuses_the_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `mnas search --latency hybrid` builds: refused before any child is trained."""
    import mnas.predictor.selection as selection
    from mnas.search.setup import build_latency

    class Stored(StatPredictor):
        predictor_id = 9

    monkeypatch.setattr(selection, "load_device_predictor", lambda *a, **k: Stored("median"))
    config = new_run_config(latency="hybrid", accuracy="cheap", predictor_id=9).latency
    with pytest.raises(MnasError, match="predictor-9 predicts the median of timed runs but host"):
        build_latency(config, 0, None, tmp_path, devices=lambda spec, **kw: [SyntheticDevice("host", device_name="host")])


# ================================================================ help text and plot label


def test_search_help_names_options_that_exist() -> None:
    from mnas.cli import cli

    result = CliRunner().invoke(cli, ["search", "--help"])
    assert result.exit_code == 0
    assert "--help-run" not in result.output and "mnas search run --help" in " ".join(result.output.split())


def test_pareto_plot_says_what_the_accuracy_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    from mnas.search.report import make_report

    labels: list[str] = []
    original = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda self, label, *a, **k: (labels.append(label), original(self, label, *a, **k))[1])
    runs = RunStore(ResultsStore(tmp_path / "r.db"))
    runs.create_run("r", "random", {})
    setup = SearchSetup(space=SPACE, searcher=RandomSearch(SPACE, seed=1), accuracy=CheapAccuracy(seed=1),
                        latency=PredictedLatency(SyntheticPredictor(), "synthetic"), reward=Reward.soft(40.0))
    run_search(runs, "r", setup, 3, progress=False)
    report = make_report(runs, "r", new_run_config(accuracy="cheap", target_ms=40.0), tmp_path / "rep", 3)
    assert report["accuracy_label"] == "cheap stand-in score (NOT an accuracy)"
    assert labels[0] == "cheap stand-in score (NOT an accuracy)" and "proxy accuracy" not in labels
