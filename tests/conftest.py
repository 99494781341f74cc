"""Shared pytest hooks: the `needs` mark (tests/needs.py) is checked before each test runs."""

from __future__ import annotations

import pytest
from needs import need


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        need(*mark.args)
