"""`mnas arch`: list, show, sample and export architectures."""

from __future__ import annotations

from pathlib import Path

import click

from mnas.cli_util import echo_json, echo_table, json_option


@click.group()
def arch() -> None:
    """Architectures: the zoo, arch strings and the MnasNet search space."""


@arch.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the zoo models with their cost at their default resolution."""
    from mnas.space import zoo
    from mnas.space.cost import arch_cost

    rows = []
    for name in zoo.names():
        entry = zoo.entry(name)
        model = zoo.get(name)
        cost = arch_cost(model, entry.default_resolution)
        rows.append({"model_name": name, "resolution": entry.default_resolution, "params": cost.params,
                     "mult_adds": cost.mult_adds, "description": entry.description})
    if as_json:
        echo_json(rows)
    else:
        echo_table([{**r, "params": f"{r['params'] / 1e6:.2f}M", "mult_adds": f"{r['mult_adds'] / 1e6:.1f}M"} for r in rows])


def _resolution(model: str, resolution: int | None) -> int:
    from mnas.space.resolve import default_resolution
    from mnas.space.zoo import check_resolution

    value = resolution if resolution is not None else default_resolution(model)
    check_resolution(value)
    return value


@arch.command("show")
@click.argument("model")
@click.option("--resolution", type=int, default=None, help="Input size (default: the model's).")
@click.option("--multiplier", type=float, default=1.0, show_default=True, help="Depth multiplier (zoo models).")
@click.option("--classes", type=int, default=1000, show_default=True, help="Classifier outputs (the head's size).")
@json_option
def show_cmd(model: str, resolution: int | None, multiplier: float, classes: int, as_json: bool) -> None:
    """Blocks, params and mult-adds per block of a zoo NAME or an arch STRING."""
    from mnas.space.cost import arch_cost, block_costs
    from mnas.space.resolve import resolve_arch

    net = resolve_arch(model, multiplier)
    res = _resolution(model, resolution)
    total = arch_cost(net, res, classes)
    blocks = [{"block": name, "params": c.params, "mult_adds": c.mult_adds} for name, c in block_costs(net, res, classes)]
    if as_json:
        echo_json({"arch": str(net), "arch_hash": net.hash, "resolution": res, "params": total.params,
                   "mult_adds": total.mult_adds, "blocks": blocks})
        return
    click.echo(f"arch: {net}\nhash: {net.hash}  resolution: {res}")
    echo_table([{**b, "params": f"{b['params'] / 1e6:.3f}M", "mult_adds": f"{b['mult_adds'] / 1e6:.1f}M"} for b in blocks])
    click.echo(f"total: {total.params / 1e6:.3f}M params, {total.mult_adds / 1e6:.1f}M mult-adds")


@arch.command("sample")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed (same seed, same archs).")
@click.option("--count", type=int, default=1, show_default=True, help="Architectures to sample.")
@json_option
def sample_cmd(seed: int, count: int, as_json: bool) -> None:
    """Sample architectures of the MnasNet search space (seeded)."""
    import numpy as np

    from mnas.space.cost import arch_cost
    from mnas.space.search_space import mnasnet

    space = mnasnet()
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        tokens = space.sample_tokens(rng)
        net = space.decode(tokens)
        cost = arch_cost(net)
        rows.append({"arch": str(net), "arch_hash": net.hash, "tokens": tokens, "params": cost.params,
                     "mult_adds": cost.mult_adds})
    if as_json:
        echo_json(rows if count > 1 else rows[0])
    else:
        for row in rows:
            click.echo(f"{row['arch']}\n  hash {row['hash']}  {row['params'] / 1e6:.2f}M params  "
                       f"{row['mult_adds'] / 1e6:.1f}M mult-adds  tokens {' '.join(map(str, row['tokens']))}")


@arch.command("export")
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output .tflite file.")
@click.option("--resolution", type=int, default=None, help="Input size (default: the model's).")
@click.option("--multiplier", type=float, default=1.0, show_default=True, help="Depth multiplier (zoo models).")
@click.option("--classes", type=int, default=1000, show_default=True, help="Classifier outputs (the head's size).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initialised weights (and, for int8, of the calibration inputs).")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="float32, or int8: fully quantized as TFLite's post-training full-integer quantization "
                   "(int8 weights per channel, int8 activations calibrated on 8 seeded synthetic inputs, "
                   "float32 input and output).")
@json_option
def export_cmd(model: str, output: str, resolution: int | None, multiplier: float, classes: int, seed: int,
               dtype: str, as_json: bool) -> None:
    """Write a zoo NAME or arch STRING as a float32 or int8 .tflite file."""
    from mnas.space.resolve import resolve_arch
    from mnas.space.tflite_writer import write_arch

    net = resolve_arch(model, multiplier)
    res = _resolution(model, resolution)
    info = write_arch(net, Path(output), resolution=res, num_classes=classes, seed=seed, dtype=dtype)
    payload = {"arch": str(net), "arch_hash": net.hash, "path": str(output), "resolution": res, "dtype": dtype,
               "size_bytes": info.size, "ops": info.ops, "params": info.params, "model_sha256": info.sha256}
    if as_json:
        echo_json(payload)
    else:
        click.echo(f"wrote {output} ({dtype}, {payload['size_bytes'] / 1e6:.2f} MB, {res}x{res}) for {net}")
