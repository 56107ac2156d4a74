"""Is this file complete yet?

A file is complete when the writer closed it (inotify close-write) and it has not changed
since, or when its size and mtime have not changed for ``delay`` seconds (polling, network
shares, files present at start-up). A file that keeps changing is never given up on. The
clock and ``lstat`` are injected so tests can drive time; ``lstat`` because symlinks are
reported as they are (the job refuses them) and never followed.

A file found by a rescan whose size and mtime are already older than the delay, and that no
process holds open for writing, has already waited: it is complete at the first poll that
finds it unchanged (:func:`already_settled`). Where the platform cannot tell who holds a
file open (see ``open_files``), it waits the delay like any other.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from daemon.intake.open_files import PROC, not_open_for_writing

DEFAULT_DELAY = 2.0  # seconds of unchanged size and mtime


@dataclass
class _Watched:
    size: int
    mtime_ns: int
    changed_at: float  # clock time of the last size/mtime change we saw
    closed: bool  # the writer closed it, and nothing has changed since
    not_before: float  # do not report before this time (retry back-off)


class StabilityTracker:
    """Thread-safe: the watcher thread calls ``touch``, the main loop calls ``poll``."""

    def __init__(
        self,
        delay: float = DEFAULT_DELAY,
        *,
        clock: Callable[[], float] = time.monotonic,
        lstat: Callable[[Path], os.stat_result] = os.lstat,
    ) -> None:
        self.delay = delay
        self._clock = clock
        self._lstat = lstat
        self._lock = threading.Lock()
        self._watched: dict[Path, _Watched] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._watched)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._watched

    def touch(self, path: Path, *, closed: bool = False, not_before: float = 0.0) -> None:
        """Something happened to ``path``: start or refresh tracking it."""
        with self._lock:
            entry = self._watched.get(path)
            now = self._clock()
            if entry is None:
                self._watched[path] = _Watched(-1, -1, now, closed, not_before)
                return
            entry.closed = closed
            if closed:
                # Look again after the close: what the next poll sees is the final file,
                # and any change after that (without a new close) cancels the close.
                entry.size = entry.mtime_ns = -1
            else:
                entry.changed_at = now
            entry.not_before = max(entry.not_before, not_before)

    def settled(self, path: Path, size: int, mtime_ns: int) -> None:
        """Start tracking ``path`` as unchanged for the delay already (see
        :func:`already_settled`): the first poll that finds this size and mtime reports it,
        any other starts the wait afresh. A path tracked already is left as it is."""
        with self._lock:
            if path not in self._watched:
                changed_at = self._clock() - self.delay
                self._watched[path] = _Watched(size, mtime_ns, changed_at, False, 0.0)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._watched.pop(path, None)

    def poll(self) -> list[Path]:
        """Paths complete now; they stop being tracked. Vanished paths are dropped."""
        now = self._clock()
        ready = []
        with self._lock:
            for path, entry in list(self._watched.items()):
                if now < entry.not_before:
                    continue
                try:
                    st = self._lstat(path)
                except OSError:  # deleted or moved away before it was complete
                    del self._watched[path]
                    continue
                if stat.S_ISDIR(st.st_mode):
                    del self._watched[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    first_look = entry.size == -1
                    entry.size, entry.mtime_ns, entry.changed_at = st.st_size, st.st_mtime_ns, now
                    if not first_look:
                        entry.closed = False  # it changed after its writer closed it
                    if not entry.closed:
                        continue
                settled = now - entry.changed_at >= self.delay
                # An empty file is a placeholder more often than a finished file (sftp,
                # some copiers create first and write later), so it only counts by delay.
                if settled or (entry.closed and st.st_size > 0):
                    ready.append(path)
                    del self._watched[path]
        return ready


def already_settled(
    paths: Iterable[Path], delay: float, *, now: float, proc_root: Path = PROC
) -> dict[Path, tuple[int, int]]:
    """Size and mtime of the ``paths`` whose mtime is at least ``delay`` seconds before
    ``now`` (wall clock) and that no process holds open for writing; one /proc walk for all.
    A writer that paused longer than the delay is caught by the open-file check; a future
    mtime (another host's clock) is not old."""
    aged: dict[Path, tuple[int, int]] = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if now - st.st_mtime >= delay:
            aged[path] = (st.st_size, st.st_mtime_ns)
    closed = not_open_for_writing(aged, proc_root=proc_root) if aged else set()
    return {path: aged[path] for path in closed}
