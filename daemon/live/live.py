"""Live inputs (a profile with ``live: true``): an editor exports the same file again and
again, and each export renders again, its result replaced in place.

Every rule of it is here, behind :class:`Live`; the intake, the worker, prepare and the
ledger ask it what live says of a profile or a job, and none of them reads the profile's
``live`` key. The rules:

* **quiet time** (``live_delay``): an input renders once its image and companions have been
  still that long (:mod:`daemon.live.quiet`); the editor's own files beside them (the PSD,
  Generator's ``errors.txt``) are left alone, and a companion changed alone renders its
  image again;
* **content identity and the kept seed**: an input is known by its content; the same content
  does not render twice, and a seed of -1 is drawn once per input and kept
  (:mod:`daemon.live.identity`; remembered in the journal across restarts);
* **superseding**: a newer version of the input being painted stops that painting at its
  next step, and renders next; a live input is therefore painted alone, never in a batch;
* **in-place delivery**: the input stays in the inbox, nothing is archived; its result is
  written at a stable name over the last one (never a ``-1`` copy), and a sub-folder is an
  editor's export folder, not a clip. A broken version stays too: ``<stem>.error.txt``
  beside the result says why until a later version renders;
* **tentative deletes** (``live_grace``): a deleted input may come back (Generator deletes an
  asset before each export); only after the grace is it gone, and its result stays.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from loguru import logger

from daemon.config.profiles import Profile, ProfileStore
from daemon.errors import ConfigError
from daemon.intake.jobs import Job
from daemon.intake.pairing import Companions, image_of_companion, route
from daemon.live.identity import content_digest, kept_seed
from daemon.live.quiet import RENDERS, Stamps, Turn, stamps, turn
from daemon.paths import escaped, output_folder, portable_name
from daemon.render.values import RenderRequest

AFTER_FAILURE = "It renders again at its next export; this report goes away when one succeeds."
"""What a live input's failure report says comes next (it stays where the editor writes)."""


class Memory(Protocol):
    """Where each live input's last render is kept across restarts: the journal."""

    def live_state(self, image: Path) -> tuple[str, int] | None:
        """The content digest and the seed `image` last rendered with."""
        ...

    def live_rendered(self, image: Path, digest: str, seed: int) -> None: ...


def in_place(job: Job) -> bool:
    """Whether `job` is a live input, as its profile said when it was queued: it stays in
    the inbox and its result is replaced in place."""
    return job.live


