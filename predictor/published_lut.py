"""Published per-layer lookup tables (the ProxylessNAS format) imported as mnas latency tables.

ProxylessNAS (and Once-for-All) publish per-block latencies measured on phones as a YAML
mapping from a layer key to `{count, mean, var}` (mean in ms over `count` timings). The key
grammar (/work/shared/data/phones/README.md):

    Conv-input:224x224x3-output:112x112x32                       stem 3x3 conv, stride 2
    expanded_conv-input:HxWxCin-output:HxWxCout-expand:E-kernel:K-stride:S-idskip:0|1
    Conv_1-input:7x7x320-output:7x7x1280                         head 1x1 conv
    Logits-input:7x7x1280-output:1000                            global pooling + classifier

Each key becomes one mnas layer (`space.arch.LayerSig`), so a published table is an ordinary
latency table whose keys are mnas keys:

* `expanded_conv` is one whole MBConv repeat. Its `LayerSig` is what the project's own
  `block_layers` gives for the one-repeat `BlockSpec` the key describes (`e1` is mnas's
  depthwise-separable op, whose depthwise runs on the real input channels; `idskip:1` is the
  identity skip, which needs input == output channels and stride 1: a key that says otherwise
  contradicts itself and is malformed). ReLU6, no squeeze-excite, as in ProxylessNAS.
* `Conv` is mnas's stem (3x3, stride 2, from 3 channels); `Conv_1` + `Logits` together are
  mnas's head (1x1 conv + global pool + classifier): the head entry's mean is the sum of the
  two means, its variance the sum of the variances (timed separately, taken as independent),
  and both parts stay in the entry's metadata.
* A key of another layer type, a stem that is not a 3-channel stride-2 conv, or a head half
  without its other half has no mnas layer: it is listed (`unmapped`, with the reason) and
  recorded in the table's provenance, never silently dropped.
* A malformed key (not `Type-name:value-...`, a missing, unknown or repeated field, a value
  of the wrong form, shapes the key's own stride contradicts) or a malformed row (not
  `{count, mean, var}` with count >= 1, mean > 0, var >= 0) is a one-line error naming the
  row and the key; nothing is stored.

The figures are published, not measured here: `median_ms` holds the published mean (the file
has no median), `std_ms` is sqrt(var), `runs` is `count`; the table's kind is "published" and
its provenance names the source file, its sha256, the source text and all of the above.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from mnas.errors import MnasError
from mnas.predictor.table import Store, TableEntry, TableMeta, store_table
from mnas.space.arch import LayerSig, block_layers, same_output_size
from mnas.space.blocks import BlockSpec, SkipOp

FORMATS: tuple[str, ...] = ("proxylessnas",)
RUNTIME = "tflite (ProxylessNAS LUT)"
RUNTIME_VERSION = "unknown"
CONDITIONS = "published:proxylessnas-lut"
SPACE = "proxylessnas"
ACTIVATION = "relu6"
DEFAULT_RESOLUTION = 224
NOT_MEASURED_HERE = "published, not measured here"
# A published table is a few hundred keys (72 in ProxylessNAS's): 16 MiB is far beyond any.
MAX_LUT_FILE_BYTES = 16 * 1024 * 1024

# the layer types of the grammar and the fields each must have (each exactly once)
_FIELDS: dict[str, tuple[str, ...]] = {
    "Conv": ("input", "output"),
    "expanded_conv": ("input", "output", "expand", "kernel", "stride", "idskip"),
    "Conv_1": ("input", "output"),
    "Logits": ("input", "output"),
}
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FIELD = re.compile(r"([a-z_]+):([^:]*)")
_SHAPE = re.compile(r"(\d+)x(\d+)x(\d+)")


@dataclass(frozen=True)
class LutEntry:
    """One mnas layer of a published table; unpacks as `layer, mean_ms, std_ms, count`.

    `source_keys` are the published keys it was made from (two for the head); `parts` the
    head's published halves as `{key, mean_ms, std_ms, count}`.
    """

    layer: LayerSig
    mean_ms: float
    std_ms: float
    count: int
    source_keys: tuple[str, ...] = ()
    parts: tuple[dict[str, Any], ...] = field(default=(), hash=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.layer, self.mean_ms, self.std_ms, self.count))


class LutParse(NamedTuple):
    """`entries, unmapped = parse_proxylessnas_lut(...)`; `unmapped` is `[(key, reason), ...]`."""

    entries: list[LutEntry]
    unmapped: list[tuple[str, str]]


@dataclass(frozen=True)
class LutImport:
    """What `import_proxylessnas_lut` stored."""

    table_id: int
    table: str
    device: str
    source_file: str
    keys: int  # published keys read
    entries: int  # mnas layers stored
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    sha256: str = ""  # of the source file
    source: str = ""  # where it was published

    def to_dict(self) -> dict[str, Any]:
        return {"table_id": self.table_id, "table": self.table, "device": self.device, "kind": "published",
                "format": "proxylessnas", "source_file": self.source_file, "source_sha256": self.sha256,
                "source": self.source, "keys": self.keys,
                "entries": self.entries, "unmapped": [{"key": k, "reason": r} for k, r in self.unmapped]}


# ------------------------------------------------------------------------------------ reading

class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only), used node by node so keys keep their lines."""


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (at most `MAX_LUT_FILE_BYTES`)."""
    source = f"ProxylessNAS LUT {str(path)!r}"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_LUT_FILE_BYTES + 1)
    except OSError as exc:
        raise MnasError(f"{source}: {exc.strerror or exc}: expected a readable .yaml file") from None
    if len(raw) > MAX_LUT_FILE_BYTES:
        raise MnasError(f"{source}: more than {MAX_LUT_FILE_BYTES // (1024 * 1024)} MiB: expected a lookup "
                        "table of a few hundred keys")
    return raw


def _read_yaml(raw: bytes, source: str) -> tuple[Any, dict[str, int]]:
    """The data of a YAML document (safe loader) and the 1-based line of each top-level key."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MnasError(f"{source}: not UTF-8 text (byte {exc.start}): expected a YAML lookup table") from None
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise MnasError(f"{source}: line {line}: key {key!r} repeated (first on line {lines[key]}): "
                                    "expected each key once")
                lines[key] = line
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MnasError(f"{source}: {where}not valid YAML ({problem}): expected a mapping of layer keys "
                        "to {count, mean, var}") from None
    finally:
        loader.dispose()
    return data, lines


