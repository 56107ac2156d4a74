"""The daemon: watcher → stability → pairing → queue → worker → lifecycle, wired together.

Threads: watchdog's observer thread only records paths in the stability tracker; the main
loop turns complete files into jobs (pairing, waiting for late companions); one worker
thread owns the model and runs jobs in arrival order; apscheduler runs the periodic rescan.
The worker never waits on the watcher and the watcher never waits on the worker.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from loguru import logger
from natsort import natsorted

from daemon.config import Settings
from daemon.errors import ConfigError, InputError, TransientError, UnreadableInput
from daemon.imaging import IMAGE_EXTENSIONS
from daemon.jobs import Job, JobQueue, JobStatus
from daemon.journal import Journal
from daemon.lifecycle import DONE_FOLDER, archive, archive_inputs, fail
from daemon.models import ModelCache
from daemon.pairing import (
    Kind,
    classify,
    companions_on_disk,
    pending_images,
    route,
)
from daemon.processing import JobRunner
from daemon.profiles import ProfileStore, profile_names
from daemon.recovery import StateLock, recover
from daemon.schedule import parse_window, prune_done
from daemon.sequences import drop_abandoned
from daemon.stability import StabilityTracker
from daemon.systemd import Notifier
from daemon.watcher import InboxWatcher, walk_files

JOURNAL_NAME = "journal.sqlite3"
STOP_EXTENSION = 30.0  # s asked of systemd at a time while the job in hand finishes
ABANDONED_STATE = 86400.0  # s untouched before an unfinished clip's or video's state goes
WATCHER_CHECK = 1.0  # s between checks that the watcher and the inbox are alive
TICK = 0.05  # s between passes of the main loop over completed files
MAX_BACKOFF = 600.0  # s, cap on the retry delay for jobs that hit a process fault
UNEXPECTED_ERROR_TRIES = 3  # an unknown error fails the file only when it repeats
RECENT_WRITE = 10.0  # s; an undecodable file this fresh may still be being written
STILL_WRITING_TRIES = 3


@dataclass
class Tally:
    """What happened since start; ``once`` turns it into its exit code."""

    done: int = 0
    failed: int = 0
    deferred: int = 0
    seconds: list[float] = field(default_factory=list)


class Daemon:
    def __init__(
        self, settings: Settings, *, watch: bool = True, models: ModelCache | None = None
    ) -> None:
        self.settings = settings
        self.watch = watch
        self.profiles = ProfileStore(settings.profiles)
        self.tracker = StabilityTracker(settings.stability_delay)
        self.queue = JobQueue()
        self.models = models or ModelCache(
            models_dir=settings.models_dir,
            state_dir=settings.state_dir,
            device=settings.device,
            lora_dirs=settings.lora_dirs,
            embedding_dirs=settings.embedding_dirs,
            allow_pickle=settings.allow_pickle,
        )
        self.runner = JobRunner(settings, self.profiles, self.models)
        self.tally = Tally()
        self.lock = StateLock(settings.state_dir)
        self.notifier = Notifier()
        self.journal: Journal | None = None
        self._rows: dict[int, int] = {}  # job id -> journal row
        self.stop_event = threading.Event()
        self.current: Job | None = None
        self.on_job_queued: Callable[[Job], None] | None = None
        self.on_job_end: Callable[[Job, JobStatus], None] | None = None
        self._lock = threading.Lock()
        self._claimed: set[Path] = set()  # paths of queued or running jobs
        self._waiting: dict[Path, float] = {}  # image -> deadline for a required companion
        self._ending: dict[Path, tuple[float, Job]] = {}  # emptied folder -> since, last job
        self._attempts: dict[Path, int] = {}
        self._said: set[str] = set()  # warnings already logged once
        self._inbox_gone = False
        # Held by the worker while it runs a job, and by housekeeping that touches the
        # models (idle unloading), so a model is never freed under a running job.
        self._gpu_lock = threading.Lock()
        hours = settings.processing_hours
        self.window = parse_window(hours) if hours else None
        self._watcher: InboxWatcher | None = None
        self._worker = threading.Thread(target=self._work, name="img2imgd-worker", daemon=True)
        self._scheduler: BackgroundScheduler | None = None

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
        self.journal = Journal(self.settings.state_dir / JOURNAL_NAME)
        recover(self.journal, inbox=self.settings.inbox, outbox=self.settings.outbox)
        logger.info(
            "watching {} for profiles {} → results in {}",
            self.settings.inbox, ", ".join(names) or "(none)", self.settings.outbox,
        )  # fmt: skip
        self._worker.start()
        if self.watch:
            self._watcher = InboxWatcher(
                self.settings.inbox,
                self._on_path,
                polling=self.settings.polling,
                poll_interval=self.settings.poll_interval,
            )
            self._watcher.start()
            self._scheduler = BackgroundScheduler(daemon=True)
            self._add_housekeeping(self._scheduler)
            self._scheduler.add_job(
                self.rescan, "interval", seconds=self.settings.rescan_interval,
                id="rescan", max_instances=1, coalesce=True,
            )  # fmt: skip
            self._scheduler.start()
        self.rescan()  # files already present go through the same stability check
        self.notifier.ready(self.status_line())

    def _add_housekeeping(self, scheduler: BackgroundScheduler) -> None:
        settings = self.settings
        if settings.unload_after > 0:
            scheduler.add_job(
                self.unload_idle_models, "interval", id="unload-idle", max_instances=1,
                coalesce=True, seconds=max(1.0, min(60.0, settings.unload_after / 4)),
            )  # fmt: skip
        if settings.prune_done_after_days:
            scheduler.add_job(
                self.prune_done, "interval", hours=1, id="prune-done", max_instances=1,
                coalesce=True, next_run_time=datetime.now(),
            )  # fmt: skip
        scheduler.add_job(
            self.drop_abandoned_states, "interval", hours=1, id="drop-states", max_instances=1,
            coalesce=True,
        )  # fmt: skip

    def unload_idle_models(self) -> None:
        with self._gpu_lock:
            names = self.models.unload_idle(self.settings.unload_after)
        for name in names:
            logger.info(
                "unloaded model {} after {:.0f} s without jobs (it loads again on the next one)",
                name, self.settings.unload_after,
            )  # fmt: skip

    def drop_abandoned_states(self) -> None:
        """Clip states and video frames whose input left the inbox unfinished (failed, or
        taken away) and that nothing touched for a day."""
        for root in (self.runner.sequences.root, self.runner.videos_root):
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
        self.notifier.stopping(f"finishing {self.current.label}" if self.current else "stopping")
        while self._worker.is_alive():
            # A long job may outlast the unit's TimeoutStopSec: ask systemd for more time
            # while the job in hand finishes, rather than be killed half-way.
            self.notifier.extend_timeout(STOP_EXTENSION)
            self._worker.join(timeout=STOP_EXTENSION / 2)
        self._end_clips(at_stop=True)  # nothing more arrives for them in this run
        if self.journal is not None:
            self.journal.prune()
            self.journal.close()
            self.journal = None
        self.lock.release()

    def run_forever(self, *, tick: float = TICK) -> None:
        self.start()
        interval = self.notifier.watchdog_interval()
        next_ping = 0.0
        try:
            next_check = 0.0
            while not self.stop_event.wait(tick):
                self.step()
                if time.monotonic() >= next_check:
                    self.check_watcher()
                    next_check = time.monotonic() + WATCHER_CHECK
                if interval is not None and time.monotonic() >= next_ping:
                    self.notifier.watchdog_ping()
                    next_ping = time.monotonic() + interval
        finally:
            self.stop()

    def status_line(self) -> str:
        """One line for `systemctl status`: the queue and the job in hand."""
        current = self.current
        doing = f"working on {current.label}" if current else "idle"
        return (
            f"{doing}; {len(self.queue)} queued; {self.tally.done} done, "
            f"{self.tally.failed} failed since start"
        )

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

    def idle(self) -> bool:
        with self._lock:
            busy = bool(self._claimed or self._waiting)
        return not busy and len(self.tracker) == 0 and len(self.queue) == 0

    # ----------------------------------------------------------------- noticing files

    def _on_path(self, path: Path, closed: bool) -> None:
        """Watcher thread: only record the path."""
        if path in self._claimed:  # our own reads and moves of files in hand
            return
        self.tracker.touch(path, closed=closed)

    def rescan(self) -> None:
        """Catch what the watcher missed (dropped events, network shares, start-up)."""
        if not self.settings.inbox.is_dir():
            return  # gone (unmounted share): check_watcher says so and re-arms on return
        for path in walk_files(self.settings.inbox):
            with self._lock:
                known = path in self._claimed or path in self._waiting
            if not known and path not in self.tracker:
                self.tracker.touch(path)

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
                    self.settings.inbox,
                )
            watcher.stop()
            return
        if self._inbox_gone:
            self._inbox_gone = False
            logger.info("the inbox {} is back; watching it again", self.settings.inbox)
        elif watcher.is_alive():
            return
        else:
            logger.warning("the inbox watcher stopped; starting it again")
        watcher.stop()
        watcher.start()
        self.rescan()

    def step(self) -> None:
        """Main loop: turn complete files into jobs, and re-check images waiting for companions."""
        for path in natsorted(self.tracker.poll(), key=str):
            self._consider(path)
        now = time.monotonic()
        with self._lock:
            waiting = list(self._waiting.items())
        for path, deadline in waiting:
            self._consider(path, deadline=deadline, now=now)
        self._end_clips(now=now)

    def _consider(
        self, path: Path, *, deadline: float | None = None, now: float | None = None
    ) -> None:
        where = route(self.settings.inbox, path)
        if where is None:
            return
        with self._lock:
            if path in self._claimed:
                return
        kind = classify(where)
        if kind is Kind.UNSUPPORTED:
            self._refuse_unsupported(path, where.profile)
            return
        if kind is not Kind.IMAGE:
            return  # a companion: it travels with its image
        if not path.exists() and not path.is_symlink():
            with self._lock:
                self._waiting.pop(path, None)
            return
        if not self.profiles.exists(where.profile):
            self._say_once(
                f"no-profile:{where.profile}",
                f"inbox/{where.profile}/ holds files but there is no profiles/{where.profile}.yaml;"
                " they wait until there is (or move them to a profile folder)",
            )
            self._hold(path, self.settings.rescan_interval)
            return
        try:
            profile = self.profiles.get(where.profile).settings
        except ConfigError as exc:
            self._say_once(
                f"bad-profile:{where.profile}:{exc}",
                f"profile {where.profile} is invalid, its files wait until it is fixed: {exc}",
            )
            self._hold(path, min(self.settings.retry_delay, 5.0))
            return
        companions = companions_on_disk(path)
        now = time.monotonic() if now is None else now
        shared = (companions.mask,) if companions.mask_shared else ()
        still_writing = [c for c in (*companions.paths(), *shared) if c in self.tracker]
        missing = (profile.needs_mask and companions.mask is None) or (
            profile.needs_sketch and companions.sketch is None
        )
        if still_writing or missing:
            deadline = deadline if deadline is not None else now + self.settings.pairing_window
            if still_writing or now < deadline:
                with self._lock:
                    self._waiting[path] = deadline
                return
        job = Job(
            profile=where.profile,
            image=path,
            sub_dir=where.sub_dir,
            companions=companions,
            attempt=self._attempts.get(path, 0),
        )
        with self._lock:
            self._waiting.pop(path, None)
            if any(p in self._claimed for p in job.inputs):
                return  # a companion already belongs to a job in hand
            self._claimed.update(job.inputs)
        for companion in companions.paths():
            self.tracker.forget(companion)
        self._record_queued(job)
        self.queue.put(job)
        if self.on_job_queued is not None:
            self.on_job_queued(job)

    def _hold(self, path: Path, seconds: float) -> None:
        """A file that cannot become a job yet (no or bad profile): look again later.

        ``once`` does not wait: the file stays in the inbox and counts as left for later.
        """
        if self.watch:
            self.tracker.touch(path, not_before=time.monotonic() + seconds)
        else:
            self.tally.deferred += 1

    def _record_queued(self, job: Job) -> None:
        if self.journal is not None:
            self._rows[job.id] = self.journal.queued(job)

    def _record(
        self, job: Job, state: JobStatus, *, reason: str = "", seconds: float | None = None
    ) -> None:
        """Write the job's new state to the journal (see journal.py for the states)."""
        row = self._rows.get(job.id)
        if self.journal is None or row is None:
            return
        if state is JobStatus.RUNNING:
            self.journal.running(row)
        elif state is JobStatus.WRITTEN:
            self.journal.written(row)
        else:
            del self._rows[job.id]
            self.journal.finished(row, state, reason=reason, seconds=seconds)

    def _refuse_unsupported(self, path: Path, profile: str) -> None:
        job = Job(profile=profile, image=path, sub_dir=route(self.settings.inbox, path).sub_dir)  # type: ignore[union-attr]
        kinds = " ".join(sorted(IMAGE_EXTENSIONS))
        self._record_queued(job)
        self._finish_failed(
            job,
            f"{path.name} is not a file type img2imgd handles (images: {kinds}; "
            "companions: .yaml settings, .txt parameters)",
            None,
        )

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.warning(message)

    # ----------------------------------------------------------------- the worker

    def _work(self) -> None:
        while not self.stop_event.is_set():
            if not self._window_open():
                self.stop_event.wait(1.0)
                continue
            job = self.queue.get(timeout=0.5)
            if job is None:
                continue
            if self.stop_event.is_set():
                self._release(job)  # not started: it stays in the inbox for the next run
                break
            self.current = job
            self.notifier.status(self.status_line())
            try:
                with self._gpu_lock:
                    status = self._execute(job)
            finally:
                self.current = None
                self._release(job)
                self.notifier.status(self.status_line())
            if self.on_job_end is not None:
                self.on_job_end(job, status)

    def _should_pause(self) -> bool:
        """Asked between the frames of a video: stop for a shutdown or the end of the hours."""
        outside = (
            self.window is not None and self.watch and datetime.now().time() not in self.window
        )
        return self.stop_event.is_set() or outside

    def _window_open(self) -> bool:
        """Outside the processing hours files wait in the inbox (``once`` ignores the hours:
        it is an explicit request to process now)."""
        if self.window is None or not self.watch:
            return True
        if datetime.now().time() in self.window:
            self._said.discard("window")
            return True
        self._say_once(
            "window",
            f"outside the processing hours {self.window}; files wait in the inbox until then",
        )
        return False

    def _execute(self, job: Job) -> JobStatus:
        started = time.monotonic()
        self._record(job, JobStatus.RUNNING)
        # Make the archive folder now, not just before the move: watchdog only watches a new
        # folder once it has handled its creation, and a move into a folder it does not know
        # yet stalls its event queue for 0.5 s (an unpaired move), delaying the next drop.
        with contextlib.suppress(OSError):
            (self.settings.inbox / DONE_FOLDER / job.profile / job.sub_dir).mkdir(
                parents=True, exist_ok=True
            )
        row = self._rows.get(job.id)

        def planned(paths: list[Path]) -> None:
            if self.journal is not None and row is not None:
                self.journal.writing(row, paths)

        try:
            result = self.runner.run(job, on_planned=planned, should_stop=self._should_pause)
        except InputError as exc:
            if isinstance(exc, UnreadableInput) and self._maybe_still_writing(job):
                return self._defer(job, f"{exc} (it was written moments ago; trying again)",
                                   delay=max(self.settings.stability_delay, 0.2) * 2)  # fmt: skip
            return self._finish_failed(job, str(exc), exc)
        except (TransientError, ConfigError) as exc:
            return self._defer(job, str(exc))
        except Exception as exc:
            if job.attempt + 1 < UNEXPECTED_ERROR_TRIES:
                logger.exception("{}: unexpected error", job.label)
                return self._defer(job, f"unexpected {type(exc).__name__}: {exc}")
            return self._finish_failed(
                job, f"{job.image.name} failed {UNEXPECTED_ERROR_TRIES} times with an unexpected "
                f"{type(exc).__name__}: {exc}", exc,
            )  # fmt: skip
        seconds = time.monotonic() - started
        self._record(job, JobStatus.WRITTEN)
        try:
            archive(job, self.settings.inbox)
        except OSError as exc:  # the results exist; the input stays, and a rerun adds -1 copies
            logger.error(
                "{}: results written but the input could not be archived: {}", job.label, exc
            )
        # The names are free again: a file dropped under the same name from now on is a new
        # job, and its events must not be taken for our own move.
        self._release(job)
        for note in result.notes:
            logger.info("{}: {}", job.label, note)
        outputs = ", ".join(
            str(p.relative_to(self.settings.outbox)) for p in result.outputs if p.suffix != ".txt"
        )
        progress = f" {result.progress}" if result.progress else ""
        logger.success("done {} → {} ({:.1f} s){}", job.label, outputs, seconds, progress)
        self._after_folder_job(job)
        self._attempts.pop(job.image, None)
        self._record(job, JobStatus.DONE, seconds=seconds)
        self.tally.done += 1
        self.tally.seconds.append(seconds)
        return JobStatus.DONE

    def _after_folder_job(self, job: Job) -> None:
        """When a folder has no input left, its clip may be over (see _end_clips): then its
        state goes, and a mask that served all its images (the only file in masks/) is
        archived after them."""
        folder = job.image.parent
        with self._lock:
            if any(pending_images(folder)):
                self._ending.pop(folder, None)
            else:
                self._ending[folder] = (time.monotonic(), job)

    def _end_clips(self, *, now: float | None = None, at_stop: bool = False) -> None:
        """A clip ends when its folder has stayed empty for the pairing window: frames that
        come slower than they are painted still belong to it (same seed, same colours)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [
                (folder, job)
                for folder, (since, job) in self._ending.items()
                if at_stop or now - since >= self.settings.pairing_window
            ]
            for folder, _ in due:
                del self._ending[folder]
            busy = {path.parent for path in self._claimed} | {p.parent for p in self._waiting}
        for folder, job in due:
            if folder not in busy and not any(pending_images(folder)):
                self._end_clip(job)

    def _end_clip(self, job: Job) -> None:
        shared = job.companions.mask if job.companions.mask_shared else None
        if shared is not None and shared.exists():
            try:
                archive_inputs([shared], job.profile, self.settings.inbox)
            except OSError as exc:
                logger.warning("{}: could not archive the shared mask: {}", job.label, exc)
        state = self.runner.sequences.folder(job.profile, job.sub_dir)
        if job.sub_dir.parts and state.exists():
            done = self.runner.sequences.load(state)
            self.runner.sequences.forget(state)
            logger.info(
                "clip {}/{} finished: {} frame(s) in {:.0f} s",
                job.profile, job.sub_dir, done.done, done.seconds,
            )  # fmt: skip

    def _maybe_still_writing(self, job: Job) -> bool:
        """A file that looked complete but fails to decode may just be paused mid-write."""
        if job.attempt + 1 >= STILL_WRITING_TRIES:
            return False
        try:
            age = time.time() - os.lstat(job.image).st_mtime
        except OSError:
            return False
        return age < RECENT_WRITE

    def _defer(self, job: Job, reason: str, *, delay: float | None = None) -> JobStatus:
        """Leave the input in the inbox and try it again later (``delay`` None: a process fault)."""
        attempts = job.attempt + 1
        self._attempts[job.image] = attempts
        self._record(job, JobStatus.DEFERRED, reason=reason)
        if delay is None:
            self.tally.deferred += 1
            if not self.watch:  # `once`: the next run tries again
                logger.warning("{}: not done, left in the inbox: {}", job.label, reason)
                return JobStatus.DEFERRED
            delay = min(self.settings.retry_delay * 2 ** (attempts - 1), MAX_BACKOFF)
        logger.warning("{}: {}; retrying in {:.1f} s", job.label, reason, delay)
        self.tracker.touch(job.image, not_before=time.monotonic() + delay)
        return JobStatus.DEFERRED

    def _finish_failed(self, job: Job, reason: str, error: BaseException | None) -> JobStatus:
        row = self._rows.get(job.id)
        if self.journal is not None and row is not None:
            self.journal.failing(row, reason)
        try:
            report = fail(job, self.settings.inbox, reason, error)
        except OSError as exc:
            logger.error(
                "{}: failed ({}), and could not be moved to _failed: {}", job.label, reason, exc
            )
            return self._defer(job, "could not move the failed input")
        self._release(job)  # as after archiving: the names are free again
        self._attempts.pop(job.image, None)
        self._record(job, JobStatus.FAILED, reason=reason)
        self._after_folder_job(job)
        self.tally.failed += 1
        logger.error(
            "FAILED {}: {} (report: {})", job.label, reason, report.relative_to(self.settings.inbox)
        )
        return JobStatus.FAILED

    def _release(self, job: Job) -> None:
        with self._lock:
            self._claimed.difference_update(job.inputs)
