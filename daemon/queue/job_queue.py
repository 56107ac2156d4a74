"""The queue between the main loop and the single worker that owns the GPU."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from natsort import natsort_keygen

from daemon.intake.jobs import Job

_natural = natsort_keygen()


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

    def count_similar(self, job: Job) -> int:
        """How many queued jobs :meth:`take_similar` could take along with `job`."""
        folder = job.image.parent
        with self._cond:
            return sum(
                1 for queued in self._jobs
                if queued.image.parent == folder and queued.profile == job.profile
            )  # fmt: skip

    def take_similar(self, job: Job, count: int) -> list[Job]:
        """Up to `count` more queued jobs from `job`'s folder and profile, in natural order:
        the frames of a clip, or images dropped together, to be painted in one call."""
        if count < 1:
            return []
        folder = job.image.parent
        with self._cond:
            similar = sorted(
                (queued for queued in self._jobs
                 if queued.image.parent == folder and queued.profile == job.profile),
                key=lambda queued: self._keys[queued.id],
            )[:count]  # fmt: skip
            for taken in similar:
                self._jobs.remove(taken)
                del self._keys[taken.id]
        return similar

    def wake(self) -> None:
        """Make a waiting ``get`` return now (None if there is no job): the worker has
        something else to do (load a model that arriving files will need)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)
