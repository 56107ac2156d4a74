"""A job: one input and its companions, routed to a profile; and the states it goes through."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from daemon.intake.pairing import Companions
from daemon.paths import escaped

_ids = itertools.count(1)


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DISPATCHED = "dispatched"  # sent to a render worker elsewhere (executor: ray)
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
    live: bool = False  # its profile was live when queued (read through daemon/live only)
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.image, *self.companions.paths())

    @property
    def label(self) -> str:
        """``profile/sub-path/name`` for people (log, journal, ``status``, reports), escaped:
        a name may hold a newline or a terminal escape sequence."""
        return escaped(str(PurePosixPath(self.profile, self.sub_dir, self.image.name)))

    def retry(self) -> Job:
        return replace(self, attempt=self.attempt + 1)

    def renewed(self, companions: Companions) -> Job:
        """The same input as a new job (a new id: a new journal row), with `companions` as
        they are now."""
        return replace(self, companions=companions, id=next(_ids))
