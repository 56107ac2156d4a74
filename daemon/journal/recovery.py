"""Putting things right after a crash.

At start-up, before any file is looked at, :func:`recover` reads the journal's unfinished jobs
(see journal.py for why the states are what they are) and removes the hidden temporary files
that an interrupted write left in the outbox.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from daemon.atomic import is_temporary
from daemon.deliver.lifecycle import DONE_FOLDER, FAILED_FOLDER, fail_inputs, move_inputs
from daemon.deliver.outputs import failure_report
from daemon.intake.jobs import JobStatus
from daemon.journal.journal import Journal
from daemon.paths import escaped


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