def _shape(value: str) -> tuple[int, int, int] | None:
    match = _SHAPE.fullmatch(value)
    return None if match is None else (int(match.group(1)), int(match.group(2)), int(match.group(3)))


class _Malformed(Exception):
    """A key or row that does not follow the grammar: the message says what was expected."""


def _split_key(key: str) -> tuple[str, dict[str, str]]:
    """`Type-name:value-...` -> (Type, {name: value}); raises _Malformed."""
    if not isinstance(key, str) or not key:
        raise _Malformed("expected a text key such as 'Conv-input:224x224x3-output:112x112x32'")
    layer_type, *rest = key.split("-")
    if _TYPE.fullmatch(layer_type) is None:
        raise _Malformed(f"layer type {layer_type!r}: expected a name such as Conv, expanded_conv, Conv_1, Logits")
    if not rest:
        raise _Malformed("no fields: expected 'Type-name:value-...' such as 'Conv-input:224x224x3-output:112x112x32'")
    fields: dict[str, str] = {}
    for part in rest:
        match = _FIELD.fullmatch(part)
        if match is None or not match.group(2):
            raise _Malformed(f"field {part!r}: expected name:value such as 'kernel:3'")
        name, value = match.groups()
        if name in fields:
            raise _Malformed(f"field {name!r} repeated: expected each field once")
        fields[name] = value
    expected = _FIELDS.get(layer_type)
    if expected is not None:
        missing = [f for f in expected if f not in fields]
        unknown = [f for f in fields if f not in expected]
        if missing or unknown:
            what = f"field {missing[0]!r} missing" if missing else f"unknown field {unknown[0]!r}"
            raise _Malformed(f"{what}: expected {layer_type} fields {', '.join(expected)}")
    return layer_type, fields


