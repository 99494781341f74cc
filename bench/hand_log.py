"""A benchmark_model log someone ran by hand, kept as a measurement with its provenance.

`mnas bench parse LOG --store --device NAME --model FILE_OR_NAME` turns a pasted or saved
log into the same `Measurement` a phone run produces, so it is listed, exported and reused
like one. What the log cannot say is taken from the user and recorded as such:

- the device: a device already in the store (its serial or config name, which must name one
  phone), a shipped device config name (`pixel4`: the device id is then the name), or `host`;
- the model: a `.tflite` file or a zoo/arch name, hashed as `mnas bench` hashes it, so the
  reuse key's model is the same file a measured run would time;
- the binary: with `--benchmark-binary` its sha256 names the runtime version exactly as the
  phone path does (`bench.adb.run.runtime_version`); without it the version is
  `UNKNOWN_BINARY`, and such a log is reused only under that version, never passed off as a
  run of a known binary.

The conditions come from the log's own parameter lines (`Num threads: [4]`, `Min num runs:
[50]`, `Use xnnpack: [1]`, ...). benchmark_model logs only the flags given on its command
line, so an absent run count or duration is the tool's default (`bench.bm_runner.FLAGS`);
the thread count has no safe default across versions (1, or -1 for "the runtime decides"),
so a log without it needs `--threads`. Which core the run was pinned to is not in the log:
`--core` records it, else the measurement says `pinned: unknown` in its extra facts.

The reuse key is a measured run's: device id, model sha256, runtime (`benchmark_model`),
runtime version and `BenchConfig.conditions_key()`. The log's own sha256 is kept too, so
parsing the same log again stores nothing (`find_logged`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnas.bench.bm_output import BenchmarkOutput
from mnas.bench.types import BenchConfig, Measurement
from mnas.errors import MnasError

__all__ = ["HAND_RUN_SOURCE", "UNKNOWN_BINARY", "LoggedDevice", "find_logged", "hand_run_measurement", "log_flags",
           "resolve_logged_device"]

HAND_RUN_SOURCE = "hand-run log"
UNKNOWN_BINARY = "binary-unknown"
RUNTIME = "benchmark_model"

# the log's delegate parameter lines (benchmark_model's labels, lowercased) -> BenchConfig.delegate
_DELEGATE_LINES = {"use gpu": "gpu", "use nnapi": "nnapi", "use xnnpack": "xnnpack"}


@dataclass(frozen=True)
class LoggedDevice:
    """Who ran the log, as far as the store or a device config knows it."""

    device_id: str
    device_name: str
    cpu_model: str = ""
    max_freq_khz: int | None = None


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true")


def _int_param(params: dict[str, str], label: str, source: str) -> int | None:
    if label not in params:
        return None
    try:
        return int(params[label].strip())
    except ValueError:
        raise MnasError(f"{source}: parameter line '{label}: [{params[label]}]': expected a whole number") from None


def log_flags(params: dict[str, str], source: str, *, threads: int | None = None) -> dict[str, Any]:
    """The run's settings from the log's parameter lines (absent ones: benchmark_model's defaults).

    Keys: threads, delegate, num_runs, warmup_runs, min_secs, profile_ops (BenchConfig's
    meaning). `threads` is used only when the log states none; a log that states another
    number than `threads` is an error, as is a log that states none when `threads` is None.
    """
    from mnas.bench.bm_runner import FLAGS

    logged_threads = _int_param(params, FLAGS["num_threads"].label, source)
    if logged_threads is None:
        logged_threads = _int_param(params, "#threads used for CPU inference", source)
    if logged_threads is not None and threads is not None and logged_threads != threads:
        raise MnasError(f"{source}: the log says {logged_threads} threads, --threads says {threads}: expected one "
                        "number (leave --threads out)")
    chosen = logged_threads if logged_threads is not None else threads
    if chosen is None:
        raise MnasError(f"{source}: the log does not say how many threads ran (no 'Num threads: [N]' line): "
                        "pass --threads N")
    if chosen < 1:
        raise MnasError(f"{source}: threads={chosen} (the runtime's own choice): expected a number >= 1; "
                        "pass --threads with the number that ran")
    flags: dict[str, Any] = {"threads": chosen}
    for name, key in (("num_runs", "num_runs"), ("warmup_runs", "warmup_runs")):
        value = _int_param(params, FLAGS[name].label, source)
        flags[key] = FLAGS[name].default if value is None else value
    label = FLAGS["min_secs"].label
    try:
        flags["min_secs"] = float(params[label]) if label in params else FLAGS["min_secs"].default
    except ValueError:
        raise MnasError(f"{source}: parameter line '{label}: [{params[label]}]': expected a number") from None
    flags["profile_ops"] = _truthy(params.get(FLAGS["enable_op_profiling"].label, "0"))
    lowered = {key.strip().lower(): value for key, value in params.items()}
    on = [delegate for line, delegate in _DELEGATE_LINES.items() if _truthy(lowered.get(line, "0"))]
    if len(on) > 1:
        raise MnasError(f"{source}: the log turns on more than one delegate ({', '.join(on)}): expected one")
    if on:
        flags["delegate"] = on[0]
    elif "use xnnpack" in lowered:  # XNNPACK explicitly off: the plain CPU kernels
        flags["delegate"] = "none"
    else:
        flags["delegate"] = "default"
    return flags


def log_config(flags: dict[str, Any], core: int | None) -> BenchConfig:
    """The BenchConfig a measured run with these settings would have had (its conditions key is the reuse key)."""
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    values: dict[str, Any] = {"warmup_runs": flags["warmup_runs"], "num_runs": flags["num_runs"],
                              "min_secs": flags["min_secs"], "num_threads": flags["threads"],
                              "profile_ops": flags["profile_ops"], "core": core}
    if "delegate" in fields:
        values["delegate"] = flags["delegate"]
    elif flags["delegate"] != "default":
        raise MnasError(f"the log ran with the {flags['delegate']} delegate: this mnas cannot record delegates")
    return BenchConfig(**values)


def resolve_logged_device(store: Any, name: str) -> LoggedDevice:
    """`name` as a stored device (id, or a config name naming one device), a device config name, or `host`."""
    rows = store.read("SELECT device_id, device_name, cpu_model, max_freq_khz FROM devices "
                      "WHERE device_id = ? OR device_name = ? ORDER BY device_id", (name, name))
    exact = [row for row in rows if row[0] == name]
    rows = exact or rows
    if len(rows) == 1:
        device_id, device_name, cpu_model, max_freq = rows[0]
        return LoggedDevice(device_id, device_name, cpu_model or "", max_freq)
    if len(rows) > 1:
        raise MnasError(f"--device {name!r} names {len(rows)} stored phones ({', '.join(r[0] for r in rows)}): "
                        "expected one: pass its serial")
    if name == "host":
        return LoggedDevice("host", "host")
    from mnas.bench.device_config import load_all

    configs = load_all()
    if name in configs:
        config = configs[name]
        return LoggedDevice(name, name, max_freq_khz=config.max_freq_khz())
    raise MnasError(f"--device {name!r}: no such device in the store and no device config of that name: expected "
                    f"a phone's serial, a config name ({', '.join(sorted(configs))}) or host")


def find_logged(store: Any, log_sha256: str) -> int | None:
    """The id of the measurement already stored from a log with this sha256, or None."""
    ids = store.measurements_with_extra("log_sha256", log_sha256)
    return ids[0] if ids else None


def hand_run_measurement(out: BenchmarkOutput, *, log_path: Path, log_sha256: str, device: LoggedDevice,
                         model_path: Path, model_sha256: str, flags: dict[str, Any], core: int | None,
                         binary_sha256: str | None) -> Measurement:
    """The measurement a complete log stands for; MnasError when it holds no timed runs."""
    from mnas.bench.adb.run import runtime_version

    if out.inference is None:
        raise MnasError(f"{log_path}: the log holds no timed runs (no second 'count=...' stats line): nothing "
                        "to store")
    version = runtime_version(out.params, binary_sha256) if binary_sha256 else UNKNOWN_BINARY
    return Measurement(
        device_id=device.device_id,
        device_name=device.device_name,
        model_sha256=model_sha256,
        model_path=str(model_path),
        runtime=RUNTIME,
        runtime_version=version,
        config=log_config(flags, core),
        stats=out.inference,
        init_us=out.init_us,
        first_us=out.first_us,
        warmup_avg_us=out.warmup_avg_us,
        pinned_cores=(core,) if core is not None else (),
        cpu_model=device.cpu_model,
        max_freq_khz=device.max_freq_khz,
        peak_memory_mb=out.peak_memory_mb,
        op_profile=out.op_profile,
        timestamp=time.time(),
        extra={
            "source": HAND_RUN_SOURCE,
            "log_path": str(log_path.absolute()),
            "log_sha256": log_sha256,
            "log_params": dict(out.params),
            "flags": flags,
            "pinned": "unknown" if core is None else f"cpu{core} (as stated with --core)",
            "binary_sha256": binary_sha256,
        },
    )
