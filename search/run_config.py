"""A search run's settings: typed, validated, and stored as JSON with the run.

`--resume` rebuilds a run from what was stored when it started, so the config is the run's
identity: the same config (seed, window and pinned predictor included) gives the same
samples. It is stored in `search_runs.config` as the plain dict `RunConfig.to_dict` writes;
`RunConfig.from_dict` reads that and every dict stored before the config had a type (the
same keys, some of them missing), so runs started by older versions still resume.

Bad values fail here, in one line naming the option, before anything is built or trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas.bench.types import BenchConfig, parse_bm_args
from mnas.errors import MnasError
from mnas.search.reward import PRESETS, Reward
from mnas.space.quantize import DTYPES

__all__ = ["ACCURACY_KINDS", "ALGORITHMS", "LATENCY_KINDS", "AccuracyConfig", "LatencyConfig", "RunConfig",
           "check_budget", "check_threads", "check_window", "new_run_config", "reward_from_options"]

ALGORITHMS = ("ppo", "random", "evolution")
LATENCY_KINDS = ("predicted", "measured", "hybrid")
ACCURACY_KINDS = ("proxy", "cheap")
PROXY_STRIDES = ("auto", "reduced", "full")  # auto: reduced below 64 px (ProxyTask.reduced_strides)


def check_budget(samples: object) -> None:
    """A run's budget is a whole number of children, at least one."""
    if not isinstance(samples, int) or samples < 1:
        raise MnasError(f"--samples {samples}: expected a budget >= 1")


def check_window(window: object) -> None:
    """The pipeline window: how many children may be asked ahead of the oldest untold one."""
    if not isinstance(window, int) or window < 1:
        raise MnasError(f"--window {window!r}: expected an integer >= 1")


def _optional(convert: Any) -> Any:
    return lambda value: None if value is None else convert(value)


# JSON turns 0.5 into 0.5 but 1.0 into 1.0 and 0 into 0: numbers are converted to the field's type
_CONVERTERS = {"int": int, "float": float, "str": str, "bool": bool, "int | None": _optional(int), "float | None": _optional(float),
               "str | None": _optional(str)}


