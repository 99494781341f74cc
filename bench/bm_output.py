"""Read the text TensorFlow Lite's `benchmark_model` prints, every version of it.

benchmark_model is the reference latency tool on phones; its output changed over the years
(TF 1.x to LiteRT) and reaches us through adb, logcat or pasted logs. This module reads all of
it with ONE line-oriented grammar and no per-version or per-file special cases.

Grammar. Each line first loses any log prefix, repeatedly: TensorFlow/glog prefixes
(`2018-09-10 12:36:26.1: I file.cc:361] `, `I0910 12:36:26.1 123 file.cc:361] `), logcat
prefixes (`09-10 12:36:26.100 123 456 I tflite  : `, `I/tflite( 123): `) and TFLite's own
severity prefixes (`INFO: `, `WARNING: `, `ERROR: `, `VERBOSE: `...). The rest is then, in
this order of rules:

1. inside an op-profiling table: a row (columns given by the table's header line); a blank
   line or a line without any `%` column ends the table; a line with `%` that is not a row of
   this table is an error;
2. a profiling section header (`Profiling Info for Benchmark Initialization:` /
   `Operator-wise Profiling Info for Regular Benchmark Runs:`), a table title
   (`===== Run Order =====`), or a table header (`[node type] [start] [first] ...`);
3. a stats record: any line with `key=number` tokens starting at `count=` (text before the
   first token is log noise), e.g. `count=50 first=32891 curr=33978 min=32641 max=34005
   avg=33209.4 std=450 [p5=.. median=.. p95=..]`, or the all-equal forms `count=1 curr=X`
   and `count=N curr=X(all same)`. The first bare stats record is the warm-up, the second the
   timed inference (benchmark_model prints them in that order); a third means the text holds
   more than one benchmark and is an error. Records labelled `Timings (microseconds):` or
   `Memory (bytes):` are the profiler's footer: checked, not kept;
4. `Initialized session in X ms.`: init time (used when no summary line gives `Init`);
5. the summary: `Inference timings in us: Init: I, First inference: F, Warmup (avg): W,
   Inference (avg): A` (TF >= 2.2) or `Average inference timings in us: Warmup: W, Init: I,
   no stats: A` (TF 1.x-2.1). "no stats" is the timed runs' average: TensorFlow's
   benchmark_model (which TFLite's copied) timed the graph once without per-node stats
   collection ("no stats") and once with it ("with stats"); only the former is a latency.
   The Android app's `Inference: A` variant and an `Overall <memory usage>` tail glued to it
   are read too. Every item must be a known key with a number;
6. memory: `Peak memory footprint (MB): init=X overall=Y` (TF 2.2-2.4),
   `Memory footprint delta from the start of the tool (MB): init=X overall=Y` (later),
   `Overall peak memory footprint (MB) via periodic monitoring: Z`, and
   `[Init Phase] / [Overall] - Memory usage: max resident set size = X MB, ...` (TF <= 2.1,
   whose "init"/"overall" figures are max RSS, not deltas: the numbers are kept as printed);
7. a parameter line `Name: [value]` (`Num threads: [1]`, `Graph: [m.tflite]`): kept in
   `params`;
8. anything else is log noise and skipped on purpose: `STARTING!`, `Loaded model ...`,
   `Running benchmark for ...`, `The input model file size ...`, delegate / VERBOSE lines,
   `Note: ...`, `Memory status at the end of exeution:` and its `- VmRSS` lines, blank lines.

A line that matches a record's key phrase but not its grammar (a stats line with a
non-number, a summary item with an unknown key, a malformed table row) raises
`BenchmarkParseError` naming the line number and the line: wrong numbers are never guessed.

Impossible numbers. A record that follows its grammar but holds a number no run can
produce is rejected as a whole (none of its figures are kept) and makes the output
incomplete; `rejected` names each such line. The bounds, one per kind of figure:

* times (stats records in us, summary items in us, `Initialized session in X ms`, op-table
  ms columns): finite, >= 0 and at most one day (`MAX_TIME_US`); a stats record's `std`
  finite and >= 0; every other figure of a stats record (first, curr, avg, median,
  percentiles) within [min, max], give or take the 6 significant digits benchmark_model
  prints (`_PRINT_TOLERANCE`);
* run counts (`count=`): a whole number in [0, `MAX_RUN_COUNT`] (10^9 runs: at 1 us a run
  that is 17 minutes of back-to-back inference, far past any benchmark_model setting); and
  when the summary gives an inference average, the timed runs' record must have run at
  least once (`count=0` there is the NaN average of no runs);
* memory (MB figures, max RSS, op-table `mem KB`, the profiler's `Memory (bytes)` footer):
  finite, >= 0 and at most `MAX_MEMORY_MB` (1 TiB);
* op-table percentages: finite, in [0, 101] (the cdf column may round a little past 100).

`complete` is True only when the final summary line with the inference average is present
and no line was rejected: output cut short (killed run, truncated paste) is readable but not
complete, and `require_complete` turns that into a `MeasurementError` naming the reason.

Every message that quotes a line (or a token of one) goes through `quote_line`, which cuts it
to `QUOTE_LIMIT` (200) characters: a runaway line never floods a terminal or a store column. Writing that text back (for the
host's benchmark_model stand-in) is `bench/bm_format.py`'s job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from mnas.bench.types import LatencyStats, OpProfileRow
from mnas.errors import MeasurementError, MnasError

__all__ = [
    "REGULAR_SECTION",
    "RUN_ORDER",
    "SUMMARY_BY_TYPE",
    "BenchmarkOutput",
    "MAX_MEMORY_MB",
    "MAX_RUN_COUNT",
    "MAX_TIME_US",
    "QUOTE_LIMIT",
    "BenchmarkParseError",
    "parse_benchmark_output",
    "quote_line",
    "require_complete",
]

MAX_TIME_US = 86_400e6  # one day: no single run, init or average is longer
MAX_RUN_COUNT = 10**9
MAX_MEMORY_MB = 1024.0 * 1024.0  # 1 TiB
_MAX_PERCENT = 101.0
_PRINT_TOLERANCE = 1e-5  # benchmark_model prints 6 significant digits
QUOTE_LIMIT = 200

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_NUM_RE = re.compile(rf"(?:{_NUM})", re.IGNORECASE)

_PREFIXES = (
    re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?:? [IWEF] \S+:\d+\] ?"),  # TF logging
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d(?:\.\d+)?\s+\d+ \S+:\d+\] ?"),  # glog / absl
    re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEFA] [^:]*: ?"),  # logcat threadtime
    re.compile(r"^[VDIWEFA]/[^(:]*\(\s*\d+\): ?"),  # logcat brief
    re.compile(r"^(?:INFO|WARNING|WARN|ERROR|VERBOSE|DEBUG|FATAL): ?"),  # TFLite minimal logging
)
_ERROR_PREFIX = re.compile(r"^(?:ERROR|FATAL): ?|^[EF]/|^\d\d-\d\d \S+\s+\d+\s+\d+\s+[EF] ")

_STATS_KEYS = {"count", "first", "curr", "min", "max", "avg", "std", "median"}
_PERCENTILE_KEY = re.compile(r"p\d{1,2}")
_FIRST_TOKEN = re.compile(r"[A-Za-z_]\w*=")

_TITLE = re.compile(r"^=+\s*(?P<title>.*?)\s*=+$")
_PARAM = re.compile(r"^(?P<key>[^\[\]:=]+?):\s*\[(?P<value>.*)\]\s*$")
_SESSION = re.compile(rf"^Initialized session in\s*(?P<ms>{_NUM})\s*ms\.?$", re.IGNORECASE)
_SUMMARY_ITEM = re.compile(rf"^(?:(?P<key>[A-Za-z][A-Za-z ()]*?)\s*:\s*)?(?P<value>{_NUM})$", re.IGNORECASE)
_MEM_INIT_OVERALL = re.compile(
    rf"^(?:Peak memory footprint|Memory footprint delta from the start of the tool) \(MB\):"
    rf"\s*init=(?P<init>{_NUM})\s+overall=(?P<overall>{_NUM})$",
    re.IGNORECASE,
)
_MEM_PEAK = re.compile(rf"^Overall peak memory footprint \(MB\) via periodic monitoring:\s*(?P<peak>{_NUM})$")
_MEM_USAGE = re.compile(
    r"^\[(?P<phase>[^\]]+)\] - Memory usage: (?P<usage>.*)$"
)
_RSS = re.compile(
    rf"^max resident set size = (?P<rss>{_NUM}) MB, total malloc-ed size = (?P<malloc>{_NUM}) MB$"
)

# summary keys -> BenchmarkOutput attribute (None: a known key that carries no latency we keep)
_SUMMARY_KEYS: dict[str, str | None] = {
    "init": "init_us",
    "first inference": "first_us",
    "warmup (avg)": "warmup_avg_us",
    "inference (avg)": "inference_avg_us",
    "warmup": "warmup_avg_us",
    "no stats": "inference_avg_us",
    "inference": "inference_avg_us",
    "with stats": None,  # TF's per-node-stats run: slowed by the stats collection itself
}

# op-profiling table columns (normalised header text) -> (field, kind)
_OP_COLUMNS: dict[str, tuple[str, str]] = {
    "start": ("start_ms", "num"),
    "first": ("first_ms", "num"),
    "avg ms": ("avg_ms", "num"),
    "%": ("percent", "pct"),
    "cdf%": ("cdf_percent", "pct"),
    "mem kb": ("mem_kb", "num"),
    "times called": ("times_called", "int"),
}
_SUMMARY_COLUMNS: dict[str, tuple[str, str]] = {
    "count": ("count", "int"),
    "avg ms": ("avg_ms", "num"),
    "avg %": ("avg_percent", "pct"),
    "cdf %": ("cdf_percent", "pct"),
    "mem kb": ("mem_kb", "num"),
    "times called": ("times_called", "int"),
}
_REQUIRED_OP = {"first", "avg ms", "%", "cdf%", "mem kb", "times called", "name"}
_REQUIRED_SUMMARY = set(_SUMMARY_COLUMNS)

RUN_ORDER = "Run Order"
SUMMARY_BY_TYPE = "Summary by node type"
REGULAR_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs:"
_INIT_SECTION = "Profiling Info for Benchmark Initialization:"


class BenchmarkParseError(MnasError):
    """A line looks like one of benchmark_model's records but does not follow its grammar."""


