"""Owning the state folder, and putting things right after a crash.

Only one daemon may work on a set of folders: a second one would race the first for every
file. The state folder holds a lock file, locked through ``filelock`` (``flock`` on Unix,
``LockFileEx`` on Windows: both released by the kernel when the process dies, so a ``kill -9``
never leaves a stale lock), and beside it the owner's pid for ``status``. The pid has a file of
its own because Windows forbids reading a locked byte of the lock file.

At start-up, before any file is looked at, :func:`recover` reads the journal's unfinished jobs
(see journal.py for why the states are what they are) and removes the hidden temporary files
that an interrupted write left in the outbox.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from loguru import logger

from daemon.atomic import is_temporary
from daemon.deliver.journal import Journal
from daemon.deliver.lifecycle import DONE_FOLDER, FAILED_FOLDER, fail_inputs, move_inputs
from daemon.deliver.outputs import failure_report
from daemon.errors import ConfigError
from daemon.intake.jobs import JobStatus
from daemon.paths import escaped

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


@dataclass
class Recovery:
    completed: list[str] = field(default_factory=list)  # outputs were complete: archived now
    rerun: list[str] = field(default_factory=list)  # will run again from scratch
    removed: list[Path] = field(default_factory=list)  # partial outputs and temporaries


def recover(journal: Journal, *, inbox: Path, outbox: Path) -> Recovery:
    """Finish or roll back the jobs the last process left in hand."""
    result = Recovery()
    for entry in journal.unfinished():
        if not _inside(inbox, entry.inputs[0]):  # the inbox moved since (config change)
            journal.finished(entry.id, JobStatus.INTERRUPTED, reason="inbox changed")
            continue
        image_gone = not (entry.inputs[0].exists() or entry.inputs[0].is_symlink())
        # The image was archived (or failed) before the crash, or is still the same file:
        # either way what is left of this job's inputs belongs with it.
        ours = image_gone or entry.image_unchanged()
        present = [p for p in entry.inputs if p.exists() or p.is_symlink()] if ours else []
        if entry.state is JobStatus.WRITTEN:
            move_inputs(present, entry.profile, inbox, DONE_FOLDER)
            journal.finished(entry.id, JobStatus.DONE, reason="archived after a restart")
            result.completed.append(entry.label)
            continue
        if entry.state is JobStatus.FAILING:
            if not image_gone and ours:  # the report may exist already; the moves did not
                report = failure_report(entry.reason, None, job_name=entry.label)
                fail_inputs(entry.inputs, entry.profile, inbox, report, resume=True)
            elif image_gone:  # the image made it to _failed (after its report): the rest
                move_inputs(present, entry.profile, inbox, FAILED_FOLDER)
            journal.finished(entry.id, JobStatus.FAILED, reason=entry.reason)
            result.completed.append(entry.label)
            continue
        if entry.state is JobStatus.WRITING:
            for output in entry.outputs:
                if _inside(outbox, output) and output.exists():
                    output.unlink()
                    result.removed.append(output)
        stopped = (
            "queued when the daemon stopped"
            if entry.state is JobStatus.QUEUED
            else ("the daemon stopped mid-job")
        )
        journal.finished(entry.id, JobStatus.INTERRUPTED, reason=stopped)
        if entry.state is not JobStatus.QUEUED and not image_gone:
            result.rerun.append(entry.label)
    result.removed += remove_temporaries(outbox)
    for folder in (DONE_FOLDER, FAILED_FOLDER):  # reports written just before a crash
        result.removed += remove_temporaries(inbox / folder)
    for label in result.completed:
        logger.info(
            "recovered {}: it had finished; its inputs are where they belong", escaped(label)
        )
    for label in result.rerun:
        logger.info("recovered {}: interrupted mid-job; it runs again", escaped(label))
    return result


def remove_temporaries(outbox: Path) -> list[Path]:
    """The temporary files (daemon.atomic) of writes that never finished."""
    removed = []
    for folder, _dirs, files in os.walk(outbox):
        for name in files:
            if is_temporary(name):
                path = Path(folder) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
