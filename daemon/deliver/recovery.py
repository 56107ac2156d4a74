"""Owning the state folder, and putting things right after a crash.

Only one daemon may work on a set of folders: a second one would race the first for every
file. The state folder holds a lock file (``flock``, released by the kernel when the process
dies, so a ``kill -9`` never leaves a stale lock) with the owner's pid for ``status``.

At start-up, before any file is looked at, :func:`recover` reads the journal's unfinished jobs
(see journal.py for why the states are what they are) and removes the hidden temporary files
that an interrupted write left in the outbox.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from daemon.atomic import is_temporary
from daemon.deliver.journal import Journal
from daemon.deliver.lifecycle import DONE_FOLDER, FAILED_FOLDER, fail_inputs, move_inputs
from daemon.deliver.outputs import failure_report
from daemon.errors import ConfigError
from daemon.intake.jobs import JobStatus
from daemon.paths import escaped

LOCK_NAME = "img2imgd.lock"


class StateLock:
    """An exclusive lock on the state folder for the life of the process."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = lock_owner(self.path.parent)
            raise ConfigError(
                f"another img2imgd (pid {owner or '?'}) is already running on the state folder "
                f"{self.path.parent}; stop it first, or give this one its own state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock_owner(state_dir: Path) -> int | None:
    """The pid of the daemon holding the state folder, or None when none is running."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = path.read_text().strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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
