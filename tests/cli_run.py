"""Run the `mnas` command line inside the test process, as a user would see it.

Why: CLI tests want (exit code, stdout, stderr) without a subprocess (fast, and the fakes a test
installs apply); click's standalone `main` ends with SystemExit, which becomes the exit code here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["run_mnas", "run_mnas_db"]


def run_mnas(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`mnas ARGS` through the console entry point: (exit code, stdout, stderr) of this call only."""
    from mnas.cli import main

    capsys.readouterr()  # what earlier steps of the test printed is not this command's output
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_mnas_db(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> tuple[int, str, str]:
    """`mnas --db DB ARGS`, as `run_mnas`: the test's own results store."""
    return run_mnas(capsys, "--db", str(db), *args)
