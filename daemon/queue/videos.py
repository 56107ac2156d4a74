"""A video job: prepare, render and deliver frame by frame, then join the frames.

The frames go one at a time through the same seam as every image (a RenderRequest through the
executor), written into the video's work folder as they come, so a video is resumable at any
frame and can stop between frames (the daemon stopping, the processing hours ending).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from PIL import Image

from daemon.a1111.color import Colors
from daemon.config.profiles import Profile, ProfileStore
from daemon.config.settings import Settings
from daemon.deliver.results import Delivered, Planned
from daemon.deliver.video import join_video, write_frame
from daemon.errors import InputError, TransientError
from daemon.intake.jobs import Job
from daemon.prepare.clip_state import SequenceStore, progress_line
from daemon.prepare.video import (
    VideoPlan,
    decoded_frames,
    frame_notes,
    frame_request,
    plan_video,
    reference_colors,
)
from daemon.render.executor import Executor, batch_limit
from daemon.render.values import RenderRequest

PROGRESS_SECONDS = 10.0  # a progress line at most this often (and for the first frames)


class VideoRunner:
    def __init__(
        self,
        settings: Settings,
        profiles: ProfileStore,
        clips: SequenceStore,
        executor: Executor,
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.clips = clips
        self.executor = executor
        self.rng = rng

    def paint(self, job: Job, *, should_stop: Callable[[], bool]) -> PaintedVideo:
        """Every frame not painted yet, into the work folder; the join comes after
        (:meth:`join`, on the writer's thread)."""
        plan = plan_video(job, self.settings, self.profiles, self.clips, self.rng)
        progress = _Progress(job.label, plan.info.frames)
        settings = plan.settings
        notes = list(plan.notes)
        colors = reference_colors(plan)
        frames: list[Path] = []
        pending: list[tuple[int, Image.Image, RenderRequest]] = []
        first = None  # frame 1: what {interrogate}/{tags} describe, for every frame

        def paint_pending() -> None:
            """Render the frames in hand (one call when they share it) and write them."""
            nonlocal settings
            outcomes = self.executor.render([request for _, _, request in pending])
            for (index, frame, _), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    raise outcome
                if settings.prompt_sources:  # filled once, from the first frame, for all
                    update = {"prompt": outcome.prompt, "negative_prompt": outcome.negative_prompt}
                    settings = settings.model_copy(update=update)
                if progress.painted == 0:  # said once, not for every frame
                    notes.extend([*frame_notes(plan, frame), *outcome.notes])
                write_frame(plan.frame_path(index), outcome)
                progress.frame_done(index)
            pending.clear()

        for index, frame in decoded_frames(plan):
            first = first or frame
            frames.append(plan.frame_path(index))
            if frames[-1].exists():  # painted before a restart
                continue
            if should_stop():
                paint_pending()  # what is in hand is kept
                raise TransientError(
                    f"stopped at frame {index} of {plan.info.frames}; the video resumes there"
                )
            if colors is None and index > 1:
                colors = reference_colors(plan)
            prompt_image = first if settings.prompt_sources else None
            request = frame_request(plan, index, frame, settings, colors, self.rng,
                                    prompt_image=prompt_image)  # fmt: skip
            pending.append((index, frame, request))
            if len(pending) >= self._batch(settings, request, colors):
                paint_pending()
        paint_pending()
        if not frames:
            raise InputError(f"{job.image.name} has no frames")
        if progress.painted < len(frames):
            done_before = len(frames) - progress.painted
            notes.append(f"resumed: {done_before} of {len(frames)} frames were done before")
        return PaintedVideo(plan, tuple(frames), tuple(notes))

    def join(self, painted: PaintedVideo, *, on_planned: Planned) -> Delivered:
        """The frames joined into the video (the H.264 encode) and its ``.txt``."""
        frames = list(painted.frames)
        outputs = join_video(painted.plan, frames, self.settings.outbox, on_planned)
        return Delivered(outputs, painted.notes)

    def _batch(self, settings: Profile, request: RenderRequest, colors: Colors | None) -> int:
        """Frames painted at once: one while the colour reference (the first frame's result)
        or the prompts ({interrogate}/{tags}, from the first frame) are still to come."""
        if settings.prompt_sources or (colors is None and settings.color_correction is not False):
            return 1
        return batch_limit(self.executor, request, self.settings.max_batch)


@dataclass(frozen=True)
class PaintedVideo:
    plan: VideoPlan
    frames: tuple[Path, ...]  # every frame's PNG in the work folder, in order
    notes: tuple[str, ...]


class _Progress:
    """A progress line at most every PROGRESS_SECONDS, and for the last frame."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.painted = 0
        self._started = time.monotonic()
        self._last = 0.0

    def frame_done(self, index: int) -> None:
        self.painted += 1
        now = time.monotonic()
        if now - self._last >= PROGRESS_SECONDS or index == self.total:
            self._last = now
            seconds = (now - self._started) / self.painted * index  # as if all were painted now
            logger.info("{}: {}", self.label, progress_line(index, self.total, seconds))
