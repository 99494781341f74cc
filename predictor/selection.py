"""Which device, table and predictor a command means: one answer for the CLI and the search.

A user names a device loosely (`host`, a device config name like `pixel4`, a phone serial)
while tables and predictors are keyed on the device *model* name, the input resolution and
the runtime. Resolving that name, choosing a table and loading the matching predictor used
to be written twice (the table commands and the search setup) and drifted apart; this
module is the one place, so `mnas table fit --device SERIAL` and
`mnas search --device SERIAL` agree on what SERIAL is (docs/architecture.md).

Tables and predictors are also per dtype (float32 or int8 models): an int8 layer runs other
kernels than its float twin, so a question about int8 latency is only answered from an int8
table, and asking for int8 where only float32 tables exist is refused in one line that says
how to build one, never answered from the float figures. float32 is the default everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mnas.bench.types import Device
from mnas.errors import MnasError

__all__ = [
    "check_phone_names",
    "choose_table",
    "default_table_name",
    "device_predictor",
    "host_runtime",
    "load_device_predictor",
    "resolve_device_name",
    "ensure_shipped_predictor",
    "runtime_filter",
    "shipped_device_predictor",
    "table_name_for",
]


def default_table_name(device_name: str, resolution: int, runtime: str, runtime_version: str,
                       dtype: str = "float32") -> str:
    """`<device>-r<resolution>-<runtime>-<version>` (+ `-int8` for int8 tables), with characters
    outside [A-Za-z0-9._+-] as '-'.

    The name says what the table can be used for, so two builds under different conditions
    (or of different dtypes) never fill one table by accident; float32 names are unchanged.
    """
    name = f"{device_name}-r{resolution}-{runtime}-{runtime_version}".strip("-")
    if dtype != "float32":
        name += f"-{dtype}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name)


def table_name_for(devices: Sequence[Device], resolution: int, table_name: str | None = None,
                   dtype: str = "float32") -> str:
    """`table_name`, else the default name of the first device's model, runtime and `dtype`."""
    if table_name is not None:
        return table_name
    if not devices:
        raise MnasError("table name: no devices: expected at least one device to name the table after")
    profile = devices[0].profile()
    return default_table_name(profile.device_name, resolution, profile.runtime, profile.runtime_version, dtype)


def host_runtime() -> tuple[str, str]:
    """This host's runtime (name, version): host tables are only valid for the runtime that measured them."""
    from mnas.bench.runtime import load_runtime

    runtime = load_runtime()
    return runtime.name, runtime.version


def runtime_filter(device_name: str) -> str | None:
    """The runtime a predictor for `device_name` must have been measured with (host only; phones: any)."""
    return host_runtime()[0] if device_name == "host" else None


def _tables_meta(store: Any) -> list[tuple[dict[str, Any], Any]]:
    """Each stored table's list row with its metadata (device ids, runtime, resolution)."""
    from mnas.predictor.table import find_table, list_tables

    out = []
    for row in list_tables(store):
        found = find_table(store, row["name"])
        if found is not None:
            out.append((row, found[1]))
    return out


def check_phone_names(spec: str, expected: str) -> None:
    """Fail fast, naming the device, when `spec` names phones but no adb server runs to find them.

    (`select_devices` says only that the adb server is missing; the user's mistake is more
    often a misspelt name, so say both.)
    """
    names = [n.strip() for n in spec.split(",") if n.strip() not in ("", "host", "all")]
    if not names:
        return
    from mnas.bench.adb import adb_client, adb_unavailable_reason

    reason = adb_unavailable_reason(adb_client(10.0))
    if reason:
        raise MnasError(f"unknown device {names[0]!r}: expected {expected}; {reason}")


def _stored_device_name(store: Any, spec: str) -> str | None:
    """The device name of a table's device or serial, or of a serial any stored measurement came from."""
    for row, meta in _tables_meta(store):
        if spec == meta.device_name or spec in meta.device_ids:
            return str(row["device"])
    profile = store.get_device(spec)
    return None if profile is None else str(profile.device_name)


