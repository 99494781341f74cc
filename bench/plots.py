"""Figures mnas writes as PNG files: one way to make them, label them and write them.

Why it is built this way:
- Figures are built on a `matplotlib.figure.Figure` with the Agg canvas, never through
  `pyplot`: no global figure state, safe from worker threads, no display needed. Builders
  return the Figure before anything is written, so tests read its texts (title, legend,
  tick labels) instead of trusting a file exists.
- A PNG read on its own, away from the command that wrote it, must say what it shows: every
  figure names its device(s), its run (when and what) and its units (`describe_run`), and
  counts (children, samples) get integer ticks.
- Files are written atomically (a temporary file beside the target, then a rename), so a
  reader never opens half a PNG and a failed write leaves the old one in place.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mnas.errors import MnasError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mnas.bench.types import Measurement

# above this ratio between the largest and the smallest bar, a linear axis hides the small ones
LOG_SCALE_SPREAD = 50.0


def new_figure(width_in: float, height_in: float, dpi: int = 110) -> tuple[Figure, Axes]:
    """A Figure with one Axes on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def integer_ticks(axes: Axes, *, x: bool = False, y: bool = False) -> None:
    """Only whole numbers on the chosen axes (child indices, counts): no "2.5 children"."""
    from matplotlib.ticker import MaxNLocator

    if x:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def utc_time(timestamp: float) -> str:
    """An epoch time as a short UTC text for figure titles (2026-11-30 14:05 UTC)."""
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def describe_run(timestamps: Sequence[float]) -> str:
    """When the figures of a plot were taken: one time, or the first and last day."""
    if not timestamps:
        return "no measurements"
    first, last = utc_time(min(timestamps)), utc_time(max(timestamps))
    if first == last:
        return f"measured {first}"
    return f"measured {first} .. {last}"


def check_png_path(path: str | Path) -> Path:
    """`--plot FILE` must name a .png file: checked before any work, one line (exit 2) if not."""
    path = Path(path)
    if path.suffix.lower() != ".png" or path.is_dir():
        raise MnasError(f"--plot {path}: expected a .png file name")
    return path


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write `figure` to `path` as PNG, atomically; one MnasError line when it cannot be written."""
    from mnas.bench.files import write_atomic

    path = check_png_path(path)
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"), what="the plot", suffix=".png")


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str,
                 subtitle: str, unit: str = "ms", value_name: str = "latency",
                 marks: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """One cluster of bars per group (model), one bar per series (device); None leaves a gap.

    Bars carry their value (and `marks[series][i]` after it, e.g. "*" for a flagged figure);
    the y axis is logarithmic when the bars span more than LOG_SCALE_SPREAD (whole networks
    beside single layers), and says so.
    """
    import numpy as np

    if not groups or not series:
        raise MnasError("nothing to plot: no figures")
    width = max(6.0, min(24.0, 1.2 + 0.45 * len(groups) * max(2, len(series))))
    figure, axes = new_figure(width, 4.8)
    values = [v for column in series.values() for v in column if v is not None and math.isfinite(v) and v > 0]
    log = bool(values) and max(values) / min(values) > LOG_SCALE_SPREAD
    x = np.arange(len(groups))
    bar_width = 0.8 / len(series)
    for index, (name, column) in enumerate(series.items()):
        heights = [math.nan if v is None else v for v in column]
        bars = axes.bar(x + (index - (len(series) - 1) / 2) * bar_width, heights, bar_width, label=name)
        extra = (marks or {}).get(name) or [""] * len(column)
        axes.bar_label(bars, labels=["" if v is None else f"{v:.3g}{m}" for v, m in zip(column, extra, strict=True)],
                       fontsize=7, padding=1)
    axes.set_xticks(x)
    axes.set_xticklabels(list(groups), rotation=25 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center",
                         fontsize=8)
    if log:
        axes.set_yscale("log")
    axes.set_ylabel(f"{value_name} ({unit}{', log scale' if log else ''})")
    axes.set_title(f"{title}\n{subtitle}", fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def bench_run_figure(results: Sequence[tuple[str, Measurement]]) -> Figure:
    """The bar chart of one `mnas bench` run: (model label, measurement) pairs, one bar per device.

    Each device's bar is its headline statistic (host: min, phones: median), named in the
    legend; a figure the reuse rule would not reuse (throttled, contended) is marked "*".
    Two phones of one model are told apart by serial.
    """
    from mnas.bench.measure import reuse_blocker
    from mnas.bench.types import headline_statistic

    if not results:
        raise MnasError("nothing to plot: no model was measured in this run")
    ids_by_name: dict[str, set[str]] = {}
    for _, m in results:
        ids_by_name.setdefault(m.device_name, set()).add(m.device_id)

    def device_label(m: Measurement) -> str:
        name = m.device_name if len(ids_by_name[m.device_name]) == 1 else f"{m.device_name} {m.device_id}"
        return f"{name} ({headline_statistic(m.device_name)})"

    models = list(dict.fromkeys(label for label, _ in results))
    devices = sorted({device_label(m) for _, m in results})
    series: dict[str, list[float | None]] = {d: [None] * len(models) for d in devices}
    marks: dict[str, list[str]] = {d: [""] * len(models) for d in devices}
    for label, m in results:
        device, index = device_label(m), models.index(label)
        series[device][index] = _headline_ms(m)
        marks[device][index] = "*" if reuse_blocker(m.throttled, m.extra) else ""
    config = results[0][1].config
    flagged = any("*" in mark for column in marks.values() for mark in column)
    return grouped_bars(
        models, series, marks=marks,
        title=f"mnas bench: {', '.join(dict.fromkeys(d.rsplit(' (', 1)[0] for d in devices))}",
        subtitle=f"{describe_run([m.timestamp for _, m in results])}; threads {config.num_threads}, "
                 f">= {config.num_runs} runs after {config.warmup_runs} warm-up"
                 + ("; * throttled or contended" if flagged else ""))


def _headline_ms(m: Measurement) -> float | None:
    """The device's headline latency of `m` in ms, or None when its tool printed no median."""
    from mnas.bench.types import latency_ms

    try:
        return latency_ms(m)
    except MnasError:
        return None
