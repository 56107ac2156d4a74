"""*prepare*: a job becomes a frozen RenderRequest, with every decision made on the daemon's side.

Read and check the inputs, merge profile + the input's parameters + its YAML, lay the sketch
on and load the mask, decide the size, the seed, the colour reference and the prompt sources'
image. The clip a frame belongs to (a sub-folder of the profile's inbox) supplies its seed and
colour reference (:mod:`daemon.clips.state`). Videos are prepared frame by frame
(:mod:`daemon.prepare.video`).
"""

from __future__ import annotations

import random
from dataclasses import KW_ONLY, dataclass, replace

from PIL import Image

from daemon.a1111.alpha import input_alpha
from daemon.a1111.color import color_reference
from daemon.a1111.imaging import flatten_on_white, load_image
from daemon.a1111.seeds import draw_seed, frame_seed
from daemon.clips.state import ClipFrame, ClipStore
from daemon.config.profiles import Profile, ProfileStore
from daemon.config.settings import Settings
from daemon.errors import TransientError
from daemon.intake.jobs import Job
from daemon.intake.names import frame_number
from daemon.live.live import Live
from daemon.prepare.canvas import aspect_note, build_canvas, processing_size
from daemon.prepare.controls import read_controls
from daemon.prepare.inputs import check_regular_file, merge_settings, storage_safe
from daemon.prepare.reference import (
    key_frame_reference,
    read_edit_references,
    read_reference,
    refers_to_key_frame,
)
from daemon.prepare.temporal import in_order, with_temporal
from daemon.render.values import RenderRequest
from daemon.tasks.registry import task_of
from daemon.tasks.task import Painting


@dataclass(frozen=True)
class Prepared:
    job: Job
    request: RenderRequest  # its notes are what preparing found, for the log
    frame: ClipFrame | None = None  # a frame of a clip folder
    digest: str | None = None  # a live input's content (see daemon/live)


