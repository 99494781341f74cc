"""`mnas devices`: what can be measured on (this host, attached phones) and `probe` for new phones.

Listing never fails because adb is missing: a host without an adb server or binary still lists
itself, with one note saying what is missing. `probe` writes a device config from what the
phone reports (getprop, /sys/devices/system/cpu) so a new phone model needs no hand-typed
topology.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mnas.cli_util import echo_json, echo_table, json_option
from mnas.errors import MnasError

_COLUMNS = ["id", "kind", "state", "model", "config", "pin_core", "max_freq_khz", "runtime"]


def _host_row(notes: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": "host", "kind": "host", "state": "online", "model": "",
                           "config": "host", "pin_core": None, "max_freq_khz": None, "runtime": ""}
    try:
        from mnas.bench.host import HostDevice
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("mnas.bench"):
            raise
        import platform

        row["model"] = platform.processor() or platform.machine()
        notes.append("host benchmarking is not available in this build (mnas.bench.host missing)")
        return row
    try:
        profile = HostDevice().profile()
    except MnasError as exc:
        notes.append(f"host: {exc}")
        return row
    row.update(model=profile.cpu_model, pin_core=profile.pinned_core,
               max_freq_khz=profile.max_freq_khz,
               runtime=f"{profile.runtime} {profile.runtime_version}".strip())
    return row


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A device row in the vocabulary of docs/json.md (the text table keeps its short headers)."""
    host = row["kind"] == "host"
    return {"device_id": row["id"], "kind": row["kind"], "state": row["state"],
            "phone_model": None if host else row["model"], "cpu_model": row["model"] if host else None,
            "device_config": row["config"], "pinned_cores": [] if row["pin_core"] is None else [row["pin_core"]],
            "max_freq_khz": row["max_freq_khz"], "runtime": row["runtime"]}


