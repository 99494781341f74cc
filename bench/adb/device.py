"""A phone over adb as a benchmark `Device`: TFLite's `benchmark_model`, pinned to ONE core.

With `BenchConfig.num_threads` N > 1 the mask grows to N cores: the pinned core, then the
fastest others by the device config's clusters (`pin_cores`); the delegate and extra flags
go on the command line, and a run whose log says its delegate fell back to the CPU raises
`DelegateFallback` (not retried, never stored as a delegate figure).

This module wires the others together and owns the rules that span them:

- One bound rules a benchmark call: every adb call it makes (stat, push, thermal reads, rm,
  kill) is bounded by the smaller of the device's timeout and `BenchConfig.timeout_s` (a push
  gets 1 s per MB on top), the benchmark run itself by `BenchConfig.timeout_s`, the wait for
  a dropped phone between retries by the same bound; after a call got no answer at all (a
  hung phone: AdbNoAnswer, an adbutils socket timeout included) the phone is marked offline
  at once: no clean-up `rm`, no retry, no wait for it to come back. The kill after a
  benchmark that ran past its timeout waits only a short share of it (`run.answer_bound`),
  so a phone hung mid-run is declared lost within 1.2x `BenchConfig.timeout_s`.
- After the last retry fails at the connection level (phone gone, hung or cut off, as opposed
  to a benchmark that ran and failed or ran too long), the device sets `offline`, so the
  harness stops sending it models.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnas.bench.adb.probe import (
    build_probed_config,
    cpu_probe_command,
    parse_cpu_probe,
    parse_getprop,
)
from mnas.bench.adb.push import (
    check_phone_binary,
    push_file,
    remote_file,
    remove_file,
    resolve_local_binary,
)
from mnas.bench.adb.run import (
    RUNTIME,
    benchmark_command,
    read_timings,
    run_benchmark,
    runtime_version,
    version_from_sha,
)
from mnas.bench.adb.server import DEFAULT_TIMEOUT_S, adb_client, list_devices
from mnas.bench.adb.thermal import (
    ThermalReading,
    parse_thermal_output,
    thermal_command,
    wait_until_cool,
)
from mnas.bench.adb.transport import (
    AdbCallError,
    AdbNoAnswer,
    PhoneTransport,
    ShellResult,
    ShellTimeout,
    one_line,
)
from mnas.bench.delegates import (
    DelegateFallback,
    delegate_fallback,
    delegate_name,
    delegated_kernels,
)
from mnas.bench.device_config import DeviceConfig, ThermalPolicy
from mnas.bench.files import sha256_file
from mnas.bench.measurement import Conditions, build_measurement, freq_below
from mnas.bench.topology import cores_mask, fastest_core, fastest_cores
from mnas.bench.types import BenchConfig, DeviceProfile, Measurement
from mnas.errors import MeasurementError, MnasError

__all__ = ["REMOTE_DIR", "AdbDevice"]

REMOTE_DIR = "/data/local/tmp/mnas"
_MODEL_NAME_GLOB = "[0-9a-f]" * 16 + ".tflite"  # the names remote_model_path gives
_RECONNECT_POLL_S = 0.5


class AdbDevice:
    """One phone behind the adb server; implements the `Device` protocol of `bench.types`."""

    def __init__(
        self,
        serial: str,
        config: DeviceConfig | None = None,
        adb: Any | None = None,
        benchmark_binary: Path | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        *,
        remote_dir: str = REMOTE_DIR,
        poll_s: float = 5.0,
        retry_delay_s: float = 2.0,
        reconnect_wait_s: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 0:
            raise MnasError(f"retries = {retries}: expected 0 or more")
        self.serial = serial
        self.device_id = serial
        self.config = config
        self.adb = adb if adb is not None else adb_client(timeout_s)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.remote_dir = remote_dir.rstrip("/")
        self.poll_s = poll_s
        self.retry_delay_s = retry_delay_s
        self.reconnect_wait_s = reconnect_wait_s
        self._sleep = sleep
        self._clock = clock
        self._device = self.adb.device(serial)
        self.transport = PhoneTransport(self._device, self._label(), self.timeout_s)
        self._local_binary = resolve_local_binary(benchmark_binary, config)
        self._props: dict[str, str] | None = None
        self._probed_freqs: dict[int, int] | None = None
        self._binary_sha: str | None = None
        self.cleanup_errors: list[str] = []
        self.stale_models_removed: list[str] = []  # left by a killed run (remove_stale_models)
        self._models_swept = False
        self.offline = False  # set after a final connection-level failure (see benchmark)

    def adopt(self, probe: AdbDevice) -> None:
        """Reuse what a probe of the same phone already read (properties, adb features)."""
        self._props = probe._props
        self.transport.known_features = probe.transport.known_features

    # ---- names and paths

    @property
    def remote_binary(self) -> str:
        return f"{self.remote_dir}/benchmark_model"

    @property
    def remote_models_dir(self) -> str:
        return f"{self.remote_dir}/models"

    def remote_model_path(self, model_sha256: str) -> str:
        """Where a model is pushed: its sha256's first 16 hex digits (see remove_stale_models)."""
        return f"{self.remote_models_dir}/{model_sha256[:16]}.tflite"

    @property
    def device_name(self) -> str:
        if self.config is not None:
            return self.config.name
        props = self._props or {}
        return props.get("ro.product.device") or "unknown"

    def _label(self) -> str:
        return f"{self.serial} ({self.config.name})" if self.config else self.serial

    # ---- bounded adb calls (see `transport`)

    def call_bound(self, config: BenchConfig | None = None) -> float:
        """Seconds allowed for one adb call: the device's timeout, or the benchmark's if smaller."""
        return self.timeout_s if config is None else min(self.timeout_s, float(config.timeout_s))

    def features(self, timeout_s: float | None = None) -> set[str]:
        return self.transport.features(timeout_s)

    def shell(self, command: str, timeout_s: float | None = None) -> ShellResult:
        return self.transport.shell(command, timeout_s)

    def run(self, command: str, timeout_s: float | None = None) -> str:
        return self.transport.run(command, timeout_s)

    # ---- phone facts

    def getprops(self, timeout_s: float | None = None) -> dict[str, str]:
        """All of the phone's properties (one `getprop` call, cached)."""
        if self._props is None:
            self._props = parse_getprop(self.run("getprop", timeout_s))
        return self._props

    def read_cpu_max_freqs(self) -> dict[int, int]:
        """cpuinfo_max_freq (kHz) of every possible core, read from the phone's sysfs."""
        if self._probed_freqs is None:
            self._probed_freqs = parse_cpu_probe(self.run(cpu_probe_command()),
                                                 source=f"phone {self.serial}")
        return self._probed_freqs

    def probe_config(self, name: str, label: str | None = None) -> DeviceConfig:
        """Build a device config from the phone's getprop values and CPU topology."""
        return build_probed_config(name, self.serial, self.getprops(), self.read_cpu_max_freqs(),
                                   label=label)

    def pin_core(self, config: BenchConfig | None = None) -> int:
        """The ONE core to pin to: BenchConfig.core, else the config's pin_core, else probed."""
        if config is not None and config.core is not None:
            cores = self.config.cores if self.config else sorted(self.read_cpu_max_freqs())
            if config.core not in cores:
                raise MnasError(f"{self._label()}: core {config.core} requested, but the phone has "
                                f"cores {cores[0]}..{cores[-1]}")
            return config.core
        if self.config is not None:
            return self.config.pin_core
        return fastest_core(self.read_cpu_max_freqs())

    def pin_cores(self, config: BenchConfig) -> list[int]:
        """The cores of a run with `config.num_threads` threads: the pinned core, then the next fastest.

        Frequencies come from the device config's clusters (else the phone's sysfs), so 2
        threads on a Pixel 4 run on its prime core and one A76 (mask c0). More threads than the
        phone has cores is a one-line MnasError.
        """
        first = self.pin_core(config)
        if config.num_threads == 1:
            return [first]
        if self.config is not None:
            freqs: dict[int, int | None] = {core: self.config.max_freq_khz(core) for core in self.config.cores}
        else:
            freqs = dict(self.read_cpu_max_freqs())
        try:
            return fastest_cores(freqs, config.num_threads, first)
        except ValueError as exc:
            raise MnasError(f"{self._label()}: --threads {config.num_threads}: {exc}") from None

    def max_freq_khz(self, core: int) -> int | None:
        if self.config is not None:
            return self.config.max_freq_khz(core)
        return self.read_cpu_max_freqs().get(core)

    def cpu_model(self, core: int) -> str:
        props = self._props or {}
        soc = props.get("ro.soc.model") or props.get("ro.board.platform") or props.get(
            "ro.hardware", "")
        cluster = ""
        if self.config is not None:
            cluster = f" ({self.config.cluster_of(core).name})"
        return f"{soc} cpu{core}{cluster}".strip()

    def profile(self) -> DeviceProfile:
        props = self.getprops()
        core = self.pin_core()
        version = ""
        if self._binary_sha is not None:
            version = version_from_sha(self._binary_sha)
        elif self._local_binary is not None:
            version = version_from_sha(sha256_file(self._local_binary))
        return DeviceProfile(
            device_id=self.serial,
            device_name=self.device_name,
            kind="adb",
            model=props.get("ro.product.model", ""),
            cpu_model=self.cpu_model(core),
            pinned_core=core,
            max_freq_khz=self.max_freq_khz(core),
            runtime=RUNTIME,
            runtime_version=version,
            android_build=props.get("ro.build.fingerprint") or props.get("ro.build.version.release") or None,
        )

    # ---- thermal

    def read_thermal(self, core: int, timeout_s: float | None = None) -> ThermalReading:
        return parse_thermal_output(self.run(thermal_command(core), timeout_s))

    def _policy(self) -> ThermalPolicy:
        return self.config.thermal if self.config is not None else ThermalPolicy()

    def cooldown(self, core: int, timeout_s: float | None = None) -> tuple[ThermalReading, float, bool]:
        """Wait (bounded) until the phone is cool (see `thermal.wait_until_cool`)."""
        return wait_until_cool(lambda: self.read_thermal(core, timeout_s), self._policy(),
                               self.poll_s, self._sleep, self._clock)

    # ---- files on the phone

    def push(self, local: Path, remote: str, mode: int = 0o644,
             timeout_s: float | None = None) -> None:
        push_file(self.transport, local, remote, mode,
                  self.transport.bound(timeout_s))

    def ensure_binary(self, timeout_s: float | None = None) -> str:
        """Make sure benchmark_model is on the phone (push only if its hash differs).

        Returns the binary's sha256 (or `size:N` when neither side can hash it).
        `timeout_s` bounds each adb call (default: the device's timeout).
        """
        if self._binary_sha is not None:
            return self._binary_sha
        bound = self.transport.bound(timeout_s)
        remote = self.remote_binary
        self.run(f"mkdir -p {shlex.quote(self.remote_models_dir)}", bound)
        if not self._models_swept:
            self.remove_stale_models(bound)
        there = remote_file(self.transport, remote, bound)
        local = self._local_binary
        if local is None:
            if not there.exists:
                hint = (f"set benchmark_binary in {self.config.label}" if self.config
                        else "pass the benchmark_model binary")
                raise MnasError(f"{self._label()}: no benchmark_model on the phone at {remote} and "
                                f"no local binary given ({hint})")
            if not there.executable:
                self.run(f"chmod 755 {shlex.quote(remote)}", bound)
            self._binary_sha = there.sha256 or f"size:{there.size}"
            return self._binary_sha
        local_sha = sha256_file(local)
        same = there.exists and (there.sha256 == local_sha if there.sha256 is not None
                                 else there.size == local.stat().st_size)
        if not same:
            check_phone_binary(local)  # it may have changed since the device was opened
            self.push(local, remote, mode=0o755, timeout_s=bound)
        if not same or not there.executable:
            self.run(f"chmod 755 {shlex.quote(remote)}", bound)
        self._binary_sha = local_sha
        return local_sha

    def remove_stale_models(self, timeout_s: float | None = None) -> list[str]:
        """Delete model files an earlier run left in the model folder (it was killed mid-run).

        Only names of mnas's own scheme (`remote_model_path`: 16 hex digits + `.tflite`) are
        removed; anything else there stays. Done once per device, before its first
        benchmark: one mnas run per phone at a time (two would disturb each other's timings
        anyway). The names removed are kept in `stale_models_removed`; a failure is recorded
        in `cleanup_errors`, except a phone that does not answer (AdbNoAnswer propagates).
        """
        folder = shlex.quote(self.remote_models_dir)
        command = (f'for f in {folder}/*.tflite; do case "${{f##*/}}" in {_MODEL_NAME_GLOB}) '
                   f'rm -f "$f" && echo "${{f##*/}}";; esac; done; true')
        try:
            result = self.transport.shell(command, self.transport.bound(timeout_s))
        except AdbNoAnswer:
            raise
        except MeasurementError as exc:
            self.cleanup_errors.append(f"removing stale models: {exc}")
            return []
        self._models_swept = True
        removed = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        self.stale_models_removed.extend(removed)
        return removed

    # ---- benchmarking

    def benchmark(self, model_path: Path, config: BenchConfig) -> Measurement:
        """Time `model_path` on the pinned core; retries, then one-line MeasurementError.

        A final failure at the connection level (AdbCallError other than a benchmark that
        merely ran past its timeout on a phone that still answers) sets `offline`; a call
        that got no answer at all (AdbNoAnswer) ends the attempts at once.
        """
        model_path = Path(model_path)
        if not model_path.is_file():
            raise MnasError(f"{model_path}: model file not found")
        model_sha = sha256_file(model_path)
        cores = self.pin_cores(config)
        bound = self.call_bound(config)
        attempts = self.retries + 1
        last: MeasurementError | None = None
        for attempt in range(1, attempts + 1):
            try:
                measurement = self._attempt(model_path, model_sha, cores, config)
                measurement.extra["attempts"] = attempt
                self.offline = False
                return measurement
            except AdbNoAnswer as exc:
                last = exc  # hung: a retry or a wait for it would only wait out more bounds
                break
            except DelegateFallback:
                raise  # the phone answered and ran the model; a retry would fall back the same way
            except MeasurementError as exc:
                last = exc
                if attempt < attempts:
                    self._sleep(self.retry_delay_s)
                    self.await_online(min(self.reconnect_wait_s, bound), bound)
        assert last is not None
        self.offline = isinstance(last, AdbCallError) and not isinstance(last, ShellTimeout)
        reason = str(last)
        for prefix in (f"{self._label()} {model_path.name}: ", f"{self._label()}: "):
            if reason.startswith(prefix):  # the line names phone and model once
                reason = reason[len(prefix):]
                break
        raise MeasurementError(
            f"{self._label()}: benchmark of {model_path.name} failed after {attempt} "
            f"attempt(s): {one_line(reason)}"
            + ("; phone marked offline" if self.offline else "")
        )

    def await_online(self, limit_s: float, call_timeout_s: float | None = None) -> bool:
        """Wait (bounded) until the adb server lists this phone as `device` again.

        A phone that dropped off USB, or whose adbd restarted, is usually back within seconds;
        retrying before that would only fail again.
        """
        deadline = self._clock() + limit_s
        call_timeout = self.transport.bound(call_timeout_s)
        while True:
            try:
                entries = list_devices(self.adb, call_timeout)
                state = {entry.serial: entry.state for entry in entries}.get(self.serial)
            except MnasError:
                state = None
            if state == "device":
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(_RECONNECT_POLL_S)

    def _attempt(self, model_path: Path, model_sha: str, cores: list[int],
                 config: BenchConfig) -> Measurement:
        core = self.pin_core(config)  # the first of `cores`: thermal and frequency reads watch it
        bound = self.call_bound(config)
        binary_sha = self.ensure_binary(bound)
        self.getprops(bound)
        remote_model = self.remote_model_path(model_sha)
        link_lost = False
        try:
            self.push(model_path, remote_model, timeout_s=bound)
            before, waited_s, cooldown_timed_out = self.cooldown(core, bound)
            command = benchmark_command(self.remote_binary, remote_model, cores, config)
            result, wall_s = run_benchmark(self.transport, command, config.timeout_s, bound,
                                           self.cleanup_errors)
            after = self.read_thermal(core, bound)
        except AdbNoAnswer:
            link_lost = True
            raise
        finally:
            if link_lost:  # the phone is not answering: rm would only wait out another bound
                self.cleanup_errors.append(f"rm {remote_model}: skipped, the phone is not answering")
            else:
                remove_file(self.transport, remote_model, bound, self.cleanup_errors)

        timings, params = read_timings(result, f"{self._label()} {model_path.name}")
        max_freq = self.max_freq_khz(core)
        policy = self._policy()
        capped = freq_below(after.cap_khz, max_freq, policy.throttle_ratio)
        hottest_after = after.hottest_c
        hot_after = hottest_after is not None and hottest_after > policy.throttle_above_c
        reasons = []  # why the run counts as throttled (the reuse rule then measures it again)
        if capped:
            reasons.append(f"frequency cap {after.cap_khz} kHz after the run is below "
                           f"{policy.throttle_ratio:g} x {max_freq} kHz")
        if cooldown_timed_out:
            reasons.append(f"still above {policy.cooldown_below_c:g} °C after the "
                           f"{policy.cooldown_timeout_s:g} s cool-down")
        if hot_after:
            reasons.append(f"hottest zone {hottest_after:g} °C after the run is above the "
                           f"limit {policy.throttle_above_c:g} °C")
        measurement = build_measurement(
            device_id=self.serial,
            device_name=self.device_name,
            model_path=model_path,
            model_sha256=model_sha,
            runtime=RUNTIME,
            runtime_version=runtime_version(params, binary_sha),
            config=config,
            timings=timings,
            conditions=Conditions(
                core=core, cores=tuple(cores), cpu_model=self.cpu_model(core), max_freq_khz=max_freq,
                throttled=bool(reasons), wall_s=wall_s,
                temps_before_c=before.temps_c, temps_after_c=after.temps_c,
                freq_before_khz=before.cur_freq_khz, freq_after_khz=after.cur_freq_khz,
            ),
            extra={
                "shell_protocol": result.protocol,
                "binary_sha256": binary_sha,
                "taskset_mask": cores_mask(cores),
                "cooldown_waited_s": round(waited_s, 3),
                "cooldown_timed_out": cooldown_timed_out,
                "freq_cap_before_khz": before.cap_khz,
                "freq_cap_after_khz": after.cap_khz,
                "hottest_after_c": hottest_after,
                "throttle_above_c": policy.throttle_above_c,
                "throttle_reasons": reasons,
                **self._delegate_facts(config, result.output),
            },
        )
        fallback = measurement.extra.get("delegate_fallback")
        if fallback:
            raise DelegateFallback(
                f"{self._label()} {model_path.name}: --delegate {config.delegate} was not applied, the run fell back "
                f"to the CPU (benchmark_model: {fallback}): not stored as a {config.delegate} result", measurement)
        return measurement

    @staticmethod
    def _delegate_facts(config: BenchConfig, output: str) -> dict[str, Any]:
        """What the log says about the delegate asked for (nothing when none was: the default)."""
        if delegate_name(config.delegate) is None:
            return {}
        return {"delegate_fallback": delegate_fallback(config.delegate, output),
                "delegate_kernels": delegated_kernels(config.delegate, output)}
