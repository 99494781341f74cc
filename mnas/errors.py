"""One exception type for every user-facing failure.

The CLI turns a `MnasError` into one line on stderr and a non-zero exit code, never a
traceback. Messages name the file/field/value at fault and what was expected.
"""

from __future__ import annotations


class MnasError(Exception):
    """A failure caused by input or environment that the user can fix; exit code 2."""

    exit_code = 2


class MeasurementError(MnasError):
    """A measurement could not be taken (device died, output truncated, timeout); exit 1."""

    exit_code = 1