@dataclass
class BenchmarkOutput:
    """Everything one benchmark_model run printed that the project uses (times in us)."""

    params: dict[str, str]
    init_us: float | None
    first_us: float | None  # first inference (the first warm-up run)
    warmup_avg_us: float | None
    inference_avg_us: float | None
    warmup: LatencyStats | None
    inference: LatencyStats | None
    init_memory_mb: float | None
    overall_memory_mb: float | None
    peak_memory_mb: float | None  # "via periodic monitoring"
    op_profile: list[OpProfileRow] | None
    op_summary: list[dict[str, Any]] | None
    complete: bool
    # the stats lines' first= and curr= (LatencyStats has no place for them)
    warmup_first_us: float | None = None
    warmup_curr_us: float | None = None
    inference_first_us: float | None = None
    inference_curr_us: float | None = None
    errors: list[str] = field(default_factory=list)  # lines the tool logged as ERROR
    # "line N: why: 'the line'" for each record rejected for an impossible number
    rejected: list[str] = field(default_factory=list)

    @property
    def has_figures(self) -> bool:
        """Whether any timing, memory or profiling record was read (params alone are not output)."""
        figures = (self.init_us, self.first_us, self.warmup_avg_us, self.inference_avg_us, self.warmup,
                   self.inference, self.init_memory_mb, self.overall_memory_mb, self.peak_memory_mb,
                   self.op_profile, self.op_summary, self.warmup_first_us, self.inference_first_us)
        return any(value is not None for value in figures) or bool(self.rejected)


