"""Build a latency table: measure every distinct layer of a search space on one or more devices.

On a phone this takes hours, so the build is resumable and interruptible: layers already in
the table are skipped, and each finished layer is committed in its own transaction the
moment it is measured. Several devices of one model share a build: one worker thread per
device pulls layers from a shared queue; only the calling thread touches the store, so the
store needs no cross-thread connection sharing. Ctrl-C stops the workers; every entry
stored is whole, and the layers in flight are simply measured again on the next run.
The devices are locked for the whole build (`bench.device_lock`) before the table is read,
so a second build (or `mnas bench`) on the same phone waits instead of timing on the same
core at once, and then skips what the first stored. With a `HealPolicy`, a healing pass
follows the measuring one under the same lock, through the same pool and guard: entries
flagged contended or throttled and entries the learned layer model calls outliers are
measured again until the table is stable (`predictor.heal`).

A table holds one dtype (`TableMeta.dtype`): with `dtype="int8"` every layer is written fully
quantized (`space.quantize`), calibrated on the quantizer's own seeded synthetic inputs of the
layer's input shape: a single layer has no real activations to calibrate on, and the seed keeps
the file (and so its sha256 and reuse) deterministic. `network_writer` is the same choice for
whole networks (calibration, evaluation, measured search latency).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mnas.bench.contention import LAYER_GUARD, ContentionGuard
from mnas.bench.device_lock import hold_devices
from mnas.bench.measure import ModelWriter, default_model_writer
from mnas.bench.pool import run_device_pool
from mnas.bench.store import StoreWriteError
from mnas.bench.tempdirs import owned_temp_dir
from mnas.bench.types import BenchConfig, Device, DeviceProfile, Measurement, latency_ms
from mnas.errors import MeasurementError, MnasError
from mnas.predictor.heal import (
    HealPolicy,
    HealReport,
    count_reasons,
    outlier_scores,
    settle,
    suspects,
    table_statistic,
)
from mnas.predictor.layers import enumerate_layers
from mnas.predictor.table import (
    TableEntry,
    TableMeta,
    add_entry,
    load_table,
    open_table,
    retake_reasons,
)
from mnas.space.arch import Arch, LayerSig
from mnas.space.quantize import check_dtype
from mnas.space.search_space import SearchSpace

LayerWriter = Callable[[LayerSig, Path], Any]


def default_writer(sig: LayerSig, path: Path) -> Any:
    """The project's single-layer .tflite writer (imported late: it pulls in the flatbuffer schema)."""
    from mnas.space.tflite_writer import write_layer

    return write_layer(sig, path)


def _write_layer(sig: LayerSig, path: Path, *, dtype: str) -> Any:
    from mnas.space.tflite_writer import write_layer

    return write_layer(sig, path, dtype=dtype)


def _write_arch(arch: Arch, path: Path, *, resolution: int, dtype: str) -> Any:
    from mnas.space.tflite_writer import write_arch

    return write_arch(arch, path, resolution=resolution, dtype=dtype)


def layer_writer(dtype: str = "float32") -> LayerWriter:
    """The single-layer writer of a `dtype` table (float32: `default_writer`, unchanged)."""
    if check_dtype(dtype) == "float32":
        return default_writer
    return functools.partial(_write_layer, dtype=dtype)


def network_writer(dtype: str = "float32") -> ModelWriter:
    """The whole-network writer of `dtype` models (float32: `bench.measure.default_model_writer`, so
    float files, their sha256 and every stored figure of them are unchanged)."""
    if check_dtype(dtype) == "float32":
        return default_model_writer
    return functools.partial(_write_arch, dtype=dtype)


@dataclass
class BuildResult:
    """What one `build_table` call did."""

    table_id: int
    table_name: str
    total_layers: int  # distinct layers of the space at this resolution
    already_stored: int  # skipped because the table held them before this call (and they may be reused)
    measured: int  # stored by this call
    remaining: int  # layers of the space still missing from the table
    elapsed_s: float
    per_device: dict[str, int] = field(default_factory=dict)  # device id -> layers stored
    failures: list[str] = field(default_factory=list)  # one line per device that stopped on an error
    retaken: int = 0  # stored entries measured again because they may not be reused (throttled, contended)
    heal: HealReport | None = None  # the healing pass, when one ran (its re-takes are not in `measured`)

    @property
    def seconds_per_layer(self) -> float | None:
        measuring = self.elapsed_s - (self.heal.elapsed_s if self.heal is not None else 0.0)
        return measuring / self.measured if self.measured else None

    def to_dict(self) -> dict[str, Any]:
        return {"table_id": self.table_id, "table": self.table_name, "total_layers": self.total_layers,
                "already_stored": self.already_stored, "measured": self.measured, "remaining": self.remaining,
                "elapsed_s": self.elapsed_s, "per_layer_s": self.seconds_per_layer,
                "per_device": dict(self.per_device), "failures": list(self.failures),
                "retaken": self.retaken, "heal": None if self.heal is None else self.heal.to_dict()}


