"""Where inputs go after their job: ``_done`` on success, ``_failed`` with a report otherwise.

Only this module moves inputs. Each input keeps its place relative to its profile folder, so
``inbox/p/shots/a.png`` goes to ``inbox/_done/p/shots/a.png`` and a mask in ``masks/`` stays
in a ``masks/`` folder there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon.atomic import atomic_writer
from daemon.deliver.outputs import failure_report, move_into
from daemon.intake.jobs import Job
from daemon.platform_seam import name_taken

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


def archive_inputs(inputs: Sequence[Path], profile: str, inbox: Path) -> list[Path]:
    """Move inputs that belong to no single job (a folder's shared mask) to ``_done``."""
    return move_inputs(inputs, profile, inbox, DONE_FOLDER)


def fail(job: Job, inbox: Path, reason: str, error: BaseException | None) -> Path:
    """Write ``<stem>.error.txt`` in ``_failed``, then move the inputs there; returns the report.

    The report comes first so that a crash in between never leaves a failed input without
    its reason (recovery moves what is left; see journal.py).
    """
    return fail_inputs(
        job.inputs, job.profile, inbox, failure_report(reason, error, job_name=job.label)
    )


def fail_inputs(
    inputs: Sequence[Path], profile: str, inbox: Path, report_text: str, *, resume: bool = False
) -> Path:
    """``resume``: recovery after a crash; a report already written for this image stays."""
    image = inputs[0]
    folder = inbox / FAILED_FOLDER / profile / image.parent.relative_to(inbox / profile)
    report = report_path(folder, image.name)
    if not resume:
        counter = 0
        while report.exists():  # an older report of another file of that name
            counter += 1
            report = report.with_name(
                f"{report.name.removesuffix('.error.txt')}.error-{counter}.txt"
            )
    if not report.exists():
        with atomic_writer(report) as handle:
            handle.write(report_text.encode("utf-8"))
    present = [path for path in inputs if path.exists() or path.is_symlink()]
    move_inputs(present, profile, inbox, FAILED_FOLDER)
    return report


def report_path(folder: Path, image_name: str) -> Path:
    """``<stem>.error.txt`` beside where the image will land in ``_failed`` (a taken name
    gets ``-N``, as ``move_into`` does), so image and report always pair up."""
    head, dot, rest = image_name.partition(".")
    target, counter = image_name, 0
    while name_taken(folder, target):
        counter += 1
        target = f"{head}-{counter}{dot}{rest}"
    return folder / f"{Path(target).stem}.error.txt"
