"""`mnas table eval --against stored [--holdout FAMILY]`: scoring on stored figures, measuring nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mnas.bench.published import import_published
from mnas.bench.store import ResultsStore
from mnas.cli import cli as cli_main
from mnas.errors import MnasError
from mnas.predictor.evals import evaluate_against_figures, stored_figures
from mnas.predictor.features import memory_bytes
from mnas.predictor.lookup import LookupPredictor
from mnas.predictor.registry import save_predictor
from mnas.predictor.table import LatencyTable, TableEntry, TableMeta, save_table
from mnas.space import zoo
from mnas.space.arch import LayerSig
from mnas.space.cost import layer_cost

NETWORKS = [("mobilenet-v2", m, r) for m in (0.5, 0.75, 1.0) for r in (128, 160, 224)] + \
           [("mnasnet-b1", m, r) for m in (0.5, 1.0) for r in (160, 224)]


def layer_ms(layer: LayerSig) -> float:
    return layer_cost(layer).mult_adds / 1e9 + memory_bytes(layer) / 4e9 + 0.02


def network_ms(name: str, multiplier: float, resolution: int) -> float:
    """The synthetic phone: whole networks run 1.25x their layer sum plus 2 ms."""
    return 2.0 + 1.25 * sum(layer_ms(layer) for layer in zoo.get(name, multiplier).layers(resolution))


@pytest.fixture()
def store(tmp_path: Path) -> ResultsStore:
    path = tmp_path / "figures.csv"
    lines = ["model,multiplier,resolution,latency_ms"]
    lines += [f"{name},{m},{r},{network_ms(name, m, r):.6f}" for name, m, r in NETWORKS]
    path.write_text("\n".join(lines) + "\n")
    db = ResultsStore(tmp_path / "r.db")
    import_published(db, path, device="phonex", source="synthetic")
    keys = {layer.key: layer for name, m, r in NETWORKS for layer in zoo.get(name, m).layers(r)}
    meta = TableMeta(name="phonex-r224", device_name="phonex", runtime="synthetic", runtime_version="1",
                     resolution=224, conditions="synthetic")
    table = LatencyTable(meta, {k: TableEntry(k, layer_ms(v), None, None, 1, 0.0) for k, v in keys.items()})
    table_id = save_table(db, table)
    from mnas.predictor.table import load_table

    predictor = LookupPredictor(load_table(db, table_id), statistic="median")
    save_predictor(db, predictor, table_id, {"statistic": "median"})
    return db


def test_holdout_recalibrates_without_the_family(store: ResultsStore) -> None:
    figures = stored_figures(store, "phonex")
    assert len(figures) == len(NETWORKS)
    assert {f.family for f in figures} == {"mobilenet-v2", "mnasnet"}
    from mnas.predictor.registry import load_predictor

    predictor = load_predictor(store, device="phonex", resolution=224)
    raw = evaluate_against_figures(predictor, figures, device_name="phonex")
    assert raw["calibration"].startswith("none") and raw["within_10pct_share"] < 1.0  # layer sums miss the gap
    out = evaluate_against_figures(predictor, figures, holdout="mobilenet-v2", device_name="phonex")
    assert out["n"] == 9 and out["calibration"]["refitted_on"] == 4
    assert all(row["family"] == "mobilenet-v2" for row in out["networks"])
    assert out["within_10pct_share"] == 1.0 and out["mape_pct"] < 1.0  # the gap, learned on mnasnet only
    assert out["kendall_tau"] == pytest.approx(1.0)
    with pytest.raises(MnasError, match="no stored figure of that family"):
        evaluate_against_figures(predictor, figures, holdout="spnasnet", device_name="phonex")


def test_cli_eval_against_stored(store: ResultsStore, tmp_path: Path) -> None:
    db = str(store.path)
    store.close()
    plot = tmp_path / "p.png"
    result = CliRunner().invoke(cli_main, ["--db", db, "table", "eval", "--device", "phonex", "--against", "stored",
                                           "--holdout", "mobilenet-v2", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["holdout"] == "mobilenet-v2" and payload["n"] == 9 and plot.exists()
    assert payload["within_10pct_share"] == 1.0
    assert np.isfinite(payload["kendall_tau"])
    result = CliRunner().invoke(cli_main, ["--db", db, "table", "eval", "--device", "phonex", "--holdout", "x"])
    assert result.exit_code != 0 and "--against stored" in str(result.exception)


def test_networks_measured_here_are_figures_too(store: ResultsStore) -> None:
    """A whole network measured on the device (its resolution recorded) is a figure like a published
    one; single layers, other conditions and measurements without a resolution are not."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_store import make_measurement

    from mnas.bench.types import BenchConfig, LatencyStats

    def measured(i: int, name: str, m: float, r: int | None, ms: float, **config) -> None:
        arch = zoo.get(name, m)
        stats = LatencyStats(count=50, mean_us=ms * 1e3, std_us=1.0, min_us=ms * 1e3, max_us=ms * 1e3,
                             median_us=ms * 1e3, p90_us=ms * 1e3)
        meas = make_measurement(100 + i, device_name="phonex", stats=stats, op_profile=None,
                                config=BenchConfig(warmup_runs=5, num_runs=50, min_secs=1.0, core=None, **config),
                                extra={} if r is None else {"resolution": r})
        store.add_measurement(meas, label=name, arch=str(arch))

    measured(0, "mnasnet-b1", 0.5, 160, 99.0)  # superseded by the newer figure of the same network
    measured(1, "mnasnet-b1", 0.5, 160, network_ms("mnasnet-b1", 0.5, 160))
    measured(2, "mnasnet-a1", 0.75, None, 5.0)  # stored before resolutions were recorded
    measured(3, "mnasnet-a1", 0.5, 160, 5.0, delegate="xnnpack")  # not the paper's conditions
    figures = stored_figures(store, "phonex")
    mine = [f for f in figures if f.family == "measured"]
    assert len(figures) == len(NETWORKS) + 1 and len(mine) == 1
    assert mine[0].resolution == 160 and str(mine[0].arch) == str(zoo.get("mnasnet-b1", 0.5))
    assert mine[0].latency_ms == pytest.approx(network_ms("mnasnet-b1", 0.5, 160))
    from mnas.predictor.registry import load_predictor

    report = evaluate_against_figures(load_predictor(store, device="phonex", resolution=224), figures,
                                      holdout="measured", device_name="phonex")
    assert report["n"] == 1 and report["networks"][0]["family"] == "measured"
    assert report["mape_pct"] < 1.0  # the published networks' gap carries over to the measured one
