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

from daemon.config.profiles import Profile, ProfileStore
from daemon.config.settings import Settings
from daemon.errors import ConfigError
from daemon.intake.jobs import Job
from daemon.intake.names import accepted_kinds
from daemon.intake.pairing import Kind, classify, companions_on_disk, route
from daemon.intake.stability import StabilityTracker, already_settled
from daemon.intake.watcher import walk_files
from daemon.live.live import Live
from daemon.paths import escaped, shown
from daemon.queue.job_queue import JobQueue
from daemon.queue.ledger import Ledger
from daemon.render.availability import MISSING_RECHECK, ModelReadiness
from daemon.tasks.registry import task_of


class SaidOnce:
    """Warnings logged once, by key, until forgotten: a file that waits is looked at again
    and again, and its reason would otherwise fill the log."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def say(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.warning(message)

    def forget(self, key: str) -> None:
        self._said.discard(key)


class Admission:
    """Used by the main loop (and the rescan); the watcher thread only calls :meth:`noticed`."""

    def __init__(
        self,
        settings: Settings,
        profiles: ProfileStore,
        tracker: StabilityTracker,
        ledger: Ledger,
        queue: JobQueue,
        live: Live,
        *,
        hold_files: bool,
        said: SaidOnce,
        on_job_queued: Callable[[Job], None] = lambda job: None,
        on_arrival: Callable[[str], None] = lambda profile: None,
        on_change_in_hand: Callable[[Path], None] = lambda path: None,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self.tracker = tracker
        self.ledger = ledger
        self.queue = queue
        self.live = live  # what live says of a profile's files (quiet time, deletions)
        self.hold_files = hold_files  # False for `once`: what cannot run now is left for later
        self.said = said  # warnings logged once (shared with the worker's processing hours)
        self.on_job_queued = on_job_queued
        self.on_arrival = on_arrival  # a file for a profile
        self.on_change_in_hand = on_change_in_hand  # a newer version of a file in hand
        self._lock = threading.Lock()
        self._waiting: dict[Path, float] = {}  # image -> deadline for a required companion
        self._changed_in_hand: set[Path] = set()  # changed while a job had it in hand
        self.models = ModelReadiness(settings)
        # `once`: why files were left in the inbox, by profile (said again at the end)
        self.left_waiting: dict[str, str] = {}

    def noticed(self, path: Path, closed: bool) -> None:
        """Watcher thread: only record the path (our own reads and moves are ignored; a file
        in hand that changes is looked at again once it is released: a live input's new
        version)."""
        if self.ledger.holds(path):
            with self._lock:
                self._changed_in_hand.add(path)
            self.on_change_in_hand(path)
            return
        if not path.exists() and not path.is_symlink():  # deleted (an editor re-exporting?)
            self.live.vanished(path)
            return
        where = route(self.settings.inbox, path)
        # A live input waits for its profile's quiet time (live_delay, by mtime: see
        # Live.turn), not for the stability delay: an export renamed in from another
        # folder arrives as a plain "created" event, without the close that marks it whole.
        quiet_decides = where is not None and self.live.watches(where.profile)
        self.tracker.touch(path, closed=closed or quiet_decides)
        self._arrived(path)

    def rescan(self) -> None:
        """Catch what the watcher missed (dropped events, network shares, start-up)."""
        if not self.settings.inbox.is_dir():
            return  # gone (unmounted share): the service says so and re-arms on return
        in_hand = self.ledger.in_hand()
        with self._lock:
            in_hand.update(self._waiting)
        found = [p for p in walk_files(self.settings.inbox) if p not in in_hand]
        found = [p for p in found if p not in self.tracker]
        # Files that stopped changing long ago and that no process is writing have waited
        # already (start-up after a while, a missed event): one /proc walk for all of them.
        settled = already_settled(found, self.tracker.delay, now=time.time())
        for path in found:
            if path in settled:
                self.tracker.settled(path, *settled[path])
            else:
                self.tracker.touch(path)
            self._arrived(path)

    def profile_added(self, name: str) -> None:
        """A profile appeared: the files that waited for it go now, not at the next rescan."""
        for path in walk_files(self.settings.inbox / name):
            if not self.ledger.holds(path):
                self.tracker.forget(path)  # held until the next rescan: looked at afresh
        self.said.forget(f"no-profile:{name}")  # said again if it goes away again
        self.rescan()

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
        with self._lock:
            released = {p for p in self._changed_in_hand if not self.ledger.holds(p)}
            self._changed_in_hand -= released
        for path in released:  # complete once released: only a live input's quiet time counts
            self.tracker.touch(path, closed=True)
        self.live.expire(now)  # deleted live inputs that did not come back

    def _arrived(self, path: Path) -> None:
        where = route(self.settings.inbox, path)
        if where is not None and self.profiles.exists(where.profile):
            self.on_arrival(where.profile)

    def idle(self) -> bool:
        with self._lock:  # (a file changed in hand is looked at once released: not idle)
            waiting = bool(self._waiting) or bool(self._changed_in_hand)
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

    def consider(
        self, path: Path, *, deadline: float | None = None, now: float | None = None
    ) -> None:
        where = route(self.settings.inbox, path)
        if where is None or self.ledger.holds(path):
            return
        kind = classify(where)
        if kind is Kind.UNSUPPORTED:
            if not self.live.leaves_alone(where.profile):
                self._refuse_unsupported(path, where.profile)
            return
        if kind is not Kind.IMAGE:
            image = self.live.renders_again(path, where.profile)
            if image is not None:
                self.tracker.touch(image, closed=True)
            return  # a companion: it travels with its image
        if not path.exists() and not path.is_symlink():
            with self._lock:
                self._waiting.pop(path, None)
            return
        if not self.profiles.exists(where.profile):
            folder = shown(self.settings.inbox / where.profile)
            profile_file = shown(self.settings.profiles / f"{where.profile}.yaml")
            self.said.say(
                f"no-profile:{where.profile}",
                f"{folder}/ holds files but there is no {profile_file}; they wait until there "
                "is (or move them to a profile folder)",
            )
            self._hold(
                path,
                self.settings.rescan_interval,
                where.profile,
                "there is no profile of that name",
            )
            return
        try:
            profile = self.profiles.get(where.profile).settings
        except ConfigError as exc:
            self._say_invalid(where.profile, exc)
            self._hold(
                path,
                min(self.settings.retry_delay, 5.0),
                where.profile,
                f"profile {where.profile} is invalid ({exc})",
            )
            return
        absent = self.absent_models(where.profile, profile)
        if absent:
            self._hold(path, MISSING_RECHECK, where.profile, "; ".join(absent))
            return
        companions = companions_on_disk(path)
        now = time.monotonic() if now is None else now
        shared = companions.shared
        still_writing = [c for c in (*companions.paths(), *shared) if c in self.tracker]
        missing = (
            task_of(profile).companions.missing(companions) is not None
            or any(companions.control(unit) is None for unit in profile.awaited_controls)
            or (profile.awaits_reference and companions.reference is None)
        )
        if still_writing or missing:
            deadline = deadline if deadline is not None else now + self.settings.pairing_window
            if still_writing or now < deadline:
                with self._lock:
                    self._waiting[path] = deadline
                return
        turn = self.live.turn(path, companions, profile)
        if turn.again_in is not None:  # complete, not quiet yet: look again when it may be
            self.tracker.touch(path, closed=True, not_before=time.monotonic() + turn.again_in)
        if not turn.renders:
            return
        job = Job(
            profile=where.profile, image=path, sub_dir=where.sub_dir, companions=companions,
            live=self.live.applies(profile),
        )  # fmt: skip
        with self._lock:
            self._waiting.pop(path, None)
        if not self.ledger.claim(job):
            return  # a companion already belongs to a job in hand
        for companion in companions.paths():
            self.tracker.forget(companion)
        self.queue.put(job)
        self.on_job_queued(job)

    def absent_models(self, name: str, profile: Profile) -> list[str]:
        """The models profile `name` names that are not on disk, each said once."""
        absent = self.models.problems(name, profile)
        for problem in absent:
            self.said.say(
                f"missing:{name}:{problem}",
                f"profile {name}: {problem}. Its files wait in the inbox and go as soon as "
                "it is there",
            )
        return absent

    def announce_waiting_profiles(self, names: list[str]) -> None:
        """At start-up: say which profiles cannot run yet (invalid, or waiting for a model),
        before any file arrives; said once, so their files do not say it again."""
        for name in names:
            try:
                profile = self.profiles.get(name).settings
            except ConfigError as exc:
                self._say_invalid(name, exc)
                continue
            self.absent_models(name, profile)

    def _say_invalid(self, name: str, exc: ConfigError) -> None:
        self.said.say(
            f"bad-profile:{name}:{exc}",
            f"profile {escaped(name)} is invalid: its files wait in the inbox until it is "
            f"fixed (a fix is picked up when saved, no restart): {exc}",
        )

    def _requeue(self, job: Job) -> None:
        """A deferred job's turn again, with the companions that are there now."""
        if not job.image.exists() and not job.image.is_symlink():
            self.ledger.release(job)
            logger.info("{}: left the inbox while it waited for its retry", job.label)
            return
        companions = companions_on_disk(job.image)
        self.ledger.release(job)
        retry = job.renewed(companions)  # a new id: a new journal row
        if self.ledger.claim(retry):
            self.queue.put(retry)

    def _hold(self, path: Path, seconds: float, profile: str, why: str) -> None:
        """A file that cannot become a job yet: look again later; ``once`` does not wait, the
        file stays in the inbox and counts as left for later, with `why`."""
        if self.hold_files:
            self.tracker.touch(path, not_before=time.monotonic() + seconds)
        else:
            self.left_waiting.setdefault(profile, why)
            self.ledger.count("deferred")

    def _refuse_unsupported(self, path: Path, profile: str) -> None:
        where = route(self.settings.inbox, path)
        assert where is not None
        self.ledger.refused(Job(profile=profile, image=path, sub_dir=where.sub_dir),
                            _unsupported_reason(path))  # fmt: skip


def _unsupported_reason(path: Path) -> str:
    """A link is refused as a link, whatever it points at (the watcher never enters a linked
    folder, so one arrives here as a file); anything else by what is taken instead."""
    name = shown(path.name)
    if path.is_symlink():
        what = "folder" if path.is_dir() else "file"  # a stat of the target, nothing read
        return (
            f"{name} is a symbolic link to a {what}; links are never followed, copy the "
            f"{what} itself into the inbox"
        )
    return (
        f"{name} is not a file type img2imgd handles. A profile folder takes "
        f"{accepted_kinds()}. Convert it, or keep it out of the inbox."
    )
