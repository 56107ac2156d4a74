"""The worker: one thread that owns the GPU and runs jobs one after the other.

Its loop reads like rq's: stop requested? → next job → prepare → render → deliver → record.
Everything it needs is handed to it by the service; it makes no decision of its own about
whose fault a failure is (the ledger asks :func:`daemon.errors.classify`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial

from daemon.config.hours import Window
from daemon.deliver.results import Delivered, Deliverer
from daemon.errors import ConfigError
from daemon.intake.jobs import Job, JobStatus
from daemon.intake.names import is_video
from daemon.prepare.prepare import Preparer
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger
from daemon.queue.videos import VideoRunner
from daemon.render.executor import Executor, render_one

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
        hours: Hours,
        stop: threading.Event,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue = queue
        self.ledger = ledger
        self.preparer = preparer
        self.executor = executor
        self.deliverer = deliverer
        self.videos = videos
        self.hours = hours
        self.stop = stop
        self.on_change = on_change  # the status line changed
        self.on_job_end: Callable[[Job, JobStatus], None] = lambda job, status: None
        self.current: Job | None = None
        self._wanted: set[str] = set()  # profiles whose files are arriving: load their models
        self._wanted_lock = threading.Lock()

    def work(self) -> None:
        while not self.stop.is_set():
            if not self.hours.open():
                self.stop.wait(1.0)
                continue
            job = self.queue.get(timeout=POLL)
            if job is None:
                self.warm_up()  # nothing to paint yet: load what the arriving files need
                continue
            if self.stop.is_set():
                self.ledger.release(job)  # not started: it stays in the inbox for the next run
                break
            status = self.run(job)
            self.on_job_end(job, status)

    def run(self, job: Job) -> JobStatus:
        self.current = job
        self.on_change()
        started = time.monotonic()
        self.ledger.running(job)
        try:
            delivered = self.process(job)
        except Exception as exc:
            status = self.ledger.attempt_failed(job, exc)
        else:
            status = self.ledger.done(job, delivered, time.monotonic() - started)
        finally:
            self.current = None
            self.on_change()
        return status

    def process(self, job: Job) -> Delivered:
        on_planned = partial(self.ledger.planned, job)
        if is_video(job.image):
            return self.videos.run(job, on_planned=on_planned, should_stop=self.should_pause)
        prepared = self.preparer.prepare(job)
        started = time.monotonic()
        result = render_one(self.executor, prepared.request)
        seconds = time.monotonic() - started
        return self.deliverer.deliver(prepared, result, on_planned=on_planned, seconds=seconds)

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
