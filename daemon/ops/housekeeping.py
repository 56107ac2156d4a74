"""Time-based housekeeping the scheduler runs: pruning ``_done`` after N days."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def prune_done(folder: Path, *, older_than: float, now: float) -> list[Path]:
    """Delete archived inputs that were archived more than ``older_than`` seconds ago.

    The time of archiving is the file's ctime: a rename keeps the mtime (when the file was
    made) but sets the ctime. Empty folders left behind are removed too.
    """
    removed = []
    for root, dirs, files in os.walk(folder, topdown=False):
        base = Path(root)
        for name in files:
            path = base / name
            try:
                if now - path.lstat().st_ctime > older_than:
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue  # vanished or not ours to delete: never worth stopping for
        for name in dirs:
            with contextlib.suppress(OSError):
                (base / name).rmdir()  # only succeeds when empty
    return removed
