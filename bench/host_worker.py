"""The one timing loop of the project, and the pinned child process that runs it.

`time_model` is what `HostDevice` runs in a fresh child process and what the
benchmark_model-compatible runner (`bench/bm_runner.py`) runs in its own process: one loop,
so host figures and runner figures mean the same thing. It follows benchmark_model's phases:

* init: Interpreter construction + (resize of dynamic inputs) + allocate_tensors;
* warm-up: at least `max(warmup_runs, 1)` invokes and at least `warmup_min_secs`; its first
  run is the "first inference" (benchmark_model reports `warmup.first()` the same way);
* timed: invokes until BOTH `count >= num_runs` AND `elapsed >= min_secs`, stopping early only
  past `max_secs` (benchmark_model's rule).

Inputs are random with a fixed seed and set ONCE before the warm-up, outside the timed
region, as benchmark_model does. Inside the loop there is nothing but two clock reads, the
invoke and one store into a preallocated list; the garbage collector is off during the
phases so a collection never lands inside a run.

Run as `python -m mnas.bench.host_worker ...` it is the child of `HostDevice`: it pins itself
to one core *before* importing numpy or the interpreter (so every thread they start inherits
the mask), checks the pinning from inside, times, checks every thread's mask again, and writes
one JSON result file atomically. It dies with its parent: PR_SET_PDEATHSIG (Linux) and a
watched pipe whose write end only the parent holds, so a `kill -9` of mnas leaves no worker
timing on (and heating) its core.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnas.bench.files import write_text_atomic
from mnas.errors import MeasurementError, MnasError

INPUT_SEED = 0  # fixed: every benchmark of a model feeds it the same input
USAGE_EXIT = 2
_PREALLOCATED_RUNS = 1 << 16
MEASUREMENT_EXIT = 1


@dataclass
class TimingResult:
    """Raw timings of one model, in microseconds, plus what they were taken with."""

    model_path: str
    runtime: str
    runtime_version: str
    num_threads: int
    init_us: float
    warmup_us: list[float]  # every warm-up run; [0] is the first inference
    runs_us: list[float]  # the timed runs
    warmup_wall_s: float
    timed_wall_s: float  # wall time of the whole timed phase (loop overhead included)
    maxrss_start_kb: int  # ru_maxrss before init, after init, after the timed phase
    maxrss_init_kb: int
    maxrss_end_kb: int
    delegate: str = "default"  # bench.types.DELEGATES: default (runtime's choice), none (XNNPACK off), xnnpack
    runtime_log: str = ""  # what the runtime printed on stderr while loading (e.g. its XNNPACK line)

    @property
    def first_us(self) -> float:
        return self.warmup_us[0]

    @property
    def warmup_avg_us(self) -> float:
        return sum(self.warmup_us) / len(self.warmup_us)


def _maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB on Linux


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _random_input(rng: Any, shape: tuple[int, ...], dtype: Any, name: str) -> Any:
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.uniform(-0.5, 0.5, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        if dt.itemsize <= 2:  # quantized activations: the whole range
            info = np.iinfo(dt)
            return rng.integers(int(info.min), int(info.max), size=shape, endpoint=True, dtype=dt)
        return rng.integers(0, 100, size=shape).astype(dt)  # indices/ids: small and valid
    raise MnasError(f"input tensor {name!r} has dtype {dt}: only numeric and bool inputs can be filled")


def prepare_inputs(interpreter: Any, seed: int) -> None:
    """Fill every input tensor with seeded random values (a model is timed on the same inputs every run)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        shape = tuple(int(d) for d in detail["shape"])
        interpreter.set_tensor(detail["index"], _random_input(rng, shape, detail["dtype"], detail["name"]))


HOST_DELEGATES = ("default", "none", "xnnpack")  # what the LiteRT Python interpreter can do on a CPU
XNNPACK_LOG_LINE = "XNNPACK delegate"  # LiteRT logs "Created TensorFlow Lite XNNPACK delegate for CPU."


def check_host_delegate(delegate: str) -> None:
    """One line refusing a delegate the LiteRT Python interpreter does not have (GPU, NNAPI)."""
    if delegate not in HOST_DELEGATES:
        raise MnasError(f"--delegate {delegate}: the host's LiteRT Python interpreter has no {delegate.upper()} "
                        f"delegate: expected one of {', '.join(HOST_DELEGATES)} on the host ({delegate} runs on phones)")


