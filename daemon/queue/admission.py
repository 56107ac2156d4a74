"""The main loop's side: complete files become jobs, with their companions, in the queue.

A file the stability tracker reports complete is routed to its profile and paired with its
companions (mask, sketch, settings, parameters). An image whose profile needs a companion
that is not there yet, or whose companion is still being written, waits up to the pairing
window. A file that cannot become a job yet (no profile, an invalid profile) is looked at
again later; a file of a type img2imgd does not handle goes to ``_failed`` at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger
from natsort import natsorted

from daemon.config.profiles import ProfileStore
from daemon.config.settings import Settings
from daemon.errors import ConfigError
from daemon.intake.jobs import Job
from daemon.intake.names import IMAGE_EXTENSIONS
from daemon.intake.pairing import Kind, classify, companions_on_disk, route
from daemon.intake.stability import StabilityTracker
from daemon.intake.watcher import walk_files
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger


class Admission:
    """Used by the main loop (and the rescan); the watcher thread only calls :meth:`noticed`."""

    def __init__(
        self,
        settings: Settings,
        profiles: ProfileStore,
        tracker: StabilityTracker,
        ledger: Ledger,
        queue: JobQueue,
        *,
        hold_files: bool,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.tracker = tracker
        self.ledger = ledger
        self.queue = queue
        self.hold_files = hold_files  # False for `once`: what cannot run now is left for later
        self.on_job_queued = lambda job: None
        self.on_arrival: Callable[[str], None] = lambda profile: None  # a file for a profile
        self._lock = threading.Lock()
        self._waiting: dict[Path, float] = {}  # image -> deadline for a required companion
        self._said: set[str] = set()  # warnings already logged once

    def noticed(self, path: Path, closed: bool) -> None:
        """Watcher thread: only record the path (our own reads and moves are ignored)."""
        if not self.ledger.holds(path):
            self.tracker.touch(path, closed=closed)
            self._arrived(path)

    def rescan(self) -> None:
        """Catch what the watcher missed (dropped events, network shares, start-up)."""
        if not self.settings.inbox.is_dir():
            return  # gone (unmounted share): the service says so and re-arms on return
        in_hand = self.ledger.in_hand()
        with self._lock:
            in_hand.update(self._waiting)
        for path in walk_files(self.settings.inbox):
            if path not in in_hand and path not in self.tracker:
                self.tracker.touch(path)
                self._arrived(path)

    def step(self, now: float | None = None) -> None:
        """Complete files → jobs; images waiting for companions looked at again; deferred
        jobs whose retry is due queued again."""
        for path in natsorted(self.tracker.poll(), key=str):
            self.consider(path)
        now = time.monotonic() if now is None else now
        with self._lock:
            waiting = list(self._waiting.items())
        for path, deadline in waiting:
            self.consider(path, deadline=deadline, now=now)
        for job in self.ledger.due_retries(now):
            self._requeue(job)

    def _arrived(self, path: Path) -> None:
        where = route(self.settings.inbox, path)
        if where is not None and self.profiles.exists(where.profile):
            self.on_arrival(where.profile)

    def idle(self) -> bool:
        with self._lock:
            waiting = bool(self._waiting)
        return not waiting and len(self.tracker) == 0 and len(self.queue) == 0

    def waiting(self) -> set[Path]:
        """Images waiting for a companion (a mask or sketch their profile needs)."""
        with self._lock:
            return set(self._waiting)

    def busy_folders(self) -> set[Path]:
        """Folders with an input in hand or waiting for a companion."""
        with self._lock:
            waiting = {path.parent for path in self._waiting}
        return waiting | {path.parent for path in self.ledger.in_hand()}

    def say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.warning(message)

    def consider(
        self, path: Path, *, deadline: float | None = None, now: float | None = None
    ) -> None:
        where = route(self.settings.inbox, path)
        if where is None or self.ledger.holds(path):
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
            self.say_once(
                f"no-profile:{where.profile}",
                f"inbox/{where.profile}/ holds files but there is no profiles/{where.profile}.yaml;"
                " they wait until there is (or move them to a profile folder)",
            )
            self._hold(path, self.settings.rescan_interval)
            return
        try:
            profile = self.profiles.get(where.profile).settings
        except ConfigError as exc:
            self.say_once(
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
        job = Job(profile=where.profile, image=path, sub_dir=where.sub_dir, companions=companions)
        with self._lock:
            self._waiting.pop(path, None)
        if not self.ledger.claim(job):
            return  # a companion already belongs to a job in hand
        for companion in companions.paths():
            self.tracker.forget(companion)
        self.queue.put(job)
        self.on_job_queued(job)

    def _requeue(self, job: Job) -> None:
        """A deferred job's turn again, with the companions that are there now."""
        if not job.image.exists() and not job.image.is_symlink():
            self.ledger.release(job)
            logger.info("{}: left the inbox while it waited for its retry", job.label)
            return
        companions = companions_on_disk(job.image)
        self.ledger.release(job)
        retry = Job(job.profile, job.image, job.sub_dir, companions, attempt=job.attempt)
        if self.ledger.claim(retry):
            self.queue.put(retry)

    def _hold(self, path: Path, seconds: float) -> None:
        """A file that cannot become a job yet: look again later; ``once`` does not wait, the
        file stays in the inbox and counts as left for later."""
        if self.hold_files:
            self.tracker.touch(path, not_before=time.monotonic() + seconds)
        else:
            self.ledger.count("deferred")

    def _refuse_unsupported(self, path: Path, profile: str) -> None:
        where = route(self.settings.inbox, path)
        assert where is not None
        kinds = " ".join(sorted(IMAGE_EXTENSIONS))
        self.ledger.refused(
            Job(profile=profile, image=path, sub_dir=where.sub_dir),
            f"{path.name} is not a file type img2imgd handles (images: {kinds}; "
            "companions: .yaml settings, .txt parameters)",
        )