def _shape_field(fields: Mapping[str, str], name: str) -> tuple[int, int, int]:
    shape = _shape(fields[name])
    if shape is None or min(shape) < 1:
        raise _Malformed(f"field {name!r} = {fields[name]!r}: expected HxWxC with positive integers such as 112x112x32")
    return shape


def _int_field(fields: Mapping[str, str], name: str, allowed: tuple[int, ...] | None, expected: str) -> int:
    value = fields[name]
    if not re.fullmatch(r"\d+", value) or (allowed is not None and int(value) not in allowed):
        raise _Malformed(f"field {name!r} = {value!r}: expected {expected}")
    return int(value)


def _stats(value: Any) -> tuple[float, float, int]:
    """(mean_ms, var, count) of a row; raises _Malformed."""
    expected = "{count: integer >= 1, mean: ms > 0, var: >= 0}"
    if not isinstance(value, Mapping) or set(value) != {"count", "mean", "var"}:
        have = sorted(map(str, value)) if isinstance(value, Mapping) else type(value).__name__
        raise _Malformed(f"row is {have}: expected {expected}")
    count, mean, var = value["count"], value["mean"], value["var"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise _Malformed(f"count = {count!r}: expected an integer >= 1")
    for name, number, low_ok in (("mean", mean, False), ("var", var, True)):
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number) \
                or number < 0 or (number == 0 and not low_ok):
            raise _Malformed(f"{name} = {number!r}: expected {'a finite number >= 0' if low_ok else 'milliseconds > 0'}")
    return float(mean), float(var), int(count)


def _block(fields: Mapping[str, str], act: str) -> LayerSig:
    """The one mnas layer of an `expanded_conv` key (via the project's own `block_layers`)."""
    h, w, cin = _shape_field(fields, "input")
    oh, ow, cout = _shape_field(fields, "output")
    expand = _int_field(fields, "expand", None, "an expansion ratio >= 1 such as 1, 3, 6")
    if expand < 1:
        raise _Malformed(f"field 'expand' = {fields['expand']!r}: expected an expansion ratio >= 1 such as 1, 3, 6")
    kernel = _int_field(fields, "kernel", None, "an odd kernel size such as 3, 5, 7")
    if kernel < 1 or kernel % 2 == 0:
        raise _Malformed(f"field 'kernel' = {fields['kernel']!r}: expected an odd kernel size such as 3, 5, 7")
    stride = _int_field(fields, "stride", (1, 2), "stride 1 or 2")
    idskip = _int_field(fields, "idskip", (0, 1), "idskip 0 or 1")
    if (oh, ow) != (same_output_size(h, stride), same_output_size(w, stride)):
        raise _Malformed(f"output {oh}x{ow} for input {h}x{w} at stride {stride}: expected output "
                         f"{same_output_size(h, stride)}x{same_output_size(w, stride)}")
    if idskip and (stride != 1 or cin != cout):
        raise _Malformed(f"idskip:1 with input {h}x{w}x{cin}, output {oh}x{ow}x{cout}, stride {stride}: an identity "
                         "skip needs stride 1 and input channels == output channels: expected idskip:0")
    spec = BlockSpec(repeats=1, kernel=kernel, strides=(stride, stride), expand_ratio=expand, input_filters=cin,
                     output_filters=cout, se_ratio=None, skip=SkipOp.IDENTITY if idskip else SkipOp.NONE)
    (layer,) = block_layers(spec, cin, h, w, act)
    return layer