def collect_devices(timeout_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for the host and every phone, plus one-line notes about what could not be read."""
    from mnas.bench.adb import adb_client, adb_unavailable_reason, discover_phones
    from mnas.bench.device_config import load_all

    notes: list[str] = []
    rows = [_host_row(notes)]
    client = adb_client(timeout_s)
    reason = adb_unavailable_reason(client)
    if reason is not None:
        notes.append(f"{reason}; listing the host only")
        return rows, notes
    try:
        configs = load_all()
    except MnasError as exc:
        notes.append(f"device configs not loaded ({exc}); phones are listed without them")
        configs = {}
    try:
        phones = discover_phones(client, configs, timeout_s=timeout_s)
    except MnasError as exc:
        notes.append(f"{exc}; listing the host only")
        return rows, notes
    for phone in phones:
        config = phone.config
        rows.append({
            "id": phone.serial,
            "kind": "adb",
            "state": phone.state,
            "model": phone.model,
            "config": config.name if config else None,
            "pin_core": config.pin_core if config else None,
            "max_freq_khz": config.max_freq_khz() if config else None,
            "runtime": "benchmark_model",
        })
        if phone.error:
            notes.append(f"{phone.serial}: {phone.error}")
        elif phone.state != "device":
            notes.append(f"{phone.serial}: state '{phone.state}' (unlock the phone and accept "
                         "the USB debugging prompt)" if phone.state == "unauthorized"
                         else f"{phone.serial}: state '{phone.state}'")
        elif config is None:
            notes.append(f"{phone.serial}: no device config matches ro.product.model "
                         f"{phone.model!r}; write one with `mnas devices probe {phone.serial} "
                         "-o device_configs/NAME.yaml`")
    return rows, notes


@click.group(invoke_without_command=True)
@json_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds allowed for each adb call.")
@click.pass_context
def devices(ctx: click.Context, as_json: bool, timeout_s: float) -> None:
    """This host and the attached phones (serial, state, model, device config, pinned core)."""
    if ctx.invoked_subcommand is not None:
        return
    rows, notes = collect_devices(timeout_s)
    if as_json:
        echo_json({"devices": [_json_row(row) for row in rows], "notes": notes})
        return
    echo_table([{k: ("-" if v is None else v) for k, v in row.items()} for row in rows], _COLUMNS)
    for note in notes:
        click.echo(f"note: {note}", err=True)


@devices.command("probe")
@click.argument("serial")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Config file to write, e.g. device_configs/pixel4.yaml (its name = file stem).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--generic", is_flag=True,
              help="Match every phone of this model (ro.product.model + ro.product.device) instead of "
                   "this phone's serial; a shipped config of the same model then makes the phone ambiguous.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Seconds allowed for each adb call.")
@json_option
def probe(serial: str, output: Path, force: bool, generic: bool, timeout_s: float, as_json: bool) -> None:
    """Read SERIAL's getprop and CPU topology and write its device config to OUTPUT.

    The config records the phone's serial and build fingerprint and matches on its serial
    (unless --generic), so it wins over a shipped config of the same model.
    """
    from mnas.bench.adb import (
        AdbDevice,
        adb_client,
        adb_unavailable_reason,
        list_devices,
    )
    from mnas.bench.device_config import bind_to_phone, dump_config

    if output.suffix != ".yaml":
        raise MnasError(f"{output}: expected a .yaml file name (device_configs/NAME.yaml)")
    if output.exists() and not force:
        raise MnasError(f"{output}: already exists (pass --force to overwrite it)")
    client = adb_client(timeout_s)
    reason = adb_unavailable_reason(client)
    if reason is not None:
        raise MnasError(reason)
    states = {entry.serial: entry.state for entry in list_devices(client, timeout_s)}
    if serial not in states:
        attached = ", ".join(sorted(states)) or "none"
        raise MnasError(f"phone {serial} is not attached (attached: {attached})")
    if states[serial] != "device":
        raise MnasError(f"phone {serial} is in state '{states[serial]}', expected 'device'")
    phone = AdbDevice(serial, None, client, timeout_s=timeout_s, retries=0)
    props = phone.getprops()
    config = bind_to_phone(phone.probe_config(output.stem, label=str(output)), props, generic=generic)
    dump_config(config, output)
    others, chosen, notes = _standing(config, output, props)
    if as_json:
        echo_json({"path": str(output), "device_config": config.name, "config_contents": config.to_dict(),
                   "also_matched_by": others,
                   "matched_by": chosen, "notes": notes})
        return
    cluster_text = ", ".join(f"{c.name} {list(c.cores)} {c.max_freq_khz} kHz"
                             for c in config.clusters)
    click.echo(f"wrote {output}: {config.properties.get('ro.product.model', '?')} "
               f"({config.properties.get('ro.product.device', '?')}), {len(config.cores)} cores: "
               f"{cluster_text}; pin core {config.pin_core} (mask {config.pin_mask})")
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _standing(config: Any, output: Path, props: dict[str, str]) -> tuple[list[str], str | None, list[str]]:
    """After a probe: the other configs that match the phone, the one mnas will pick among them and
    the new one (None when they tie), and one note per thing the user should know."""
    from mnas.bench.device_config import default_config_dir, load_all, match_config

    notes: list[str] = []
    try:
        existing = [c for c in load_all().values()
                    if c.source is None or c.source.resolve() != output.resolve()]
    except MnasError as exc:
        existing = []
        notes.append(f"device configs not loaded ({exc})")
    others = sorted(c.name for c in existing if c.matches(props))
    try:
        picked = match_config(props, [*existing, config])
        chosen = picked.name if picked is not None else None
    except MnasError as exc:
        chosen = None
        notes.append(str(exc))
    for name in others:
        notes.append(f"the existing device config '{name}' also matches this phone"
                     + (f"; '{chosen}' wins" if chosen else ""))
    folder = default_config_dir()
    if output.resolve().parent != folder.resolve():
        notes.append(f"{output} is outside the device-config folder {folder}: mnas reads configs from there "
                     "only (move the file there, or set MNAS_DEVICE_CONFIGS to its folder)")
    return others, chosen, notes


# `mnas devices loopback start/stop` lives in its own module (a stand-in phone for tests).
try:
    from mnas.cli_loopback import loopback as _loopback
except ModuleNotFoundError as _exc:
    if _exc.name != "mnas.cli_loopback":
        raise
else:
    devices.add_command(_loopback)
