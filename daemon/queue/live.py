"""Live inputs (a profile with ``live: true``): each export renders again, in place.

An input is known by its content: the bytes of its image and companions, and its profile's
settings. The journal keeps what was last rendered of each live input, with its seed (drawn
once when the profile says -1, so that a re-render shows the edit and not new noise). An
export with the same bytes (Photoshop's Generator re-exports every asset when a document is
opened), or a restart, renders nothing again.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from daemon.config.profiles import Profile
from daemon.intake.jobs import Job
from daemon.journal.journal import Journal
from daemon.prepare.prepare import Prepared

CHUNK = 1 << 20


def content_digest(job: Job, settings: Profile) -> str:
    """What the input is: its files' names and bytes, and the settings it renders with."""
    digest = hashlib.sha256(settings.model_dump_json().encode())
    for path in job.inputs:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def with_kept_seed(prepared: Prepared, journal: Journal) -> Prepared:
    """A profile seed of -1 is drawn once per live input and kept across its edits."""
    if prepared.request.settings.seed != -1:
        return prepared
    known = journal.live_state(prepared.job.image)
    if known is None:
        return prepared
    return replace(prepared, request=replace(prepared.request, seed=known[1]))
