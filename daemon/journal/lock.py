"""Owning the state folder: only one daemon may work on a set of folders.

A second daemon would race the first for every file. The state folder holds a lock file,
locked through ``filelock`` (``flock`` on Unix, ``LockFileEx`` on Windows: both released by
the kernel when the process dies, so a ``kill -9`` never leaves a stale lock), and beside it
the owner's pid for ``status``. The pid has a file of its own because Windows forbids reading
a locked byte of the lock file.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from daemon.errors import ConfigError

LOCK_NAME = "img2imgd.lock"
PID_NAME = "img2imgd.pid"
# A probe of the lock (`status`, or a test waiting for a daemon) holds it for an instant: a
# daemon starting just then waits this long rather than mistake the probe for a daemon.
_START_WAIT = 1.0  # s
_PROBE_WAIT = 0.2  # s; likewise a probe that meets another probe


class StateLock:
    """An exclusive lock on the state folder for the life of the process."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        # thread_local=False: the daemon may release from another thread than took it.
        self._lock = FileLock(self.path, thread_local=False)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=_START_WAIT)
        except Timeout:
            owner = lock_owner(self.path.parent)
            raise ConfigError(
                f"another img2imgd (pid {owner or '?'}) is already running on the state folder "
                f"{self.path.parent}; stop it first, or give this one its own state_dir"
            ) from None
        # Written in place, not renamed: on Windows a rename onto a file that a `status` is
        # reading fails; a reader that meets it half-written reports pid -1 for an instant.
        (self.path.parent / PID_NAME).write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        if self._lock.is_locked:
            (self.path.parent / PID_NAME).unlink(missing_ok=True)
            self._lock.release()


def lock_owner(state_dir: Path) -> int | None:
    """The pid of the daemon holding the state folder (-1: unknown yet), or None when none is
    running."""
    if not (state_dir / LOCK_NAME).exists():
        return None
    probe = FileLock(state_dir / LOCK_NAME, thread_local=False)
    try:
        probe.acquire(timeout=_PROBE_WAIT)
    except Timeout:
        return _recorded_pid(state_dir)
    except OSError:  # a lock file this user may not open for writing: the pid file tells,
        # since a daemon removes it when it stops (a kill -9 leaves it, so this may be stale)
        return _recorded_pid(state_dir) if (state_dir / PID_NAME).exists() else None
    probe.release()
    return None


def _recorded_pid(state_dir: Path) -> int:
    try:
        text = (state_dir / PID_NAME).read_text().strip()
    except OSError:  # the owner has the lock but has not written its pid yet
        return -1
    return int(text) if text.isdigit() else -1
