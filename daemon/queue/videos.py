"""A video job: its frames through the one frame pipeline, then joined into the video.

A video differs from a clip folder only in how its frames are read and written
(:mod:`.frames`): :class:`VideoFrames` decodes them in order, skipping those painted before a
restart, and stops between two frames when the daemon stops or the processing hours end;
:class:`FrameFiles` writes each result into the video's work folder by its index (on a
thread of the video's own, a frame or two behind the painting), so a video is resumable at
any frame. The frames
are joined (the H.264 encode) on the writer's thread, while the next job paints.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from PIL import Image

from daemon.clips.progress import progress_line
from daemon.clips.state import ClipStore
from daemon.config.profiles import ProfileStore
from daemon.config.settings import Settings
from daemon.deliver.results import Delivered, Planned
from daemon.deliver.video import join_video, write_frame
from daemon.errors import InputError, TransientError
from daemon.intake.jobs import Job
from daemon.prepare.control_video import frame_controls
from daemon.prepare.temporal import in_order, with_temporal
from daemon.prepare.video import VideoPlan, decoded_frames, frame_notes, frame_request, plan_video
from daemon.queue.frames import Frame, FramePipeline
from daemon.render.executor import Outcome
from daemon.render.values import colors_corrected

PROGRESS_SECONDS = 10.0  # a progress line at most this often (and for the first frames)
WRITING = 2  # painted frames waiting to be written at most (each holds decoded images)

Picture = tuple[int, Image.Image]  # a video frame: its number (from 1) and its pixels


@dataclass(frozen=True)
class VideoRunner:
    """Paints a video's frames through the frame pipeline, then joins them (on the writer)."""

    settings: Settings
    profiles: ProfileStore
    clips: ClipStore
    frames: FramePipeline
    rng: random.Random

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
        source = VideoFrames(plan, self.rng, should_stop=should_stop)
        sink = FrameFiles(plan, lag=self.frames.executor.slots - 1)
        try:
            try:
                self.frames.paint(source, sink)
            except Exception:
                sink.finish(quietly=True)  # what was painted is kept for the resume
                raise
            sink.finish()
        finally:
            self.clips.release(plan.state)  # its state stays on disk until the join
        if source.stopped_at is not None:
            raise TransientError(
                f"stopped at frame {source.stopped_at} of {plan.info.frames}; "
                "the video resumes there"
            )
        if not source.frames:
            raise InputError(f"{job.image.name} has no frames")
        notes = sink.notes
        if sink.painted < len(source.frames):
            done_before = len(source.frames) - sink.painted
            notes.append(f"resumed: {done_before} of {len(source.frames)} frames were done before")
        return PaintedVideo(plan, tuple(source.frames), tuple(notes))

    def join(self, painted: PaintedVideo, *, on_planned: Planned) -> Delivered:
        """The frames joined into the video (the H.264 encode) and its ``.txt``."""
        frames = list(painted.frames)
        outputs = join_video(painted.plan, frames, self.settings.outbox, on_planned)
        return Delivered(outputs, painted.notes)


@dataclass(frozen=True)
class PaintedVideo:
    plan: VideoPlan
    frames: tuple[Path, ...]  # every frame's PNG in the work folder, in order
    notes: tuple[str, ...]


class VideoFrames:
    """A video's frames in order, decoded one by one, each a request built with what its
    clip holds by then (the key frame's colours and filled-in prompts)."""

    def __init__(self, plan: VideoPlan, rng: random.Random, *, should_stop: Callable[[], bool]):
        self.plan = plan
        self.rng = rng
        self.should_stop = should_stop
        self.frames: list[Path] = []  # every frame's PNG, painted or to be
        self.stopped_at: int | None = None  # the frame where a stop came
        self._decoded: Iterator[Picture] = decoded_frames(plan)
        self._controls = frame_controls(plan.controls, plan.control_videos)  # in step
        self._first: Image.Image | None = None  # what {interrogate}/{tags} describe

    def next(self) -> Frame[Picture] | None:
        if self.stopped_at is not None:
            return None
        for index, picture in self._decoded:
            controls = next(self._controls)
            self._first = self._first or picture
            self.frames.append(self.plan.frame_path(index))
            if self.frames[-1].exists():  # painted before a restart
                continue
            if self.should_stop():
                self.stopped_at = index
                return None
            return self._frame(index, picture, controls)
        return None

    def ready(self, head: Frame[Picture]) -> int:
        return 1 + self.plan.info.frames - head.item[0]  # the head, and the frames after it

    def more(self, head: Frame[Picture], count: int) -> list[Frame[Picture]]:
        taken: list[Frame[Picture]] = []
        while len(taken) < count and (frame := self.next()) is not None:
            taken.append(frame)
        return taken

    def read_ahead(self) -> None:
        pass  # the next frame is decoded when its turn comes: decoding is quick

    def _frame(
        self, index: int, picture: Image.Image, controls: tuple[Image.Image | None, ...]
    ) -> Frame[Picture]:
        plan, clip = self.plan, self.plan.clip
        correct = plan.settings.color_correction is not False
        colors = clip.colors() if correct else None
        settings = plan.settings
        if clip.prompts is not None:  # filled once, from the first frame painted, for all
            prompt, negative = clip.prompts
            settings = settings.model_copy(update={"prompt": prompt, "negative_prompt": negative})
        fills = bool(settings.prompt_sources)
        refers = plan.refers_to_key_frame  # ip_adapter's reference: the key frame as painted
        key_frame = clip.key_frame() if refers else None
        request = frame_request(plan, index, picture, settings, colors, self.rng,
                                prompt_image=self._first if fills else None,
                                controls=controls, key_frame=key_frame)  # fmt: skip
        ordered = in_order(settings)
        if ordered:
            request = with_temporal(request, clip, index, picture)
        # The key frame: the next frame's request needs its result (its colours, its prompts,
        # its pixels as the IP-Adapter's reference); with temporal:, every frame does.
        leads = fills or (correct and colors is None) or (refers and key_frame is None)
        return Frame(request, (index, picture), clip, leads=leads or ordered)


