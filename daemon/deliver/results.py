"""*deliver*: results into the outbox, each group written whole or not at all.

``on_planned`` is called with every output path just before the first one is written, so the
journal can roll back a half-written group after a crash (see journal.py). A write that fails
is the storage's fault: the group's files already written are removed and the job is retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.atomic import copy_file, write_text
from daemon.deliver.outputs import all_or_nothing, claim_names, write_image
from daemon.errors import TransientError
from daemon.intake.jobs import Job
from daemon.intake.pairing import pending_images
from daemon.paths import output_folder
from daemon.prepare.clip_state import SequenceStore, progress_line
from daemon.prepare.prepare import FramePlan
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
    """Writes results for the worker thread; the clip store keeps each clip's progress."""

    def __init__(self, outbox: Path, clips: SequenceStore) -> None:
        self.outbox = outbox
        self.clips = clips

    def deliver(
        self,
        job: Job,
        result: RenderResult,
        *,
        on_planned: Planned,
        frame: FramePlan | None = None,
        seconds: float = 0.0,
    ) -> Delivered:
        """Write what `result` delivers for `job` (its task says which files: pictures with
        their parameters, or a caption). `frame`: the clip the job is a frame of, whose
        state is kept; `seconds` is how long it took to render (a clip's pace)."""
        settings = result.settings
        group = task_of(settings).outputs(result, job.image, settings)
        folder = output_folder(self.outbox, job.profile, job.sub_dir)
        outputs = write_group(folder, group, overwrite=settings.overwrite, on_planned=on_planned)
        progress = self._frame_done(job, frame, result, seconds) if frame else None
        return Delivered(outputs, result.notes, progress)

    def _frame_done(
        self, job: Job, frame: FramePlan, result: RenderResult, seconds: float
    ) -> str | None:
        """Keep the clip's colour reference and count the frame. The outputs are written by
        now, so a failure here is only logged: failing the job would paint the frame again."""
        try:
            if frame.correct_colors and frame.colors is None:
                self.clips.keep_reference(frame.state, result.images[0])
            state, per_frame = self.clips.frame_done(frame.state, seconds)
        except OSError as exc:
            logger.warning("{}: could not update the clip's state: {}", job.label, exc)
            return None
        remaining = sum(1 for _ in pending_images(job.image.parent, exclude=job.image))
        return progress_line(state.done, state.done + remaining, per_frame)


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
