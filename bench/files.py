"""Model files: the one sha256 and the one TFLite check every device and cache uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mnas.errors import MnasError

TFLITE_IDENTIFIER = b"TFL3"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_tflite_file(model_path: Path) -> None:
    """MnasError (one line, naming the file) unless `model_path` is a TFLite flatbuffer."""
    if not model_path.exists():
        raise MnasError(f"{model_path}: no such model file")
    if not model_path.is_file():
        raise MnasError(f"{model_path}: not a file (expected a .tflite model)")
    try:
        with model_path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise MnasError(f"{model_path}: cannot read the model: {exc.strerror}") from None
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        found = head[4:8] if len(head) >= 8 else head
        raise MnasError(
            f"{model_path}: not a TFLite model (file identifier {found!r} at bytes 4..8, expected b'TFL3')"
        )
