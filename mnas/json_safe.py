"""Values as strict JSON can hold them, for `--json` output and the JSON columns of the store.

Metrics carry NaN where a figure is undefined (Kendall's tau of one network), and numpy
scalars where they were computed; `json.dumps` would write the invalid token `NaN` or fail.
One function for both places keeps what the CLI prints and what the store keeps alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None, numpy scalars as Python ones, paths as strings,
    tuples as lists and dict keys as strings (recursively)."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # a numpy scalar (or 0-d array)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
