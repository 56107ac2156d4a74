"""A video job: prepare, render and deliver frame by frame, then join the frames.

The frames go one at a time through the same seam as every image (a RenderRequest through the
executor), written into the video's work folder as they come, so a video is resumable at any
frame and can stop between frames (the daemon stopping, the processing hours ending).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from loguru import logger

from daemon.config.profiles import ProfileStore
from daemon.config.settings import Settings
from daemon.deliver.results import Delivered, Planned
from daemon.deliver.video import join_video, write_frame
from daemon.errors import InputError, TransientError
from daemon.intake.jobs import Job
from daemon.prepare.clip_state import SequenceStore, progress_line
from daemon.prepare.video import (
    decoded_frames,
    frame_notes,
    frame_request,
    plan_video,
    reference_colors,
)
from daemon.render.executor import Executor, render_one

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

    def run(self, job: Job, *, on_planned: Planned, should_stop: Callable[[], bool]) -> Delivered:
        plan = plan_video(job, self.settings, self.profiles, self.clips, self.rng)
        settings = plan.settings
        notes = list(plan.notes)
        colors = reference_colors(plan)
        frames = []
        started = time.monotonic()
        last_report = 0.0
        painted = 0
        first = None  # frame 1: what {interrogate}/{tags} describe, for every frame
        for index, frame in decoded_frames(plan):
            first = first or frame
            target = plan.frame_path(index)
            frames.append(target)
            if target.exists():  # painted before a restart
                continue
            if should_stop():
                raise TransientError(
                    f"stopped at frame {index} of {plan.info.frames}; the video resumes there"
                )
            if colors is None and index > 1:
                colors = reference_colors(plan)
            prompt_image = first if settings.prompt_sources else None
            request = frame_request(plan, index, frame, settings, colors, self.rng,
                                    prompt_image=prompt_image)  # fmt: skip
            result = render_one(self.executor, request)
            if settings.prompt_sources:  # filled once, from the first frame, for all
                update = {"prompt": result.prompt, "negative_prompt": result.negative_prompt}
                settings = settings.model_copy(update=update)
            if painted == 0:
                notes += [*frame_notes(plan, frame), *result.notes]  # said once, not per frame
            write_frame(target, result)
            painted += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_SECONDS or index == plan.info.frames:
                last_report = now
                seconds = (now - started) / painted * index  # as if all were painted now
                logger.info("{}: {}", job.label, progress_line(index, plan.info.frames, seconds))
        if not frames:
            raise InputError(f"{job.image.name} has no frames")
        if painted < len(frames):
            notes.append(
                f"resumed: {len(frames) - painted} of {len(frames)} frames were done before"
            )
        outputs = join_video(plan, frames, self.settings.outbox, on_planned)
        return Delivered(outputs, tuple(notes))
