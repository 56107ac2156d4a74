"""Images from the inbox through the frame pipeline: where they come from and where they go.

Every job that is an image (a single image, or a frame of a clip folder) is a frame of the
one pipeline (:mod:`.frames`): :class:`QueuedImages` reads the job in hand and the queued jobs
that can share its call (the frames of its clip, images of its folder and profile), prepared;
:class:`Deliveries` writes each result into the outbox on the writer's thread, in order, and
records it: archive and journal, or the input failed or deferred. A clip folder's frame also
updates its clip (the key frame kept, the frame counted) and says the clip's progress.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from functools import partial

from loguru import logger

from daemon.clips.progress import progress_line
from daemon.deliver.results import Delivered, Deliverer
from daemon.errors import NotStarted, Superseded
from daemon.intake.jobs import Job, JobStatus
from daemon.intake.pairing import pending_images
from daemon.prepare.prepare import Prepared
from daemon.queue.frames import Frame
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger
from daemon.queue.writer import Writer
from daemon.render.executor import Dispatched, Outcome
from daemon.render.values import RenderResult, colors_corrected

Prepare = Callable[[Job], Prepared | None]
"""A job prepared, or None when it could not be (and was settled then)."""


def image_frame(prepared: Prepared) -> Frame[Prepared]:
    frame = prepared.frame
    if frame is None:
        return Frame(prepared.request, prepared)
    return Frame(prepared.request, prepared, frame.clip, leads=frame.leads)


class QueuedImages:
    """The frames one turn of the worker paints: the job in hand (read ahead already, or
    prepared now) and the queued jobs that can share its call."""

    def __init__(
        self,
        first: Job,
        ahead: Future[Prepared | None] | None,
        queue: JobQueue,
        *,
        prepare: Prepare,
        read_ahead: Callable[[], None],
    ) -> None:
        self._first: Job | None = first
        self._ahead = ahead
        self._queue = queue
        self._prepare = prepare
        self._read_ahead = read_ahead

    def next(self) -> Frame[Prepared] | None:
        if self._first is None:
            return None  # the worker's loop takes the next job
        first, self._first = self._first, None
        head = self._ahead.result() if self._ahead is not None else self._prepare(first)
        return None if head is None else image_frame(head)

    def ready(self, head: Frame[Prepared]) -> int:
        return 1 + self._queue.count_similar(head.item.job)

    def more(self, head: Frame[Prepared], count: int) -> list[Frame[Prepared]]:
        taken = [self._prepare(job) for job in self._queue.take_similar(head.item.job, count)]
        return [image_frame(prepared) for prepared in taken if prepared is not None]

    def read_ahead(self) -> None:
        self._read_ahead()


class Deliveries:
    """Results into the outbox on the writer's thread, in the order the jobs were sent."""

    def __init__(
        self,
        writer: Writer,
        ledger: Ledger,
        deliverer: Deliverer,
        *,
        ended: Callable[[Job, JobStatus], None],
    ) -> None:
        self.writer = writer
        self.ledger = ledger
        self.deliverer = deliverer
        self._ended = ended

    def dispatched(self, frames: list[Frame[Prepared]]) -> Dispatched:
        return partial(self.ledger.dispatched, [frame.item.job for frame in frames])

    def later(self, write: Callable[[], None], *, leads: bool) -> None:
        self.writer.submit(write)  # a key frame's clip waits for it by itself

    def write(self, frames: list[Frame[Prepared]], outcomes: list[Outcome], seconds: float) -> None:
        """Each result written and its input archived, or the input failed or deferred."""
        for frame, outcome in zip(frames, outcomes, strict=True):
            prepared = frame.item
            job = prepared.job
            if not self.ledger.unfinished(job):  # finished already: a duplicate is dropped
                logger.debug("{}: a second result arrived and was dropped", job.label)
                continue
            if isinstance(outcome, NotStarted):  # the daemon is stopping; it runs next time
                self.ledger.not_started(job)
                self._ended(job, JobStatus.INTERRUPTED)
                continue
            if isinstance(outcome, Superseded):  # a live input's newer version renders next
                self.ledger.superseded(job)
                self._ended(job, JobStatus.INTERRUPTED)
                continue
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                outcome = colors_corrected(outcome)
                if frame.clip is not None:  # before delivery: a crash then repaints this frame
                    frame.clip.remember(prepared.request.temporal, outcome)
                delivered = self.deliverer.deliver(
                    job, outcome, on_planned=partial(self.ledger.planned, job)
                )
                delivered = _clip_frame_done(frame, outcome, delivered, seconds)
            except Exception as exc:
                self._ended(job, self.ledger.attempt_failed(job, exc))
                continue
            rendered = (prepared.digest, prepared.request.seed) if prepared.digest else None
            self._ended(job, self.ledger.done(job, delivered, seconds, rendered=rendered))


def _clip_frame_done(
    frame: Frame[Prepared], result: RenderResult, delivered: Delivered, seconds: float
) -> Delivered:
    """A clip folder's frame is written: its clip keeps it if it is the key frame and counts
    it; the clip's progress goes with the "done" line. The outputs are written by now, so a
    failure here is only logged: failing the job would paint the frame again."""
    clip, job = frame.clip, frame.item.job
    if clip is None:
        return delivered
    try:
        if frame.leads:
            clip.keep_reference(result.images[0])
        done, per_frame = clip.written(1, seconds)
    except OSError as exc:
        logger.warning("{}: could not update the clip's state: {}", job.label, exc)
        return delivered
    remaining = sum(1 for _ in pending_images(job.image.parent, exclude=job.image))
    return replace(delivered, progress=progress_line(done, done + remaining, per_frame))
