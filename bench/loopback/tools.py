"""Commands a loopback phone's shell finds on its PATH: `taskset` and the benchmark_model shim.

They run inside the shell of a loopback phone (see `devicefs`), as
`python -m mnas.bench.loopback.tools taskset|bm ARGS...`, and read what they need from the
environment the device gives its shells (MNAS_LB_NCORES, MNAS_LB_HOST_CORE,
MNAS_LB_BM_RUNNER, MNAS_LB_TRUNCATE).

- `taskset [-a] [-p] MASK (CMD ARGS... | PID)` accepts the phone's hexadecimal masks (`80`,
  `100`, `0c`, `f0`, with or without `0x`), rejects a mask naming no core of the phone like
  the kernel does (EINVAL), then pins CMD to the ONE host core chosen for this phone. So a
  benchmark pinned to the phone's big core really runs pinned, on real hardware.
- `bm BINARY ARGS...` stands for running a pushed `benchmark_model`: it checks the pushed
  file exists and is executable (as exec would), then runs the host runner
  (`python -m mnas.bench.bm_runner` or a `.py` file) with the same arguments, so the timing
  is a real LiteRT measurement. With the `truncated_output` fault the output is cut before
  its last `count=` line (the timed runs' statistics, and everything after) and the exit
  code is 0: the failure a parser must notice on its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from mnas.bench.loopback.devicefs import is_benchmark_model


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def parse_mask(text: str) -> int | None:
    """A taskset mask (hex, optional 0x) -> int; None when it is not one."""
    digits = text[2:] if text.lower().startswith("0x") else text
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return int(digits, 16)


def taskset_main(args: list[str]) -> int:
    usage = "usage: taskset [-ap] [mask] [PID | cmd [args...]]"
    pid_mode = False
    while args and args[0].startswith("-") and len(args[0]) > 1:
        for flag in args[0][1:]:
            if flag == "p":
                pid_mode = True
            elif flag != "a":
                _err(f"taskset: Unknown option '{flag}'\n{usage}")
                return 1
        args = args[1:]
    if len(args) < 2:
        _err(usage)
        return 1
    mask = parse_mask(args[0])
    if mask is None:
        _err(f"taskset: bad mask '{args[0]}'")
        return 1
    ncores = int(os.environ.get("MNAS_LB_NCORES", "8"))
    if mask & ((1 << ncores) - 1) == 0:
        _err("taskset: sched_setaffinity: Invalid argument")
        return 1
    host_core = int(os.environ.get("MNAS_LB_HOST_CORE") or max(os.sched_getaffinity(0)))
    if pid_mode:
        try:
            os.sched_setaffinity(int(args[1]), {host_core})
        except (ValueError, OSError) as exc:
            _err(f"taskset: sched_setaffinity: {getattr(exc, 'strerror', None) or exc}")
            return 1
        return 0
    command = args[1:]
    os.environ["MNAS_LB_TASKSET_MASK"] = args[0]  # the mask asked for, for runners and tests to see
    os.sched_setaffinity(0, {host_core})
    if is_benchmark_model(command[0]):
        return bm_main(command)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _err(f"taskset: exec {command[0]}: {exc.strerror}")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached


_STATS_LINE = re.compile(r"^\s*(?:[A-Z]+:\s*)?count=\d")  # `count=..`, or `INFO: count=..`


def truncate_output(output: str) -> str:
    """benchmark_model output cut before its last stats line (the timed runs' figures)."""
    lines = output.splitlines(keepends=True)
    cut = max((i for i, line in enumerate(lines) if _STATS_LINE.match(line)), default=None)
    if cut is None:
        cut = max(len(lines) - 1, 0)
    return "".join(lines[:cut])


def bm_main(argv: list[str]) -> int:
    binary, args = argv[0], argv[1:]
    if not os.path.isfile(binary):
        _err(f"/system/bin/sh: {binary}: No such file or directory")
        return 127
    if not os.access(binary, os.X_OK):
        _err(f"/system/bin/sh: {binary}: can't execute: Permission denied")
        return 126
    runner = os.environ.get("MNAS_LB_BM_RUNNER") or "mnas.bench.bm_runner"
    command = [sys.executable, runner, *args] if runner.endswith(".py") else [sys.executable, "-m", runner, *args]
    if os.environ.get("MNAS_LB_TRUNCATE") != "1":
        sys.stdout.flush()
        os.execv(sys.executable, command)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    sys.stdout.write(truncate_output(done.stdout))
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("taskset", "bm"):
        _err("usage: python -m mnas.bench.loopback.tools (taskset|bm) ARGS...")
        return 2
    if argv[0] == "taskset":
        return taskset_main(argv[1:])
    if len(argv) < 2:
        _err("usage: python -m mnas.bench.loopback.tools bm BINARY ARGS...")
        return 2
    return bm_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
