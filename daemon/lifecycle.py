"""Where inputs go after their job: ``_done`` on success, ``_failed`` with a report otherwise.

Only this module moves inputs. Each input keeps its place relative to its profile folder, so
``inbox/p/shots/a.png`` goes to ``inbox/_done/p/shots/a.png`` and a mask in ``masks/`` stays
in a ``masks/`` folder there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon.jobs import Job
from daemon.outputs import atomic_writer, failure_report, move_into

DONE_FOLDER = "_done"
FAILED_FOLDER = "_failed"


def move_inputs(inputs: Sequence[Path], profile: str, inbox: Path, folder_name: str) -> list[Path]:
    """Move ``inputs`` from ``inbox/<profile>/…`` to ``inbox/<folder_name>/<profile>/…``."""
    moved = []
    profile_root = inbox / profile
    for source in inputs:
        relative = source.parent.relative_to(profile_root)
        moved += move_into([source], inbox / folder_name / profile / relative)
    return moved


def archive(job: Job, inbox: Path) -> list[Path]:
    """Move the inputs of a finished job to ``_done``; returns their new paths."""
    return move_inputs(job.inputs, job.profile, inbox, DONE_FOLDER)


def fail(job: Job, inbox: Path, reason: str, error: BaseException | None) -> Path:
    """Move the inputs to ``_failed`` and write ``<stem>.error.txt``; returns the report path."""
    moved = move_inputs(job.inputs, job.profile, inbox, FAILED_FOLDER)
    image = moved[0]
    report = image.with_name(f"{image.stem}.error.txt")
    counter = 0
    while report.exists():
        counter += 1
        report = image.with_name(f"{image.stem}.error-{counter}.txt")
    with atomic_writer(report) as handle:
        handle.write(failure_report(reason, error, job_name=job.label).encode("utf-8"))
    return report
