"""The worker: one thread that owns the GPU and runs jobs one after the other.

Its loop reads like rq's: stop requested? → next job → prepare → render → deliver → record.
Around it, two helpers keep the model busy: the next input is prepared ahead on a reader
thread, and results are delivered and recorded on a writer thread (:mod:`.writer`), both in
order. An image and a video go through the one frame pipeline (:mod:`.frames`): an image
takes along the queued jobs that can share its pipeline call (:mod:`.images`), a video is
painted frame by frame (:mod:`.videos`).
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

from daemon.config.hours import Window
from daemon.deliver.results import Deliverer
from daemon.errors import ConfigError
from daemon.intake.jobs import Job, JobStatus
from daemon.intake.names import is_video
from daemon.live.live import Live
from daemon.prepare.prepare import Prepared, Preparer
from daemon.queue.frames import FramePipeline
from daemon.queue.images import Deliveries, QueuedImages
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger
from daemon.queue.videos import PaintedVideo, VideoRunner
from daemon.queue.writer import Writer

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
        frames: FramePipeline,
        deliverer: Deliverer,
        videos: VideoRunner,
        live: Live,
        hours: Hours,
        stop: threading.Event,
        on_change: Callable[[], None] = lambda: None,
        on_job_end: Callable[[Job, JobStatus], None] = lambda job, status: None,
    ) -> None:
        self.queue = queue
        self.ledger = ledger
        self.preparer = preparer
        self.frames = frames
        self.executor = frames.executor
        self.deliverer = deliverer
        self.videos = videos
        self.live = live  # a live input's content, and whether a change supersedes it
        self.hours = hours
        self.stop = stop
        self.on_change = on_change  # the status line changed
        self.on_job_end = on_job_end  # a job ended, however (`once`'s progress bar)
        # Room for a result per submission in flight, so the writer never holds the worker
        # back while workers still have free slots.
        self.writer = Writer(depth=self.executor.slots + 1)
        self.deliveries = Deliveries(self.writer, ledger, deliverer, ended=self._ended)
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
        source = QueuedImages(
            first, ahead, self.queue, prepare=self._prepare, read_ahead=self._read_ahead
        )
        self.frames.paint(source, self.deliveries)

    def _read_ahead(self) -> None:
        """While the model paints, decode and check the next input on the reader's thread."""
        if self._ahead is not None:
            return
        job = self.queue.get(timeout=0)
        if job is None:
            return
        future = None if is_video(job.image) else self._reader.submit(self._prepare, job)
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
