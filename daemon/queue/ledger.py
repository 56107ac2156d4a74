"""The ledger: which files are in hand, each job's journal states, and how each attempt ended.

A job's inputs are *claimed* from the moment it is queued until it is archived, failed or
left in the inbox, so that the main loop never makes a second job of them and the watcher
ignores our own reads and moves. Every state change goes to the journal (see journal.py for
why the states are what they are) in the order that makes a ``kill -9`` harmless.

A failed attempt is judged by :func:`daemon.errors.classify`: the file's fault sends it to
``_failed`` with a report; the process's or the configuration's fault defers it. A deferred
job keeps its claim and waits here until its retry is due (``Job.attempt`` counts the tries);
``once`` leaves process faults in the inbox for the next run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.atomic import write_text
from daemon.deliver.lifecycle import DONE_FOLDER, archive, fail
from daemon.deliver.outputs import failure_report
from daemon.deliver.results import Delivered
from daemon.errors import Fault, classify
from daemon.intake.jobs import Job, JobStatus
from daemon.intake.names import is_video
from daemon.journal.journal import Journal
from daemon.live.live import AFTER_FAILURE, Live
from daemon.media.video import estimated_frames
from daemon.paths import escaped, shown

MAX_BACKOFF = 600.0  # s, cap on the retry delay for jobs that hit a process fault


@dataclass
class Tally:
    """What happened since start; ``once`` turns it into its exit code."""

    done: int = 0
    failed: int = 0
    deferred: int = 0


class Ledger:
    """Thread-safe: the main loop claims and queues, the worker records the rest."""

    def __init__(
        self,
        inbox: Path,
        outbox: Path,
        journal: Journal,
        live: Live,
        *,
        retry_delay: float,
        stability_delay: float,
        retry_later: bool,
        on_finished: Callable[[Job], None] = lambda job: None,
        on_outcome: Callable[[Job, str, float | None], None] = lambda *_: None,
    ) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.journal = journal
        self.live = live  # whether an input stays, its result replaced in place
        self.retry_delay = retry_delay
        self.stability_delay = stability_delay
        self.retry_later = retry_later  # False for `once`: a process fault waits for the next run
        self.on_finished = on_finished  # a job left the inbox (its clip may be over)
        # Each counted outcome, for the metrics: (job, "done"|"failed"|"deferred", seconds).
        self.on_outcome = on_outcome
        self.tally = Tally()
        self._lock = threading.Lock()
        self._claimed: set[Path] = set()
        self._rows: dict[int, int] = {}  # job id -> journal row
        self._retries: dict[Path, tuple[float, Job]] = {}  # image -> (due, deferred job)

    def count(self, outcome: str, job: Job | None = None, seconds: float | None = None) -> None:
        """One more done, failed or deferred input (the worker and the writer both count;
        `once` counts a file it leaves for later without a job)."""
        with self._lock:
            setattr(self.tally, outcome, getattr(self.tally, outcome) + 1)
        if job is not None:
            self.on_outcome(job, outcome, seconds)

    # ----------------------------------------------------------------- claims

    def claim(self, job: Job) -> bool:
        """Take the job's inputs in hand and journal it as queued; False if one is taken."""
        with self._lock:
            if any(path in self._claimed for path in job.inputs):
                return False
            self._claimed.update(job.inputs)
        frames = estimated_frames(job.image) if is_video(job.image) else None
        self._rows[job.id] = self.journal.queued(job, frames=frames)
        return True

    def holds(self, path: Path) -> bool:
        with self._lock:
            return path in self._claimed

    def release(self, job: Job) -> None:
        """The names are free again: a file dropped under the same name is a new job."""
        with self._lock:
            self._claimed.difference_update(job.inputs)

    def not_started(self, job: Job) -> None:
        """A job taken but not painted when the daemon stops: it stays in the inbox."""
        self._finished(job, JobStatus.INTERRUPTED, "the daemon stopped before it was painted")
        self.release(job)

    def in_hand(self) -> set[Path]:
        with self._lock:
            return set(self._claimed)

    def due_retries(self, now: float) -> list[Job]:
        """Deferred jobs whose time has come, to be queued again (still claimed)."""
        with self._lock:
            due = [job for at, job in self._retries.values() if at <= now]
            for job in due:
                del self._retries[job.image]
        return due

    # ----------------------------------------------------------------- the journal

    def running(self, job: Job) -> None:
        self._journal(job, lambda journal, row: journal.running(row))
        # Make the archive folder now, not just before the move: watchdog only watches a new
        # folder once it has handled its creation, and a move into a folder it does not know
        # yet stalls its event queue for 0.5 s (an unpaired move), delaying the next drop.
        with contextlib.suppress(OSError):
            (self.inbox / DONE_FOLDER / job.profile / job.sub_dir).mkdir(
                parents=True, exist_ok=True
            )

    def frames(self, job: Job, frames: int) -> None:
        """The video `job` has `frames` frames, counted (``status`` counts the work by them)."""
        self._journal(job, lambda journal, row: journal.frames(row, frames))

    def dispatched(self, jobs: list[Job], worker: str, positions: Sequence[int]) -> None:
        """``jobs[positions]`` were sent to a render worker (``executor: ray``); after a
        restart they run again."""
        for position in positions:
            job = jobs[position]
            self._journal(job, lambda journal, row: journal.dispatched(row, worker))

    def unfinished(self, job: Job) -> bool:
        """Not finished yet: a result for a finished job is a duplicate (at-least-once)."""
        return job.id in self._rows

    def planned(self, job: Job, outputs: list[Path]) -> None:
        """Just before the first output is written: recovery rolls back a half group."""
        self._journal(job, lambda journal, row: journal.writing(row, outputs))

    def _journal(self, job: Job, write: Callable[[Journal, int], None]) -> None:
        row = self._rows.get(job.id)
        if row is not None:
            write(self.journal, row)

    def _finished(
        self, job: Job, state: JobStatus, reason: str = "", seconds: float | None = None
    ) -> None:
        row = self._rows.pop(job.id, None)
        if row is not None:
            self.journal.finished(row, state, reason=reason, seconds=seconds)

    # ----------------------------------------------------------------- how an attempt ended

    def done(
        self,
        job: Job,
        delivered: Delivered,
        seconds: float,
        *,
        rendered: tuple[str, int] | None = None,
    ) -> JobStatus:
        """`rendered`: a live input's content digest and seed, kept instead of archiving."""
        if self.live.in_place(job):  # it stays: no `written` step (recovery would archive it)
            self.live.rendered(job, rendered)
        else:
            self._journal(job, lambda journal, row: journal.written(row))
            try:
                archive(job, self.inbox)
            except OSError as exc:  # the results exist; the input stays, a rerun adds -1 copies
                logger.error(
                    "{}: results written but the input could not be archived: {}", job.label, exc
                )
        self.release(job)
        for note in delivered.notes:
            logger.info("{}: {}", job.label, note)
        names = ", ".join(
            escaped(str(path.relative_to(self.outbox)))
            for path in delivered.outputs
            if path.suffix != ".txt"
        )
        progress = f" {delivered.progress}" if delivered.progress else ""
        logger.success("done {} → {} ({:.1f} s){}", job.label, names, seconds, progress)
        self.on_finished(job)
        self._finished(job, JobStatus.DONE, seconds=seconds)
        self.count("done", job, seconds)
        return JobStatus.DONE

    def attempt_failed(self, job: Job, error: Exception) -> JobStatus:
        verdict = classify(error, attempt=job.attempt, age=_age(job.image), name=job.image.name)
        if verdict.fault is Fault.INPUT:
            return self.failed(job, verdict.reason, error)
        if not verdict.foreseen:  # a bug, or something nobody thought of: keep the traceback
            logger.opt(exception=error).error("{}: unexpected error", job.label)
        delay = max(self.stability_delay, 0.2) * 2 if verdict.retry_soon else None
        return self.defer(job, verdict.reason, delay=delay)

    def skipped(self, job: Job, reason: str) -> None:
        """Nothing to do for `job` (`reason`: a live input unchanged since its last render)."""
        self._finished(job, JobStatus.DONE, reason)
        self.release(job)
        logger.info("{}: {}; nothing to do", job.label, reason)

    def superseded(self, job: Job) -> None:
        """A live input's render was stopped for a newer version, which renders next."""
        self._finished(job, JobStatus.INTERRUPTED, "a newer version arrived")
        self.release(job)
        logger.info("{}: a newer version arrived; it renders next", job.label)

    def _failed_in_place(self, job: Job, reason: str, error: BaseException | None) -> JobStatus:
        """A live input's version is broken: the editor will overwrite it, so it stays; the
        report goes beside the last good result, which stays too."""
        report = self.live.report(job)
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            text = failure_report(reason, error, job_name=job.label, next_step=AFTER_FAILURE)
            write_text(report, text)
        except OSError as exc:
            logger.error("{}: could not write its report {}: {}", job.label, shown(report), exc)
        self.release(job)
        self._finished(job, JobStatus.FAILED, reason)
        self.count("failed", job)
        logger.error(
            "FAILED {}: {} (report: {}; the last good result stays, and the next export "
            "renders again)", job.label, reason, shown(report),
        )  # fmt: skip
        return JobStatus.FAILED

    def failed(self, job: Job, reason: str, error: BaseException | None) -> JobStatus:
        """The file's fault: the report and the inputs go to ``_failed``."""
        reason = escaped(reason)  # it names the file, whose name may hold control characters
        if self.live.in_place(job):
            return self._failed_in_place(job, reason, error)
        self._journal(job, lambda journal, row: journal.failing(row, reason))
        try:
            report = fail(job, self.inbox, reason, error)
        except OSError as exc:
            logger.error(
                "{}: failed ({}), and could not be moved to _failed: {}", job.label, reason, exc
            )
            return self.defer(job, "could not move the failed input")
        self.release(job)
        self._finished(job, JobStatus.FAILED, reason)
        self.on_finished(job)
        self.count("failed", job)
        logger.error("FAILED {}: {} (report: {})", job.label, reason, shown(report))
        return JobStatus.FAILED

    def defer(self, job: Job, reason: str, *, delay: float | None = None) -> JobStatus:
        """Leave the input in the inbox and try it again later (``delay`` None: back off)."""
        reason = escaped(reason)
        self._finished(job, JobStatus.DEFERRED, reason)
        if delay is None:
            self.count("deferred", job)
            if not self.retry_later:  # `once`: the next run tries again
                self.release(job)
                logger.warning("{}: not done, left in the inbox: {}", job.label, reason)
                return JobStatus.DEFERRED
            delay = min(self.retry_delay * 2**job.attempt, MAX_BACKOFF)
        logger.warning("{}: {}; retrying in {:.1f} s", job.label, reason, delay)
        with self._lock:
            self._retries[job.image] = (time.monotonic() + delay, job.retry())
        return JobStatus.DEFERRED

    def refused(self, job: Job, reason: str) -> None:
        """A file no job can be made of (an unsupported type): straight to ``_failed``."""
        if self.claim(job):
            self.failed(job, reason, None)


def _age(path: Path) -> float | None:
    """Seconds since `path` was last written; None when it cannot be told."""
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return None
