"""docs/architecture.md sends a newcomer to real places: every file, folder and module it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def test_every_path_named_in_the_architecture_page_exists() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:space|bench|predictor|search|mnas|tests|device_configs|benchmarks)/[\w./]*)`", text))
    assert len(paths) > 40  # the page really maps the code
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_every_dotted_name_in_the_architecture_page_imports() -> None:
    text = DOC.read_text()
    names = set(re.findall(r"`((?:bench|predictor|search|space)\.[a-z_]+(?:\.[A-Za-z_]+)?)", text))
    assert len(names) >= 5
    for name in sorted(names):
        module, _, attribute = name.partition(".")[2].partition(".")
        loaded = importlib.import_module(f"mnas.{name.split('.')[0]}.{module}")
        assert not attribute or hasattr(loaded, attribute), name
