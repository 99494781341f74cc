"""Every option of every `mnas` command says what it does in `--help`.

An option without help text shows up in `--help` as a bare name and a default, and the user
has to read the code to learn what it changes. The test walks the whole click tree (groups,
their commands, commands added at run time such as `bench run`), so a new option without help
fails here by name.
"""

from __future__ import annotations

import click
from click.testing import CliRunner

from mnas.cli import cli


def walk(command: click.Command, path: tuple[str, ...] = ("mnas",)) -> list[tuple[tuple[str, ...], click.Command]]:
    """(path, command) for `command` and every command below it."""
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found.extend(walk(sub, (*path, name)))
    return found


def test_the_walk_reaches_every_group_and_nested_commands() -> None:
    paths = {" ".join(path) for path, _ in walk(cli)}
    # nested groups and a command attached after import (`bench run`) are reached
    assert {"mnas table calibrate", "mnas devices probe", "mnas devices loopback start", "mnas bench run",
            "mnas search run", "mnas results export"} <= paths
    assert len(paths) > 30


def test_every_option_of_every_command_has_help_text() -> None:
    missing = [f"{' '.join(path)} {'/'.join(param.opts)}"
               for path, command in walk(cli)
               for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []


def test_every_command_has_a_one_line_summary() -> None:
    bare = [" ".join(path) for path, command in walk(cli) if not (command.help or "").strip()]
    assert bare == []


def test_help_shows_the_added_text() -> None:
    result = CliRunner().invoke(cli, ["search", "run", "--help"])
    assert result.exit_code == 0, result.output
    assert "Proxy training batch size." in " ".join(result.output.split())
