"""`mnas results`: look at, export and import what the results store holds.

`list` shows one row per measurement (newest first), then the published figures (phone
latencies others measured and published, imported with `import`; they are flagged, carry
their source, and are never reused as measurements); `export` writes every measurement with
all its queryable conditions to CSV or Parquet for analysis elsewhere, atomically so a reader
never sees half a file. Both only read, so both work on a read-only store. `import` adds a
CSV of published figures (`mnas.bench.published`): all or nothing, idempotent.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from mnas.bench.files import write_atomic
from mnas.cli_util import DefaultGroup, db_path, echo_json, echo_table, iso_at, json_option
from mnas.errors import MnasError

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@click.group(cls=DefaultGroup, default_command="list")
def results() -> None:
    """Stored measurements and published figures: `list` (default), `compare`, `export`, `import`, `ops`."""


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


def _published_row(figure: Any) -> dict[str, Any]:
    return {
        "id": figure.figure_id, "published": True, "device_config": figure.device_name, "model_name": figure.model_name,
        "family": figure.family, "arch": figure.arch, "multiplier": figure.multiplier,
        "resolution": figure.resolution, "latency_ms": figure.latency_ms, "source": figure.source,
        "runtime": figure.runtime, "threads": figure.threads, "column": figure.column, "unit": figure.unit,
        "imported_at": figure.imported_at, "metadata": figure.metadata,
    }


@results.command("list")
@json_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Newest N measurements (and at most N published figures).")
@click.option("--device", "device", default=None,
              help="Only this device: its name (pixel1) or id (serial, host).")
@click.option("--model", "model", default=None,
              help="Only this model: any name it was benchmarked under, its arch string or a sha256 prefix.")
@click.option("--since", "since", default=None, metavar="DATE",
              help="Only figures taken (published ones: imported) at or after DATE: ISO-8601 date or datetime "
                   "(2026-11-30, 2026-11-30T14:00, ...+02:00; local time unless it names a zone).")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool, limit: int, device: str | None, model: str | None,
             since: str | None) -> None:
    """One row per measurement: id, time, device, model (the name given in THAT run), runtime,
    median_ms, cv, throttled, source (measured, or a hand-run log kept with `mnas bench parse --store`);
    then the published figures (not measured here): device, model, latency_ms, source, ...
    `--json` adds `model_labels`: every name the model was benchmarked under."""
    from mnas.bench.hand_log import HAND_RUN_SOURCE
    from mnas.bench.published import published_figures
    from mnas.bench.store import ResultsStore

    since_s = parse_since(since)
    with ResultsStore(db_path(ctx), create=False) as store:
        rows = store.recent_measurements(limit, device=device, model=model, since=since_s)
        labels = store.model_labels([r["model_sha256"] for r in rows])
        figures = [f for f in published_figures(store, device) if _published_matches(f, model, since_s)]
        hand_run = set(store.measurements_with_extra("source", HAND_RUN_SOURCE))
    more_figures = max(0, len(figures) - limit)
    figures = figures[:limit]
    payload = [
        {
            "id": row["id"],
            "measured_at": iso_at(row["timestamp"]),
            "device_config": row["device_name"],
            "device_id": row["device_id"],
            "model_name": row["model_label"] or row["model_sha256"][:12],
            "model_sha256": row["model_sha256"],
            "model_labels": labels.get(row["model_sha256"], []),
            "runtime": row["runtime"],
            "runtime_version": row["runtime_version"],
            "median_ms": row["median_ms"],
            "cv": row["cv"],
            "throttled": bool(row["throttled"]),
            "published": False,
            "source": HAND_RUN_SOURCE if row["id"] in hand_run else "measured",
        }
        for row in rows
    ]
    published = [_published_row(f) for f in figures]
    if as_json:
        echo_json(payload + published)
        return
    if rows or not published:
        echo_table(
            [
                {
                    "id": r["id"], "time": _iso(dt.datetime.fromisoformat(r["measured_at"]).timestamp()), "device": r["device_config"], "model": r["model_name"],
                    "runtime": r["runtime"], "median_ms": "-" if r["median_ms"] is None else f"{r['median_ms']:.3f}",
                    "cv": "-" if r["cv"] is None else f"{r['cv']:.3f}",
                    "throttled": "yes" if r["throttled"] else "no", "source": r["source"],
                }
                for r in payload
            ],
            ["id", "time", "device", "model", "runtime", "median_ms", "cv", "throttled", "source"],
        )
    if published:
        click.echo(("\n" if rows else "") + "published figures (measured elsewhere, not here; never reused as "
                   "measurements):")
        echo_table(
            [
                {
                    "id": r["id"], "device": r["device_config"], "model": r["model_name"], "family": r["family"],
                    "multiplier": f"{r['multiplier']:g}", "resolution": r["resolution"],
                    "latency_ms": f"{r['latency_ms']:.3f}", "runtime": r["runtime"] or "-",
                    "threads": r["threads"] or "-", "source": r["source"],
                }
                for r in published
            ],
            ["id", "device", "model", "family", "multiplier", "resolution", "latency_ms", "runtime", "threads",
             "source"],
        )
        if more_figures:
            click.echo(f"({more_figures} more published figures: raise --limit)")


@results.command("compare")
@click.argument("devices", nargs=-1, required=True)
@click.option("--model", "model", default=None,
              help="Only this model: any name it was benchmarked under, its arch string or a sha256 prefix.")
@click.option("--since", "since", default=None, metavar="DATE",
              help="Only figures taken at or after DATE (ISO-8601 date or datetime, as `results list --since`).")
@click.option("--all-models", "include_single", is_flag=True,
              help="Also list models measured on only one of the devices (default: at least two).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a grouped bar chart (one bar per device, ms) to this .png file.")
@json_option
@click.pass_context
def compare_cmd(ctx: click.Context, devices: tuple[str, ...], model: str | None, since: str | None,
                include_single: bool, plot: Path | None, as_json: bool) -> None:
    """Compare DEVICES (names like pixel4, serials, host; the first is the reference) side by side.

    One row per model measured on at least two of them: each device's headline latency
    (host: minimum, phones: median; the newest figure that is neither throttled nor
    contended), its ratio to the first device, and the conditions that differ between them.
    """
    from mnas.bench.compare import compare_devices, comparison_figure
    from mnas.bench.store import ResultsStore

    if plot is not None:
        from mnas.bench.plots import check_png_path

        check_png_path(plot)
    since_s = parse_since(since)
    with ResultsStore(db_path(ctx), create=False) as store:
        comparison = compare_devices(store, devices, model=model, since=since_s, include_single=include_single)
    if plot is not None:
        if not comparison.rows:
            raise MnasError(f"--plot {plot}: nothing to plot: no model was measured on two of {', '.join(devices)}")
        from mnas.bench.plots import save_png

        save_png(comparison_figure(comparison), plot)
    if as_json:
        echo_json({**comparison.to_dict(), "plot": None if plot is None else str(plot)})
        return
    echo_table([_compare_row(comparison, row) for row in comparison.rows],
               ["model", *(f"{d} ms" for d in devices), *(f"{d}/{devices[0]}" for d in devices[1:]), "differs"])
    stats = ", ".join(f"{d} {s}" for d, s in zip(devices, comparison.statistics, strict=True))
    click.echo(f"latency: each device's headline statistic ({stats}), ms")
    if comparison.single_device_models and not include_single:
        click.echo(f"({comparison.single_device_models} models measured on only one of these devices: "
                   "--all-models lists them)")
    if plot is not None:
        click.echo(f"plot: {plot}")


def _compare_row(comparison: Any, row: Any) -> dict[str, str]:
    """One text row: latencies, ratios to the first device, and `name a/b/c` for each differing condition."""
    out = {"model": row.model_name}
    for device, figure in zip(comparison.devices, row.figures, strict=True):
        out[f"{device} ms"] = "-" if figure is None else f"{figure.latency_ms:.3f}" + (f" ({figure.flag})"
                                                                                        if figure.flag else "")
    for device, ratio in zip(comparison.devices[1:], row.ratios()[1:], strict=True):
        out[f"{device}/{comparison.devices[0]}"] = "-" if ratio is None else f"{ratio:.2f}x"
    out["differs"] = "; ".join(f"{name} {'/'.join(v or '-' for v in values)}"
                               for name, values in row.differences().items()) or "-"
    return out


def parse_since(value: str | None) -> float | None:
    """`--since DATE` as an epoch time: an ISO-8601 date (its midnight) or datetime, local time
    unless it names a zone; anything else is one line (exit 2)."""
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise MnasError(f"--since {value!r}: expected an ISO-8601 date or datetime "
                        "(2026-11-30, 2026-11-30T14:00 or 2026-11-30T14:00:00+02:00)") from None
    return when.timestamp()  # a naive datetime is local time, as `results list` prints it


def _published_matches(figure: Any, model: str | None, since: float | None) -> bool:
    """A published figure passes `--model` (its name or arch) and `--since` (when it was imported)."""
    if model is not None and model not in (figure.model_name, figure.arch):
        return False
    if since is not None:
        imported = dt.datetime.fromisoformat(figure.imported_at)
        if imported.tzinfo is None:
            imported = imported.replace(tzinfo=dt.timezone.utc)  # stored as UTC
        return imported.timestamp() >= since
    return True


@results.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", "device", required=True, help="The phone the figures were measured on (e.g. pixel1).")
@click.option("--source", required=True, help="Where they were published (paper, README, repository file).")
@click.option("--runtime", default=None, help="Runtime the source states (e.g. 'TFLite float').")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads the source states.")
@click.option("--column", default=None,
              help="The latency column (default latency_ms), e.g. latency_ms_pixel1 or 'pixel4|1large|float|mean'.")
@click.option("--unit", type=click.Choice(["ms", "us"]), default=None,
              help="Unit of that column (default: from its name: *_ms is ms, phone|cores|type|stat is us).")
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, device: str, source: str, runtime: str | None,
               threads: int | None, column: str | None, unit: str | None, as_json: bool) -> None:
    """Import published end-to-end latencies from FILE.csv as figures with provenance.

    Columns: model (zoo name, arch string, mobilenet_v1/v2_<m>_<res> or a mapped pytorchcv
    name), multiplier (or depth_multiplier), resolution, and the latency column; the others
    are kept as metadata. A model mnas cannot express is skipped with one warning line; a
    structural error (missing column, bad latency) stores nothing and exits 2. A re-import
    adds nothing.
    """
    from mnas.bench.published import import_published
    from mnas.bench.store import ResultsStore

    with ResultsStore(db_path(ctx)) as store:
        report = import_published(store, file, device=device, source=source, runtime=runtime,
                                  threads=threads, column=column, unit=unit)
    for row, (name, reason) in zip(report.skipped_rows, report.skipped, strict=True):
        click.echo(f"mnas: warning: {file}: row {row}: model {name!r} skipped: {reason}", err=True)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"imported {report.imported} published figures for {report.device} from {file} "
               f"(column {report.column}, {report.unit}); {report.already_stored} already stored, "
               f"{len(report.skipped)} skipped")


@results.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Output format (default: from the file name's suffix).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write.")
@click.pass_context
def export_cmd(ctx: click.Context, fmt: str | None, output: Path) -> None:
    """Every measurement with its conditions (one row each) as CSV or Parquet."""
    from mnas.bench.store import ResultsStore

    fmt = fmt or _FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise MnasError(f"{output}: cannot tell the format from the suffix {output.suffix!r} "
                        "(pass --format csv|parquet)")
    with ResultsStore(db_path(ctx), create=False) as store:
        frame = export_frame(store)

    def write(tmp: str) -> None:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
            return
        try:
            frame.to_parquet(tmp, index=False)
        except ImportError as exc:
            raise MnasError(f"parquet export needs pyarrow ({exc}); pip install pyarrow, "
                            "or use --format csv") from None

    write_atomic(output, write)
    click.echo(f"wrote {len(frame)} measurements to {output} ({fmt})")


def export_frame(store: Any) -> Any:
    """Every measurement with its conditions, plus what a reader needs to use a figure on its own.

    Added to the store's columns: `model_name`, `resolution` (zoo/arch networks), `headline_statistic`
    and `headline_ms` (min on the host, median on phones: `bench.types.headline_statistic`),
    `measured_at` (ISO-8601), `phone_model` and `android_build` (phones; null on the host), and the
    contention guard's `contended` / `child_cpu_share` (host). Types are the same from CSV and
    Parquet: an empty text is missing in both, a column with no value at all is float NaN in both
    (CSV cannot tell its type), and
    `pinned_cores` is a JSON list ("[4]"), not a number CSV would read back as one.
    """
    from mnas.bench.types import headline_statistic

    frame = store.measurements_frame()
    devices = {row[0]: row[1:] for row in store.read(
        "SELECT device_id, kind, model, json_extract(profile_json, '$.android_build') FROM devices")}
    extras = {row[0]: row[1:] for row in store.read(
        "SELECT id, json_extract(measurement_json, '$.extra.resolution'), json_extract(measurement_json, "
        "'$.extra.contended'), json_extract(measurement_json, '$.extra.child_cpu_share') FROM measurements")}
    phone = [devices.get(d, (None, None, None)) for d in frame["device_id"]]
    extra = [extras.get(i, (None, None, None)) for i in frame["id"]]
    statistics = [headline_statistic(name) for name in frame["device_name"]]
    frame["model_name"] = frame["label"]
    frame["resolution"] = [e[0] for e in extra]
    frame["headline_statistic"] = statistics
    frame["headline_ms"] = [row["min_ms"] if stat == "min" else row["median_ms"]
                            for stat, (_, row) in zip(statistics, frame.iterrows(), strict=True)]
    frame["measured_at"] = [iso_at(t) for t in frame["timestamp"]]
    frame["phone_model"] = [p[1] if p[0] == "adb" else None for p in phone]
    frame["android_build"] = [p[2] if p[0] == "adb" else None for p in phone]
    frame["contended"] = [None if e[1] is None else bool(e[1]) for e in extra]
    frame["child_cpu_share"] = [e[2] for e in extra]
    frame["pinned_cores"] = [json.dumps([int(c) for c in str(v).split(",") if c.strip()]) if v is not None else "[]"
                             for v in frame["pinned_cores"]]
    import pandas as pd

    for column in frame.columns:  # CSV reads "" as missing, and a column of nothing but missing as float
        if pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column]):
            values = frame[column].replace("", None)
            frame[column] = values.astype("float64") if values.isna().all() else values
    return frame


_OPS_FORMATS = {".csv": "csv", ".json": "json"}


@results.command("ops")
@click.argument("measurement_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default=None,
              help="Format of -o FILE (default: from its suffix, .csv or .json).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the op table to this file instead of printing it.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Only the N ops with the largest share of time (default: every op, in run order).")
@json_option
@click.pass_context
def ops_cmd(ctx: click.Context, measurement_id: int, fmt: str | None, output: Path | None, top: int | None,
            as_json: bool) -> None:
    """The per-op profile stored with measurement ID (`mnas bench --profile-ops` on a phone).

    One row per node: run_order, node_type, name, avg_ms, percent (of the total), cdf_percent,
    first_ms, start_ms, mem_kb, times_called. A measurement without one (any host run: the
    LiteRT Python interpreter has no op profiler) gives `"op_profile": null` and the reason
    in `op_profile_note` (and on stderr); writing it to a file is then an error (exit 2).
    """
    from mnas.bench.op_profile import OP_COLUMNS, missing_profile_note, op_rows, top_ops
    from mnas.bench.store import ResultsStore

    if output is not None:
        fmt = fmt or _OPS_FORMATS.get(output.suffix.lower())
        if fmt is None:
            raise MnasError(f"{output}: cannot tell the format from the suffix {output.suffix!r} "
                            "(pass --format csv|json)")
    with ResultsStore(db_path(ctx), create=False) as store:
        profile = store.op_profile(measurement_id)
        m = store.get_measurement(measurement_id)
    rows = op_rows(profile) if profile is not None else None
    if rows is not None and top is not None:
        rows = top_ops(rows, top)
    note = None if profile is not None else missing_profile_note(m) or "no op profile stored"
    payload = {"measurement_id": measurement_id, "device_config": m.device_name, "device_id": m.device_id,
               "model_sha256": m.model_sha256, "model_path": m.model_path, "runtime": m.runtime,
               "median_ms": m.median_ms, "op_profile": rows, "op_profile_note": note}
    if output is not None:
        if rows is None:
            raise MnasError(f"measurement {measurement_id}: nothing to write to {output}: {note}")
        if fmt == "csv":
            import pandas as pd

            write_atomic(output, lambda tmp: pd.DataFrame(rows, columns=list(OP_COLUMNS)).to_csv(tmp, index=False))
        else:
            from mnas.json_safe import json_safe

            write_atomic(output, lambda tmp: Path(tmp).write_text(json.dumps(json_safe(payload), indent=2)))
        click.echo(f"wrote {len(rows)} ops of measurement {measurement_id} to {output} ({fmt})")
        return
    if note is not None:
        click.echo(f"note: measurement {measurement_id}: {note}", err=True)
    if as_json:
        echo_json(payload)
        return
    if rows is not None:
        echo_table([{**row, "avg_ms": f"{row['avg_ms']:.3f}", "percent": f"{row['percent']:.3f}"} for row in rows],
                   ["run_order", "node_type", "avg_ms", "percent", "times_called", "name"])