def resolve_device_name(spec: str, store: Any | None = None, *, attached: bool = False) -> str:
    """The device model name (`host`, `pixel4`, ...) that tables and predictors for SPEC are keyed on.

    SPEC may be `host`, a device name or serial the store knows (a table's device or device
    ids, or any measured device), or a device config name. With `attached`, a serial nobody
    stored is looked up on the attached phones (predicting needs no phone, but a search may be
    started with the serial of the phone it will later measure on); without, it is an error
    listing the names the store knows.
    """
    if spec == "host":
        return "host"
    if "," in spec or spec == "all":
        raise MnasError(f"--device {spec!r}: expected one device (host, a device name or a serial): "
                        "a latency table or predictor holds one device model")
    known = _stored_device_name(store, spec) if store is not None else None
    if known is not None:
        return known
    from mnas.bench.device_config import load_all

    configs = load_all()
    if spec in configs:
        return spec
    if attached:
        check_phone_names(spec, f"host, a device config name ({', '.join(sorted(configs))}) or the serial of an "
                                "attached phone")
        from mnas.bench.devices import select_devices

        return select_devices(spec, timeout_s=30)[0].profile().device_name
    tables = _tables_meta(store) if store is not None else []
    names = sorted({str(row["device"]) for row, _ in tables} | {d for _, m in tables for d in m.device_ids})
    raise MnasError(f"unknown device {spec!r}: expected host, or a device or serial with a latency table "
                    f"(known: {', '.join(names) or 'none: run `mnas table build` first'})")


def choose_table(store: Any, device_name: str, resolution: int, table: str | None = None,
                 dtype: str | None = None) -> Any:
    """The named table (checked for resolution/device/runtime/dtype) or the device's default/largest
    one of `dtype` (None: float32 when choosing, any for a named table).

    A host table measured with another runtime version is refused, never silently used:
    its latencies are not this host's; so is a table of another dtype.
    """
    from mnas.predictor.table import load_table

    runtime = runtime_filter(device_name)
    version = host_runtime()[1] if device_name == "host" else None
    if table is not None:
        loaded = load_table(store, table, resolution=resolution)
        loaded.check(device_name=device_name, runtime=runtime, runtime_version=version, dtype=dtype)
        return loaded
    dtype = dtype or "float32"
    of_device = [(row, meta) for row, meta in _tables_meta(store) if meta.device_name == device_name]
    candidates = [(row, meta) for row, meta in of_device if meta.dtype == dtype]
    if not candidates:
        flag = "" if dtype == "float32" else f" --dtype {dtype}"
        have = sorted({meta.dtype for _, meta in of_device})
        found = f" (its tables are {', '.join(have)})" if have else ""
        what = "latency table" if dtype == "float32" else f"{dtype} latency table"
        raise MnasError(f"no {what} for device {device_name!r}{found}: expected one built with "
                        f"`mnas table build --device {device_name} --resolution {resolution}{flag}`")
    at_resolution = [(row, meta) for row, meta in candidates if meta.resolution == resolution]
    if not at_resolution:
        have = sorted({meta.resolution for _, meta in candidates})
        raise MnasError(f"no latency table for device {device_name!r} at resolution {resolution}: "
                        f"its tables are for resolution {', '.join(map(str, have))} (pass --resolution, "
                        "or build one for this resolution)")
    if runtime is not None:
        matching = [(row, meta) for row, meta in at_resolution
                    if (meta.runtime, meta.runtime_version) == (runtime, version)]
        if not matching:
            other = at_resolution[-1][1]
            raise MnasError(f"latency table {other.name!r} was measured with runtime {other.runtime} "
                            f"{other.runtime_version}: expected {runtime} {version} (this host's runtime)")
        at_resolution = matching
    row, _ = max(at_resolution, key=lambda item: (item[0]["entries"], item[0]["id"]))
    return load_table(store, row["name"], resolution=resolution, runtime=runtime)


