"""The service: every part wired together, and the main loop that drives the intake.

Every part is built in :class:`Daemon`'s constructor, in the order they depend on each
other, and is handed its collaborators and observers then; nothing is wired afterwards. The
journal is built closed and opened by ``start()`` once the state folder's lock is held.

The threads, and what each owns (the only state another thread touches is behind a lock:
the ledger, the queue, the journal, the stability tracker):

* **watchdog's observer** (``InboxWatcher``): only records paths in the stability tracker,
  and tells the worker that files for a profile arrive or that a file in hand changed.
* **the main loop** (this module, driving :mod:`daemon.queue.admission`): turns complete
  files into jobs (claims in the ledger, rows in the journal, the queue), re-queues retries,
  ends finished clips, watches the watcher and the profiles folder, pings systemd.
* **the worker** (``img2imgd-worker``, :mod:`daemon.queue.worker`): owns the model cache
  and the in-process executor; takes jobs in arrival order, renders, records attempts.
* **the reader** (``img2imgd-reader``): prepares the next input while the model paints.
* **the writer** (``img2imgd-writer``, :mod:`daemon.queue.writer`): delivers results
  (outputs, archive, journal states) in order while the next job paints.
* **apscheduler's thread**: the periodic rescan, unloading idle models, pruning ``_done``,
  dropping abandoned clip states, and ``workers.json`` for ``status``.
* **the metrics server** (prometheus_client's, with ``metrics_port``): answers scrapes
  from the counters the ledger and the model cache update.
* **Ray's dispatcher** (``img2imgd-ray``, :mod:`daemon.render.cluster`, with ``executor:
  ray``): sends requests to workers, collects replies, decides what a worker's failure
  means; Ray's own threads run beside it, and its workers are processes of their own.

The worker never waits on the watcher and the watcher never waits on the worker.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler
from loguru import logger

from daemon.clips.state import ClipStore, drop_abandoned
from daemon.config.hours import parse_window
from daemon.config.profiles import ProfileStore, profile_names
from daemon.config.settings import Settings
from daemon.deliver.lifecycle import DONE_FOLDER
from daemon.deliver.results import Deliverer
from daemon.errors import ConfigError
from daemon.intake.jobs import Job, JobStatus
from daemon.intake.stability import StabilityTracker
from daemon.intake.watcher import InboxWatcher
from daemon.journal.journal import Journal
from daemon.journal.lock import StateLock
from daemon.journal.recovery import recover
from daemon.live.live import Live
from daemon.ops.housekeeping import prune_done
from daemon.ops.metrics import Metrics
from daemon.ops.roster import ProfileRoster
from daemon.ops.status import publish_workers
from daemon.ops.systemd import Notifier
from daemon.paths import escaped, shown
from daemon.prepare.prepare import Preparer
from daemon.queue.admission import Admission, SaidOnce
from daemon.queue.clips import ClipEnds
from daemon.queue.frames import FramePipeline
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger, Tally
from daemon.queue.videos import VideoRunner
from daemon.queue.worker import Hours, Worker
from daemon.render.cache import ModelCache
from daemon.render.cluster import RayExecutor
from daemon.render.executor import Executor, InProcessExecutor

JOURNAL_NAME = "journal.sqlite3"
STOP_EXTENSION = 30.0  # s asked of systemd at a time while the job in hand finishes
ABANDONED_STATE = 86400.0  # s untouched before an unfinished clip's or video's state goes
WATCHER_CHECK = 1.0  # s between checks that the watcher and the inbox are alive
PROFILES_CHECK = 0.5  # s between looks at the profiles folder (profiles added or removed)
WORKERS_EVERY = 2.0  # s between rewrites of workers.json (executor: ray) for `status`
TICK = 0.05  # s between passes of the main loop over completed files


def _ignore(*_args: object) -> None:
    pass


@dataclass(frozen=True)
class Observers:
    """What the outside may watch of a daemon (``once``'s progress bar, a benchmark, a test).
    Each is called on the thread that did the thing, so it must be quick."""

    job_queued: Callable[[Job], None] = _ignore  # main loop: a job entered the queue
    job_end: Callable[[Job, JobStatus], None] = _ignore  # worker or writer: a job ended


class Daemon:
    """Every part, built in the order they depend on each other, each handed what it needs
    when it is made: nothing is wired afterwards. ``models`` and ``executor`` may be given
    (tests share a warm model cache); the daemon makes its own from ``settings`` otherwise,
    and only a cache it makes itself reports its model loads to the metrics."""

    def __init__(
        self,
        settings: Settings,
        *,
        watch: bool = True,
        models: ModelCache | None = None,
        executor: Executor | None = None,
        rng: random.Random | None = None,
        observers: Observers = Observers(),  # frozen: one shared default is safe
    ) -> None:
        self.settings = settings
        self.watch = watch
        self.stop_event = threading.Event()
        self.started = threading.Event()  # set once start-up (recovery, first rescan) is done
        self.rng = rng or random.Random()  # seeds drawn for -1: the service's, not the process's
        self.profiles = ProfileStore(settings.profiles)
        self.queue = JobQueue()
        self.metrics = _metrics(self.queue) if settings.metrics_port else None
        loaded = self.metrics.model_loaded if self.metrics else _ignore
        self.models = models or ModelCache.from_settings(settings, on_load=loaded)
        self.executor = executor or _executor(settings, self.models, self.stop_event)
        self.tracker = StabilityTracker(settings.stability_delay)
        self.lock = StateLock(settings.state_dir)
        self.journal = Journal(settings.state_dir / JOURNAL_NAME)  # opened by start()
        # The live rules (live: true), asked by the intake, prepare, the worker and the
        # ledger; the journal keeps what each live input last rendered.
        self.live = Live(settings.inbox, settings.outbox, self.profiles, self.journal)
        self.notifier = Notifier()
        self.clips = ClipStore(settings.state_dir / "sequences")
        self.clip_ends = ClipEnds(settings.inbox, self.clips, window=settings.pairing_window)
        self.ledger = Ledger(
            settings.inbox, settings.outbox, self.journal, self.live,
            retry_delay=settings.retry_delay, stability_delay=settings.stability_delay,
            retry_later=watch, on_finished=self.clip_ends.after_job,
            on_outcome=self._counted if self.metrics else _ignore,
        )  # fmt: skip
        said = SaidOnce()
        self.worker = self._make_worker(said, observers.job_end)
        self.admission = Admission(
            settings, self.profiles, self.tracker, self.ledger, self.queue, self.live,
            hold_files=watch, said=said, on_job_queued=observers.job_queued,
            on_arrival=self.worker.want, on_change_in_hand=self.worker.supersede,
        )  # fmt: skip
        self.roster = ProfileRoster(
            settings.profiles, settings.inbox, on_added=self.admission.profile_added
        )
        self._inbox_gone = False
        self._watcher: InboxWatcher | None = None
        self._worker = threading.Thread(
            target=self.worker.work, name="img2imgd-worker", daemon=True
        )
        self._scheduler: BackgroundScheduler | None = None

    def _make_worker(self, said: SaidOnce, on_job_end: Callable[[Job, JobStatus], None]) -> Worker:
        settings = self.settings
        hours = parse_window(settings.processing_hours) if settings.processing_hours else None
        frames = FramePipeline(self.executor, max_batch=settings.max_batch)
        return Worker(
            queue=self.queue,
            ledger=self.ledger,
            preparer=Preparer(settings, self.profiles, self.clips, self.rng, live=self.live),
            frames=frames,
            deliverer=Deliverer(settings.outbox),
            videos=VideoRunner(settings, self.profiles, self.clips, frames, self.rng),
            live=self.live,
            hours=Hours(hours if self.watch else None, said.say),
            stop=self.stop_event,
            on_change=lambda: self.notifier.status(self.status_line()),
            on_job_end=on_job_end,
        )

    # ----------------------------------------------------------------- state

    def _counted(self, job: Job, outcome: str, seconds: float | None) -> None:
        """A counted outcome, for the metrics, by profile and task."""
        assert self.metrics is not None  # only wired when there are metrics
        try:
            task: str = self.profiles.get(job.profile).settings.task
        except ConfigError:  # the profile broke since: the count still counts
            task = "unknown"
        self.metrics.finished(job.profile, task, outcome, seconds)

    @property
    def tally(self) -> Tally:
        return self.ledger.tally

    def status_line(self) -> str:
        """One line for `systemctl status`: the queue and the job in hand."""
        current = self.worker.current
        doing = f"working on {current.label}" if current else "idle"
        done, failed = self.tally.done, self.tally.failed
        return f"{doing}; {len(self.queue)} queued; {done} done, {failed} failed since start"

    def idle(self) -> bool:
        return self.admission.idle() and not self.ledger.in_hand()

    # ----------------------------------------------------------------- start and stop

    def prepare_folders(self) -> list[str]:
        """Create the roots and one inbox folder per profile; return the profile names."""
        for folder in (self.settings.inbox, self.settings.outbox, self.settings.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        names = profile_names(self.settings.profiles)
        for name in names:
            (self.settings.inbox / name).mkdir(exist_ok=True)
        return names

    def start(self) -> None:
        names = self.prepare_folders()
        self.lock.acquire()  # ConfigError when another daemon owns these folders
        self.roster.start(names)
        self.admission.announce_waiting_profiles(names)
        self.journal.open()  # ours alone now that the lock is held
        recover(self.journal, inbox=self.settings.inbox, outbox=self.settings.outbox)
        logger.info(
            "watching {} for profiles {} → results in {}", shown(self.settings.inbox),
            ", ".join(map(escaped, names)) or "(none)", shown(self.settings.outbox),
        )  # fmt: skip
        self._worker.start()
        if self.metrics is not None and self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_address, self.settings.metrics_port)
        if self.watch:
            self._watcher = InboxWatcher(
                self.settings.inbox,
                self.admission.noticed,
                polling=self.settings.polling,
                poll_interval=self.settings.poll_interval,
                on_lost=self.admission.rescan,  # watchdog's events-lost signal (Windows)
            )
            self._watcher.start()
            self._scheduler = BackgroundScheduler(daemon=True)
            self._add_housekeeping(self._scheduler)
            self._scheduler.start()
        self.admission.rescan()  # files already present go through the same stability check
        self.notifier.ready(self.status_line())
        self.started.set()

    def _add_housekeeping(self, scheduler: BackgroundScheduler) -> None:
        settings = self.settings
        every = {"max_instances": 1, "coalesce": True}
        scheduler.add_job(
            self.admission.rescan, "interval", seconds=settings.rescan_interval, id="rescan",
            **every,
        )  # fmt: skip
        if settings.unload_after > 0:
            scheduler.add_job(
                self.unload_idle_models, "interval", id="unload-idle",
                seconds=max(1.0, min(60.0, settings.unload_after / 4)), **every,
            )  # fmt: skip
        if settings.prune_done_after_days:
            scheduler.add_job(
                self.prune_done, "interval", hours=1, id="prune-done",
                next_run_time=datetime.now(), **every,
            )  # fmt: skip
        scheduler.add_job(
            self.drop_abandoned_states, "interval", hours=1, id="drop-states", **every
        )
        if self.executor.workers() or self.settings.executor == "ray":
            scheduler.add_job(
                self.publish_workers, "interval", seconds=WORKERS_EVERY, id="workers",
                next_run_time=datetime.now(), **every,
            )  # fmt: skip

    def publish_workers(self) -> None:
        """For `img2imgd status`: the render workers, as the executor sees them now, and
        the requests that wait for one."""
        executor = self.executor
        publish_workers(self.settings.state_dir, executor.workers(), executor.waiting())

    def unload_idle_models(self) -> None:
        for name in self.executor.unload_idle(self.settings.unload_after):
            logger.info(
                "unloaded model {} after {:.0f} s without jobs (it loads again on the next one)",
                name, self.settings.unload_after,
            )  # fmt: skip

    def drop_abandoned_states(self) -> None:
        """Clip states and video frames whose input left the inbox unfinished (failed, or
        taken away) and that nothing touched for a day."""
        for root in (self.clips.root, self.settings.state_dir / "videos"):
            drop_abandoned(root, ABANDONED_STATE)

    def prune_done(self) -> None:
        days = self.settings.prune_done_after_days
        if not days:
            return
        done = self.settings.inbox / DONE_FOLDER
        removed = prune_done(done, older_than=days * 86400, now=time.time())
        if removed:
            logger.info("pruned {} archived input(s) older than {:g} days", len(removed), days)

    def stop(self) -> None:
        """Stop taking files; the job in hand finishes; queued jobs stay in the inbox."""
        self.stop_event.set()
        self.queue.close()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._watcher is not None:
            self._watcher.stop()
        current = self.worker.current
        self.notifier.stopping(f"finishing {current.label}" if current else "stopping")
        while self._worker.is_alive():
            # A long job may outlast the unit's TimeoutStopSec: ask systemd for more time
            # while the job in hand finishes, rather than be killed half-way.
            self.notifier.extend_timeout(STOP_EXTENSION)
            self._worker.join(timeout=STOP_EXTENSION / 2)
        self.executor.close()
        if self.metrics is not None:
            self.metrics.close()
        publish_workers(self.settings.state_dir, [])  # gone with the daemon
        self.clip_ends.end_due(self.admission.busy_folders(), at_stop=True)
        self.journal.close(prune=True)
        self.lock.release()

    # ----------------------------------------------------------------- the main loop

    def run_forever(self, *, tick: float = TICK) -> None:
        self.start()
        interval = self.notifier.watchdog_interval()
        next_ping = next_check = next_profiles = 0.0
        try:
            while not self.stop_event.wait(tick):
                self.step()
                if time.monotonic() >= next_check:
                    self.check_watcher()
                    next_check = time.monotonic() + WATCHER_CHECK
                if time.monotonic() >= next_profiles:
                    self.roster.check()
                    next_profiles = time.monotonic() + PROFILES_CHECK
                if interval is not None and time.monotonic() >= next_ping:
                    self.notifier.watchdog_ping()
                    next_ping = time.monotonic() + interval
        finally:
            self.stop()

    def run_once(self, *, tick: float = TICK) -> Tally:
        """Process what is in the inbox now; return when nothing is left to do."""
        self.start()
        try:
            while not self.stop_event.wait(tick):
                self.step()
                if self.idle():
                    break
        finally:
            self.stop()
        return self.tally

    def step(self) -> None:
        self.admission.step()
        self.clip_ends.end_due(self.admission.busy_folders())

    def check_watcher(self) -> None:
        """Re-arm the watcher when it died or the inbox came back; never treat a vanished
        inbox as deleted inputs (a share that drops out comes back with its files)."""
        watcher = self._watcher
        if watcher is None or self.stop_event.is_set():
            return
        if not self.settings.inbox.is_dir():
            if not self._inbox_gone:
                self._inbox_gone = True
                logger.warning(
                    "the inbox {} is gone (unmounted share?); waiting for it to come back",
                    shown(self.settings.inbox),
                )
            watcher.stop()
            return
        if self._inbox_gone:
            self._inbox_gone = False
            logger.info("the inbox {} is back; watching it again", shown(self.settings.inbox))
        elif watcher.is_alive():
            return
        else:
            logger.warning("the inbox watcher stopped; starting it again")
        watcher.stop()
        watcher.start()
        self.admission.rescan()


def _metrics(queue: JobQueue) -> Metrics:
    return Metrics(queue_length=lambda: len(queue))


def _executor(settings: Settings, models: ModelCache, stop: threading.Event) -> Executor:
    """Where rendering runs: here (``executor: local``), or on a Ray cluster's GPUs."""
    if settings.executor == "ray":
        return RayExecutor(settings, stop=stop)
    return InProcessExecutor(models)