class FrameFiles:
    """A video's painted frames into its work folder, on a thread of their own, in order, so
    that the next frame paints while one is colour-corrected and PNG-encoded. Each call is
    handed over once `lag` more were sent after it (so that every render worker paints),
    and a key frame's at once and waited for: the next frame's request needs its result."""

    def __init__(self, plan: VideoPlan, *, lag: int) -> None:
        self.plan = plan
        self.lag = lag
        self.painted = 0
        self.notes: list[str] = list(plan.notes)
        self._calls: deque[Callable[[], None]] = deque()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="img2imgd-frames")
        self._writing: deque[Future[None]] = deque()
        self._said = 0.0  # when the last progress line was said
        self._index = 0  # the last frame written

    def dispatched(self, frames: list[Frame[Picture]]) -> None:
        return None  # the video's own journal row says it is running

    def later(self, write: Callable[[], None], *, leads: bool) -> None:
        self._calls.append(write)
        self._hand_over(keep=0 if leads else self.lag)
        # A key frame is waited for; else at most WRITING frames (decoded images) wait.
        self._settle(keep=0 if leads else WRITING)

    def finish(self, *, quietly: bool = False) -> None:
        """Write every call sent; `quietly`: a failure is on its way already, keep it."""
        try:
            self._hand_over(keep=0)
            self._settle(keep=0, quietly=quietly)
        finally:
            self._thread.shutdown(wait=True)

    def _hand_over(self, *, keep: int) -> None:
        while len(self._calls) > keep:
            self._writing.append(self._thread.submit(self._calls.popleft()))

    def _settle(self, *, keep: int, quietly: bool = False) -> None:
        """Wait for all but the last `keep` writes; a failed one fails the video, once the
        frames sent after it are written too (they are kept for the resume)."""
        while len(self._writing) > keep:
            failed = self._writing.popleft().exception()
            if failed is not None and not quietly:
                self._hand_over(keep=0)
                self._settle(keep=0, quietly=True)
                raise failed

    def write(self, frames: list[Frame[Picture]], outcomes: list[Outcome], seconds: float) -> None:
        plan, clip = self.plan, self.plan.clip
        for frame, outcome in zip(frames, outcomes, strict=True):
            if isinstance(outcome, Exception):
                raise outcome
            index, picture = frame.item
            if plan.settings.prompt_sources and clip.prompts is None:
                clip.prompts = (outcome.prompt, outcome.negative_prompt)
            if not self.painted:  # said once, not for every frame
                self.notes.extend([*frame_notes(plan, picture), *outcome.notes])
            outcome = colors_corrected(outcome)
            clip.remember(frame.request.temporal, outcome)  # before the frame: see clips.memory
            write_frame(plan.frame_path(index), outcome)
            self.painted += 1
            self._index = index
        self._progress(clip.paced(len(frames), seconds * len(frames)))

    def _progress(self, per_frame: float | None) -> None:
        """A line at most every PROGRESS_SECONDS, and for the last frame; the pace is taken
        between calls (the frames of a batch end together)."""
        now = time.monotonic()
        total = self.plan.info.frames
        if now - self._said >= PROGRESS_SECONDS or self._index == total:
            self._said = now
            logger.info("{}: {}", self.plan.job.label, progress_line(self._index, total, per_frame))
