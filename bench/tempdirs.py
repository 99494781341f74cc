"""Host temp folders that say who owns them, so a later run can remove a killed run's leftovers.

`tempfile.TemporaryDirectory` removes its folder when the `with` block ends, which a
`kill -9` never reaches: the folder (models, results of a half-finished benchmark) stays in
the temp directory for good. `owned_temp_dir(kind)` makes `mnas-KIND-PID-XXXXXXXX` and
writes `.mnas-owner` inside ("PID STARTTIME", the owner's start time from /proc, so a
recycled PID is not mistaken for the owner). The first one a process makes sweeps the temp
directory once (`sweep_stale_temp_dirs`): a `mnas-*` folder of this user whose owner file
names a process that is gone is removed. A folder without an owner file (another tool's,
an older mnas's, or one whose owner is still writing it) and one whose owner is alive are
never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OWNER_FILE", "PREFIX", "owned_temp_dir", "process_alive", "sweep_stale_temp_dirs"]

PREFIX = "mnas-"
OWNER_FILE = ".mnas-owner"

_swept_lock = threading.Lock()
_swept_pids: set[int] = set()  # processes (forks included) that have swept already


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), if known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether `pid` runs, and (when both are known) is the process that started at `start_time`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    if start_time is not None:
        now = _start_time(pid)
        if now is not None and now != start_time:
            return False  # the PID was recycled: the owner is gone
    return True


def _owner(folder: Path) -> tuple[int, str | None] | None:
    try:
        fields = (folder / OWNER_FILE).read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 and fields[1] != "-" else None)
    except (OSError, ValueError, IndexError):
        return None


def sweep_stale_temp_dirs(root: Path | str | None = None) -> list[Path]:
    """Remove `mnas-*` folders under `root` (default: the temp directory) whose owner is dead.

    Only folders of this user that carry an owner file naming a process that no longer
    runs are removed; returns them.
    """
    base = Path(root if root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not entry.is_dir() or entry.is_symlink() or (uid is not None and info.st_uid != uid):
            continue
        owner = _owner(entry)
        if owner is None or process_alive(*owner):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def _sweep_once() -> None:
    with _swept_lock:
        if os.getpid() in _swept_pids:
            return
        _swept_pids.add(os.getpid())
    sweep_stale_temp_dirs()


@contextlib.contextmanager
def owned_temp_dir(kind: str) -> Iterator[Path]:
    """A fresh `mnas-KIND-PID-*` folder with an owner file; removed when the block ends."""
    _sweep_once()
    pid = os.getpid()
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{pid}-"))
    try:
        tmp = folder / f"{OWNER_FILE}.tmp"
        tmp.write_text(f"{pid} {_start_time(pid) or '-'}\n")
        os.replace(tmp, folder / OWNER_FILE)  # a sweeper never reads half an owner file
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