@dataclass
class _Table:
    title: str
    section: str | None
    columns: list[str]
    pattern: re.Pattern[str]
    fields: list[tuple[str, str]]  # (field, kind) of each numeric column, in order
    kind: str  # "op" or "summary"
    rows: list[Any] = field(default_factory=list)


def quote_line(text: str, limit: int = QUOTE_LIMIT, *, quoted: bool = True) -> str:
    """`text` stripped for an error message (quoted unless `quoted=False`), cut to `limit` characters."""
    text = text.strip()
    cut = len(text) > limit
    shown = text[:limit] if cut else text
    shown = repr(shown) if quoted else shown
    return f"{shown}... ({len(text)} characters, cut)" if cut else shown


def _fail(lineno: int, what: str, raw: str, source: str | None) -> BenchmarkParseError:
    where = f"{source}: " if source else ""
    return BenchmarkParseError(f"{where}benchmark output line {lineno}: {what}: {quote_line(raw)}")


def _bad_time(value: float) -> bool:
    return not (math.isfinite(value) and 0.0 <= value <= MAX_TIME_US)


def _bad_memory(value: float, scale: float = 1.0) -> bool:
    return not (math.isfinite(value) and 0.0 <= value <= MAX_MEMORY_MB * scale)


def _bad_count(value: float) -> bool:
    return not (math.isfinite(value) and value == int(value) and 0 <= value <= MAX_RUN_COUNT)


