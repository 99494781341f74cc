"""Shared CLI plumbing: the results-database option, JSON output and a default-command group.

Every command that prints results takes `--json`; JSON keys are stable and carry units in
their names (`median_ms`, `mult_adds`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click

from mnas.json_safe import json_safe

DEFAULT_DB = Path("results") / "mnas.db"

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def device_option(default: str | None = "host", help: str = "host, a phone SERIAL, or all.",
                  dest: str = "device_spec") -> Any:
    """`--device` / `-s SERIAL` (adb's own short flag), defaulting to $ANDROID_SERIAL when set, as adb does.

    The explicit option wins over the variable, which wins over `default`.
    """
    return click.option("--device", "-s", dest, default=default, show_default=True, envvar="ANDROID_SERIAL",
                        show_envvar=True, help=help + " -s SERIAL is the same; $ANDROID_SERIAL, when set, is the "
                        "default (as for adb).")


DELEGATE_HELP = ("How the model runs: default = the runtime's own choice, no delegate flag (LiteRT and recent "
                 "benchmark_model builds apply XNNPACK to float models by themselves); none = plain CPU kernels "
                 "(XNNPACK off); xnnpack, gpu, nnapi = that delegate (gpu and nnapi on phones only). A run whose "
                 "delegate fell back to the CPU is reported, not stored.")


def execution_options(func: Any) -> Any:
    """--threads, --delegate and --bm-arg: how a model is executed (part of a measurement's conditions)."""
    from mnas.bench.types import DELEGATES

    func = click.option("--bm-arg", "bm_args", multiple=True, metavar="FLAG=VALUE",
                        help="Phones: one more benchmark_model flag, e.g. --bm-arg use_caching=true (repeatable; "
                             "stored with the conditions, so it is part of the reuse key).")(func)
    func = click.option("--delegate", type=click.Choice(DELEGATES), default="default", show_default=True,
                        help=DELEGATE_HELP)(func)
    return click.option("--threads", "num_threads", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Interpreter threads (benchmark_model --num_threads); the run is pinned to as many "
                             "cores: the pinned core and the next fastest (phones: the config's big cores).")(func)


def check_execution(device_spec: str | None, config: Any) -> None:
    """One line now when the host is among the devices and cannot run `config` (GPU/NNAPI, --bm-arg)."""
    if device_spec is not None and "host" in [name.strip() for name in device_spec.split(",")]:
        from mnas.bench.host import check_host_config

        check_host_config(config)


def db_path(ctx: click.Context) -> Path:
    """The results database chosen by `mnas --db`, `MNAS_DB`, or the default."""
    root = ctx.find_root()
    chosen = (root.obj or {}).get("db") if root.obj else None
    return Path(chosen or os.environ.get("MNAS_DB") or DEFAULT_DB)


# the lines `bench.devices.select_devices` leaves in `unusable` start "device SERIAL: "; a serial
# holds no whitespace (adb's `host:port` serials hold a colon, hence the non-greedy match up to ": ")
_UNUSABLE_SERIAL = re.compile(r"^device (\S+?): ")


def skipped_device(line: str) -> dict[str, Any]:
    """A phone left out at selection as a JSON row: its serial (None if the line names none) and the line.

    `--json` consumers must see that a phone was skipped, not only stderr readers.
    """
    match = _UNUSABLE_SERIAL.match(line)
    return {"device_id": match.group(1) if match else None, "error": line}


def iso_at(epoch: float | None) -> str | None:
    """An epoch time as the `*_at` keys of docs/json.md carry it: ISO-8601, UTC, with its offset."""
    import datetime as dt

    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(json_safe(payload), indent=2, sort_keys=False))


def echo_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Print rows as an aligned text table (pandas does the formatting)."""
    import pandas as pd

    if not rows:
        click.echo("(nothing)")
        return
    frame = pd.DataFrame(rows, columns=columns)
    click.echo(frame.to_string(index=False))


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a sub-command, goes to a default command.

    `mnas bench model.tflite` runs the default `run` command while `mnas bench parse LOG`
    still reaches the `parse` sub-command.
    """

    def __init__(self, *args: Any, default_command: str = "run", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command
        self.no_args_is_help = False
        self.invoke_without_command = True

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            if not (args and args[0] in ("--help", "-h")):
                args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_usage(ctx, formatter)
