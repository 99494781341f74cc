"""Files: the one sha256 and TFLite check every device and cache uses, and the one atomic write."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from mnas.errors import MnasError

__all__ = ["TFLITE_IDENTIFIER", "check_tflite_file", "sha256_file", "write_text_atomic"]

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


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` so that no reader ever sees half a file.

    A temp file beside `path`, flushed to disk, then renamed over it: a device config being
    rewritten or a benchmark child's result read by its parent is either old or whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
