"""`--profile-ops` output for `mnas bench`: the top ops of each measurement, or why there are none.

`mnas bench --profile-ops` (`cli_bench_run.py`) calls `attach_op_profiles` on its JSON rows
and, in text mode, `echo_top_ops`. A phone measurement carries benchmark_model's per-op
table; a host one cannot (`bench.op_profile.HOST_NOTE`), and that is said on stderr and in
`--json` (`"op_profile": null, "op_profile_note": ...`), never left silent. For an arch or
zoo model on the host, an ESTIMATED per-layer breakdown from the host's latency table is
added when one exists (`predictor.breakdown`), labelled as such in text and JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from mnas.bench.op_profile import HOST_NOTE, missing_profile_note, op_rows, top_ops
from mnas.cli_util import echo_table
from mnas.errors import MnasError

TOP_OPS = 10


def attach_op_profiles(rows: Sequence[dict[str, Any]], outcomes: Sequence[Any], store: Any) -> None:
    """Add `op_profile`, `op_profile_note` and `op_profile_estimate` to each row; notes go to stderr once each."""
    said: set[str] = set()
    for row, outcome in zip(rows, outcomes, strict=True):
        m = outcome.measurement
        row["op_profile"] = op_rows(m.op_profile) if m is not None and m.op_profile is not None else None
        row["op_profile_note"] = None if m is None else missing_profile_note(m, reused=outcome.reused)
        row["op_profile_estimate"] = None
        if m is None or row["op_profile_note"] != HOST_NOTE:
            if row["op_profile_note"]:
                _note(f"{row['device_id']}: {row['model_name']}: {row['op_profile_note']}", said)
            continue
        _note(HOST_NOTE, said)
        model = outcome.model
        if model.arch is None or model.resolution is None:
            row["op_profile_note"] += " (no per-layer estimate either: the model is a .tflite file, not an arch)"
            continue
        try:
            row["op_profile_estimate"] = _estimate(store, m.device_name, model.arch, model.resolution)
        except MnasError as exc:
            row["op_profile_note"] += f" (no per-layer estimate either: {exc})"


def _estimate(store: Any, device_name: str, arch: str, resolution: int) -> dict[str, Any]:
    from mnas.predictor.breakdown import estimated_breakdown

    return estimated_breakdown(store, device_name, arch, resolution)


def _note(text: str, said: set[str]) -> None:
    if text not in said:
        said.add(text)
        click.echo(f"note: {text}", err=True)


def echo_top_ops(rows: Sequence[dict[str, Any]], count: int = TOP_OPS) -> None:
    """After the results table: each measurement's top ops by share of time, or its estimate (labelled)."""
    for row in rows:
        title = f"{row['device_id']} {row['model_name']}"
        profile = row.get("op_profile")
        if profile:
            click.echo(f"\ntop {min(count, len(profile))} of {len(profile)} ops by time: {title} "
                       "(benchmark_model op profile)")
            echo_table(_shown(top_ops(profile, count)), ["run_order", "node_type", "avg_ms", "percent",
                                                          "times_called", "name"])
        elif row.get("op_profile_estimate"):
            estimate = row["op_profile_estimate"]
            layers = sorted((layer for layer in estimate["layers"] if layer["estimated_ms"] is not None),
                            key=lambda layer: -layer["estimated_ms"])[:count]
            click.echo(f"\ntop {len(layers)} layers: {title}: {estimate['label']}; table {estimate['table']!r}, "
                       f"{estimate['statistic']} ms, {estimate['missing_layers']} layers not in the table")
            echo_table([{"layer": layer["layer"], "estimated_ms": f"{layer['estimated_ms']:.3f}",
                         "estimated_percent": f"{layer['estimated_percent']:.1f}", "key": layer["key"]}
                        for layer in layers], ["layer", "estimated_ms", "estimated_percent", "key"])


def _shown(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**op, "avg_ms": f"{op['avg_ms']:.3f}", "percent": f"{op['percent']:.2f}"} for op in ops]
