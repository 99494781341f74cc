"""Run many models on many devices: one worker per device, results stored as they come.

Each device gets its own thread and works through the model list in order, so two
measurements never run at once on one device while several phones run in parallel. Every
finished measurement is written to the store at once (a crash loses at most the one in
flight); a measurement already stored for the same device, model, runtime and conditions is
reused unless `force` is set, so a re-run after a kill resumes and duplicates nothing.
A device that reports itself `offline` after a failure (a phone that is gone or hung) gets
no further models; each pair it leaves unmeasured is reported, naming device and model,
through `on_result` like every other outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Queue

from mnas.bench.models import PreparedModel
from mnas.bench.types import BenchConfig, Device, Measurement
from mnas.errors import MnasError


@dataclass
class BenchOutcome:
    device_id: str
    model: PreparedModel
    measurement: Measurement | None
    stored_id: int | None
    reused: bool = False
    error: str | None = None


def run_benchmarks(
    devices: Sequence[Device],
    models: Sequence[PreparedModel],
    config: BenchConfig,
    store=None,  # mnas.bench.store.ResultsStore | None
    force: bool = False,
    on_result: Callable[[BenchOutcome], None] | None = None,
) -> list[BenchOutcome]:
    """Measure every model on every device; failures are reported per pair, never raised."""
    outcomes: Queue[BenchOutcome] = Queue()
    lock = threading.Lock()

    def report(outcome: BenchOutcome) -> None:
        with lock:
            if on_result is not None:
                on_result(outcome)
        outcomes.put(outcome)

    def work(device: Device) -> None:
        try:
            profile = device.profile()
        except MnasError as exc:
            for model in models:
                report(BenchOutcome(device.device_id, model, None, None,
                                    error=f"{device.device_id}: {model.label}: not measured: {exc}"))
            return
        for index, model in enumerate(models):
            outcome = _one(device, profile, model)
            report(outcome)
            if outcome.error and getattr(device, "offline", False):
                for rest in models[index + 1:]:
                    report(BenchOutcome(device.device_id, rest, None, None,
                                        error=f"{device.device_id}: {rest.label}: not measured: "
                                              "device offline after an earlier failure"))
                return

    def _one(device: Device, profile, model: PreparedModel) -> BenchOutcome:
        if store is not None and not force:
            stored = store.find_measurement(profile.device_id, model.sha256, profile.runtime,
                                            profile.runtime_version, config.conditions_key())
            if stored is not None and not stored.throttled:  # a throttled result is measured again
                return BenchOutcome(device.device_id, model, stored, None, reused=True)
        try:
            measurement = device.benchmark(model.path, config)
        except MnasError as exc:
            return BenchOutcome(device.device_id, model, None, None, error=str(exc))
        stored_id = store.add_measurement(measurement, label=model.label, arch=model.arch) if store is not None else None
        return BenchOutcome(device.device_id, model, measurement, stored_id)

    threads = [threading.Thread(target=work, args=(d,), name=f"bench-{d.device_id}", daemon=True) for d in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = []
    while not outcomes.empty():
        results.append(outcomes.get())
    order = {(d.device_id, m.path): i for i, (d, m) in enumerate((d, m) for d in devices for m in models)}
    results.sort(key=lambda o: order.get((o.device_id, o.model.path), 0))
    return results
