"""What a file name says: image, video, companion, junk, or a frame number.

Pure functions on strings, shared by the whole daemon. Nothing here touches the disk or
imports an image library, so the intake side (watching, stability, pairing) stays light.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import PurePosixPath

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"})
"""Extensions the inbox picks up (A1111's batch list). Decoding itself goes by content."""
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".gif")
"""Videos: split into frames, repainted and joined again (a .gif is a clip, not an image)."""
SETTINGS_EXTENSIONS = frozenset({".yaml", ".yml"})
PARAMETERS_EXTENSION = ".txt"
PROMPT_ENDING = ".prompt.txt"  # <stem>.prompt.txt: the input's prompt (<stem>.txt: parameters)
MASK_FOLDER = "masks"
MASK_MARK = ".mask"  # <stem>.mask.<image extension>
SKETCH_ENDING = ".sketch.png"
CONTROL_MARK = ".control"  # <stem>.control.png: ControlNet unit 0's image; .control-<n>: unit n's
CONTROL_FOLDER = "control"  # control/ (unit 0) and control-<n>/ (unit n): a clip's, by frame
REFERENCE_MARK = ".reference"  # <stem>.reference.png: the input's IP-Adapter reference image
REFERENCE_FOLDER = "reference"  # reference/<one image> in a clip folder: every frame's
_CONTROL_STEM = re.compile(r"^(.*)\.control(?:-(\d{1,3}))?$", re.IGNORECASE)
# <stem>.reference.png, and the edit task's further ones: <stem>.reference-<n>.png
_REFERENCE_STEM = re.compile(r"^(.*)\.reference(?:-(\d{1,3}))?$", re.IGNORECASE)
_CONTROL_FOLDER = re.compile(r"^control(?:-(\d{1,3}))?$", re.IGNORECASE)

# Names that are never inputs: partial downloads and uploads, editor and sync temporaries,
# OS metadata (RELIABILITY.md). Dotfiles and `._*` resource forks are covered by the dot rule.
_JUNK_NAME_PATTERNS = (
    "~$*", "*~", "*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload", "*.filepart",
    "*.download", "~syncthing~*", "thumbs.db", "desktop.ini", "icon\r",
    "*.error.txt",  # our own failure reports, moved back with a file to retry it
)  # fmt: skip
_JUNK_NAME = re.compile("|".join(fnmatch.translate(p) for p in _JUNK_NAME_PATTERNS))
"""All the junk patterns in one expression: names are checked for every file of every folder."""
_JUNK_DIRS = frozenset({"@eadir", "__macosx", "$recycle.bin", "lost+found"})
# Syncthing keeps the extension on conflict copies; they are someone's other version of a
# file, never a new job, so they wait in the inbox for a person (README: "Sync conflicts").
_SYNC_CONFLICT = re.compile(r"\.sync-conflict-\d{8}-\d{6}(-[A-Z0-9]+)?(\.|$)", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")


def is_ignored_name(name: str) -> bool:
    lowered = name.lower()
    if lowered.startswith(".") or _SYNC_CONFLICT.search(name):
        return True
    return _JUNK_NAME.match(lowered) is not None


def is_ignored_dir(name: str) -> bool:
    """Folders never entered: our own ``_done``/``_failed``, hidden and OS metadata folders."""
    return name.startswith(("_", ".", "~")) or name.lower() in _JUNK_DIRS


def is_video(name: str | os.PathLike[str]) -> bool:
    return os.path.splitext(os.fspath(name))[1].lower() in VIDEO_EXTENSIONS


def is_input_name(name: str) -> bool:
    """An image or video name that is not a companion (``.mask.``, ``.sketch.png``)."""
    stem, suffix = os.path.splitext(name.lower())
    if suffix in VIDEO_EXTENSIONS:  # <stem>.control.mp4: a video's control video
        return _CONTROL_STEM.match(stem) is None
    is_companion = (
        stem.endswith(MASK_MARK)
        or f"{stem}{suffix}".endswith(SKETCH_ENDING)
        or _CONTROL_STEM.match(stem) is not None
        or is_reference_stem(stem)
    )
    return suffix in IMAGE_EXTENSIONS and not is_companion


def is_reference_stem(stem: str) -> bool:
    """``a.reference``, ``a.reference-2``: a reference image of input ``a``."""
    return _REFERENCE_STEM.match(stem) is not None


def reference_of_stem(stem: str) -> tuple[str, int] | None:
    """``a.reference`` → (``a``, 0), ``a.reference-2`` → (``a``, 2): whose reference image a
    stem names, and its place; None for any other stem."""
    match = _REFERENCE_STEM.match(stem)
    return (match[1], int(match[2] or 0)) if match else None


def control_of_stem(stem: str) -> tuple[str, int] | None:
    """``a.control`` → (``a``, 0), ``a.control-2`` → (``a``, 2): whose control image a stem
    names, for which unit; None for any other stem."""
    match = _CONTROL_STEM.match(stem)
    return (match[1], int(match[2] or 0)) if match else None


def control_folder_unit(name: str) -> int | None:
    """``control`` → 0, ``control-2`` → 2: the unit a clip's control folder is for."""
    match = _CONTROL_FOLDER.match(name)
    return int(match[1] or 0) if match else None


def is_companion_folder(name: str) -> bool:
    """A clip's ``masks/``, ``control[-<n>]/`` or ``reference/`` folder: companions, never
    inputs."""
    return name in (MASK_FOLDER, REFERENCE_FOLDER) or control_folder_unit(name) is not None


def image_kinds() -> str:
    """The image extensions the inbox takes, for messages: ``.jpeg .jpg .png …``."""
    return " ".join(sorted(IMAGE_EXTENSIONS))


def accepted_kinds() -> str:
    """Every kind of file a profile folder takes, for the report on one it does not: said
    from the names the intake goes by, so that the two cannot disagree."""
    videos = " ".join(sorted(VIDEO_EXTENSIONS))
    settings = " or ".join(f"<name>{extension}" for extension in sorted(SETTINGS_EXTENSIONS))
    return (
        f"images ({image_kinds()}) and videos ({videos}); beside an image, its mask "
        f"(<name>{MASK_MARK}.png or {MASK_FOLDER}/<name>.png, any image extension), its sketch "
        f"(<name>{SKETCH_ENDING}), its ControlNet images (<name>{CONTROL_MARK}.png, "
        f"<name>{CONTROL_MARK}-<n>.png, or {CONTROL_FOLDER}/ by frame), its reference "
        f"images (<name>{REFERENCE_MARK}.png and <name>{REFERENCE_MARK}-<n>.png, or "
        f"{REFERENCE_FOLDER}/ for the folder), "
        f"its settings "
        f"({settings}), its prompt (<name>{PROMPT_ENDING}) and its parameters or caption "
        f"(<name>{PARAMETERS_EXTENSION})"
    )


def is_prompt_name(name: str) -> bool:
    """``a.prompt.txt``: the prompt of input ``a`` (an image named ``a.prompt.png`` cannot
    have a ``<stem>.txt`` of parameters, then: its would be read as ``a``'s prompt)."""
    return name.lower().endswith(PROMPT_ENDING)


def job_stem(name: str) -> str:
    return PurePosixPath(name).stem


def frame_number(name: str) -> int | None:
    """The frame number in a file name: its last run of digits (``frame_0012.png`` → 12)."""
    match = _TRAILING_NUMBER.search(PurePosixPath(name).stem)
    return int(match[1]) if match else None
