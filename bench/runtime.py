"""Which TFLite interpreter this host times models with, and its exact version.

`ai-edge-litert` (LiteRT) is preferred; `tflite-runtime` is only a fallback import. The two
differ by about 2x in speed on the same model, so a host latency is meaningless without the
runtime's name and distribution version: both come from here, together, from the module that
was actually imported (never one package's name with the other's version).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any, NamedTuple

from mnas.errors import MnasError

# (import path of the interpreter module, distribution name recorded with every measurement)
_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)

INSTALL_HINT = "install one with `pip install ai-edge-litert` (or, as a fallback, `pip install tflite-runtime`)"


class LiteRuntime(NamedTuple):
    """The interpreter class and the distribution it was imported from."""

    interpreter: Any  # the Interpreter class (its stubs differ between the two packages)
    name: str  # "ai-edge-litert" or "tflite-runtime"
    version: str  # that distribution's version, from importlib.metadata


@functools.lru_cache(maxsize=1)
def load_runtime() -> LiteRuntime:
    """Import the preferred interpreter; MnasError saying how to install one if none is present."""
    for module_name, distribution in _CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            # importable but not installed as a distribution (e.g. a source tree on sys.path):
            # keep the name, mark the version so it is never mistaken for a released one
            version = "unknown"
        return LiteRuntime(module.Interpreter, distribution, version)
    raise MnasError(f"no TFLite interpreter found (tried ai_edge_litert, tflite_runtime): {INSTALL_HINT}")
