"""*deliver*: results into the outbox, each group written whole or not at all.

``on_planned`` is called with every output path just before the first one is written, so the
journal can roll back a half-written group after a crash (see journal.py). A write that fails
is the storage's fault: the group's files already written are removed and the job is retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.atomic import copy_file, write_text
from daemon.deliver.outputs import all_or_nothing, claim_names, write_image
from daemon.errors import TransientError
from daemon.intake.jobs import Job
from daemon.paths import output_folder
from daemon.render.values import RenderResult
from daemon.tasks.outputs import Content, ImageFile, OutputGroup, TextFile
from daemon.tasks.registry import task_of

Planned = Callable[[list[Path]], None]


@dataclass(frozen=True)
class Delivered:
    outputs: list[Path]
    notes: tuple[str, ...] = ()
    progress: str | None = None  # a clip's progress bar, for the log line


class Deliverer:
    """Writes results for the worker thread (a clip's own state is its clip's business)."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def deliver(self, job: Job, result: RenderResult, *, on_planned: Planned) -> Delivered:
        """Write what `result` delivers for `job` (its task says which files: pictures with
        their parameters, or a caption)."""
        settings = result.settings
        group = task_of(settings).outputs(result, job.image, settings)
        folder = output_folder(self.outbox, job.profile, job.sub_dir)
        outputs = write_group(folder, group, overwrite=settings.overwrite, on_planned=on_planned)
        return Delivered(outputs, result.notes)


def write_group(
    folder: Path, group: OutputGroup, *, overwrite: bool, on_planned: Planned
) -> list[Path]:
    """The group under free names in `folder`, every file whole; the journal is told every
    path first, and a failed write removes the files already written."""
    stems = claim_names(folder, group.stems, group.suffixes, overwrite=overwrite)
    on_planned([folder / f"{stem}{suffix}" for stem in stems for suffix in group.suffixes])
    try:
        with all_or_nothing([]) as written:
            for stem, contents in zip(stems, group.contents, strict=True):
                for suffix, content in zip(group.suffixes, contents, strict=True):
                    target = folder / f"{stem}{suffix}"
                    _write(content, target)
                    written.append(target)
    except OSError as exc:
        raise TransientError(f"could not write to {folder}: {exc.strerror or exc}") from exc
    return written


def _write(content: Content, target: Path) -> None:
    if isinstance(content, ImageFile):
        write_image(content.image, target, output_format=content.output_format,
                    infotext=content.infotext, quality=content.quality)  # fmt: skip
    elif isinstance(content, TextFile):
        write_text(target, content.text)
    else:  # the input itself
        copy_file(content.source, target)
