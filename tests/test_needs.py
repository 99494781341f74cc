"""`need`: a missing requirement skips, unless MNAS_REQUIRE_<KIND>=1 makes the run fail on it."""

from __future__ import annotations

import pytest
from needs import need, needs


def test_missing_requirement_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNAS_REQUIRE_ADB", raising=False)
    with pytest.raises(pytest.skip.Exception, match="adb is not installed"):
        need("ADB", False, "adb is not installed")


def test_missing_requirement_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNAS_REQUIRE_DATASET", "1")
    with pytest.raises(pytest.fail.Exception,
                       match=r"^no dataset; MNAS_REQUIRE_DATASET=1 says this run must not skip it$"):
        need("DATASET", False, "no dataset")
    need("DATASET", True, "no dataset")  # present: nothing happens


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"requirement 'GPU': expected one of \('ADB', 'DATASET', 'RAY'\)"):
        needs("GPU", True, "x")
