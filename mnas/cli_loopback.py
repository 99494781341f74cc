"""`mnas devices loopback`: phones on loopback for trying the adb path without a phone.

`start` runs N adbd stand-ins (bench/loopback) on free 127.0.0.1 ports and `adb connect`s
them to the adb server adbutils uses (ANDROID_ADB_SERVER_PORT, ADBUTILS_ADB_PATH); they
are then ordinary devices for `mnas devices`, `mnas bench --device SERIAL` and `adb`.
`fault` switches a running phone's faults, `status` lists them, `stop` ends them. The
group is attached under `mnas devices` by mnas/cli_devices.py.
"""

from __future__ import annotations

from typing import Any

import click

from mnas.bench.loopback import manager
from mnas.bench.loopback.faults import FAULTS
from mnas.cli_util import echo_json, echo_table, iso_at, json_option

_FAULT_HELP = "; ".join(
    f"{name}{'' if spec.kind is None else f'[={spec.default:g}]'}: {spec.help}" for name, spec in FAULTS.items()
)
_dir_option = click.option(
    "--dir", "folder", type=click.Path(file_okay=False), default=None,
    help=f"State folder (default: ${manager.STATE_DIR_ENV} or {manager.DEFAULT_STATE_DIR}).",
)


def _row(phone: manager.LoopbackPhone | dict[str, Any]) -> dict[str, Any]:
    data = phone.to_dict() if isinstance(phone, manager.LoopbackPhone) else phone
    row = {"serial": data["serial"], "config": data["config"], "pid": data["pid"],
           "host_core": data["host_core"], "faults": ",".join(data["faults"]) or "-"}
    for extra in ("running", "adb_state"):
        if extra in data:
            row[extra] = data[extra]
    return row


_RENAMED = {"serial": "device_id", "config": "device_config"}


def _json_phone(data: dict[str, Any]) -> dict[str, Any]:
    """A recorded phone in the vocabulary of docs/json.md (the state file keeps its own field names)."""
    row = {_RENAMED.get(key, key): value for key, value in data.items() if key not in ("host_core", "started_at")}
    return {**row, "pinned_cores": [data["host_core"]], "started_at": iso_at(data.get("started_at"))}


@click.group()
def loopback() -> None:
    """Phones on loopback: adbd stand-ins the real adb server accepts."""


@loopback.command()
@click.option("--config", "config", default="pixel4", show_default=True, help="Device config name or YAML path.")
@click.option("--count", type=click.IntRange(1, 32), default=1, show_default=True, help="How many phones.")
@click.option("--fault", "faults", multiple=True, metavar="NAME[=VALUE]", help=f"Fault to show (repeatable). {_FAULT_HELP}.")
@click.option("--host-core", type=int, default=None, help="Host core that taskset pins to (default: the last one).")
@_dir_option
@json_option
def start(config: str, count: int, faults: tuple[str, ...], host_core: int | None, folder: str | None, as_json: bool) -> None:
    """Start COUNT loopback phones and adb-connect them; prints their serials."""
    phones = manager.start(config, count, faults, folder=folder, host_core=host_core)
    if as_json:
        echo_json([_json_phone(ph.to_dict()) for ph in phones])
        return
    for phone in phones:
        click.echo(phone.serial)


@loopback.command()
@click.argument("serials", nargs=-1)
@click.option("--keep-files", is_flag=True, help="Keep each phone's folder (pushed files, log).")
@_dir_option
@json_option
def stop(serials: tuple[str, ...], keep_files: bool, folder: str | None, as_json: bool) -> None:
    """Disconnect and stop loopback phones (all, or the SERIALS given)."""
    stopped = manager.stop(list(serials) or None, folder=folder, keep_files=keep_files)
    if as_json:
        echo_json({"stopped": [ph.serial for ph in stopped]})
        return
    for phone in stopped:
        click.echo(f"stopped {phone.serial}")
    if not stopped:
        click.echo("no loopback phone running")


@loopback.command()
@_dir_option
@json_option
def status(folder: str | None, as_json: bool) -> None:
    """List recorded loopback phones: process alive, adb state, faults."""
    rows = manager.status(folder)
    if as_json:
        echo_json([_json_phone(r) for r in rows])
        return
    echo_table([_row(r) for r in rows], ["serial", "config", "pid", "host_core", "running", "adb_state", "faults"])


@loopback.command()
@click.argument("serial")
@click.argument("faults", nargs=-1, metavar="[NAME[=VALUE]]...")
@click.option("--reconnect", is_flag=True, help="adb disconnect + connect after switching (for refuse_auth, slow_link, no_shell_v2).")
@_dir_option
def fault(serial: str, faults: tuple[str, ...], reconnect: bool, folder: str | None) -> None:
    """Replace a running phone's faults (none given: healthy again)."""
    manager.set_faults(serial, faults, folder, reconnect=reconnect)
    click.echo(f"{serial}: faults {', '.join(faults) if faults else 'none'}")