def table_meta(table_name: str, profiles: Sequence[DeviceProfile], resolution: int, config: BenchConfig,
               space_name: str, num_classes: int, dtype: str = "float32") -> TableMeta:
    """Metadata of a table measured on `profiles`; they must be the same device model and runtime."""
    first = profiles[0]
    for other in profiles[1:]:
        for name in ("device_name", "runtime", "runtime_version"):
            if getattr(other, name) != getattr(first, name):
                raise MnasError(
                    f"device {other.device_id}: {name} is {getattr(other, name)!r}: expected {getattr(first, name)!r} "
                    f"like device {first.device_id} (one table holds one device model and runtime)")
    meta = TableMeta.from_profile(table_name, first, resolution, config, space=space_name, num_classes=num_classes,
                                  dtype=dtype)
    return replace(meta, device_ids=tuple(dict.fromkeys(p.device_id for p in profiles)))


def build_table(space: SearchSpace, resolution: int, devices: Sequence[Device], store: Any, table_name: str,
                config: BenchConfig, limit: int | None = None, writer: LayerWriter | None = None,
                progress: bool = True, space_name: str = "mnasnet", num_classes: int = 1000,
                layers: Sequence[LayerSig] | None = None,
                guard: ContentionGuard | None = LAYER_GUARD, lock_timeout_s: float | None = None,
                heal: HealPolicy | None = None, dtype: str = "float32") -> BuildResult:
    """Measure the layers of `space` at `resolution` missing from table `table_name`.

    `limit` caps how many layers this call measures (small builds, tests). `layers`
    overrides the enumeration (a subset). A device that raises stops its worker (its layer
    goes back to the queue for the others) and is listed in `failures`; when every device
    has failed, a MeasurementError (chained to the first error) is raised after the finished
    entries are stored. A KeyboardInterrupt stops all workers and propagates; nothing
    half-written remains. A write the store refuses (disk full, read-only) stops the build with
    one StoreWriteError line saying how many layers are stored; a re-run resumes. `guard`
    re-measures (once by default) host layers slower than a scheduler slice that were timed
    while other processes shared the core (`contention`). `heal` (a `HealPolicy`; None: no
    healing) runs the healing pass on the table once the measuring is done, even when this
    call measured nothing (`limit=0` heals only); its report is `BuildResult.heal`. `dtype` is the
    table's (`TableMeta.dtype`: a stored table of another dtype is refused); the default writer
    (None or `default_writer`) writes layers of that dtype (`layer_writer`).
    """
    check_dtype(dtype)
    if writer is None or writer is default_writer:
        writer = layer_writer(dtype)
    if not devices:
        raise MnasError("build_table: no devices: expected at least one device to measure on")
    if limit is not None and limit < 0:
        raise MnasError(f"limit = {limit}: expected a layer count >= 0")
    with hold_devices(devices, lock_timeout_s):  # before the table is read: see the module docstring
        return _build_table(space, resolution, devices, store, table_name, config, limit, writer, progress,
                            space_name, num_classes, layers, guard, heal, dtype)


def _build_table(space: SearchSpace, resolution: int, devices: Sequence[Device], store: Any, table_name: str,
                 config: BenchConfig, limit: int | None, writer: LayerWriter, progress: bool, space_name: str,
                 num_classes: int, layers: Sequence[LayerSig] | None,
                 guard: ContentionGuard | None, heal: HealPolicy | None, dtype: str) -> BuildResult:
    started = time.monotonic()
    profiles = [device.profile() for device in devices]
    meta = table_meta(table_name, profiles, resolution, config, space_name, num_classes, dtype)
    table_id = open_table(store, meta)
    all_layers = list(layers) if layers is not None else enumerate_layers(space, resolution, num_classes)
    reasons = retake_reasons(store, table_id)
    pending = [layer for layer in all_layers if layer.key not in reasons or reasons[layer.key] is not None]
    already = len(all_layers) - len(pending)
    if limit is not None:
        pending = pending[:limit]
    result = BuildResult(table_id=table_id, table_name=table_name, total_layers=len(all_layers),
                         already_stored=already, measured=0, remaining=len(all_layers) - already,
                         elapsed_s=0.0, per_device={d.device_id: 0 for d in devices})

    with owned_temp_dir("table") as tmp:
        workdir = Path(tmp)

        def measure(device: Device, layer: LayerSig) -> Measurement:
            path = workdir / f"{device.device_id.replace('/', '_')}-{abs(hash(layer.key)):x}.tflite"
            try:
                writer(layer, path)
                # the guard keeps the lowest minimum: the statistic least touched by other processes
                return device.benchmark(path, config) if guard is None else guard.benchmark(device, path, config, "min")
            finally:
                path.unlink(missing_ok=True)

        working = list(devices)
        if pending:
            working = _measure_pass(devices, pending, measure, store, table_id, table_name, reasons, result,
                                    len(all_layers) - already, progress, started)
        if heal is not None and working:
            try:
                result.heal = _heal_pass(working, measure, store, table_id, table_name, heal, result, progress)
            except StoreWriteError as exc:
                raise StoreWriteError(f"{exc}; table {table_name!r}: healing stopped; every stored entry is whole: "
                                      "fix the cause and re-run to resume", exc.cause) from None
    result.elapsed_s = time.monotonic() - started
    return result


