"""Files: the one sha256 and TFLite check every device and cache uses, the one atomic write, and the
one wording of why a file cannot be written (`os_cause`, `unwritable_reason`)."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mnas.errors import MnasError

__all__ = ["TFLITE_IDENTIFIER", "check_tflite_file", "os_cause", "sha256_file", "unwritable_reason",
           "write_atomic", "write_text_atomic"]

TFLITE_IDENTIFIER = b"TFL3"


_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only (read-only file system)",
    errno.EACCES: "read-only (permission denied)",
    errno.EPERM: "read-only (not permitted: an immutable file?)",
}


def os_cause(exc: OSError) -> str:
    """The cause of a failed write in a few words: "disk full", "read-only (...)", else the OS's own text."""
    return _CAUSES.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()


def unwritable_reason(path: Path) -> str | None:
    """Why the existing file `path`, or the folder it is (to be) in, cannot be written; None when both can.

    Opening for writing modifies nothing; the folder matters too because SQLite and atomic
    writes create files beside `path`. Root passes permission checks but not a read-only
    file system or an immutable file, and so does this.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return os_cause(exc)
    else:
        os.close(fd)
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        try:
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                return _CAUSES[errno.EROFS]
        except OSError:
            pass
        return f"read-only (the folder {folder} is not writable)"
    return None


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


def write_atomic(path: Path, write: Callable[[str], None], *, what: str = "", suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    The one atomic write: a reader never sees half a file, whatever `write` does (a CSV, a PNG,
    JSON). A write that fails (disk full, read-only) is one MnasError naming `path`, `what` was
    being written (e.g. "the plot") and the cause, and leaves `path` as it was; any other
    exception from `write` propagates, the temporary file removed.
    """
    failure = f"{path}: cannot write{' ' + what if what else ''}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise MnasError(f"{failure}: {os_cause(exc)}") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise MnasError(f"{failure}: {os_cause(exc)}") from None
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` so that no reader ever sees half a file (`write_atomic`), flushed to disk.

    A device config being rewritten or a benchmark child's result read by its parent is either
    old or whole, also after a power cut (fsync before the rename).
    """

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return write_atomic(path, write)
