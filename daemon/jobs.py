"""Jobs and the queue between the main loop and the single worker that owns the GPU."""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from natsort import natsort_keygen

from daemon.pairing import Companions

_ids = itertools.count(1)
_natural = natsort_keygen()


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WRITING = "writing"  # outputs are being renamed into place (see journal.py)
    WRITTEN = "written"  # every output is in place; the input is not archived yet
    DONE = "done"
    FAILING = "failing"  # being moved to _failed (see journal.py)
    FAILED = "failed"  # the input's fault: moved to _failed
    DEFERRED = "deferred"  # the process's fault: input left in the inbox, retried later
    INTERRUPTED = "interrupted"  # the process stopped while it was in hand; it runs again


@dataclass(frozen=True)
class Job:
    """One input image and its companions, routed to a profile."""

    profile: str
    image: Path
    sub_dir: PurePosixPath
    companions: Companions = field(default_factory=Companions)
    attempt: int = 0
    id: int = field(default_factory=lambda: next(_ids))
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.image, *self.companions.paths())

    @property
    def label(self) -> str:
        return str(PurePosixPath(self.profile, self.sub_dir, self.image.name))

    def retry(self) -> Job:
        return replace(self, attempt=self.attempt + 1)


class JobQueue:
    """FIFO of jobs with a set of the paths it holds, so no path is ever queued twice."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._keys: dict[int, Any] = {}  # job id -> natural sort key of its name
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: Job) -> None:
        key = _natural(job.image.name)  # computed once: a burst of 1000 frames compares often
        with self._cond:
            self._jobs.append(job)
            self._keys[job.id] = key
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Job | None:
        """The next job, or None when closed or on time-out.

        Jobs run in arrival order, except that within one folder the frames of a clip run
        in natural order (``frame_2`` before ``frame_10``) whatever order they arrived in.
        """
        with self._cond:
            if not self._jobs and not self._closed:
                self._cond.wait(timeout)
            if not self._jobs:
                return None
            folder = self._jobs[0].image.parent
            chosen = min(
                (job for job in self._jobs if job.image.parent == folder),
                key=lambda job: self._keys[job.id],
            )
            self._jobs.remove(chosen)
            del self._keys[chosen.id]
            return chosen

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    def snapshot(self) -> list[Job]:
        with self._cond:
            return list(self._jobs)