def _stem(fields: Mapping[str, str], act: str) -> LayerSig | str:
    """mnas's stem for a `Conv` key, or why it has none."""
    h, w, cin = _shape_field(fields, "input")
    oh, ow, cout = _shape_field(fields, "output")
    if cin != 3:
        return f"input has {cin} channels: mnas's stem takes the 3-channel image"
    if (oh, ow) != (same_output_size(h, 2), same_output_size(w, 2)):
        return (f"output {oh}x{ow} from input {h}x{w}: mnas's stem is a 3x3 stride-2 conv "
                f"(output {same_output_size(h, 2)}x{same_output_size(w, 2)})")
    # as Arch.layers makes it (tests/test_published_lut.py checks the keys agree)
    return LayerSig(kind="stem", op="conv", cin=3, cout=cout, h=h, w=w, kernel=3, stride=2, act=act)


def _head(conv: tuple[int, int, int, int], classes: int, act: str) -> LayerSig:
    h, w, cin, cout = conv
    # as Arch.layers makes it (tests/test_published_lut.py checks the keys agree)
    return LayerSig(kind="head", op="head", cin=cin, cout=cout, h=h, w=w, act=act, classes=classes)


def parse_proxylessnas_lut(source: str | Path | Mapping[str, Any], *, act: str = ACTIVATION) -> LutParse:
    """Every mnas layer of a ProxylessNAS lookup table (a YAML file or its mapping), and the
    keys that have none with the reason.

    A malformed key or row raises a one-line MnasError naming the row (line) and key and what
    was expected. The entries come in the file's order (the head where `Conv_1` stands).
    """
    if isinstance(source, Mapping):
        return _parse(source, {}, "ProxylessNAS LUT", act)
    path = Path(source)
    return _parse_bytes(_read_bytes(path), path, act)


def _parse_bytes(raw: bytes, path: Path, act: str) -> LutParse:
    name = f"ProxylessNAS LUT {str(path)!r}"
    data, lines = _read_yaml(raw, name)
    return _parse(data, lines, name, act)


