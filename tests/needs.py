"""Tests that need something outside Python: skipped where it is missing, failed where CI requires it.

A test of the phone path without adb, or of the default dataset without Fashion-MNIST, can
only skip; but a CI run that silently skipped them would pass while testing much less. So
`.ci/run` sets `MNAS_REQUIRE_ADB=1`, `MNAS_REQUIRE_DATASET=1` and `MNAS_REQUIRE_RAY=1`, and
under those a missing requirement fails the test with the reason instead of skipping it.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["KINDS", "need", "needs", "ray_installed"]

KINDS = ("ADB", "DATASET", "RAY")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"requirement {kind!r}: expected one of {KINDS}")
    return kind


def need(kind: str, available: bool, reason: str) -> None:
    """In a test, a fixture or at module level: skip (or fail, under MNAS_REQUIRE_<KIND>=1) when `available` is false."""
    if available:
        return
    variable = f"MNAS_REQUIRE_{_check_kind(kind)}"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason}; {variable}=1 says this run must not skip it", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def needs(kind: str, available: bool, reason: str) -> pytest.MarkDecorator:
    """The same as a mark, applied by the `needs` hook in conftest.py before the test runs."""
    return pytest.mark.needs(_check_kind(kind), bool(available), reason)


def ray_installed() -> bool:
    """Whether the optional `ray` extra is importable (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None
