"""Per-op profiles: what `--profile-ops` shows, and why a measurement has none.

benchmark_model's `--enable_op_profiling=true` prints a table of every node of the graph
(op type, node name, average ms, share of the total); the phone path parses it
(`bench/bm_output.py`) into `Measurement.op_profile` and the store keeps it in its own
table (`bench/store.py`, `op_profiles`). The host's LiteRT Python interpreter has no per-op
profiler, and timing each layer as its own model would time a different graph (XNNPACK fuses
and partitions the whole one), so a host measurement never has a profile: the reason is said
in words (`HOST_NOTE`), on stderr and in `--json`, rather than printing nothing.

`percent` is benchmark_model's own "% of total" (its average per call times the calls per
inference, over the sum of all nodes), so "top ops" are ranked by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mnas.bench.types import Measurement, OpProfileRow

__all__ = ["HOST_NOTE", "OP_COLUMNS", "missing_profile_note", "op_rows", "top_ops"]

HOST_NOTE = ("no op profile on the host: the LiteRT Python interpreter has no per-op profiler (only "
             "benchmark_model's C++ tool has one); run on a phone for a per-op table")

# stable keys of one op row in --json, CSV and the store (units in the names)
OP_COLUMNS = ("run_order", "node_type", "name", "avg_ms", "percent", "cdf_percent", "first_ms", "start_ms",
              "mem_kb", "times_called")


def op_rows(rows: Sequence[OpProfileRow]) -> list[dict[str, Any]]:
    """The table as plain rows in run order (`OP_COLUMNS`); a start the tool did not print is None."""
    return [{
        "run_order": index,
        "node_type": row.node_type,
        "name": row.name,
        "avg_ms": row.avg_ms,
        "percent": row.percent,
        "cdf_percent": row.cdf_percent,
        "first_ms": row.first_ms,
        "start_ms": None if math.isnan(row.start_ms) else row.start_ms,
        "mem_kb": row.mem_kb,
        "times_called": row.times_called,
    } for index, row in enumerate(rows)]


def top_ops(rows: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The `count` rows (`op_rows`) with the largest share of the total time; ties in run order."""
    return sorted(rows, key=lambda row: (-row["percent"], row["run_order"]))[:max(0, count)]


def missing_profile_note(m: Measurement, *, reused: bool = False) -> str | None:
    """Why `m` has no op profile although one was asked for; None when it has one."""
    if m.op_profile is not None:
        return None
    if m.runtime != "benchmark_model":
        return HOST_NOTE
    if reused:
        return ("the stored measurement was reused and was taken without op profiling: pass --force to measure "
                "again with --profile-ops")
    if not m.config.profile_ops:
        return "taken without op profiling: measure with `mnas bench --profile-ops` for a per-op table"
    return "benchmark_model printed no op-profiling table (check that the binary supports --enable_op_profiling)"
