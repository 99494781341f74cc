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