class Live:
    """The live rules, asked by the main loop (arrivals, quiet time, deletions), the watcher
    thread (a deletion, a change in hand), the reader (content, seed) and the writer (what
    rendered, a failure's report). Its own state (what each input looked like when it last
    became a job, and deletions not final yet) is behind a lock."""

    def __init__(
        self,
        inbox: Path,
        outbox: Path,
        profiles: ProfileStore,
        memory: Memory,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.profiles = profiles
        self.memory = memory
        self._clock = clock  # for deletions
        self._wall_clock = wall_clock  # for mtimes
        self._lock = threading.Lock()
        self._last: dict[Path, Stamps] = {}  # live input -> its files when it last became a job
        self._deleted: dict[Path, float] = {}  # live input -> when it vanished (clock)

    # ----------------------------------------------------------------- which inputs are live

    def watches(self, profile: str) -> bool:
        """Whether profile `profile` is live (not when it is missing or invalid)."""
        settings = self._settings(profile)
        return settings is not None and self.applies(settings)

    @staticmethod
    def applies(settings: Profile) -> bool:
        """Whether a profile's `settings` make its inputs live."""
        return settings.live

    @staticmethod
    def in_place(job: Job) -> bool:
        """`job` is a live input: it stays in the inbox, its result is replaced in place."""
        return in_place(job)

    # ----------------------------------------------------------------- the intake

    def leaves_alone(self, profile: str) -> bool:
        """A file of a type img2imgd does not take, in `profile`'s folder: a live folder
        holds the editor's own files too (the PSD, Generator's ``errors.txt``), so it is left
        where it is rather than failed."""
        return self.watches(profile)

    def renders_again(self, companion: Path, profile: str) -> Path | None:
        """The image to look at again when `companion` (a mask, a sketch, settings) changed
        alone: a live input's, which renders again; None otherwise."""
        return image_of_companion(companion) if self.watches(profile) else None

    def turn(self, image: Path, companions: Companions, settings: Profile) -> Turn:
        """Whether a complete input becomes a job now: always, unless it is live; a live one
        once its files have been quiet for ``live_delay``, and only if one changed since its
        last job (the worker then compares content)."""
        if not self.applies(settings):
            return RENDERS
        shared = companions.shared
        seen = stamps((image, *companions.paths(), *shared))
        with self._lock:
            said = turn(seen, self._last.get(image), settings.live_delay, self._wall_clock())
            if said.renders and seen is not None:
                self._last[image] = seen
        return said

    def vanished(self, path: Path) -> None:
        """Watcher thread: `path` was deleted. A live input may come back (an editor that
        deletes before it exports again); see :meth:`expire`."""
        with self._lock:
            if path in self._last:
                self._deleted.setdefault(path, self._clock())

    def expire(self, now: float | None = None) -> None:
        """Deleted live inputs that did not come back within their profile's ``live_grace``
        are gone; their last result stays in the outbox, and the log says so."""
        now = self._clock() if now is None else now
        with self._lock:
            deleted = list(self._deleted.items())
        for path, since in deleted:
            where = route(self.inbox, path)
            settings = self._settings(where.profile) if where else None
            grace = settings.live_grace if settings is not None else 0.0
            if now - since < grace:
                continue
            with self._lock:
                self._deleted.pop(path, None)
                gone = not path.exists() and self._last.pop(path, None) is not None
            if gone and where is not None:
                logger.info(
                    "{} was deleted and did not come back within {:g} s; its last result "
                    "stays in the outbox", escaped(f"{where.profile}/{where.sub_dir / where.name}"),
                    grace,
                )  # fmt: skip

    # ----------------------------------------------------------------- content and seed

    def identity(self, job: Job) -> str | None:
        """A live input's content (its files and its profile's settings, read now); None for
        any other job. Raises what reading the files or the profile raises."""
        if not self.in_place(job):
            return None
        return content_digest(job.inputs, self.profiles.get(job.profile).settings)

    def unchanged(self, job: Job, digest: str | None) -> bool:
        """Whether `digest` (see :meth:`identity`) is what `job`'s input last rendered."""
        if digest is None:
            return False
        known = self.memory.live_state(job.image)
        return known is not None and known[0] == digest

    def request(self, job: Job, request: RenderRequest) -> RenderRequest:
        """`request` as live renders it: written over the last result, painted alone (a
        newer version may stop it), with the seed the input kept. Others are as they are."""
        if not self.in_place(job):
            return request
        known = self.memory.live_state(job.image)
        seed = kept_seed(request.settings.seed, request.seed, known[1] if known else None)
        settings = request.settings.model_copy(update={"overwrite": True})
        return replace(request, settings=settings, seed=seed, alone=True)

    # ----------------------------------------------------------------- superseding

    def supersedes(self, job: Job, path: Path) -> bool:
        """Whether `path`, changed while `job` is being painted, is a newer version of it:
        then that painting stops at its next step, since only the newest version matters."""
        return self.in_place(job) and path in job.inputs

    # ----------------------------------------------------------------- in-place delivery

    def rendered(self, job: Job, rendered: tuple[str, int] | None) -> None:
        """`job`'s result is in place: remember its content digest and seed (`rendered`),
        and drop the report an earlier, broken version left."""
        if rendered is not None:
            self.memory.live_rendered(job.image, *rendered)
        with contextlib.suppress(FileNotFoundError):
            self.report(job).unlink()

    def report(self, job: Job) -> Path:
        """Where a broken version's report goes: ``<stem>.error.txt`` beside the result, at a
        stable name like the result's."""
        folder = output_folder(self.outbox, job.profile, job.sub_dir)
        return folder / f"{portable_name(job.image.stem)}.error.txt"

    # -----------------------------------------------------------------

    def _settings(self, profile: str) -> Profile | None:
        """`profile`'s settings; None when it is missing or invalid."""
        try:
            return self.profiles.get(profile).settings if self.profiles.exists(profile) else None
        except ConfigError:
            return None