def _parse(data: Any, lines: Mapping[Any, int], name: str, act: str) -> LutParse:
    if not isinstance(data, Mapping) or not data:
        have = "empty" if not data else f"a {type(data).__name__}"
        raise MnasError(f"{name}: the document is {have}: expected a mapping of layer keys to {{count, mean, var}}")

    def where(key: Any) -> str:
        line = lines.get(key)
        return f"{name}: {'line ' + str(line) + ': ' if line else ''}key {key!r}"

    parsed: list[tuple[str, str, dict[str, str], tuple[float, float, int]]] = []
    for key, value in data.items():
        try:
            layer_type, fields = _split_key(key)
            stats = _stats(value)
        except _Malformed as exc:
            raise MnasError(f"{where(key)}: {exc}") from None
        parsed.append((key, layer_type, fields, stats))

    entries: list[LutEntry | None] = []
    unmapped: list[tuple[str, str]] = []
    heads: list[tuple[int, str, tuple[int, int, int, int], tuple[float, float, int]]] = []  # slot, key, conv
    logits: dict[tuple[int, int, int], list[tuple[str, int, tuple[float, float, int]]]] = {}
    for key, layer_type, fields, (mean, var, count) in parsed:
        try:
            if layer_type == "expanded_conv":
                entries.append(LutEntry(_block(fields, act), mean, math.sqrt(var), count, (key,)))
            elif layer_type == "Conv":
                stem = _stem(fields, act)
                if isinstance(stem, str):
                    unmapped.append((key, f"no mnas layer: {stem}"))
                else:
                    entries.append(LutEntry(stem, mean, math.sqrt(var), count, (key,)))
            elif layer_type == "Conv_1":
                h, w, cin = _shape_field(fields, "input")
                oh, ow, cout = _shape_field(fields, "output")
                if (oh, ow) != (h, w):
                    raise _Malformed(f"output {oh}x{ow} for input {h}x{w}: expected the same size (a 1x1 stride-1 conv)")
                heads.append((len(entries), key, (h, w, cin, cout), (mean, var, count)))
                entries.append(None)  # the head's place, filled once its Logits is known
            elif layer_type == "Logits":
                shape = _shape_field(fields, "input")
                classes = _int_field(fields, "output", None, "the number of classes, an integer >= 1")
                if classes < 1:
                    raise _Malformed(f"field 'output' = {fields['output']!r}: expected the number of classes, an integer >= 1")
                logits.setdefault(shape, []).append((key, classes, (mean, var, count)))
            else:
                unmapped.append((key, f"no mnas layer: layer type {layer_type!r} (mnas maps "
                                      f"{', '.join(_FIELDS)})"))
        except _Malformed as exc:
            raise MnasError(f"{where(key)}: {exc}") from None

    used_logits: set[str] = set()
    for slot, key, conv, (mean, var, count) in heads:
        h, w, _, cout = conv
        matches = logits.get((h, w, cout), [])
        if not matches:
            unmapped.append((key, f"no mnas layer alone: mnas's head is the 1x1 conv + pooling + classifier, and "
                                  f"no Logits key takes input {h}x{w}x{cout}"))
            continue
        if len(matches) > 1:
            raise MnasError(f"{where(key)}: {len(matches)} Logits keys take its output {h}x{w}x{cout} "
                            f"({', '.join(repr(m[0]) for m in matches)}): expected one")
        logits_key, classes, (l_mean, l_var, l_count) = matches[0]
        used_logits.add(logits_key)
        parts = (
            {"key": key, "mean_ms": mean, "std_ms": math.sqrt(var), "count": count},
            {"key": logits_key, "mean_ms": l_mean, "std_ms": math.sqrt(l_var), "count": l_count},
        )
        entries[slot] = LutEntry(_head(conv, classes, act), mean + l_mean, math.sqrt(var + l_var),
                                 min(count, l_count), (key, logits_key), parts)
    for shape, items in logits.items():
        for key, _, _ in items:
            if key not in used_logits:
                unmapped.append((key, "no mnas layer alone: mnas's head is the 1x1 conv + pooling + classifier, and "
                                      f"no Conv_1 key gives output {shape[0]}x{shape[1]}x{shape[2]}"))

    done = [e for e in entries if e is not None]
    seen: dict[str, str] = {}
    for entry in done:
        first = seen.setdefault(entry.layer.key, entry.source_keys[0])
        if first != entry.source_keys[0]:
            raise MnasError(f"{where(entry.source_keys[0])}: is the same mnas layer as key {first!r}: "
                            "expected each layer once")
    order = {key: i for i, key in enumerate(data)}
    unmapped.sort(key=lambda item: order[item[0]])
    return LutParse(done, unmapped)


# ------------------------------------------------------------------------------------ storing

def default_table_name(device: str, resolution: int = DEFAULT_RESOLUTION) -> str:
    return f"{device}-r{resolution}-proxylessnas-lut"


def _resolution(entries: list[LutEntry]) -> int:
    stems = {e.layer.h for e in entries if e.layer.kind == "stem" and e.layer.h == e.layer.w}
    if len(stems) > 1:
        raise MnasError(f"ProxylessNAS LUT: stems for resolutions {sorted(stems)}: expected one input resolution")
    return stems.pop() if stems else DEFAULT_RESOLUTION


