"""Shared pytest hooks: the `needs` mark (tests/needs.py) is checked before each test runs."""

from __future__ import annotations

import pytest
from needs import need


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        need(*mark.args)


@pytest.fixture(autouse=True, scope="session")
def _private_device_locks(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Device locks (`bench.device_lock`) in a folder of this test session: other sessions running
    at the same time (and the user's own mnas runs) neither wait for nor block these tests."""
    import os

    os.environ["MNAS_LOCK_DIR"] = str(tmp_path_factory.mktemp("device-locks"))