def _impossible(checks: dict[str, tuple[float, str]]) -> str | None:
    """The first figure out of its bounds (module docstring), as `name=value is ...`; None when all fit."""
    for name, (value, kind) in checks.items():
        if kind == "time" and _bad_time(value):
            return f"{name}={value:g} is not a time in [0, {MAX_TIME_US:g}] us"
        if kind == "time_ms" and _bad_time(value * 1000.0):
            return f"{name}={value:g} is not a time in [0, {MAX_TIME_US / 1000.0:g}] ms"
        if kind == "memory" and _bad_memory(value):
            return f"{name}={value:g} is not a memory size in [0, {MAX_MEMORY_MB:g}] MB"
        if kind == "memory_kb" and _bad_memory(value, 1024.0):
            return f"{name}={value:g} is not a memory size in [0, {MAX_MEMORY_MB * 1024.0:g}] KB"
        if kind == "percent" and not (math.isfinite(value) and 0.0 <= value <= _MAX_PERCENT):
            return f"{name}={value:g}% is not a percentage"
        if kind == "count" and _bad_count(value):
            return f"{name}={value:g} is not a run count in [0, {MAX_RUN_COUNT}]"
    return None


def _impossible_stats(values: dict[str, float], footer: str | None) -> str | None:
    """Why a stats record cannot be real (module docstring), or None. `footer`: the profiler label."""
    problem = _impossible({"count": (values["count"], "count")})
    if problem is not None:
        return problem
    if footer == "Memory (bytes):":
        return _impossible({key: (value / 2**20, "memory") for key, value in values.items() if key != "count"})
    problem = _impossible({key: (value, "time") for key, value in values.items() if key != "count"})
    if problem is not None or "min" not in values:
        return problem
    low, high = values["min"], values["max"]
    if low > high:
        return f"min={low:g} is above max={high:g}"
    slack_low, slack_high = low * (1 - _PRINT_TOLERANCE) - 0.5, high * (1 + _PRINT_TOLERANCE) + 0.5
    for key, value in values.items():
        if key not in ("count", "std", "min", "max") and not slack_low <= value <= slack_high:
            return f"{key}={value:g} is outside min={low:g} .. max={high:g}"
    return None


