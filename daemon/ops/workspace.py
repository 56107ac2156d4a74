"""The folders ``img2imgd init`` sets up beside img2imgd.yaml: inbox, outbox and profiles.

A ``pip install`` has no checkout, so the shipped profiles are copied out of the package
(``daemon/data/profiles``). Idempotent: what exists is left as it is, profiles included,
because the user may have edited them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SHIPPED_PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
FOLDERS = ("inbox", "outbox")


def set_up_folders(root: Path, *, shipped: Path = SHIPPED_PROFILES) -> list[Path]:
    """Create ``inbox/``, ``outbox/`` and ``profiles/`` (with the shipped profiles) under
    ``root``; returns what was made, folders and files, nothing when all was there."""
    made: list[Path] = []
    for name in FOLDERS:
        folder = root / name
        if not folder.exists():
            folder.mkdir(parents=True)
            made.append(folder)
    profiles = root / "profiles"
    if profiles.exists():
        return made  # the user's own profiles: never topped up, an edit could be a deletion
    profiles.mkdir(parents=True)
    made.append(profiles)
    for source in sorted(shipped.glob("*.yaml")):
        target = profiles / source.name
        shutil.copyfile(source, target)
        made.append(target)
    return made