def lut_table(parse: LutParse, *, device: str, name: str, source_file: str, sha256: str | None,
              source: str | None, keys: int) -> tuple[TableMeta, list[TableEntry]]:
    """The metadata and entries of a published table (what `import_proxylessnas_lut` stores)."""
    now = time.time()
    resolution = _resolution(parse.entries)
    classes = {e.layer.classes for e in parse.entries if e.layer.kind == "head"}
    provenance = {
        "format": "proxylessnas",
        "note": NOT_MEASURED_HERE,
        "source_file": source_file,
        "source_sha256": sha256,
        "source": source or "ProxylessNAS per-block lookup table (TFLite, batch 1)",
        "device": device,
        "runtime": RUNTIME,
        "resolution": resolution,
        "activation": ACTIVATION,
        "statistics": "mean of `count` timings as published: median_ms and mean_ms both hold the mean (the "
                      "source gives no median), std_ms = sqrt(var), runs = count",
        "head": "Conv_1 (1x1 conv) + Logits (pooling + classifier) stored as one mnas head entry: sum of the "
                "means, std = sqrt(sum of the variances), runs = the smaller count; the parts are kept in the "
                "entry's metadata",
        "partial": "covers only the layers the source lists: not every layer of a mnas search space",
        "keys": keys,
        "entries": len(parse.entries),
        "unmapped": [{"key": k, "reason": r} for k, r in parse.unmapped],
        "imported_at": now,
    }
    meta = TableMeta(name=name, device_name=device, runtime=RUNTIME, runtime_version=RUNTIME_VERSION,
                     resolution=resolution, conditions=CONDITIONS, pinned_core=None, device_ids=(), space=SPACE,
                     num_classes=classes.pop() if len(classes) == 1 else 1000, created=now, kind="published",
                     provenance=provenance)
    entries = []
    for e in parse.entries:
        info: dict[str, Any] = {"published": True, "note": NOT_MEASURED_HERE, "device_name": device,
                                "runtime": RUNTIME, "statistic": "mean", "source_keys": list(e.source_keys),
                                "count": e.count, "var_ms2": e.std_ms ** 2, "throttled": False}
        if e.parts:
            info["parts"] = [dict(p) for p in e.parts]
        entries.append(TableEntry(layer_key=e.layer.key, median_ms=e.mean_ms, mean_ms=e.mean_ms, std_ms=e.std_ms,
                                  runs=e.count, measured_at=now, measurement_id=None, measurement=info))
    return meta, entries


def import_proxylessnas_lut(store: Store, path: str | Path, *, device: str, name: str | None = None,
                            source: str | None = None) -> LutImport:
    """Parse `path` and store it as the published table `name` (default `<device>-r224-proxylessnas-lut`)
    in one transaction: on any error nothing is stored."""
    if not isinstance(device, str) or not device.strip() or any(c.isspace() for c in device):
        raise MnasError(f"--device {device!r}: expected a device name without spaces, such as pixel1")
    if name is not None and not name.strip():
        raise MnasError(f"--name {name!r}: expected a table name")
    path = Path(path)
    raw = _read_bytes(path)  # parsed and hashed from the same bytes
    parse = _parse_bytes(raw, path, ACTIVATION)
    if not parse.entries:
        raise MnasError(f"ProxylessNAS LUT {str(path)!r}: none of its {len(parse.unmapped)} keys has a mnas layer "
                        f"(first: {parse.unmapped[0][0]!r}: {parse.unmapped[0][1]}): expected a ProxylessNAS table")
    sha256 = hashlib.sha256(raw).hexdigest()
    keys = len({k for k, _ in parse.unmapped} | {k for e in parse.entries for k in e.source_keys})
    table_name = name or default_table_name(device, _resolution(parse.entries))
    meta, entries = lut_table(parse, device=device, name=table_name, source_file=str(path.resolve()),
                              sha256=sha256, source=source, keys=keys)
    table_id = store_table(store, meta, entries)
    return LutImport(table_id=table_id, table=table_name, device=device, source_file=str(path.resolve()),
                     keys=keys, entries=len(entries), unmapped=list(parse.unmapped), sha256=sha256,
                     source=meta.provenance["source"])
