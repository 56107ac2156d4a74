"""What a live input is: the bytes of its image and companions and the settings it renders
with, as one digest; and the seed it keeps across its edits.

The journal keeps, for each live input, the digest it last rendered and the seed it rendered
with. An export with the same bytes (Photoshop's Generator re-exports every asset when a
document is opened), or a restart, then renders nothing again; and a profile seed of -1 is
drawn once per input, so that a re-render shows the edit and not new noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from daemon.config.profiles import Profile

CHUNK = 1 << 20
RANDOM_SEED = -1  # a profile's "draw one": for a live input, drawn once and kept


def content_digest(inputs: Sequence[Path], settings: Profile) -> str:
    """The files' names and bytes, and the settings they render with."""
    digest = hashlib.sha256(settings.fingerprint())
    for path in inputs:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def kept_seed(asked: int, drawn: int, kept: int | None) -> int:
    """The seed a live input renders with: the one it kept, when its settings ask for a
    random one (-1) and it has rendered before; else the one drawn for this render."""
    return kept if asked == RANDOM_SEED and kept is not None else drawn
