"""`ANDROID_SERIAL` is the default device when set (as for adb), and `-s SERIAL` is `--device SERIAL`.

Every command whose `--device` takes a phone serial gets both (`cli_util.device_option`); an
explicit `--device`/`-s` wins over the variable. Checked on the command objects, by running
`mnas` against an adb port where no server listens (the error names the serial it was given),
and on a loopback phone through the real adb server.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from loopback_fixtures import isolated_adb_server, loopback_phones, requires_adb
from tflite_fixtures import small_conv

from mnas.bench.device_config import load_config
from mnas.cli import cli

# every command whose --device names a phone by serial (commands taking a device *name*, such as
# `mnas table import --device pixel1`, keep a plain --device)
SERIAL_COMMANDS = [("bench", "run"), ("table", "plan"), ("table", "build"), ("table", "fit"), ("table", "calibrate"),
                   ("table", "eval"), ("predict",), ("search", "run")]


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", SERIAL_COMMANDS, ids=" ".join)
def test_device_option_has_s_alias_and_android_serial_default(path: tuple[str, ...]) -> None:
    [option] = [p for p in _command(path).params if "--device" in getattr(p, "opts", [])]
    assert set(option.opts) == {"--device", "-s"}
    assert option.envvar == "ANDROID_SERIAL"
    help_text = _command(path).get_help(click.Context(_command(path)))
    assert "ANDROID_SERIAL" in help_text and "-s, --device" in help_text


def _free_port() -> int:
    for _ in range(50):
        port = random.randrange(15000, 16000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 15000-16000")


def _mnas(tmp: Path, *args: str, serial: str | None, port: int | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = dict(env) if env is not None else {k: v for k, v in os.environ.items() if k not in ("MNAS_DB",)}
    base.pop("ANDROID_SERIAL", None)
    if serial is not None:
        base["ANDROID_SERIAL"] = serial
    if port is not None:
        base["ANDROID_ADB_SERVER_PORT"] = str(port)  # no server there: the error names the device asked for
    return subprocess.run([sys.executable, "-m", "mnas.cli", "--db", str(tmp / "mnas.db"), *args], env=base,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)


def test_android_serial_is_the_default_device_and_s_is_device(tmp_path: Path) -> None:
    model, port = str(small_conv(tmp_path)), _free_port()
    from_env = _mnas(tmp_path, "bench", model, serial="NOSUCH7", port=port)
    by_s = _mnas(tmp_path, "bench", model, "-s", "NOSUCH7", serial=None, port=port)
    by_device = _mnas(tmp_path, "bench", model, "--device", "NOSUCH7", serial=None, port=port)
    expected = f"mnas: error: --device 'NOSUCH7': no adb server on 127.0.0.1:{port}"
    for done in (from_env, by_s, by_device):
        assert done.returncode == 2 and done.stderr.startswith(expected), done.stderr
    # table commands read it too
    plan = _mnas(tmp_path, "table", "plan", "--json", serial="NOSUCH7", port=port)
    assert plan.returncode == 2 and plan.stderr.startswith(expected), plan.stderr


def test_explicit_device_wins_over_android_serial(tmp_path: Path) -> None:
    done = _mnas(tmp_path, "bench", str(small_conv(tmp_path)), "--device", "host", "--runs", "2", "--warmup", "1",
                 "--min-secs", "0", "--json", serial="NOSUCH7", port=_free_port())
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["device_id"] == "host" and row["error"] is None


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from test_phone_integration import cli_env

    folder = tmp_path_factory.mktemp("serial")
    with isolated_adb_server(folder / "adb") as adb, loopback_phones(adb, folder / "phones", "pixel1") as phones:
        yield {"serial": phones[0].serial, "env": cli_env(adb, folder / "phones")}


CONFIGS = Path(__file__).resolve().parents[1] / "device_configs"


@pytest.mark.adb
@requires_adb
def test_loopback_phone_chosen_by_android_serial_and_by_s(phone: dict[str, Any], tmp_path: Path) -> None:
    from test_phone_integration import QUICK, fake_binary

    model, binary = str(small_conv(tmp_path)), str(fake_binary(tmp_path))
    first = _mnas(tmp_path, "bench", model, *QUICK, "--benchmark-binary", binary, "--json", serial=phone["serial"],
                  env=phone["env"])
    assert first.returncode == 0, first.stderr
    [row] = json.loads(first.stdout)
    assert (row["device_id"], row["device_config"], row["reused"]) == (phone["serial"], "pixel1", False)
    assert row["pinned_cores"] == [3]  # Pixel 1's pinned big core: the phone's own conditions
    # the phone is named as adb reports it (the loopback phone answers with its config's properties)
    assert row["phone_model"] == load_config(CONFIGS / "pixel1.yaml").properties["ro.product.model"]
    again = _mnas(tmp_path, "bench", model, "-s", phone["serial"], *QUICK, "--benchmark-binary", binary, "--json",
                  serial=None, env=phone["env"])
    assert again.returncode == 0, again.stderr
    [row2] = json.loads(again.stdout)
    assert (row2["device_id"], row2["reused"]) == (phone["serial"], True)
