"""The worker: one thread that owns the GPU and runs jobs one after the other.

Its loop reads like rq's: stop requested? → next job → prepare → render → deliver → record.
Around it, two helpers keep the model busy: the next input is prepared ahead on a reader
thread, and results are delivered and recorded on a writer thread (:mod:`.writer`), both in
order. A job takes along the queued jobs that can share its pipeline call (``max_batch``).
Everything it needs is handed to it by the service; it makes no decision of its own about
whose fault a failure is (the ledger asks :func:`daemon.errors.classify`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

from loguru import logger

from daemon.config.hours import Window
from daemon.deliver.results import Deliverer
from daemon.errors import ConfigError, NotStarted, Superseded
from daemon.intake.jobs import Job, JobStatus
from daemon.intake.names import is_video
from daemon.live.live import Live
from daemon.prepare.prepare import Prepared, Preparer
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger
from daemon.queue.videos import PaintedVideo, VideoRunner
from daemon.queue.writer import Writer
from daemon.render.executor import Executor, Outcome, batch_limit
from daemon.render.render import share_a_call

POLL = 0.5  # s a worker waits for a job before it looks at the stop flag again


class Hours:
    """The processing hours: outside them files wait in the inbox (``once`` ignores them:
    it is an explicit request to process now)."""

    def __init__(self, window: Window | None, say: Callable[[str, str], None]) -> None:
        self.window = window
        self._say = say
        self._outside = False

    def open(self) -> bool:
        if self.window is None or datetime.now().time() in self.window:
            self._outside = False
            return True
        if not self._outside:
            self._outside = True
            self._say(
                "window",
                f"outside the processing hours {self.window}; files wait in the inbox until then",
            )
        return False


class Worker:
    def __init__(
        self,
        *,
        queue: JobQueue,
        ledger: Ledger,
        preparer: Preparer,
        executor: Executor,
        deliverer: Deliverer,
        videos: VideoRunner,
        live: Live,
        hours: Hours,
        stop: threading.Event,
        max_batch: Literal["auto"] | int = 1,
        on_change: Callable[[], None] = lambda: None,
        on_job_end: Callable[[Job, JobStatus], None] = lambda job, status: None,
    ) -> None:
        self.queue = queue
        self.ledger = ledger
        self.preparer = preparer
        self.executor = executor
        self.deliverer = deliverer
        self.videos = videos
        self.live = live  # a live input's content, and whether a change supersedes it
        self.hours = hours
        self.stop = stop
        self.max_batch = max_batch  # the daemon's; a profile may say otherwise
        self.on_change = on_change  # the status line changed
        self.on_job_end = on_job_end  # a job ended, however (`once`'s progress bar)
        # Room for a result per submission in flight, so the writer never holds the worker
        # back while workers still have free slots.
        self.writer = Writer(depth=executor.slots + 1)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="img2imgd-reader")
        self._ahead: tuple[Job, Future[Prepared | None] | None] | None = None
        self.current: Job | None = None
        self._wanted: set[str] = set()  # profiles whose files are arriving: load their models
        self._wanted_lock = threading.Lock()

    def work(self) -> None:
        self.writer.start()
        try:
            self._loop()
        finally:
            self._put_back_ahead()
            self._reader.shutdown(wait=True)
            self.writer.stop()  # what was painted is written before the worker ends

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.hours.open():
                self.stop.wait(1.0)
                continue
            job, prepared = self._ahead or (self.queue.get(timeout=POLL), None)
            self._ahead = None
            if job is None:
                self.warm_up()  # nothing to paint yet: load what the arriving files need
                continue
            if self.stop.is_set():
                self._ahead = (job, prepared)
                break  # not painted: it stays in the inbox for the next run
            self.run(job, prepared)

    def run(self, job: Job, prepared: Future[Prepared | None] | None = None) -> None:
        """prepare → render → deliver → record, for `job` and for the queued jobs that can
        share its pipeline call (the frames of a clip, images of one profile and size).
        Delivering and recording happen on the writer's thread while the next job paints."""
        self.current = job
        self.on_change()
        try:
            if is_video(job.image):
                self._video(job)
            else:
                self._images(job, prepared)
        finally:
            self.current = None
            self.on_change()

    def _ended(self, job: Job, status: JobStatus) -> None:
        self.on_job_end(job, status)
        self.on_change()  # the counts in the status line

    def _video(self, job: Job) -> None:
        """Frame by frame through the same seam; the frames are joined (the H.264 encode)
        on the writer's thread while the next job paints."""
        started = time.monotonic()
        self.ledger.running(job)
        try:
            painted = self.videos.paint(
                job, should_stop=self.should_pause, on_frames=partial(self.ledger.frames, job)
            )
        except Exception as exc:
            self._ended(job, self.ledger.attempt_failed(job, exc))
            return
        self.writer.submit(partial(self._join, job, painted, started))

    def _join(self, job: Job, painted: PaintedVideo, started: float) -> None:
        try:
            delivered = self.videos.join(painted, on_planned=partial(self.ledger.planned, job))
        except Exception as exc:
            self._ended(job, self.ledger.attempt_failed(job, exc))
            return
        self._ended(job, self.ledger.done(job, delivered, time.monotonic() - started))

    def _images(self, first: Job, ahead: Future[Prepared | None] | None = None) -> None:
        started = time.monotonic()
        head = ahead.result() if ahead is not None else self._prepare_in_turn(first)
        if head is None:
            return
        batch: list[Prepared] = [head]
        later: list[Prepared] = []
        for job in self.queue.take_similar(first, self._batch_limit(head) - 1):
            prepared = self._prepare(job)
            if prepared is not None:
                joins = share_a_call(head.request, prepared.request) and not _reference(prepared)
                (batch if joins else later).append(prepared)
        for group in (batch, *([prepared] for prepared in later)):
            if not any(_reference(prepared) for prepared in group):
                self._read_ahead()
            jobs = [prepared.job for prepared in group]
            outcomes = self.executor.submit(
                [prepared.request for prepared in group],
                on_dispatch=partial(self.ledger.dispatched, jobs),
            )
            reference = next((p.job.image.parent for p in group if _reference(p)), None)
            self.writer.submit(partial(self._deliver, group, outcomes, _Clock(outcomes, started)),
                               reference_of=reference)  # fmt: skip
            started = time.monotonic()

    def _read_ahead(self) -> None:
        """While the model paints, decode and check the next input on the reader's thread."""
        if self._ahead is not None:
            return
        job = self.queue.get(timeout=0)
        if job is None:
            return
        future = None if is_video(job.image) else self._reader.submit(self._prepare_in_turn, job)
        self._ahead = (job, future)

    def _put_back_ahead(self) -> None:
        """At a stop: the input read ahead was not painted; it stays for the next run."""
        if self._ahead is None:
            return
        job, future = self._ahead
        self._ahead = None
        if future is not None and future.result() is None:
            return  # it failed while being read, and was settled then
        self.ledger.not_started(job)

    def _prepare_in_turn(self, job: Job) -> Prepared | None:
        """Prepare `job` once its clip's colour reference, if on its way, is on disk."""
        self.writer.wait_for_folder(job.image.parent)
        return self._prepare(job)

    def _prepare(self, job: Job) -> Prepared | None:
        self.ledger.running(job)
        try:
            digest = self.live.identity(job)  # None but for a live input
            if self.live.unchanged(job, digest):
                self.ledger.skipped(job, "unchanged since its last render")
                self._ended(job, JobStatus.DONE)
                return None
            return replace(self.preparer.prepare(job), digest=digest)
        except Exception as exc:
            self._ended(job, self.ledger.attempt_failed(job, exc))
            return None

    def _batch_limit(self, head: Prepared) -> int:
        """One for a clip's colour reference (its first frame's result): the frames after it
        are corrected towards it, so it is painted first and alone."""
        if _reference(head):
            return 1
        ready = 1 + self.queue.count_similar(head.job)
        return batch_limit(self.executor, head.request, self.max_batch, ready=ready)

    def _deliver(
        self, group: list[Prepared], pending: Future[list[Outcome]], clock: _Clock
    ) -> None:
        """On the writer's thread, in the order the jobs were sent: once rendered, each
        result written and its input archived, or the input failed or deferred."""
        try:
            outcomes: list[Outcome] = pending.result()
        except Exception as exc:  # the executor itself broke: every job of the call
            outcomes = [exc] * len(group)
        seconds = clock.seconds() / len(group)  # the batch's time, shared
        for prepared, outcome in zip(group, outcomes, strict=True):
            job = prepared.job
            if not self.ledger.unfinished(job):  # finished already: a duplicate result is dropped
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
                delivered = self.deliverer.deliver(
                    job, outcome, on_planned=partial(self.ledger.planned, job),
                    frame=prepared.frame, seconds=seconds,
                )  # fmt: skip
            except Exception as exc:
                self._ended(job, self.ledger.attempt_failed(job, exc))
                continue
            rendered = (prepared.digest, prepared.request.seed) if prepared.digest else None
            self._ended(job, self.ledger.done(job, delivered, seconds, rendered=rendered))

    def supersede(self, path: Path) -> None:
        """Watcher thread: `path` changed while in hand. When it belongs to the live input
        being painted, the painting stops at its next step: only the newest version matters."""
        job = self.current
        if job is not None and self.live.supersedes(job, path):
            self.executor.cancel(job.label)

    def want(self, profile: str) -> None:
        """Files for `profile` are arriving (watcher or rescan thread): while they settle,
        the worker imports torch and loads the profile's models, so that the first job waits
        only for what could not have been done earlier."""
        with self._wanted_lock:
            if profile in self._wanted:
                return
            self._wanted.add(profile)
        self.queue.wake()

    def warm_up(self) -> None:
        with self._wanted_lock:
            wanted, self._wanted = self._wanted, set()
        for name in sorted(wanted):
            try:
                settings = self.preparer.profiles.get(name).settings
            except ConfigError:
                continue  # the profile's files wait; the admission says why
            self.executor.warm(settings)

    def should_pause(self) -> bool:
        """Asked between the frames of a video: stop for a shutdown or the end of the hours."""
        return self.stop.is_set() or not self.hours.open()


class _Clock:
    """A call's time, from when its first job started preparing to when it was rendered
    (not when its turn to be written came)."""

    def __init__(self, pending: Future[list[Outcome]], started: float) -> None:
        self.started = started
        self.ended: float | None = None
        pending.add_done_callback(self._end)

    def _end(self, _pending: Future[list[Outcome]]) -> None:
        self.ended = time.monotonic()

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


def _reference(prepared: Prepared) -> bool:
    """The frame that becomes its clip's colour reference."""
    frame = prepared.frame
    return frame is not None and frame.correct_colors and frame.colors is None
