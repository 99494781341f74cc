"""This machine's CPU as a benchmark device: the LiteRT interpreter, one thread, one pinned core.

Each `benchmark()` runs in a FRESH child process (`python -m mnas.bench.host_worker`), so one
model's allocations, caches, threads or a crash never affect the next model's figures, and a
hung model can be killed at `config.timeout_s`. The child pins itself to ONE core (the
config's, else this device's, else the fastest the current process may use, by sysfs
`cpuinfo_max_freq`, ties to the highest id) before anything else starts a thread, and
verifies from inside that it and all its threads stay on that core.

`BenchConfig.num_threads` N > 1 pins the child to N cores (that core, then the fastest other
allowed ones) and gives the interpreter N threads. `delegate` none turns XNNPACK off (the op
resolver without default delegates), xnnpack checks that LiteRT logged creating it; GPU,
NNAPI and benchmark_model flags (`bm_args`) are refused on the host with one line
(`check_host_config`).

The model is checked before spawning: a missing file or one without the TFLite flatbuffer
identifier "TFL3" at bytes 4..8 is a one-line MnasError naming the file.

The child dies with this process (see `host_worker`), and its result folder is an
`owned_temp_dir`, so a `kill -9` of mnas leaves neither a worker nor a folder for good.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mnas.bench.delegates import DelegateFallback
from mnas.bench.files import check_tflite_file, sha256_file
from mnas.bench.host_worker import (
    MEASUREMENT_EXIT,
    USAGE_EXIT,
    XNNPACK_LOG_LINE,
    TimingResult,
    check_host_delegate,
)
from mnas.bench.measurement import Conditions, Timings, build_measurement, freq_below
from mnas.bench.runtime import load_runtime
from mnas.bench.sysfs import HostSysfs
from mnas.bench.tempdirs import owned_temp_dir
from mnas.bench.topology import fastest_core, fastest_cores
from mnas.bench.types import BenchConfig, DeviceProfile, LatencyStats, Measurement
from mnas.errors import MeasurementError, MnasError

THROTTLE_RATIO = 0.9  # cur freq after a run below this share of max flags throttling


def _format_cores(cores: set[int] | list[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def _cores_phrase(cores: list[int]) -> str:
    return f"core {cores[0]}" if len(cores) == 1 else f"cores {_format_cores(cores)}"


def check_host_config(config: BenchConfig) -> None:
    """One line refusing what the host cannot do: GPU/NNAPI delegates, benchmark_model flags."""
    check_host_delegate(config.delegate)
    if config.bm_args:
        flags = " ".join(f"--bm-arg {flag}={value}" for flag, value in config.bm_args)
        raise MnasError(f"{flags}: benchmark_model flags go to phones; the host times models with the LiteRT "
                        "Python interpreter: expected no --bm-arg with --device host")


def xnnpack_facts(delegate: str, runtime_log: str) -> dict[str, Any]:
    """Whether XNNPACK ran, from the runtime's own log line, for the delegates that concern it."""
    applied = XNNPACK_LOG_LINE in runtime_log
    if delegate == "xnnpack":
        return {"xnnpack_applied": applied,
                "delegate_fallback": None if applied else "the runtime did not log creating its XNNPACK delegate"}
    if delegate == "none":
        return {"xnnpack_applied": applied,
                "delegate_fallback": "the runtime logged creating its XNNPACK delegate" if applied else None}
    return {"xnnpack_applied": applied}


