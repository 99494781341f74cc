"""`mnas predict model.tflite`: the .tflite half of the `predict` command (`cli_table.predict` routes here).

The files are read and mapped before any store or predictor is opened, so a bad file is one
line and exit 2; the predictor is then chosen for the models' own input resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mnas.cli_util import echo_table
from mnas.errors import MnasError
from mnas.predictor.tflite_layers import TfliteLayers, predict_mapped, read_layers

__all__ = ["TfliteModels", "echo_models", "predict_models", "read_models"]


@dataclass(frozen=True)
class TfliteModels:
    """The `.tflite` arguments of one `mnas predict`, mapped, and the resolution they share."""

    resolution: int
    models: tuple[tuple[str, str, TfliteLayers], ...]  # (argument, sha256, mapped layers)


def _is_tflite(text: str) -> bool:
    return text.lower().endswith(".tflite")


def read_models(arguments: tuple[str, ...], resolution: int, resolution_given: bool, multiplier_given: bool,
                per_layer: bool) -> TfliteModels | None:
    """The mapped `.tflite` arguments, or None when there are none (arch strings only)."""
    files = [text for text in arguments if _is_tflite(text)]
    if not files:
        if per_layer:
            raise MnasError("--per-layer: expected .tflite arguments (it lists the layers found in a model file)")
        return None
    if len(files) != len(arguments):
        others = [text for text in arguments if not _is_tflite(text)]
        raise MnasError(f"{others[0]!r}: predict takes either arch strings / zoo names or .tflite files, "
                        "expected one kind per call")
    if multiplier_given:
        raise MnasError("--multiplier: a .tflite file has its own widths: expected it only with zoo names")
    models = []
    for text in files:
        path = Path(text)
        if not path.is_file():
            raise MnasError(f"{text}: no such file: expected a .tflite model")
        mapped = read_layers(path)
        models.append((text, hashlib.sha256(path.read_bytes()).hexdigest(), mapped))
    sides = {mapped.resolution for _, _, mapped in models}
    if resolution_given:
        wrong = [(text, mapped.resolution) for text, _, mapped in models if mapped.resolution not in (None, resolution)]
        if wrong:
            raise MnasError(f"--resolution {resolution}: {wrong[0][0]} reads {wrong[0][1]}x{wrong[0][1]} images: "
                            "expected the model's own resolution")
        return TfliteModels(resolution, tuple(models))
    if None in sides:
        text = next(text for text, _, mapped in models if mapped.resolution is None)
        raise MnasError(f"{text}: its input is not one square NHWC image: pass --resolution to choose the predictor")
    if len(sides) > 1:
        raise MnasError(f"the .tflite files read {', '.join(map(str, sorted(sides)))}-pixel images: expected one "
                        "resolution per call (each resolution has its own predictor)")
    return TfliteModels(sides.pop(), tuple(models))


def _predictor_fields(predictor: Any) -> dict[str, Any]:
    """The same predictor keys as an arch prediction row (`fitting.prediction_rows`)."""
    table = getattr(predictor, "table", None)
    trained_on = getattr(predictor, "trained_on_", None) or {}
    calibration = getattr(predictor, "calibration_", None)
    return {"predictor_id": predictor.predictor_id, "predictor_kind": predictor.kind,
            "table": table.meta.name if table is not None else trained_on.get("table"),
            "calibrated": calibration is not None,
            "calibration_samples": None if calibration is None else calibration.n}


def predict_models(models: TfliteModels, predictor: Any) -> list[dict[str, Any]]:
    """One JSON row per file: the prediction, its layers, the unmapped operators and the predictor."""
    return [{"input": text, "model_path": str(Path(text).resolve()), "model_sha256": sha256,
             **predict_mapped(predictor, mapped), **_predictor_fields(predictor)}
            for text, sha256, mapped in models.models]


def echo_models(rows: list[dict[str, Any]], device_name: str, per_layer: bool) -> None:
    """Text output: per file the total, [its layers], and its unmapped operators with their FLOP share."""
    for row in rows:
        click.echo(f"{row['input']}: {row['predicted_ms']:.2f} ms predicted on {device_name} (resolution "
                   f"{row['resolution']}; {row['layers']} layers: {row['layers_from_table']} from the table, "
                   f"{row['layers_from_learned']} learned; {row['mapped_ops']} of {row['ops']} "
                   "operators mapped)")
        if row["calibrated"] and not row["calibration_applied"]:
            click.echo("  (the calibration, fitted on whole networks, gives a figure <= 0 ms for a model this small: "
                       "the uncalibrated sum of its layers is shown)")
        if per_layer:
            echo_table([{"layer": r["layer"], "kind": r["kind"], "predicted_ms": f"{r['predicted_ms']:.3f}",
                         "source": r["source"], "MFLOPs": f"{r['flops'] / 1e6:.1f}",
                         "operators": f"{r['run_orders'][0]}-{r['run_orders'][-1]}", "key": r["layer_key"]}
                        for r in row["per_layer"]])
            for r in row["per_layer"]:
                for note in r["notes"]:
                    click.echo(f"  layer {r['layer']}: {note}")
        unmapped = row["unmapped_ops"]
        if not unmapped:
            click.echo("every operator maps onto a mnas layer")
            continue
        click.echo(f"{len(unmapped)} operators map onto no mnas layer ({100 * row['unmapped_flops_share']:.1f}% of "
                   f"{row['flops'] / 1e6:.1f} MFLOPs; not in the predicted total):")
        for op in unmapped:
            click.echo(f"  #{op['run_order']} {op['node_type']} ({op['flops'] / 1e6:.2f} MFLOPs): {op['reason']}")
