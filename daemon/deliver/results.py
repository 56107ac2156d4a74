"""*deliver*: results into the outbox, each group written whole or not at all.

``on_planned`` is called with every output path just before the first one is written, so the
journal can roll back a half-written group after a crash (see journal.py). A write that fails
is the storage's fault: the group's files already written are removed and the job is retried.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.atomic import copy_file, write_text
from daemon.deliver.outputs import all_or_nothing, claim_names, output_stems, write_image
from daemon.errors import TransientError
from daemon.intake.pairing import pending_images
from daemon.paths import output_folder, portable_name
from daemon.prepare.clip_state import SequenceStore, progress_line
from daemon.prepare.prepare import Prepared
from daemon.render.values import RenderResult

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
        self, prepared: Prepared, result: RenderResult, *, on_planned: Planned, seconds: float
    ) -> Delivered:
        """Write `result`; `seconds` is how long it took to render (a clip's pace)."""
        notes = (*prepared.notes, *result.notes)
        if result.interrogation is not None:
            return Delivered(self._interrogation(prepared, result, on_planned), notes)
        outputs = self._images(prepared, result, on_planned)
        progress = self._frame_done(prepared, result, seconds) if prepared.frame else None
        return Delivered(outputs, notes, progress)

    def _images(self, prepared: Prepared, result: RenderResult, on_planned: Planned) -> list[Path]:
        job, settings = prepared.job, prepared.request.settings
        folder = output_folder(self.outbox, job.profile, job.sub_dir)
        extension = f".{settings.output_format}"
        stems = claim_names(
            folder,
            output_stems(portable_name(job.image.stem), len(result.images)),
            (extension, ".txt"),
            overwrite=settings.overwrite,
        )
        on_planned([folder / f"{stem}{suffix}" for stem in stems for suffix in (extension, ".txt")])
        try:
            with all_or_nothing([]) as written:
                for image, text, stem in zip(result.images, result.infotexts, stems, strict=True):
                    target = folder / f"{stem}{extension}"
                    write_image(image, target, output_format=settings.output_format,
                                infotext=text, quality=settings.output_quality)  # fmt: skip
                    written.append(target)
                    write_text(folder / f"{stem}.txt", text + "\n")
                    written.append(folder / f"{stem}.txt")
        except OSError as exc:
            raise TransientError(f"could not write to {folder}: {exc.strerror or exc}") from exc
        return written

    def _interrogation(
        self, prepared: Prepared, result: RenderResult, on_planned: Planned
    ) -> list[Path]:
        """``<stem>.txt`` (the prompt, one line, as training tools read captions), ``<stem>.json``
        (the details) and, with copy_image, the input itself beside them."""
        job, settings, found = prepared.job, prepared.request.settings, result.interrogation
        assert found is not None
        folder = output_folder(self.outbox, job.profile, job.sub_dir)
        suffixes = [".txt", ".json"] + ([job.image.suffix] if settings.copy_image else [])
        stem = portable_name(job.image.stem)
        (stem,) = claim_names(folder, [stem], suffixes, overwrite=settings.overwrite)
        targets = [folder / f"{stem}{suffix}" for suffix in suffixes]
        on_planned(targets)
        details = json.dumps(found.as_json(job.image.name), indent=2, ensure_ascii=False)
        try:
            with all_or_nothing([]) as written:
                write_text(targets[0], found.line + "\n")
                written.append(targets[0])
                write_text(targets[1], details + "\n")
                written.append(targets[1])
                if settings.copy_image:
                    copy_file(job.image, targets[2])
                    written.append(targets[2])
        except OSError as exc:
            raise TransientError(f"could not write to {folder}: {exc.strerror or exc}") from exc
        return written

    def _frame_done(self, prepared: Prepared, result: RenderResult, seconds: float) -> str | None:
        """Keep the clip's colour reference and count the frame. The outputs are written by
        now, so a failure here is only logged: failing the job would paint the frame again."""
        frame, job = prepared.frame, prepared.job
        assert frame is not None
        try:
            if frame.correct_colors and frame.colors is None:
                self.clips.keep_reference(frame.state, result.images[0])
            state, per_frame = self.clips.frame_done(frame.state, seconds)
        except OSError as exc:
            logger.warning("{}: could not update the clip's state: {}", job.label, exc)
            return None
        remaining = sum(1 for _ in pending_images(job.image.parent, exclude=job.image))
        return progress_line(state.done, state.done + remaining, per_frame)