def _from_fields(cls: Any, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)` with each number converted to its field's type; unknown keys are an error."""
    if not isinstance(values, dict):
        raise MnasError(f"run config: {where} is {type(values).__name__}: expected a JSON object")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise MnasError(f"run config: {where} key(s) {', '.join(unknown)} unknown: expected some of {', '.join(types)}")
    converted = {}
    for name, value in values.items():
        convert = _CONVERTERS.get(str(types[name]))
        try:
            converted[name] = convert(value) if convert else value
        except (TypeError, ValueError):
            raise MnasError(f"run config: {where}.{name} = {value!r}: expected {types[name]}") from None
    return cls(**converted)


@dataclass(frozen=True)
class LatencyConfig:
    """Where LAT(m) comes from: a predictor, measurements on `device`, or both (hybrid).

    `predictor_id` is pinned when the run starts (the latest predictor for `device_name`,
    the device model tables are keyed on), so a resumed run predicts with the same one.
    `dtype` is the type of the models whose latency is asked (`space.quantize.DTYPES`): measured
    latency times models of that dtype, predicted latency uses a predictor fitted on a table of
    that dtype. A config stored before the field existed reads back as float32.
    """

    kind: str = "predicted"
    device: str = "host"
    resolution: int = 224
    predictor_id: int | None = None
    device_name: str | None = None
    share: float = 0.1  # hybrid: share of children also measured
    runs: int = 20
    warmup: int = 3
    min_secs: float = 0.5
    benchmark_binary: str | None = None  # phones: host path of the arm64 benchmark_model
    timeout_s: float = 600.0
    retries: int = 1
    keep_models: bool = False  # measured: keep each timed .tflite in the run folder (else deleted once stored)
    threads: int = 1  # measured: benchmark threads (one core each; BenchConfig.num_threads)
    delegate: str = "default"  # measured: bench.types.DELEGATES
    bm_args: tuple[tuple[str, str], ...] = ()  # measured, phones: extra benchmark_model flags
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in LATENCY_KINDS:
            raise MnasError(f"--latency {self.kind!r}: expected one of {', '.join(LATENCY_KINDS)}")
        if self.dtype not in DTYPES:
            raise MnasError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if not 0 < self.share <= 1:
            raise MnasError(f"--share {self.share:g}: expected a value in (0, 1]")
        object.__setattr__(self, "bm_args", parse_bm_args(self.bm_args))  # JSON gives lists: one form

    @property
    def predicts(self) -> bool:
        return self.kind != "measured"

    @property
    def measures(self) -> bool:
        return self.kind != "predicted"

    def bench_config(self) -> BenchConfig:
        """The timing conditions of every measurement of the run."""
        return BenchConfig(warmup_runs=self.warmup, num_runs=self.runs, min_secs=self.min_secs, num_threads=self.threads,
                           delegate=self.delegate, bm_args=self.bm_args)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LatencyConfig:
        return _from_fields(cls, values, "latency")


@dataclass(frozen=True)
class AccuracyConfig:
    """ACC(m): a proxy task really trained (`task_key`), or the cheap stand-in (`params`).

    `threads` and `device` say how a proxy child trains, not what is measured, so they are
    kept apart from the task key ("execution") and `--resume --threads` may change them.
    """

    kind: str = "proxy"
    task_key: str | None = None
    params: dict[str, float] = field(default_factory=dict)  # cheap: CheapAccuracy's arguments
    threads: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACCURACY_KINDS:
            raise MnasError(f"accuracy source {self.kind!r}: expected {' or '.join(ACCURACY_KINDS)}")
        if self.kind == "proxy" and not self.task_key:
            raise MnasError("accuracy source proxy: no task key: expected ProxyTask.key()")

    def execution(self) -> dict[str, Any]:
        """The proxy task's execution settings that are set (`ProxyTask.from_key(key, **execution)`)."""
        return {k: v for k, v in (("threads", self.threads), ("device", self.device)) if v is not None}

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "cheap":
            return {"kind": "cheap", "params": dict(self.params)}
        return {"kind": self.kind, "task_key": self.task_key, "execution": self.execution()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AccuracyConfig:
        flat = {k: v for k, v in values.items() if k != "execution"} if isinstance(values, dict) else values
        if isinstance(values, dict):
            flat.update(values.get("execution") or {})
        return _from_fields(cls, flat, "accuracy")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's samples; see the module docstring."""

    algorithm: str
    seed: int
    samples: int
    reward: Reward
    latency: LatencyConfig
    accuracy: AccuracyConfig
    space: str = "mnasnet"
    window: int | None = None  # set when the run starts (`lifecycle.resolve_window`)
    keep_top: int = 5  # trained weights kept for this many best children
    ppo: dict[str, Any] = field(default_factory=dict)  # PPOConfig overrides
    evolution: dict[str, int] = field(default_factory=dict)  # population, sample_size

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise MnasError(f"--algorithm {self.algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
        if self.space != "mnasnet":
            raise MnasError(f"run config: space {self.space!r}: expected mnasnet")
        check_budget(self.samples)
        if self.window is not None:
            check_window(self.window)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"space": self.space, "algorithm": self.algorithm, "seed": self.seed,
                               "samples": self.samples, "reward": self.reward.to_dict(),
                               "latency": self.latency.to_dict(), "accuracy": self.accuracy.to_dict(),
                               "keep_top": self.keep_top}
        optional = {"window": self.window, "ppo": self.ppo, "evolution": self.evolution}
        return out | {k: v for k, v in optional.items() if v}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        if not isinstance(values, dict) or not isinstance(values.get("reward"), dict):
            raise MnasError(f"run config: {str(values)[:60]!r}: expected a JSON object with a reward")
        reward = values["reward"]
        try:
            parsed = Reward(float(reward["target_ms"]), float(reward["alpha"]), float(reward["beta"]))
        except (KeyError, TypeError, ValueError):
            raise MnasError(f"run config: reward {reward!r}: expected target_ms, alpha and beta") from None
        rest = {k: v for k, v in values.items() if k not in ("reward", "latency", "accuracy")}
        return _from_fields(cls, {**rest, "reward": parsed, "latency": LatencyConfig.from_dict(values.get("latency", {})),
                                  "accuracy": AccuracyConfig.from_dict(values.get("accuracy", {}))}, "config")

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MnasError(f"run config: {exc.msg} at position {exc.pos}: expected JSON") from None
        return cls.from_dict(values)


def reward_from_options(preset: str, target_ms: float, alpha: float | None = None, beta: float | None = None) -> Reward:
    """`--reward soft|hard` (the paper's exponents) or `custom` with both `--alpha` and `--beta`."""
    if not math.isfinite(target_ms) or target_ms <= 0:
        raise MnasError(f"--target-ms {target_ms:g}: expected a latency target > 0 ms")
    if preset == "custom":
        if alpha is None or beta is None:
            raise MnasError("--reward custom: expected both --alpha and --beta")
        return Reward(target_ms, alpha, beta)
    if alpha is not None or beta is not None:
        raise MnasError(f"--alpha/--beta: given with --reward {preset}: expected --reward custom")
    if preset not in PRESETS:
        raise MnasError(f"--reward {preset!r}: expected one of {', '.join([*PRESETS, 'custom'])}")
    return Reward.preset(preset, target_ms)


def new_run_config(*, algorithm: str = "ppo", seed: int = 0, samples: int = 20, target_ms: float = 75.0,
                   reward: str = "soft", alpha: float | None = None, beta: float | None = None,
                   latency: str = "predicted", device: str = "host", predictor_id: int | None = None,
                   share: float = 0.1, latency_resolution: int = 224, runs: int = 20, warmup: int = 3,
                   min_secs: float = 0.5, benchmark_binary: str | None = None, accuracy: str = "proxy",
                   dataset: str = "fashion-mnist", proxy_resolution: int = 32, epochs: float = 1.0,
                   steps: int | None = None, batch_size: int = 128, train_samples: int = 4096,
                   val_samples: int = 2000, threads: int = 1, keep_models: bool = False,
                   proxy_strides: str = "auto", latency_threads: int = 1, delegate: str = "default",
                   bm_args: tuple[str, ...] = (), dtype: str = "float32") -> RunConfig:
    """The config of a new run from `mnas search` options (defaults: the CLI's)."""
    check_threads(threads)
    parsed_reward = reward_from_options(reward, target_ms, alpha, beta)
    check_budget(samples)
    binary = None
    if benchmark_binary:
        path = Path(benchmark_binary).expanduser().resolve()
        if not path.is_file():
            raise MnasError(f"--benchmark-binary {benchmark_binary}: no such file: expected the arm64 benchmark_model binary")
        binary = str(path)
    latency_config = LatencyConfig(kind=latency, device=device, resolution=latency_resolution, predictor_id=predictor_id,
                                   share=share, runs=runs, warmup=warmup, min_secs=min_secs, benchmark_binary=binary,
                                   keep_models=keep_models, threads=latency_threads, delegate=delegate,
                                   bm_args=parse_bm_args(bm_args), dtype=dtype)
    if accuracy == "cheap":
        # its mult-adds curve is defined at 224 px whatever resolution latency is timed at
        accuracy_config = AccuracyConfig(kind="cheap", params={"seed": seed})
    else:
        from mnas.search.accuracy import ProxyTask

        if proxy_strides not in PROXY_STRIDES:
            raise MnasError(f"--proxy-strides {proxy_strides!r}: expected one of {', '.join(PROXY_STRIDES)}")
        reduced = {"auto": None, "reduced": True, "full": False}[proxy_strides]
        task = ProxyTask(dataset=dataset, resolution=proxy_resolution, epochs=epochs, steps=steps, batch_size=batch_size,
                         max_train_samples=train_samples, max_val_samples=val_samples, seed=seed,
                         reduced_strides=reduced)
        accuracy_config = AccuracyConfig(kind=accuracy, task_key=task.key(), threads=threads)
    return RunConfig(algorithm=algorithm, seed=seed, samples=samples, reward=parsed_reward, latency=latency_config,
                     accuracy=accuracy_config)


def check_threads(threads: object) -> None:
    """torch threads of the search process: a whole number, at least one."""
    if not isinstance(threads, int) or threads < 1:
        raise MnasError(f"--threads {threads}: expected an integer >= 1")