@dataclass(frozen=True)
class Preparer:
    """Turns jobs into requests. Used by the worker thread; reads, never writes, the inbox.
    `live`: a live input's result is replaced in place, with its kept seed."""

    settings: Settings
    profiles: ProfileStore
    clips: ClipStore
    rng: random.Random
    _: KW_ONLY
    live: Live

    def prepare(self, job: Job) -> Prepared:
        limits = self.settings
        check_regular_file(job.image, max_bytes=limits.max_input_bytes)
        profile = self.profiles.get(job.profile)  # ConfigError: the profile's fault, not the file's
        image = storage_safe(load_image, job.image, max_pixels=limits.max_image_pixels)
        merged = merge_settings(job, profile, image, max_bytes=limits.max_input_bytes)
        settings = merged.settings
        flat = flatten_on_white(image)
        task = task_of(settings)
        if not isinstance(task, Painting):  # it describes the input as it was dropped
            request = RenderRequest(job.label, settings, flat, notes=merged.notes)
            return Prepared(job, self.live.request(job, request))
        canvas = build_canvas(
            job, task, settings, flat,
            max_pixels=limits.max_image_pixels, max_bytes=limits.max_input_bytes,
        )  # fmt: skip
        controls = read_controls(
            job, settings, max_pixels=limits.max_image_pixels, max_bytes=limits.max_input_bytes
        )
        reference, reference_notes = read_reference(
            job, settings, max_pixels=limits.max_image_pixels, max_bytes=limits.max_input_bytes
        )
        references, references_notes = read_edit_references(
            job, settings, max_pixels=limits.max_image_pixels, max_bytes=limits.max_input_bytes
        )
        size = processing_size(settings, *canvas.image.size)
        note = aspect_note(settings, canvas.image.size, size)
        frame = (
            None  # a live sub-folder is an editor's export folder (`<document>-assets/`)
            if self.live.in_place(job)
            else self._frame_plan(job, settings)
        )
        reference, key_notes = key_frame_reference(
            settings, reference, frame.key_frame if frame else None, in_clip=frame is not None
        )
        if frame is not None:
            seed, colors = frame.seed, frame.colors
        else:  # a single image: A1111's colour correction matches it to its own input
            seed = draw_seed(settings.seed, self.rng)
            colors = color_reference(flat) if settings.color_correction else None
        request = RenderRequest(
            label=job.label,
            settings=settings,
            image=canvas.image,
            mask=canvas.mask,
            size=size,
            seed=seed,
            colors=colors,
            controls=controls.images,
            reference=reference,
            references=references,
            # {interrogate}/{tags} describe the input as dropped, without the sketch
            prompt_image=flat if settings.prompt_sources and canvas.image is not flat else None,
            parameters_model_hash=merged.parameters_model_hash,
            notes=(
                *merged.notes,
                *canvas.notes,
                *controls.notes,
                *reference_notes,
                *references_notes,
                *key_notes,
                *([note] if note else []),
            ),
        )
        request = self._alpha(job, request, image)
        request = self._temporal(job, request, frame, canvas.image)
        return Prepared(job, self.live.request(job, request), frame)

    def _alpha(self, job: Job, request: RenderRequest, image: Image.Image) -> RenderRequest:
        """keep_alpha (None: on for a live input): the input's transparency for its result."""
        settings = request.settings
        keep = settings.keep_alpha if settings.keep_alpha is not None else self.live.in_place(job)
        alpha = input_alpha(image) if keep else None
        if alpha is None:
            return request
        if settings.output_format == "jpg":
            note = ("keep_alpha: JPEG has no transparency, so the result is written without "
                    "the input's alpha; set output_format: png or webp to keep it")  # fmt: skip
            return replace(request, notes=(*request.notes, note))
        return replace(request, alpha=alpha)

    def _temporal(
        self, job: Job, request: RenderRequest, frame: ClipFrame | None, source: Image.Image
    ) -> RenderRequest:
        """A clip's frame with what it takes from the frames before it (``temporal:``,
        loopback units); a single image without them, and a note."""
        settings = request.settings
        if not in_order(settings):
            return request
        if frame is None:
            units = tuple(u.model_copy(update={"loopback": False}) for u in settings.controlnet)
            plain = settings.model_copy(update={"temporal": (), "controlnet": units})
            note = ("temporal: and ControlNet loopback work across the frames of a clip "
                    "folder or a video; this single image is painted without them")  # fmt: skip
            return replace(request, settings=plain, notes=(*request.notes, note))
        # Frames paint in order, each once the one before it is written. Its place in the
        # clip: the number in its name, else the count written so far.
        frame.clip.settled()
        number = frame_number(job.image.name)
        index = frame.clip.frames_done() + 1 if number is None else number
        return with_temporal(request, frame.clip, index, source)

    def _frame_plan(self, job: Job, settings: Profile) -> ClipFrame | None:
        """Frames of a clip (images in a sub-folder) share a seed, and a colour reference
        and (``ip_adapter: {reference: key_frame}``) an IP-Adapter reference: the key
        frame's, once it is written (the first frame without one is the key frame)."""
        if not job.sub_dir.parts:
            return None
        state = self.clips.folder(job.profile, job.sub_dir)
        try:
            clip = self.clips.open(state, job.image.parent)
            base = clip.base_seed(settings.seed, self.rng)
        except OSError as exc:
            raise TransientError(f"could not keep the clip's state in {state}: {exc}") from exc
        number = frame_number(job.image.name) or 0
        correct_colors = settings.color_correction is not False
        colors = clip.colors() if correct_colors else None
        refers = refers_to_key_frame(settings, job)
        key_frame = clip.key_frame() if refers else None
        # the key frame: the frames after it need its result, so it is painted first and alone
        leads = (correct_colors and colors is None) or (refers and key_frame is None)
        seed = frame_seed(settings.seed_mode, base, number, self.rng)
        return ClipFrame(
            clip=clip, seed=seed, colors=colors, key_frame=key_frame,
            leads=leads or in_order(settings),  # temporal: the next frame needs this one
        )  # fmt: skip
