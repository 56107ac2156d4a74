"""A video job: prepare, render and deliver frame by frame, then join the frames.

The frames go through the same seam as every image (RenderRequests through the executor),
written into the video's work folder by index as they come back, so a video is resumable at
any frame and can stop between frames (the daemon stopping, the processing hours ending).
With several render workers (executor: ray) the frames spread over them; the first frame,
the colour reference, is painted and written before any other is sent.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
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
from daemon.prepare.clip_state import Pace, SequenceStore, progress_line
from daemon.prepare.video import (
    VideoPlan,
    decoded_frames,
    frame_notes,
    frame_request,
    plan_video,
    reference_colors,
)
from daemon.render.executor import Executor, Outcome, batch_limit
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

    def paint(
        self,
        job: Job,
        *,
        should_stop: Callable[[], bool],
        on_frames: Callable[[int], None] = lambda frames: None,
    ) -> PaintedVideo:
        """Every frame not painted yet, into the work folder; the join comes after
        (:meth:`join`, on the writer's thread). `on_frames`: told the count of frames."""
        plan = plan_video(job, self.settings, self.profiles, self.clips, self.rng)
        on_frames(plan.info.frames)
        progress = _Progress(job.label, plan.info.frames)
        settings = plan.settings
        notes = list(plan.notes)
        colors = reference_colors(plan)
        frames: list[Path] = []
        pending: list[tuple[int, Image.Image, RenderRequest]] = []
        # Calls sent and not written yet: several workers paint frames at once (executor: ray)
        sent: deque[tuple[list[tuple[int, Image.Image]], Future[list[Outcome]]]] = deque()
        first = None  # frame 1: what {interrogate}/{tags} describe, for every frame

        def send() -> None:
            """The frames in hand, as one call (one pipeline call when they share it)."""
            if pending:
                requests = [request for _, _, request in pending]
                sent.append(([(i, f) for i, f, _ in pending], self.executor.submit(requests)))
                pending.clear()

        def write(keep: int) -> None:
            """Write the sent frames, oldest first, until at most `keep` calls are out."""
            nonlocal settings
            while len(sent) > keep:
                painted, future = sent.popleft()
                for (index, frame), outcome in zip(painted, future.result(), strict=True):
                    if isinstance(outcome, Exception):
                        write(0)  # the frames sent after it are kept for the resume
                        raise outcome
                    if settings.prompt_sources:  # filled once, from the first frame, for all
                        update = {
                            "prompt": outcome.prompt,
                            "negative_prompt": outcome.negative_prompt,
                        }
                        settings = settings.model_copy(update=update)
                    if progress.painted == 0:  # said once, not for every frame
                        notes.extend([*frame_notes(plan, frame), *outcome.notes])
                    write_frame(plan.frame_path(index), outcome)
                    progress.frame_done(index)
                progress.call_done()

        def paint_pending() -> None:
            send()
            write(0)

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
            ready = len(pending) + plan.info.frames - index  # in hand, and still to come
            if len(pending) >= self._batch(settings, request, colors, ready=ready):
                send()
                # The next frame's request needs this one's result (its colour reference, or
                # the prompts): wait for it; otherwise keep every worker busy.
                write(0 if self._serial(settings, colors) else self.executor.slots - 1)
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

    def _batch(
        self, settings: Profile, request: RenderRequest, colors: Colors | None, *, ready: int
    ) -> int:
        """Frames painted at once: one while the colour reference (the first frame's result)
        or the prompts ({interrogate}/{tags}, from the first frame) are still to come; else
        `max_batch`, shared out over the render workers (`ready`: frames left to paint)."""
        if self._serial(settings, colors):
            return 1
        return batch_limit(self.executor, request, self.settings.max_batch, ready=ready)

    @staticmethod
    def _serial(settings: Profile, colors: Colors | None) -> bool:
        """The next frame depends on this one's result."""
        return bool(settings.prompt_sources) or (
            colors is None and settings.color_correction is not False
        )


@dataclass(frozen=True)
class PaintedVideo:
    plan: VideoPlan
    frames: tuple[Path, ...]  # every frame's PNG in the work folder, in order
    notes: tuple[str, ...]


class _Progress:
    """A progress line at most every PROGRESS_SECONDS, and for the last frame; the time left
    at the pace of the frames painted after the first call (:class:`Pace`)."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.painted = 0
        self._index = 0  # the last frame written
        self._in_call = 0  # frames of the call being written
        self._pace = Pace()
        self._last = 0.0

    def frame_done(self, index: int) -> None:
        self.painted += 1
        self._in_call += 1
        self._index = index

    def call_done(self) -> None:
        """Every frame of a call is written. The frames of a batch end together, so the pace
        is taken, and said, only between calls."""
        now = time.monotonic()
        self._pace.frames_done(now, self._in_call)
        self._in_call = 0
        if now - self._last >= PROGRESS_SECONDS or self._index == self.total:
            self._last = now
            line = progress_line(self._index, self.total, self._pace.per_frame())
            logger.info("{}: {}", self.label, line)
