"""`mnas results`: look at and export what the results store holds.

`list` shows one row per measurement (newest first); `export` writes every measurement with
all its queryable conditions to CSV or Parquet for analysis elsewhere, atomically so a reader
never sees half a file. Both only read, so both work on a read-only store.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import click

from mnas.cli_util import DefaultGroup, db_path, echo_json, echo_table, json_option
from mnas.errors import MnasError

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@click.group(cls=DefaultGroup, default_command="list")
def results() -> None:
    """Stored measurements: `list` (default) and `export`."""


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


@results.command("list")
@json_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Newest N measurements.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool, limit: int) -> None:
    """One row per measurement: id, time, device, model, runtime, median_ms, cv, throttled."""
    from mnas.bench.store import ResultsStore

    with ResultsStore(db_path(ctx), create=False) as store:
        rows = store.recent_measurements(limit)
    payload = [
        {
            "id": row["id"],
            "time": _iso(row["timestamp"]),
            "timestamp": row["timestamp"],
            "device": row["device_name"],
            "device_id": row["device_id"],
            "model": row["model_label"] or row["model_sha256"][:12],
            "model_sha256": row["model_sha256"],
            "runtime": row["runtime"],
            "runtime_version": row["runtime_version"],
            "median_ms": row["median_ms"],
            "cv": row["cv"],
            "throttled": bool(row["throttled"]),
        }
        for row in rows
    ]
    if as_json:
        echo_json(payload)
        return
    echo_table(
        [
            {
                "id": r["id"], "time": r["time"], "device": r["device"], "model": r["model"],
                "runtime": r["runtime"], "median_ms": f"{r['median_ms']:.3f}",
                "cv": "-" if r["cv"] is None else f"{r['cv']:.3f}",
                "throttled": "yes" if r["throttled"] else "no",
            }
            for r in payload
        ],
        ["id", "time", "device", "model", "runtime", "median_ms", "cv", "throttled"],
    )


@results.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Output format (default: from the file name's suffix).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write.")
@click.pass_context
def export_cmd(ctx: click.Context, fmt: str | None, output: Path) -> None:
    """Every measurement with its conditions (one row each) as CSV or Parquet."""
    from mnas.bench.files import os_cause
    from mnas.bench.store import ResultsStore

    fmt = fmt or _FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise MnasError(f"{output}: cannot tell the format from the suffix {output.suffix!r} "
                        "(pass --format csv|parquet)")
    with ResultsStore(db_path(ctx), create=False) as store:
        frame = store.measurements_frame()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise MnasError(f"{output}: cannot write: {os_cause(exc)}") from None
    os.close(fd)
    try:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise MnasError(f"parquet export needs pyarrow ({exc}); pip install pyarrow, "
                                "or use --format csv") from None
        os.replace(tmp, output)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full while writing: one line, no half file left
            raise MnasError(f"{output}: cannot write: {os_cause(exc)}") from None
        raise
    click.echo(f"wrote {len(frame)} measurements to {output} ({fmt})")