def _strip_prefixes(line: str) -> tuple[str, bool]:
    """The line without log prefixes, and whether one of them marked it as an error."""
    text = line.rstrip("\r\n")
    is_error = False
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            match = prefix.match(text)
            if match:
                is_error = is_error or bool(_ERROR_PREFIX.match(match.group(0)))
                text = text[match.end():]
                changed = True
    return text, is_error


def _number(text: str) -> float:
    return float(text)


def _parse_stats(body: str) -> dict[str, float]:
    """`key=value` tokens of a stats record; ValueError with the reason when they do not parse."""
    all_same = "(all same)" in body
    body = body.replace("(all same)", " ")
    values: dict[str, float] = {}
    for token in body.split():
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"unexpected text {quote_line(token, 40)}")
        if key not in _STATS_KEYS and not _PERCENTILE_KEY.fullmatch(key):
            raise ValueError(f"unknown field {quote_line(key, 40)}")
        if key in values:
            raise ValueError(f"field {key!r} given twice")
        if not _NUM_RE.fullmatch(value):
            raise ValueError(f"{key}={quote_line(value, 40)} is not a number")
        values[key] = _number(value)
    if "count" not in values:
        raise ValueError("no count=")
    count = values["count"]
    if not _bad_count(count) and count > 0:  # an impossible count is rejected by _impossible_stats
        full = {"min", "max", "avg", "std"}
        if not full <= values.keys():
            if "curr" not in values or (values.keys() & full) or (count > 1 and not all_same):
                missing = sorted(full - values.keys())
                raise ValueError(f"missing {', '.join(m + '=' for m in missing)}")
    return values


def _stats(values: dict[str, float]) -> LatencyStats | None:
    count = int(values["count"])
    if count == 0:
        return None
    if "avg" not in values:  # every run took the same time: count=N curr=X
        same = values["curr"]
        return LatencyStats(count, same, 0.0, same, same, same, same, same, same)
    return LatencyStats(
        count=count,
        mean_us=values["avg"],
        std_us=values["std"],
        min_us=values["min"],
        max_us=values["max"],
        median_us=values.get("median", values.get("p50")),
        p90_us=values.get("p90"),
        p5_us=values.get("p5"),
        p95_us=values.get("p95"),
    )