def _measure_pass(devices: Sequence[Device], pending: list[LayerSig], measure: Callable[[Device, LayerSig], Measurement],
                  store: Any, table_id: int, table_name: str, reasons: dict[str, str | None], result: BuildResult,
                  missing: int, progress: bool, started: float) -> list[Device]:
    """Measure `pending` through the pool, storing each entry as it arrives; the devices still working."""
    bar = _progress_bar(len(pending), table_name, progress)

    def keep(layer: LayerSig, device_id: str, measurement: Measurement) -> None:
        _store_entry(store, table_id, layer, device_id, measurement, result, replace=layer.key in reasons)
        bar.update(1)
        bar.set_postfix_str(f"{layer.kind}:{layer.op} {latency_ms(measurement):.3f} ms")

    try:
        pool = run_device_pool(devices, pending, measure, keep, name="table")
    except StoreWriteError as exc:  # disk full, read-only: every entry stored so far is whole and kept
        remaining = missing - result.measured
        raise StoreWriteError(f"{exc}; table {table_name!r}: {result.measured} layers stored by this build, "
                              f"{remaining} remaining: fix the cause and re-run to resume", exc.cause) from None
    finally:
        bar.close()
        result.remaining = missing - result.measured
        result.elapsed_s = time.monotonic() - started
    result.failures.extend(f"device {device_id}: {type(error).__name__}: {error}" for device_id, error in pool.retired)
    if pool.all_retired(devices):
        raise MeasurementError(
            f"latency table {table_name!r}: every device failed (first: {result.failures[0]}); "
            f"{result.measured} layers stored, {result.remaining} remaining: fix the device and re-run to resume"
        ) from pool.retired[0][1]
    retired = {device_id for device_id, _ in pool.retired}
    return [device for device in devices if device.device_id not in retired]


def _heal_pass(devices: list[Device], measure: Callable[[Device, LayerSig], Measurement], store: Any, table_id: int,
               table_name: str, policy: HealPolicy, result: BuildResult, progress: bool) -> HealReport:
    """Re-take suspect entries (flagged, outliers) round after round until none is left (see `predictor.heal`)."""
    started = time.monotonic()
    report = HealReport()
    touched: set[str] = set()
    for round_no in range(1, policy.max_rounds + 1):
        table = load_table(store, table_id, allow_empty=True)
        report.table_entries = len(table)
        if not table.entries:
            break
        statistic = table_statistic(table)
        scores, sd = outlier_scores(table, policy, statistic) if policy.outliers else ({}, None)
        if report.robust_sd is None:
            report.robust_sd = sd
        found = suspects(table, policy, statistic, scores, sd)
        report.left = len(found)
        if not found:
            break
        counts = count_reasons(found)
        row = {"round": round_no, "suspects": len(found), "by_reason": counts, "replaced": 0, "confirmed": 0,
               "robust_sd": sd}
        report.per_round.append(row)
        report.rounds = round_no
        bar = _progress_bar(len(found), f"{table_name} heal {round_no}", progress)

        def keep(layer: LayerSig, device_id: str, measurement: Measurement, table: Any = table,
                 found: dict[str, str] = found, statistic: str = statistic, row: dict[str, Any] = row,
                 bar: Any = bar) -> None:
            reason = found[layer.key]
            with store.transaction():  # the re-take's evidence and the entry kept: together or neither
                measurement_id = store.add_measurement(measurement, label=f"layer {layer.key}", force=True)
                new = TableEntry.from_measurement(layer.key, measurement, measurement_id=measurement_id)
                kept, replaced, confirmed = settle(table.entries[layer.key], new, reason, statistic, policy.agree)
                add_entry(store, table_id, kept, replace=True)
            report.retaken += 1
            report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
            touched.add(layer.key)
            report.entries = len(touched)
            row["replaced"] += int(replaced)
            row["confirmed"] += int(confirmed)
            report.replaced += int(replaced)
            report.confirmed += int(confirmed)
            bar.update(1)
            bar.set_postfix_str(f"{reason} {latency_ms(measurement):.3f} ms")

        jobs = [LayerSig.from_key(key) for key in found]
        try:
            pool = run_device_pool(devices, jobs, measure, keep, name="table-heal")
        finally:
            bar.close()
        result.failures.extend(f"device {device_id}: {type(error).__name__}: {error}"
                               for device_id, error in pool.retired)
        retired = {device_id for device_id, _ in pool.retired}
        devices = [device for device in devices if device.device_id not in retired]
        if not devices:
            raise MeasurementError(f"latency table {table_name!r}: every device failed while healing "
                                   f"(first: {result.failures[0]}); {report.retaken} entries re-taken: "
                                   "fix the device and re-run to resume") from pool.retired[0][1]
        if row["replaced"] == 0:  # no figure changed: a refit would find these suspects again, less the confirmed
            report.left = len(found) - row["confirmed"]
            break
    else:
        if policy.max_rounds > 0:  # the cap: are any suspects left?
            table = load_table(store, table_id, allow_empty=True)
            report.left = len(suspects(table, policy, table_statistic(table))) if table.entries else 0
    report.stable = report.left == 0
    report.elapsed_s = time.monotonic() - started
    return report