class HostDevice:
    """The host CPU through the LiteRT Python interpreter (see the module docstring)."""

    device_id = "host"
    device_name = "host"
    kind = "host"

    def __init__(self, core: int | None = None, *, sysfs: HostSysfs | None = None,
                 python: str = sys.executable) -> None:
        self.core = core
        self.sysfs = sysfs or HostSysfs()
        self.python = python

    # ---------------------------------------------------------------- core choice

    def allowed_cores(self) -> set[int]:
        """Cores this process may run on that the kernel reports online."""
        allowed = set(os.sched_getaffinity(0))
        online = self.sysfs.online_cores()
        usable = allowed & set(online) if online else allowed
        return usable or allowed

    def choose_core(self, config: BenchConfig | None = None) -> int:
        """config.core, else this device's core, else the fastest allowed core."""
        allowed = self.allowed_cores()
        wanted = config.core if config is not None and config.core is not None else self.core
        if wanted is not None:
            if wanted not in allowed:
                raise MnasError(
                    f"core {wanted} is not available to this process (allowed cores: {_format_cores(allowed)})"
                )
            return wanted
        return fastest_core(self.sysfs.max_freqs_khz(sorted(allowed)))

    def choose_cores(self, config: BenchConfig) -> list[int]:
        """One core per thread: `choose_core`'s, then the fastest other allowed cores (`fastest_cores`)."""
        first = self.choose_core(config)
        if config.num_threads == 1:
            return [first]
        try:
            return fastest_cores(self.sysfs.max_freqs_khz(sorted(self.allowed_cores())), config.num_threads, first)
        except ValueError as exc:
            raise MnasError(f"host: --threads {config.num_threads}: {exc} to this process") from None

    # ---------------------------------------------------------------- Device protocol

    def profile(self) -> DeviceProfile:
        runtime = load_runtime()
        core = self.choose_core()
        cpu = self.sysfs.cpu_model()
        return DeviceProfile(
            device_id=self.device_id,
            device_name=self.device_name,
            kind=self.kind,
            model=cpu,
            cpu_model=cpu,
            pinned_core=core,
            max_freq_khz=self.sysfs.max_freq_khz(core),
            runtime=runtime.name,
            runtime_version=runtime.version,
        )

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        model_path = Path(model_path)  # the config validated itself when it was made (BenchConfig)
        check_tflite_file(model_path)
        load_runtime()  # a missing interpreter is the user's to fix: say so before spawning
        check_host_config(config)
        core = self.choose_core(config)  # the pinned core: its frequency is watched
        cores = self.choose_cores(config)
        model_hash = sha256_file(model_path)
        cpu = self.sysfs.cpu_model()
        max_freq = self.sysfs.max_freq_khz(core)

        temps_before = self.sysfs.temperatures_c()
        freq_before = self.sysfs.cur_freq_khz(core)
        started = time.perf_counter()
        payload = self._run_child(model_path, cores, config)
        wall_s = time.perf_counter() - started
        freq_after = self.sysfs.cur_freq_khz(core)
        temps_after = self.sysfs.temperatures_c()

        timing = TimingResult(**payload["timing"])
        if payload.get("affinity") != cores:  # the child fails itself first; never trust silently
            raise MeasurementError(f"{model_path}: benchmark child reports affinity {payload.get('affinity')}, expected {cores}")
        stats = LatencyStats.from_runs(timing.runs_us)
        median = stats.median_us or stats.mean_us
        measurement = build_measurement(
            device_id=self.device_id,
            device_name=self.device_name,
            model_path=model_path,
            model_sha256=model_hash,
            runtime=timing.runtime,
            runtime_version=timing.runtime_version,
            config=config,
            # peak_memory_mb stays None: the child's max RSS (Python + numpy + interpreter) is
            # not comparable with benchmark_model's footprint, so it goes to extra, labelled
            timings=Timings(stats=stats, runs_us=timing.runs_us, init_us=timing.init_us,
                            first_us=timing.first_us, warmup_avg_us=timing.warmup_avg_us),
            conditions=Conditions(
                core=core, cores=tuple(cores), cpu_model=cpu, max_freq_khz=max_freq,
                throttled=freq_below(freq_after, max_freq, THROTTLE_RATIO), wall_s=wall_s,
                temps_before_c=temps_before, temps_after_c=temps_after,
                freq_before_khz=freq_before, freq_after_khz=freq_after,
            ),
            extra={
                "timed_wall_s": timing.timed_wall_s,
                "warmup_runs_done": len(timing.warmup_us),
                # harness overhead: the timed phase's wall time over runs x median (noise included)
                # and over the sum of the runs (only the loop's own work between runs)
                "wall_over_runs_x_median": timing.timed_wall_s * 1e6 / (len(timing.runs_us) * median),
                "wall_over_sum_of_runs": timing.timed_wall_s * 1e6 / sum(timing.runs_us),
                "child_max_rss_mb": timing.maxrss_end_kb / 1024.0,
                "child_threads": payload.get("threads"),
                "child_last_cpu": payload.get("last_cpu"),
                "python": sys.version.split()[0],
                **xnnpack_facts(config.delegate, timing.runtime_log),
            },
        )
        fallback = measurement.extra.get("delegate_fallback")
        if fallback:
            raise DelegateFallback(f"host {model_path.name}: --delegate {config.delegate} was not applied ({fallback}): "
                                   f"not stored as a {config.delegate} result", measurement)
        return measurement

    # ---------------------------------------------------------------- child process

    def _run_child(self, model_path: Path, cores: list[int], config: BenchConfig) -> dict[str, Any]:
        with owned_temp_dir("host") as tmp:
            result_path = Path(tmp) / "result.json"
            # the child watches the read end: EOF (this process gone, however) ends it
            watch_read, watch_write = os.pipe()
            command = [
                self.python, "-m", "mnas.bench.host_worker",
                "--model", str(model_path.resolve()),
                *(["--core", str(cores[0])] if len(cores) == 1 else ["--cores", _format_cores(cores)]),
                "--warmup-runs", str(config.warmup_runs),
                "--num-runs", str(config.num_runs),
                "--min-secs", repr(float(config.min_secs)),
                "--num-threads", str(config.num_threads),
                "--delegate", config.delegate,
                "--result", str(result_path),
                "--parent-pid", str(os.getpid()),
                "--parent-pipe", str(watch_read),
            ]
            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
            try:
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, pass_fds=(watch_read,))
            except BaseException:
                os.close(watch_write)
                raise
            finally:
                os.close(watch_read)
            try:
                try:
                    _, stderr = proc.communicate(timeout=config.timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise MeasurementError(
                        f"{model_path}: benchmark on host {_cores_phrase(cores)} did not finish within "
                        f"timeout_s={config.timeout_s:g} s (killed)"
                    ) from None
                except BaseException:
                    proc.kill()  # Ctrl-C and the like: never leave the child timing on
                    proc.wait()
                    raise
            finally:
                os.close(watch_write)
            payload: dict[str, Any] | None = None
            if result_path.exists():
                payload = json.loads(result_path.read_text())
        if payload is None:
            last = [line for line in (stderr or "").splitlines() if line.strip()]
            detail = last[-1].strip() if last else "no output"
            raise MeasurementError(
                f"{model_path}: benchmark child exited with code {proc.returncode} without a result: {detail}"
            )
        if not payload.get("ok"):
            message = str(payload.get("message", "unknown failure"))
            if payload.get("kind") == "usage" or proc.returncode == USAGE_EXIT:
                raise MnasError(message)
            if proc.returncode not in (MEASUREMENT_EXIT, 0):
                message += f" (exit code {proc.returncode})"
            raise MeasurementError(message)
        return payload