def _norm_column(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _make_table(title: str, section: str | None, header: str) -> _Table:
    """Build the row grammar of one table from its header line; ValueError when unknown."""
    columns = [_norm_column(c) for c in re.findall(r"\[([^\]]*)\]", header)]
    if not columns or columns[0] != "node type":
        raise ValueError("a table header must start with [node type]")
    rest = columns[1:]
    kind = "op" if "name" in rest else "summary"
    known = _OP_COLUMNS if kind == "op" else _SUMMARY_COLUMNS
    required = _REQUIRED_OP if kind == "op" else _REQUIRED_SUMMARY
    missing = required - set(rest)
    if missing:
        raise ValueError(f"table header lacks {', '.join('[' + m + ']' for m in sorted(missing))}")
    if kind == "op" and rest[-1] != "name":
        raise ValueError("[Name] must be the last column")
    numeric = [c for c in rest if c != "name"]
    unknown = [c for c in numeric if c not in known]
    if unknown:
        raise ValueError(f"unknown column [{unknown[0][:40]}]")
    parts = [r"^\s*(?P<node_type>\S.*?)"]
    fields = []
    for column in numeric:
        name, col_kind = known[column]
        fields.append((name, col_kind))
        number = r"\d+" if col_kind == "int" else f"(?:{_NUM})"
        parts.append(rf"\s+({number}){'%' if col_kind == 'pct' else ''}")
    parts.append(r"(?:\s+(?P<name>.*?))?\s*$" if kind == "op" else r"\s*$")
    return _Table(title, section, columns, re.compile("".join(parts), re.IGNORECASE), fields, kind)


_ROW_BOUNDS = {"start_ms": "time_ms", "first_ms": "time_ms", "avg_ms": "time_ms", "percent": "percent",
               "cdf_percent": "percent", "avg_percent": "percent", "mem_kb": "memory_kb"}


def _table_row(table: _Table, text: str) -> tuple[bool, str | None]:
    """Whether `text` is a row of `table` (kept unless it holds an impossible number), and why not kept."""
    match = table.pattern.match(text)
    if match is None:
        return False, None
    values: dict[str, Any] = {}
    for (name, col_kind), raw in zip(table.fields, match.groups()[1:], strict=False):
        values[name] = int(raw) if col_kind == "int" else float(raw)
    problem = _impossible({name: (value, _ROW_BOUNDS[name]) for name, value in values.items() if name in _ROW_BOUNDS})
    if problem is not None:
        return True, problem
    node_type = match.group("node_type").strip()
    if table.kind == "op":
        table.rows.append(
            OpProfileRow(
                node_type=node_type,
                start_ms=values.get("start_ms", math.nan),
                first_ms=values["first_ms"],
                avg_ms=values["avg_ms"],
                percent=values["percent"],
                cdf_percent=values["cdf_percent"],
                mem_kb=values["mem_kb"],
                times_called=values["times_called"],
                name=(match.group("name") or "").strip(),
            )
        )
    else:
        table.rows.append({"node_type": node_type, **values})
    return True, None


def _parse_summary(text: str) -> tuple[dict[str, float], str | None]:
    """Items of a summary line, and an `Overall <memory usage>` tail glued to it (Android app)."""
    body = text.split("in us:", 1)[1]
    memory_tail = None
    glued = re.search(r"(?<=[\d.])\s*Overall\s+", body)
    if glued:
        body, memory_tail = body[: glued.start()], body[glued.end():]
    values: dict[str, float] = {}
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        match = _SUMMARY_ITEM.match(item)
        if match is None:
            raise ValueError(f"summary item {quote_line(item, 40)} is not 'Name: number'")
        key = _norm_column(match.group("key") or "no stats")  # bare number: the TF 1.x average
        if key not in _SUMMARY_KEYS:
            raise ValueError(f"unknown summary item {quote_line(match.group('key'), 40)}")
        attribute = _SUMMARY_KEYS[key]
        if attribute is not None:
            values[attribute] = _number(match.group("value"))
    return values, memory_tail


def _parse_rss(usage: str) -> float:
    match = _RSS.match(usage.strip())
    if match is None:
        raise ValueError("memory usage is not 'max resident set size = X MB, total malloc-ed size = Y MB'")
    return _number(match.group("rss"))


def _looks_like_row(text: str) -> bool:
    return "%" in text and len(_NUM_RE.findall(text)) >= 3


def parse_benchmark_output(text: str, *, source: str | None = None) -> BenchmarkOutput:
    """Parse benchmark_model's printed output (see the module docstring for the grammar)."""
    params: dict[str, str] = {}
    found: dict[str, float] = {}  # values from the summary / memory / session lines
    session_init_us: float | None = None
    stats_lines: list[tuple[int, str, dict[str, float] | None]] = []  # (line number, line, values or rejected)
    tables: list[_Table] = []
    errors: list[str] = []
    rejected: list[str] = []

    def reject(lineno: int, why: str, raw: str) -> None:
        rejected.append(f"line {lineno}: {why}: {quote_line(raw)}")

    table: _Table | None = None
    section: str | None = None
    pending_title: str | None = None
    summary_seen = False
    summary_lineno = 0

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line, is_error = _strip_prefixes(raw)
        stripped = line.strip()
        if is_error and stripped:
            errors.append(stripped)

        if table is not None:
            if not stripped:
                table = None
                continue
            matched, problem = _table_row(table, line)
            if problem is not None:
                reject(lineno, f"impossible figure in a row of the '{table.title}' table ({problem})", raw)
            if matched:
                continue
            if _looks_like_row(stripped):
                raise _fail(lineno, f"malformed row of the '{table.title}' table", raw, source)
            table = None  # the table ended; read this line by the other rules

        if not stripped:
            continue
        if _INIT_SECTION in stripped:
            section, pending_title = "init", None
            continue
        if REGULAR_SECTION in stripped:
            section, pending_title = "regular", None
            continue
        title = _TITLE.match(stripped)
        if title:
            pending_title = title.group("title")
            continue
        if "[node type]" in stripped.lower():
            try:
                table = _make_table(pending_title or RUN_ORDER, section, stripped)
            except ValueError as exc:
                raise _fail(lineno, f"unreadable table header ({exc})", raw, source) from None
            tables.append(table)
            pending_title = None
            continue

        first_token = _FIRST_TOKEN.search(stripped)
        if re.search(r"(?:^|\s)count=", stripped) and first_token:
            label = stripped[: first_token.start()].strip()
            try:
                values = _parse_stats(stripped[first_token.start():])
            except ValueError as exc:
                raise _fail(lineno, f"malformed stats line ({exc})", raw, source) from None
            footer = next((f for f in ("Timings (microseconds):", "Memory (bytes):") if label.endswith(f)), None)
            problem = _impossible_stats(values, footer)
            if problem is not None:
                reject(lineno, f"impossible figure in a stats line ({problem})", raw)
            if footer is not None:
                continue  # op profiler's footer: checked above, not kept
            if len(stats_lines) == 2:
                raise _fail(lineno, "a third timing stats line: the output holds more than one benchmark", raw, source)
            stats_lines.append((lineno, raw, None if problem else values))
            continue

        if stripped.lower().startswith("initialized session in"):
            match = _SESSION.match(stripped)
            if match is None:
                raise _fail(lineno, "malformed init line (expected 'Initialized session in X ms.')", raw, source)
            problem = _impossible({"init": (_number(match.group("ms")), "time_ms")})
            if problem is not None:
                reject(lineno, f"impossible init time ({problem})", raw)
            else:
                session_init_us = round(_number(match.group("ms")) * 1000.0, 3)
            continue

        if "inference timings in us:" in stripped.lower():
            try:
                values, memory_tail = _parse_summary(stripped)
                rss = _parse_rss(memory_tail) if memory_tail is not None else None
            except ValueError as exc:
                raise _fail(lineno, f"malformed timing summary ({exc})", raw, source) from None
            checks = {name.removesuffix("_us"): (value, "time") for name, value in values.items()}
            if rss is not None:
                checks["max resident set size"] = (rss, "memory")
            problem = _impossible(checks)
            if problem is not None:
                reject(lineno, f"impossible figure in the timing summary ({problem})", raw)
                summary_lineno = summary_lineno or lineno
                continue
            if rss is not None:
                found["overall_memory_mb"] = rss
            found.update(values)
            if "inference_avg_us" in values and not summary_seen:
                summary_seen, summary_lineno = True, lineno
            continue

        if stripped.startswith(("Peak memory footprint", "Memory footprint delta", "Overall peak memory footprint")):
            match = _MEM_INIT_OVERALL.match(stripped)
            peak = _MEM_PEAK.match(stripped)
            if match:
                figures = {"init": _number(match.group("init")), "overall": _number(match.group("overall"))}
            elif peak:
                figures = {"peak": _number(peak.group("peak"))}
            else:
                raise _fail(lineno, "malformed memory line", raw, source)
            problem = _impossible({name: (value, "memory") for name, value in figures.items()})
            if problem is not None:
                reject(lineno, f"impossible memory figure ({problem})", raw)
                continue
            for name, value in figures.items():
                found[f"{name}_memory_mb"] = value
            continue
        usage = _MEM_USAGE.match(stripped)
        if usage:
            phase = usage.group("phase").strip().lower()
            if phase not in ("init phase", "overall"):
                raise _fail(lineno, f"unknown memory phase [{usage.group('phase')[:40]}]", raw, source)
            try:
                rss = _parse_rss(usage.group("usage"))
            except ValueError as exc:
                raise _fail(lineno, f"malformed memory line ({exc})", raw, source) from None
            problem = _impossible({"max resident set size": (rss, "memory")})
            if problem is not None:
                reject(lineno, f"impossible memory figure ({problem})", raw)
                continue
            found["init_memory_mb" if phase == "init phase" else "overall_memory_mb"] = rss
            continue

        param = _PARAM.match(stripped)
        if param:
            params[param.group("key").strip()] = param.group("value").strip()
            continue
        # anything else: log noise (rule 8 of the module docstring)

    warmup_values = stats_lines[0][2] if stats_lines else None
    inference_values = stats_lines[1][2] if len(stats_lines) > 1 else None
    if summary_seen and inference_values is not None and int(inference_values["count"]) == 0:
        lineno, raw = stats_lines[1][:2]
        reject(lineno, f"the timed runs never ran (count=0) but line {summary_lineno} gives an inference average",
               raw)
        inference_values = None
    warmup = _stats(warmup_values) if warmup_values else None
    inference = _stats(inference_values) if inference_values else None

    def pick(table_title: str) -> list[Any] | None:
        chosen = [t for t in tables if t.title == table_title and t.section == "regular"]
        chosen = chosen or [t for t in tables if t.title == table_title and t.section is None]
        return list(chosen[0].rows) if chosen else None

    return BenchmarkOutput(
        params=params,
        init_us=found.get("init_us", session_init_us),
        first_us=found.get("first_us", _first_or_curr(warmup_values)),
        warmup_avg_us=found.get("warmup_avg_us", warmup.mean_us if warmup else None),
        inference_avg_us=found.get("inference_avg_us", inference.mean_us if inference else None),
        warmup=warmup,
        inference=inference,
        init_memory_mb=found.get("init_memory_mb"),
        overall_memory_mb=found.get("overall_memory_mb"),
        peak_memory_mb=found.get("peak_memory_mb"),
        op_profile=pick(RUN_ORDER),
        op_summary=pick(SUMMARY_BY_TYPE),
        complete=summary_seen and not rejected,
        warmup_first_us=_first_or_curr(warmup_values),
        warmup_curr_us=warmup_values.get("curr") if warmup_values else None,
        inference_first_us=_first_or_curr(inference_values),
        inference_curr_us=inference_values.get("curr") if inference_values else None,
        errors=errors,
        rejected=rejected,
    )


def _first_or_curr(values: dict[str, float] | None) -> float | None:
    """A stats record's first run (the all-equal form prints only curr, which equals it)."""
    if not values or int(values["count"]) == 0:
        return None
    return values.get("first", values.get("curr"))


def require_complete(out: BenchmarkOutput, source: str) -> BenchmarkOutput:
    """`out` itself, or MeasurementError when the run's final timing line never came or a line was rejected."""
    if out.rejected:
        more = f" (and {len(out.rejected) - 1} more rejected lines)" if len(out.rejected) > 1 else ""
        raise MeasurementError(f"{source}: benchmark output is incomplete: {out.rejected[0]}{more}")
    if not out.complete:
        last_error = f"; last error: {quote_line(out.errors[-1], quoted=False)}" if out.errors else ""
        raise MeasurementError(
            f"{source}: benchmark output ends before the final timing line "
            f"('Inference timings in us: ...' missing: the run was cut short or failed){last_error}"
        )
    return out
