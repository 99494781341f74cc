"""Every distinct layer of a search space at one resolution: what a latency table must measure.

A network's latency is predicted as the sum of its layers' latencies (FBNet, ProxylessNAS,
Once-for-All), so a table needs each `LayerSig` that any architecture of the space can
expand to, once. The enumeration does not re-derive layer semantics: block specs come from
`SearchSpace.decode` and layers from `space.arch.block_layers` — exactly what
`Arch.layers()` runs — so a layer an `Arch` expands to can never be missing from the table.

Per block the first layer depends on the block's input width (every filter choice of the
previous block; the stem width for block 0), op, kernel, SE, skip and output width; the
repeated layers (stride 1, cin = cout = the block's width) do not depend on the input width.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mnas.errors import MnasError
from mnas.space.arch import Arch, LayerSig, block_layers, same_output_size
from mnas.space.blocks import BlockSpec
from mnas.space.search_space import DECISIONS, SearchSpace

_LAYERS = DECISIONS.index("layers")


@dataclass(frozen=True)
class BlockVariant:
    """The layers of one block choice: `first` (depends on `cin`) and the repeated layer."""

    block: int
    choice: tuple[int, ...]  # token indices of (conv, kernel, se, skip, filters); layers is free
    cin_index: int  # index into the previous block's filter options (0 for block 0)
    first: LayerSig
    repeated: LayerSig | None  # None when every depth option of the block is 1


def iter_block_variants(space: SearchSpace, block: int, h: int, w: int, act: str) -> Iterator[BlockVariant]:
    """Every (choice, input width) of `block`, expanded by `block_layers` as `Arch.layers()` does.

    Block specs come from `space.decode` (tokens of other blocks stay 0; the previous block's
    width only sets `input_filters`, replaced here by each reachable input width).
    """
    options = space.block_options(block)
    depths = options["layers"]
    deepest = max(range(len(depths)), key=lambda i: depths[i])
    sizes = [len(options[name]) for name in DECISIONS[:_LAYERS]]
    input_widths = (space.stem_filters,) if block == 0 else tuple(space.block_options(block - 1)["filters"])
    base = [0] * (6 * space.num_blocks)
    for choice in itertools.product(*(range(n) for n in sizes)):
        tokens = list(base)
        tokens[6 * block: 6 * block + _LAYERS] = choice
        tokens[6 * block + _LAYERS] = deepest
        spec = space.decode(tokens).blocks[block]
        spec = dataclasses.replace(spec, repeats=min(spec.repeats, 2))
        for cin_index, cin in enumerate(input_widths):
            layers = block_layers(dataclasses.replace(spec, input_filters=cin), cin, h, w, act)
            yield BlockVariant(block, tuple(choice), cin_index, layers[0], layers[1] if len(layers) > 1 else None)


def stem_and_head(space: SearchSpace, resolution: int, num_classes: int = 1000) -> tuple[LayerSig, list[LayerSig]]:
    """The stem layer and the head layer for each filter option of the last block (in option order)."""
    probe = Arch(blocks=(_first_spec(space),), stem_filters=space.stem_filters,
                 head_filters=space.head_filters).layers(resolution, num_classes)
    h, w = block_input_shapes(space, resolution)[-1]
    widths = space.block_options(space.num_blocks - 1)["filters"]
    return probe[0], [dataclasses.replace(probe[-1], cin=cin, h=h, w=w) for cin in widths]


def block_input_shapes(space: SearchSpace, resolution: int) -> list[tuple[int, int]]:
    """(h, w) at the input of each block for a square input of `resolution` pixels."""
    stem = Arch(blocks=(_first_spec(space),), stem_filters=space.stem_filters,
                head_filters=space.head_filters).layers(resolution)[0]
    h, w = stem.out_h, stem.out_w
    shapes = []
    for _, _, _, stride in space.stages:
        shapes.append((h, w))
        h, w = same_output_size(h, stride), same_output_size(w, stride)
    shapes.append((h, w))  # the head's input
    return shapes


def _first_spec(space: SearchSpace) -> BlockSpec:
    return space.decode([0] * (6 * space.num_blocks)).blocks[0]


def enumerate_layers(space: SearchSpace, resolution: int, num_classes: int = 1000) -> list[LayerSig]:
    """Every distinct layer of `space` at `resolution`, deduplicated by `LayerSig.key`.

    Order: stem, then per block the first layers and repeated layers, then the head — stable
    across runs, so a resumed build measures in the same order.
    """
    if resolution < 8:
        raise MnasError(f"resolution {resolution}: expected >= 8 pixels")
    seen: dict[str, LayerSig] = {}
    stem, heads = stem_and_head(space, resolution, num_classes)
    seen[stem.key] = stem
    shapes = block_input_shapes(space, resolution)
    for block in range(space.num_blocks):
        h, w = shapes[block]
        for variant in iter_block_variants(space, block, h, w, stem.act):
            for layer in (variant.first, variant.repeated):
                if layer is not None:
                    seen.setdefault(layer.key, layer)
    for head in heads:
        seen.setdefault(head.key, head)
    return list(seen.values())


def count_by_kind(layers: Sequence[LayerSig]) -> dict[str, int]:
    """Counts keyed "stem", "head" and "block:<op>" (conv, dsconv, mbconv), plus "total"."""
    counts: Counter[str] = Counter()
    for layer in layers:
        counts[layer.kind if layer.kind != "block" else f"block:{layer.op}"] += 1
    out = dict(sorted(counts.items()))
    out["total"] = len(layers)
    return out


def estimate_build_seconds(layers: Sequence[LayerSig], per_layer_s: float, devices: int = 1) -> float:
    """Wall time to measure `layers` at `per_layer_s` each, spread over `devices` in parallel."""
    if per_layer_s < 0:
        raise MnasError(f"per_layer_s = {per_layer_s}: expected seconds >= 0")
    if devices < 1:
        raise MnasError(f"devices = {devices}: expected at least 1 device")
    batches = -(-len(layers) // devices)
    return batches * per_layer_s
