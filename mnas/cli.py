"""The `mnas` command line: a thin layer over space, bench, predictor and search.

Errors the user can fix (`MnasError`, click usage errors) end in one line on stderr and exit
code 2; a measurement that failed exits 1; nothing prints a traceback unless `MNAS_DEBUG=1`.
"""

from __future__ import annotations

import os
import sys

import click

from mnas import __version__
from mnas.errors import MnasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Results database (default: $MNAS_DB or results/mnas.db).",
)
@click.version_option(__version__, prog_name="mnas")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """mnas: on-device latency benchmarks, latency prediction and MnasNet search."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


def _register() -> None:
    """Attach the sub-command groups; each lives in its own module."""
    from mnas.cli_arch import arch

    cli.add_command(arch)
    for module_name, names in (
        ("mnas.cli_bench", ("bench",)),
        ("mnas.cli_devices", ("devices",)),
        ("mnas.cli_results", ("results",)),
        ("mnas.cli_table", ("table", "predict")),
        ("mnas.cli_search", ("search",)),
    ):
        try:
            module = __import__(module_name, fromlist=list(names))
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that part of mnas is not built yet
            raise
        for name in names:
            command = getattr(module, name, None)
            if command is not None:
                cli.add_command(command)
    bench_group = cli.commands.get("bench")
    if isinstance(bench_group, click.Group):
        from mnas.cli_bench_run import run

        bench_group.add_command(run)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the CLI and turn failures into one clear line."""
    try:
        # without standalone mode click returns the code of a `ctx.exit(n)` instead of exiting
        code = cli.main(args=argv, prog_name="mnas", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("mnas: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("mnas: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # usage errors print their usage line, then one line of error
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
        click.echo(f"mnas: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except MnasError as exc:
        click.echo(f"mnas: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if os.environ.get("MNAS_DEBUG"):
            raise
        click.echo(f"mnas: error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