def resolver_options(interpreter_class: Any, delegate: str) -> dict[str, Any]:
    """Interpreter keyword arguments for `delegate`: XNNPACK off is the op resolver without default delegates.

    default and xnnpack keep the AUTO resolver, which applies XNNPACK by itself (whether it
    did is read from the runtime's log, `XNNPACK_LOG_LINE`); gpu and nnapi do not exist in
    the Python interpreter and are refused with one line.
    """
    check_host_delegate(delegate)
    if delegate != "none":
        return {}
    module = sys.modules.get(interpreter_class.__module__)
    resolver = getattr(module, "OpResolverType", None)
    if resolver is None or not hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        raise MnasError(f"--delegate none: {interpreter_class.__module__} cannot turn XNNPACK off (no "
                        "OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES): expected ai-edge-litert")
    return {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


@contextlib.contextmanager
def _stderr_captured(into: list[str]) -> Iterator[None]:
    """Copy what is written to file descriptor 2 (the runtime's C++ log) into `into`, then pass it on."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                data = capture.read()
                into.append(data.decode(errors="replace"))
                if data:
                    os.write(2, data)
    finally:
        os.close(saved)


def _load(interpreter_class: Any, model_path: Path, num_threads: int, delegate: str = "default") -> Any:
    """Construct, resize dynamic inputs to 1, allocate; one-line MnasError on a bad model."""
    options = resolver_options(interpreter_class, delegate)
    try:
        interpreter = interpreter_class(model_path=str(model_path), num_threads=num_threads, **options)
        for detail in interpreter.get_input_details():
            signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
            if any(d < 0 for d in signature):
                interpreter.resize_tensor_input(detail["index"], [1 if d < 0 else d for d in signature])
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise MnasError(f"{model_path}: the interpreter could not load the model: {_one_line(exc)}") from None
    return interpreter


def _run_phase(invoke: Any, min_runs: int, min_secs: float, max_secs: float | None) -> tuple[list[int], int]:
    """benchmark_model's run loop: per-run durations in ns and the phase's wall time in ns."""
    clock = time.perf_counter_ns
    durations = [0] * min(max(min_runs, 1), _PREALLOCATED_RUNS)  # grows by doubling past that
    capacity = len(durations)
    count = 0
    start = now = clock()
    min_finish = start + int(min_secs * 1e9)
    max_finish = start + int(max_secs * 1e9) if max_secs is not None else None
    while (count < min_runs or now < min_finish) and (max_finish is None or now <= max_finish):
        t0 = clock()
        invoke()
        now = clock()
        if count == capacity:
            durations.extend([0] * capacity)
            capacity *= 2
        durations[count] = now - t0
        count += 1
    return durations[:count], now - start


def time_model(
    model_path: str | Path,
    warmup_runs: int,
    num_runs: int,
    min_secs: float,
    num_threads: int = 1,
    *,
    warmup_min_secs: float = 0.0,
    max_secs: float | None = None,
    seed: int = INPUT_SEED,
    delegate: str = "default",
) -> TimingResult:
    """Time one model in THIS process (callers pin it); see the module docstring for the phases."""
    from mnas.bench.runtime import load_runtime

    if num_runs < 0 or warmup_runs < 0 or min_secs < 0 or num_threads < 1:
        raise MnasError(
            f"invalid timing settings: warmup_runs={warmup_runs} num_runs={num_runs} "
            f"min_secs={min_secs:g} num_threads={num_threads} (expected counts >= 0, threads >= 1)"
        )
    path = Path(model_path)
    runtime = load_runtime()
    rss_start = _maxrss_kb()
    t0 = time.perf_counter_ns()
    log: list[str] = []
    with _stderr_captured(log):
        interpreter = _load(runtime.interpreter, path, num_threads, delegate)
    init_ns = time.perf_counter_ns() - t0
    rss_init = _maxrss_kb()
    prepare_inputs(interpreter, seed)

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        invoke = interpreter.invoke
        warmup_ns, warmup_wall = _run_phase(invoke, max(warmup_runs, 1), warmup_min_secs, max_secs)
        runs_ns, timed_wall = _run_phase(invoke, num_runs, min_secs, max_secs)
    except RuntimeError as exc:
        raise MeasurementError(f"{path}: invoke failed: {_one_line(exc)}") from None
    finally:
        if gc_was_enabled:
            gc.enable()
    return TimingResult(
        model_path=str(path),
        runtime=runtime.name,
        runtime_version=runtime.version,
        num_threads=num_threads,
        init_us=init_ns / 1000.0,
        warmup_us=[d / 1000.0 for d in warmup_ns],
        runs_us=[d / 1000.0 for d in runs_ns],
        warmup_wall_s=warmup_wall / 1e9,
        timed_wall_s=timed_wall / 1e9,
        maxrss_start_kb=rss_start,
        maxrss_init_kb=rss_init,
        maxrss_end_kb=_maxrss_kb(),
        delegate=delegate,
        runtime_log="".join(log),
    )


# ----------------------------------------------------------------------------- child side


def _thread_affinities() -> dict[int, list[int]]:
    """The CPU mask of every thread of this process (interpreter threads included)."""
    masks: dict[int, list[int]] = {}
    for entry in os.listdir("/proc/self/task"):
        try:
            masks[int(entry)] = sorted(os.sched_getaffinity(int(entry)))
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return masks


def _last_cpu() -> int | None:
    """The CPU this process last ran on (field 39 of /proc/self/stat)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def pin_to_core(core: int | set[int]) -> None:
    """Pin this process to `core` (or a set of cores, one per thread) before any thread starts.

    Threads inherit the mask, so the interpreter's threads stay on these cores too.
    """
    cores = {core} if isinstance(core, int) else set(core)
    named = f"core {core}" if isinstance(core, int) else f"cores {_cores_text(cores)}"
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:
        raise MeasurementError(f"could not pin the benchmark process to {named}: {exc.strerror}") from None
    actual = os.sched_getaffinity(0)
    if actual != cores:
        raise MeasurementError(
            f"pinning to {named} did not hold: the benchmark process may run on cores {sorted(actual)}"
        )


def _cores_text(cores: set[int] | list[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def parse_cores(text: str) -> list[int]:
    """`--cores 6,7` as sorted ids (argparse type)."""
    try:
        cores = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected core ids such as 6,7") from None
    if not cores:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one core id")
    return cores


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int | None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG).

    Returns whether that took; a parent that died before the request is checked for right
    after it (the process then exits at once). Elsewhere `watch_parent_pipe` does the job.
    """
    took = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            took = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            took = False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(MEASUREMENT_EXIT)  # orphaned before the request: nobody waits for a result
    return took


def watch_parent_pipe(fd: int, on_eof: Callable[[], None] | None = None) -> threading.Thread:
    """A daemon thread that reads `fd` (a pipe whose write end only the parent holds) until EOF.

    EOF means the parent is gone (however it died), so the benchmark is pointless: the
    process exits at once (`on_eof`, for tests). The thread sleeps in read() and costs
    nothing while the parent lives; start it after pinning, so it inherits the mask.
    """
    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        if on_eof is not None:
            on_eof()
        else:
            os._exit(MEASUREMENT_EXIT)

    thread = threading.Thread(target=watch, name="mnas-parent-watch", daemon=True)
    thread.start()
    return thread


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload))


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnas.bench.host_worker")
    parser.add_argument("--model", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--core", type=int, help="the one core (one thread)")
    where.add_argument("--cores", type=parse_cores, help="the cores of a multi-threaded run, e.g. 6,7")
    parser.add_argument("--warmup-runs", type=int, required=True)
    parser.add_argument("--num-runs", type=int, required=True)
    parser.add_argument("--min-secs", type=float, required=True)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--delegate", choices=HOST_DELEGATES, default="default")
    parser.add_argument("--result", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--parent-pipe", type=int, default=None,
                        help="read end of a pipe the parent holds open; EOF = the parent died")
    args = parser.parse_args(argv)
    result_path = Path(args.result)
    die_with_parent(args.parent_pid)  # an orphaned worker would hold its core for nothing
    try:
        cores = [args.core] if args.core is not None else args.cores
        pin_to_core(args.core if args.core is not None else set(cores))  # before numpy / the interpreter start any thread
        if args.parent_pipe is not None:
            watch_parent_pipe(args.parent_pipe)  # after pinning: the thread inherits the mask
        timing = time_model(args.model, args.warmup_runs, args.num_runs, args.min_secs, args.num_threads,
                            delegate=args.delegate)
        masks = _thread_affinities()
        stray = {tid: mask for tid, mask in masks.items() if mask != cores}
        if stray:
            raise MeasurementError(
                f"threads {sorted(stray)} of the benchmark process are not pinned to cores {_cores_text(cores)}: {stray}"
            )
        _write_json_atomic(
            result_path,
            {
                "ok": True,
                "timing": asdict(timing),
                "affinity": sorted(os.sched_getaffinity(0)),
                "threads": len(masks),
                "last_cpu": _last_cpu(),
            },
        )
        return 0
    except MnasError as exc:
        kind = "measurement" if isinstance(exc, MeasurementError) else "usage"
        _write_json_atomic(result_path, {"ok": False, "kind": kind, "message": str(exc)})
        return MEASUREMENT_EXIT if kind == "measurement" else USAGE_EXIT


if __name__ == "__main__":
    sys.exit(child_main())