DEFAULT_PER_LAYER_S = 2.0  # a phone: push, warm-up and 50 runs of a small model, cool-down
# What one layer costs besides its timed seconds, by device kind: the host starts one child
# process per layer (~0.3-0.4 s); a phone adds a push, a shell, thermal reads and a cool-down check.
PER_LAYER_OVERHEAD_S = {"host": 0.4, "adb": 1.0}


def plan_build(space: SearchSpace, resolution: int, store: Any | None = None, table_name: str | None = None,
               per_layer_s: float | None = None, devices: int = 1, num_classes: int = 1000,
               device_kind: str | None = None, min_secs: float = 0.0) -> dict[str, Any]:
    """What `build_table` would do: layer counts by kind, how many are stored, and a time estimate.

    Without `per_layer_s`, the median wall time of the table's stored measurements is used
    when it has any (what this device really took); else, with `device_kind`, that kind's
    per-layer overhead plus `min_secs` timed seconds; else DEFAULT_PER_LAYER_S.
    """
    from mnas.predictor.layers import count_by_kind, estimate_build_seconds
    from mnas.predictor.table import find_table, load_table

    layers = enumerate_layers(space, resolution, num_classes)
    stored: set[str] = set()
    basis = "given" if per_layer_s is not None else "default"
    if store is not None and table_name is not None and find_table(store, table_name) is not None:
        table = load_table(store, table_name, allow_empty=True)
        stored = set(table.entries)
        walls = [e.measurement.get("wall_s") for e in table.entries.values() if e.measurement]
        walls = [w for w in walls if isinstance(w, int | float)]
        if per_layer_s is None and walls:
            per_layer_s = float(sorted(walls)[len(walls) // 2])
            basis = f"median wall time of {len(walls)} stored layers"
    if per_layer_s is None and device_kind is not None:
        if device_kind not in PER_LAYER_OVERHEAD_S:
            raise MnasError(f"device kind {device_kind!r}: expected one of {sorted(PER_LAYER_OVERHEAD_S)}")
        overhead = PER_LAYER_OVERHEAD_S[device_kind]
        per_layer_s = overhead + min_secs
        basis = f"{device_kind} overhead {overhead:g} s + --min-secs {min_secs:g}"
    per_layer = DEFAULT_PER_LAYER_S if per_layer_s is None else per_layer_s
    missing = [layer for layer in layers if layer.key not in stored]
    return {"resolution": resolution, "layers": count_by_kind(layers), "stored": len(layers) - len(missing),
            "remaining": len(missing), "devices": devices, "per_layer_s": per_layer, "per_layer_basis": basis,
            "estimate_s": estimate_build_seconds(missing, per_layer, devices)}


def _store_entry(store: Any, table_id: int, layer: LayerSig, device_id: str, measurement: Measurement,
                 result: BuildResult, replace: bool) -> None:
    # force: the entry's own evidence is stored even when another table holds this layer under the same
    # conditions (builds do not share measurements across tables; the device lock keeps them sequential)
    with store.transaction():  # the measurement and its entry together: a failed write leaves neither
        measurement_id = store.add_measurement(measurement, label=f"layer {layer.key}", force=True)
        entry = TableEntry.from_measurement(layer.key, measurement, measurement_id=measurement_id)
        added = add_entry(store, table_id, entry, replace=replace)
    if added:
        result.measured += 1
        result.retaken += int(replace)
        result.per_device[device_id] = result.per_device.get(device_id, 0) + 1


def _progress_bar(total: int, name: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"table {name}", unit="layer", disable=not enabled, dynamic_ncols=True)
