"""A latency table as a file: which formats `mnas table export` writes, and the CSV view.

The `.json` / `.json.gz` file of `table.export_table` is the lossless one (`mnas table import`
reads it back exactly). CSV is for spreadsheets and pandas: one row per layer with its figures
and the scalar conditions of its measurement, and the table's name, device, runtime and
resolution on every row, so rows of several tables concatenate and still say where they come
from. Any other suffix is refused by name: writing JSON into `t.csv` (what a suffix-blind
writer does) leaves a file that no CSV reader opens.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from mnas.bench.files import write_text_atomic
from mnas.errors import MnasError
from mnas.predictor.table import LatencyTable, TableEntry, export_table

TABLE_SUFFIXES = (".json", ".json.gz", ".csv")

# the table's metadata repeated on every row, then the entry, then its measurement's conditions
CSV_COLUMNS = (
    "table", "device_name", "runtime", "runtime_version", "resolution", "kind",
    "layer_key", "median_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p90_ms", "runs", "measured_at",
    "measurement_id", "device_id", "model_sha256", "pinned_cores", "throttled", "contended",
    "child_cpu_share", "attempt", "wall_s", "freq_before_khz", "freq_after_khz", "conditions",
)
_CONDITION_COLUMNS = ("device_id", "model_sha256", "min_ms", "max_ms", "p90_ms", "throttled", "contended",
                      "child_cpu_share", "attempt", "wall_s", "freq_before_khz", "freq_after_khz", "conditions")


def table_file_format(path: str | Path) -> str:
    """'json' or 'csv' from the file name; any other suffix is one line naming it and the accepted ones."""
    name = Path(path).name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".json", ".json.gz")):
        return "json"
    suffix = "".join(Path(path).suffixes[-2:])
    what = f"unknown table file suffix {suffix!r}" if suffix else "no file suffix"
    raise MnasError(f"{path}: {what}: expected one of {', '.join(TABLE_SUFFIXES)}")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(float(timestamp), dt.timezone.utc).isoformat(timespec="seconds")


def _row(table: LatencyTable, entry: TableEntry) -> dict[str, Any]:
    meta = table.meta
    conditions = entry.measurement or {}
    row: dict[str, Any] = {
        "table": meta.name, "device_name": meta.device_name, "runtime": meta.runtime,
        "runtime_version": meta.runtime_version, "resolution": meta.resolution, "kind": meta.kind,
        "layer_key": entry.layer_key, "median_ms": entry.median_ms, "mean_ms": entry.mean_ms,
        "std_ms": entry.std_ms, "runs": entry.runs, "measured_at": _iso(entry.measured_at),
        "measurement_id": entry.measurement_id,
        "pinned_cores": " ".join(str(c) for c in conditions.get("pinned_cores") or ()) or None,
    }
    row.update({key: conditions.get(key) for key in _CONDITION_COLUMNS})
    return row


def table_frame(table: LatencyTable) -> Any:
    """The table as a pandas DataFrame with `CSV_COLUMNS` (headers even when it has no entries)."""
    import pandas as pd

    return pd.DataFrame([_row(table, e) for e in table.entries.values()], columns=list(CSV_COLUMNS))


def write_table_file(table: LatencyTable, path: str | Path) -> Path:
    """Write `table` to `path` in the format its suffix names (`TABLE_SUFFIXES`), atomically."""
    path = Path(path)
    if table_file_format(path) == "json":
        return export_table(table, path)
    return write_text_atomic(path, table_frame(table).to_csv(index=False))
