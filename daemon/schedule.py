"""Time-based housekeeping, as pure functions the scheduler jobs call.

* processing windows ("only at night"): files wait in the inbox outside the window;
* pruning ``_done`` after N days;
* (idle model unloading lives in models.ModelCache.unload_idle).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """Daily hours when jobs may run; ``start > end`` crosses midnight (22:00-06:00)."""

    start: dt.time
    end: dt.time

    def __contains__(self, moment: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    """``"22:00-06:00"`` → Window; ValueError with the expected form otherwise."""
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"expected hours like '22:00-06:00', got {text!r}")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    try:
        window = Window(dt.time(h1, m1), dt.time(h2, m2))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from exc
    if window.start == window.end:
        raise ValueError(f"{text!r} is an empty window; leave processing_hours out to run always")
    return window


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
