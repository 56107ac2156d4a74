"""Quiet time: a live input renders once its image and companions have all been still for
its profile's ``live_delay``, and only when one of them changed since its last job.

An editor exporting several layers (an image and its mask) writes them one after the other,
and an export renamed in from another folder arrives whole but without the close that marks
an in-place write complete, so the files' own mtimes decide, not the watcher's events. A
rescan finds every live input again: the files' sizes and mtimes as last admitted tell a
change from a second look. Pure but for :func:`stamps`, which reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Stamps = tuple[tuple[int, int], ...]
"""(size, mtime in ns) of an input's image and each of its companions, in that order."""


@dataclass(frozen=True)
class Turn:
    """What the quiet-time rule says of an input that looks complete."""

    renders: bool = False  # quiet, and changed since its last job: it becomes a job now
    again_in: float | None = None  # s: still being edited; look at it again after this long


RENDERS = Turn(renders=True)
NOTHING = Turn()  # unchanged since its last job, or gone meanwhile: nothing to do


def stamps(files: Sequence[Path]) -> Stamps | None:
    """The files' sizes and mtimes; None when one is gone (an editor that deletes a file
    before it exports it again)."""
    try:
        return tuple((st.st_size, st.st_mtime_ns) for st in (path.stat() for path in files))
    except OSError:
        return None


def quiet_left(seen: Stamps, delay: float, now: float) -> float:
    """Seconds until the newest of the files has been still for `delay` (`now`: the wall
    clock, as mtimes are); zero or less when it has."""
    newest = max(mtime for _size, mtime in seen) / 1e9
    return delay - (now - newest)


def turn(seen: Stamps | None, last: Stamps | None, delay: float, now: float) -> Turn:
    """The rule itself: `seen` now, `last` as its last job found them."""
    if seen is None:
        return NOTHING
    left = quiet_left(seen, delay, now)
    if left > 0:
        return Turn(again_in=left)
    return NOTHING if seen == last else RENDERS
