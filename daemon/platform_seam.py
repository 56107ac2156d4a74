"""What differs between Linux, Windows and macOS for a hot folder, looked up in one place.

The real daemon takes :data:`PLATFORM` from ``sys.platform``. The Windows and macOS
simulation (tests/test_windows_sim.py) sets it before the daemon starts, so that code paths
which only those systems take run on Linux too; nothing here imports a Unix-only module.
See ../shared/PLATFORMS.md for the facts each field stands for.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Platform:
    name: str
    # inotify reports a writer's close; ReadDirectoryChangesW and FSEvents never do, so
    # only size/mtime quiet time tells that a file is whole.
    close_events: bool
    # Windows and default macOS volumes: `Cat.png` and `cat.png` are one file.
    case_insensitive_names: bool
    # Windows refuses paths over 260 characters unless long paths are enabled system-wide.
    max_path: int | None


LINUX = Platform("linux", close_events=True, case_insensitive_names=False, max_path=None)
WINDOWS = Platform("windows", close_events=False, case_insensitive_names=True, max_path=260)
MACOS = Platform("macos", close_events=False, case_insensitive_names=True, max_path=None)


def for_system(system: str) -> Platform:
    """The platform a ``sys.platform`` value names (anything not Windows or macOS: Linux)."""
    if system.startswith(("win32", "cygwin")):
        return WINDOWS
    return MACOS if system == "darwin" else LINUX


PLATFORM = for_system(sys.platform)


def current() -> Platform:
    """Looked up at each call, so that a simulation that sets :data:`PLATFORM` is obeyed."""
    return PLATFORM


def name_key(name: str) -> str:
    """`name` as the file system compares it."""
    return name.casefold() if current().case_insensitive_names else name


def name_taken(folder: Path, name: str) -> bool:
    """Is `name` taken in `folder`, as this platform compares names? On a case-insensitive
    system `cat.png` is taken by `Cat.png` (which a case-sensitive Linux folder, such as the
    simulation's, would not say)."""
    target = folder / name
    if target.exists() or target.is_symlink():
        return True
    if not current().case_insensitive_names:
        return False
    try:
        entries = os.listdir(folder)
    except OSError:
        return False
    key = name_key(name)
    return any(name_key(entry) == key for entry in entries)


NAME_MAX = 255  # bytes in one name on ext4 and APFS, UTF-16 units on NTFS: bytes is stricter


def fit_stem(folder: Path, stem: str, *, room: int) -> str:
    """`stem`, shortened where needed so that ``folder/stem`` plus `room` more characters (a
    ``-N`` tag and the longest suffix) fits one name's limit and, on Windows, ``MAX_PATH``.
    The start and the last characters are kept (numbered frames and batches differ at the
    end), joined by ``~``. A folder too long already is left to fail as a storage error."""
    limit = NAME_MAX - room
    max_path = current().max_path
    if max_path is not None:
        limit = min(limit, max_path - 1 - len(str(folder)) - 1 - room)
    limit = max(limit, 16)
    if len(stem) <= limit and len(stem.encode("utf-8", "surrogateescape")) <= NAME_MAX - room:
        return stem
    tail = stem[-8:]
    head = stem[: limit - len(tail) - 1]
    while len(f"{head}~{tail}".encode("utf-8", "surrogateescape")) > NAME_MAX - room:
        head = head[:-1]
    return f"{head.rstrip(' .')}~{tail}"
