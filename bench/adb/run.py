"""One `benchmark_model` run on the phone: its command, its clean-up after a timeout, its output.

- Everything sent to the phone's shell is built with `shlex.quote`.
- A timed-out benchmark keeps running on the phone (adbd does not kill it when the socket
  closes) and would spoil the retry, so the command announces its shell's PID and a timeout
  kills that process tree.
- A phone that does not answer that kill within a short bound (`answer_bound`) is hung:
  AdbNoAnswer, and the device marks it offline at once without further calls.
- An output without `benchmark_model`'s final timing line counts as a failed run: a phone
  that dies mid-run can otherwise look like a normal short output.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence

from mnas.bench.adb.transport import (
    AdbNoAnswer,
    PhoneTransport,
    ShellResult,
    ShellTimeout,
    last_line,
    one_line,
)
from mnas.bench.bm_output import BenchmarkParseError, parse_benchmark_output, require_complete
from mnas.bench.delegates import benchmark_flags
from mnas.bench.measurement import Timings
from mnas.bench.topology import cores_mask
from mnas.bench.types import BenchConfig
from mnas.errors import MeasurementError

__all__ = [
    "ANSWER_SHARE",
    "MIN_ANSWER_S",
    "PID_MARKER",
    "answer_bound",
    "RUNTIME",
    "benchmark_command",
    "read_timings",
    "run_benchmark",
    "runtime_version",
    "version_from_sha",
]

RUNTIME = "benchmark_model"
PID_MARKER = "__MNAS_PID="
ANSWER_SHARE = 0.15  # of the benchmark's bound, for the kill after it timed out
MIN_ANSWER_S = 0.3


def benchmark_command(binary: str, remote_model: str, cores: int | Sequence[int], config: BenchConfig) -> str:
    """The exact shell command of one benchmark run; every argument shlex-quoted.

    `cores` is the pinned core, or the cores of a multi-threaded run (one per thread); the
    delegate's flags and `config.bm_args` follow mnas's own flags (`delegates.benchmark_flags`).
    """
    argv = [
        "taskset",
        cores_mask([cores] if isinstance(cores, int) else cores),
        binary,
        f"--graph={remote_model}",
        f"--num_threads={config.num_threads}",
        f"--warmup_runs={config.warmup_runs}",
        f"--num_runs={config.num_runs}",
        f"--min_secs={config.min_secs:g}",
    ]
    if config.profile_ops:
        argv.append("--enable_op_profiling=true")
    argv.extend(benchmark_flags(config))
    return f"echo {PID_MARKER}$$; " + " ".join(shlex.quote(arg) for arg in argv)


def _kill_stale(transport: PhoneTransport, partial_output: str, timeout_s: float,
                errors: list[str]) -> bool:
    """Kill the timed-out benchmark's shell and its children (best effort).

    Returns whether the phone answered: False means it is hung or gone (no PID was ever
    printed and a plain `true` gets no answer, or the kill itself got none).
    """
    match = re.search(re.escape(PID_MARKER) + r"(\d+)", partial_output)
    pid = shlex.quote(match.group(1)) if match else None
    command = f"pkill -P {pid}; kill {pid}" if pid else "true"
    try:
        transport.shell(command, timeout_s)
    except MeasurementError as exc:
        errors.append(f"{'kill ' + pid if pid else 'liveness check'}: {exc}")
        return False
    return True


def answer_bound(timeout_s: float, call_bound: float) -> float:
    """How long the kill after a benchmark timeout may wait for the phone to answer.

    A phone that answers at all answers a `kill` within a fraction of a second, so this is
    a small share of the benchmark's bound (`ANSWER_SHARE`, at least `MIN_ANSWER_S`, at most
    `call_bound`): a phone hung mid-run is then declared lost within 1.15x `timeout_s`
    (for `timeout_s` >= 2 s) instead of waiting out a second full bound.
    """
    return min(float(call_bound), max(MIN_ANSWER_S, ANSWER_SHARE * float(timeout_s)))


def run_benchmark(transport: PhoneTransport, command: str, timeout_s: float, call_bound: float,
                  errors: list[str]) -> tuple[ShellResult, float]:
    """Run `command` for at most `timeout_s`; returns its result and wall time.

    On a timeout the stale run is killed (that call bounded by `answer_bound`) and the
    ShellTimeout re-raised, or AdbNoAnswer when the phone no longer answers at all.
    """
    started = time.monotonic()
    try:
        result = transport.shell(command, timeout_s=timeout_s)
    except ShellTimeout as exc:
        if not _kill_stale(transport, exc.output, answer_bound(timeout_s, call_bound), errors):
            raise AdbNoAnswer(f"{exc}; the phone stopped answering (hung or disconnected)",
                              exc.output) from None
        raise
    return result, time.monotonic() - started


def read_timings(result: ShellResult, source: str) -> tuple[Timings, dict[str, str]]:
    """The timings of a finished run, and the parameters it printed; MeasurementError otherwise."""
    output = re.sub(r"^" + re.escape(PID_MARKER) + r"\d+\n?", "", result.output, flags=re.M)
    if result.returncode != 0:
        raise MeasurementError(f"{source}: benchmark_model exited with code "
                               f"{result.returncode}: {last_line(output)}")
    try:
        parsed = parse_benchmark_output(output)
    except BenchmarkParseError as exc:
        raise MeasurementError(f"{source}: unreadable benchmark_model output: "
                               f"{one_line(str(exc))}") from None
    require_complete(parsed, source=source)
    if parsed.inference is None:
        raise MeasurementError(f"{source}: benchmark_model printed no inference timings")
    timings = Timings(stats=parsed.inference, init_us=parsed.init_us, first_us=parsed.first_us,
                      warmup_avg_us=parsed.warmup_avg_us, peak_memory_mb=parsed.peak_memory_mb,
                      op_profile=parsed.op_profile)
    return timings, parsed.params


def version_from_sha(sha: str) -> str:
    """A binary's identity from its sha256 (or `size:N` when neither side could hash it)."""
    return sha if sha.startswith("size:") else f"sha256:{sha[:12]}"


def runtime_version(params: Mapping[str, str], binary_sha: str) -> str:
    """The binary's identity: a version the tool printed (if any) plus its hash prefix.

    Released benchmark_model builds print no version line, so the hash is what tells two
    builds apart; a build that prints one (`... version: [X]`) gets it in front.
    """
    printed = next((value.strip() for key, value in params.items()
                    if "version" in key.lower() and value.strip()), "")
    identity = version_from_sha(binary_sha)
    return f"{printed}+{identity}" if printed else identity