def load_device_predictor(store: Any, device_name: str, resolution: int, runtime: str | None,
                          predictor_id: int | None = None, space: Any = None, dtype: str = "float32") -> Any:
    """Predictor `predictor_id`, else the latest for (device, resolution, runtime, dtype); its
    resolution and dtype are checked.

    An explicit id wins over the device filters (the user picked it), but a predictor for
    another resolution or dtype would predict a different network, so that is an error either
    way. Shipped tables are float32: an int8 question never falls back to them.
    """
    from mnas.predictor.registry import load_predictor, predictor_dtype

    try:
        if store is None:
            raise MnasError(f"no results store: no stored predictor for {device_name!r}")
        predictor = load_predictor(store, predictor_id, device=None if predictor_id else device_name,
                                   resolution=None if predictor_id else resolution,
                                   runtime=None if predictor_id else runtime, space=space,
                                   dtype=None if predictor_id else dtype)
    except MnasError:
        if predictor_id is None and dtype != "float32":
            raise MnasError(_missing_dtype(store, device_name, resolution, dtype)) from None
        shipped = shipped_device_predictor(device_name, resolution) if predictor_id is None else None
        if shipped is None:
            raise
        predictor = shipped
    if predictor.resolution != resolution:
        raise MnasError(f"predictor {predictor.predictor_id} is for resolution {predictor.resolution}: "
                        f"expected {resolution}")
    if predictor_dtype(predictor) != dtype:
        raise MnasError(f"predictor {predictor.predictor_id} predicts {predictor_dtype(predictor)} models: "
                        f"expected {dtype} (pass --dtype {predictor_dtype(predictor)}, or a predictor fitted "
                        f"on a table of {dtype} models)")
    return predictor


def _missing_dtype(store: Any, device_name: str, resolution: int, dtype: str) -> str:
    """The one line for a device without a `dtype` predictor: which dtypes it has, and how to get one."""
    from mnas.predictor.registry import list_predictors

    have = sorted({row["dtype"] for row in list_predictors(store)
                   if row["device"] == device_name and row["resolution"] == resolution}) if store is not None else []
    stored = f"only {', '.join(have)} predictors are stored" if have else "no predictor is stored"
    return (f"no {dtype} predictor for device {device_name!r} at resolution {resolution} ({stored}): expected one "
            f"fitted on a table of {dtype} models: `mnas table build --device {device_name} --resolution {resolution} "
            f"--dtype {dtype}`, then `mnas table fit --device {device_name} --resolution {resolution} --dtype {dtype}`")


def device_predictor(store: Any, devices: Sequence[Device], resolution: int, predictor_id: int | None = None,
                     space: Any = None, dtype: str = "float32") -> Any:
    """The predictor for the model, runtime and dtype of the networks about to be measured (calibrate, eval)."""
    if not devices:
        raise MnasError("predictor: no devices: expected at least one device to choose the predictor for")
    profile = devices[0].profile()
    return load_device_predictor(store, profile.device_name, resolution, profile.runtime, predictor_id, space, dtype)


# ------------------------------------------------------------------------------ shipped tables

def shipped_device_predictor(device_name: str, resolution: int, directory: Any = None) -> Any:
    """The calibrated predictor of the table shipped in `device_configs/tables/<device>.json.gz`
    (a transferred table: `mnas table transfer`), read directly from the file; None when none is shipped."""
    if device_name == "host":
        return None
    from mnas.predictor.transfer_store import shipped_predictor

    return shipped_predictor(device_name, resolution, directory)


def ensure_shipped_predictor(store: Any, device_name: str, resolution: int, directory: Any = None,
                             dtype: str = "float32") -> int | None:
    """On first use, store the shipped table of `device_name` (at `resolution`) and its calibrated
    predictor, so a search can pin a predictor id; returns that id, or None when the store already
    has a predictor for (device, resolution) or nothing is shipped for the device (or for `dtype`:
    shipped tables are float32)."""
    if device_name == "host" or dtype != "float32":
        return None
    from mnas.predictor.registry import load_predictor
    from mnas.predictor.transfer_store import TransferResult, save_transfer, shipped_table

    try:
        load_predictor(store, device=device_name, resolution=resolution, dtype="float32")
        return None
    except MnasError:
        pass
    shipped = shipped_table(device_name, directory)
    if shipped is None:
        return None
    base = shipped.table.meta.name
    name = base if shipped.table.meta.resolution == resolution else f"{base}@r{resolution}"
    from mnas.predictor.table import find_table

    if find_table(store, name) is not None:
        return None  # stored by an earlier use (its predictor was fitted then)
    result = TransferResult(table=shipped.table, ratio_model=None, calibration=shipped.calibration,  # type: ignore[arg-type]
                            provenance={**shipped.transfer, "shipped_file": str(shipped.path)})
    rows = save_transfer(store, result, resolutions=(resolution,), only=resolution)
    return rows[0]["predictor_id"]
