"""What a path in the inbox is, which profile it belongs to, and which files go with it.

Pure functions on names: nothing here touches the disk except ``companions_on_disk``, which
lists one folder. The folder contract:

* ``inbox/<profile>/<sub-path>/<stem>.<image ext>`` is a job for ``profiles/<profile>.yaml``;
* ``<stem>.mask.<image ext>`` or ``masks/<stem>.<image ext>`` is its inpaint mask;
* ``<stem>.sketch.png`` is its scribble layer; ``<stem>.yaml`` its per-image settings;
* folders starting with ``_`` or ``.`` (``_done``, ``_failed``) are never profiles or jobs;
* temporaries and junk that editors and sync tools leave are ignored.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.intake.names import (
    IMAGE_EXTENSIONS,
    MASK_FOLDER,
    MASK_MARK,
    PARAMETERS_EXTENSION,
    SETTINGS_EXTENSIONS,
    SKETCH_ENDING,
    VIDEO_EXTENSIONS,
    frame_number,
    is_ignored_dir,
    is_ignored_name,
    is_input_name,
    job_stem,
)


class Kind(enum.Enum):
    IMAGE = "image"
    MASK = "mask"
    SKETCH = "sketch"
    SETTINGS = "settings"
    PARAMETERS = "parameters"  # <stem>.txt: an infotext or a caption, for use_png_info
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Route:
    """Where an inbox file belongs: ``inbox/<profile>/<sub_dir>/<name>``."""

    profile: str
    sub_dir: PurePosixPath
    name: str

    @property
    def stem(self) -> str:
        return job_stem(self.name)


def route(inbox: Path, path: Path) -> Route | None:
    """The profile and sub-path of ``path``, or None when it is not an input at all."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return None
    if len(parts) < 2 or any(is_ignored_dir(part) for part in parts[:-1]):
        return None
    if is_ignored_name(parts[-1]):
        return None
    return Route(profile=parts[0], sub_dir=PurePosixPath(*parts[1:-1]), name=parts[-1])


def classify(where: Route) -> Kind:
    name = where.name.lower()
    suffix = PurePosixPath(name).suffix
    if suffix in SETTINGS_EXTENSIONS:
        return Kind.SETTINGS
    if suffix == PARAMETERS_EXTENSION:
        return Kind.PARAMETERS
    if suffix in VIDEO_EXTENSIONS:
        return Kind.IMAGE  # a job of its own, like an image
    if suffix not in IMAGE_EXTENSIONS:
        return Kind.UNSUPPORTED
    if where.sub_dir.name == MASK_FOLDER or PurePosixPath(name).stem.endswith(MASK_MARK):
        return Kind.MASK
    if name.endswith(SKETCH_ENDING):
        return Kind.SKETCH
    return Kind.IMAGE


def pending_images(folder: Path, *, exclude: Path | None = None) -> Iterator[Path]:
    """The inputs (images and videos, not companions) waiting in `folder` itself, lazily:
    ``any(pending_images(f))`` stops at the first one. Called after every frame of a clip
    of thousands, so names are checked as strings, without building paths."""
    if folder.name == MASK_FOLDER:
        return
    skip = str(exclude) if exclude is not None else None
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if is_input_name(name) and entry.path != skip and not is_ignored_name(name):
                    yield Path(entry.path)
    except OSError:
        return


@dataclass(frozen=True)
class Companions:
    mask: Path | None = None
    sketch: Path | None = None
    settings: Path | None = None
    parameters: Path | None = None  # <stem>.txt
    mask_shared: bool = False  # the only file in masks/: it serves every image of the folder

    def has(self, kind: Kind) -> bool:
        """Whether the companion of `kind` (a mask, a sketch …) is among these."""
        found = {Kind.MASK: self.mask, Kind.SKETCH: self.sketch, Kind.SETTINGS: self.settings,
                 Kind.PARAMETERS: self.parameters}.get(kind)  # fmt: skip
        return found is not None

    def paths(self) -> tuple[Path, ...]:
        """The files that belong to this image alone (they move with it); a shared mask
        stays for the folder's other images."""
        mask = None if self.mask_shared else self.mask
        found = (mask, self.sketch, self.settings, self.parameters)
        return tuple(p for p in found if p is not None)


def find_companions(image: Path, names: set[str], mask_names: set[str]) -> Companions:
    """Companions of ``image`` among the names in its folder and in its ``masks/`` folder.

    A mask next to the image wins over one in ``masks/``. In ``masks/`` (A1111's batch mask
    folder) the mask is the file with the image's stem; else, when the folder holds a single
    image, that one for every image; else the one with the same trailing frame number
    (``frame_0012.png`` ↔ ``mask_12.png``). Matching is case-insensitive on the extension
    because Windows tools write ``.PNG``.
    """
    stem = job_stem(image.name)
    folder = image.parent
    by_lower = {name.lower(): name for name in names}

    def first(candidates: list[str], pool: dict[str, str]) -> str | None:
        return next((pool[c] for c in candidates if c in pool), None)

    image_exts = sorted(IMAGE_EXTENSIONS)
    mask = first([f"{stem.lower()}.mask{ext}" for ext in image_exts], by_lower)
    mask_path = folder / mask if mask else None
    shared = False
    if mask_path is None:
        in_masks, shared = _mask_in_folder(stem, mask_names, names)
        mask_path = folder / MASK_FOLDER / in_masks if in_masks else None
    sketch = by_lower.get(f"{stem.lower()}.sketch.png")
    settings = first([f"{stem.lower()}{ext}" for ext in sorted(SETTINGS_EXTENSIONS)], by_lower)
    parameters = by_lower.get(f"{stem.lower()}{PARAMETERS_EXTENSION}")
    return Companions(
        mask_shared=shared,
        mask=mask_path,
        sketch=folder / sketch if sketch else None,
        settings=folder / settings if settings else None,
        parameters=folder / parameters if parameters else None,
    )


def _mask_in_folder(stem: str, mask_names: set[str], names: set[str]) -> tuple[str | None, bool]:
    """The mask in ``masks/`` for an image of `stem`, and whether it is the shared one.

    `names`: the files beside the image; a lone mask named after one of them is that image's
    own (its sibling's mask may still be on its way), never the shared one."""
    masks = sorted(n for n in mask_names if PurePosixPath(n.lower()).suffix in IMAGE_EXTENSIONS)
    same_stem = [n for n in masks if job_stem(n).lower() == stem.lower()]
    if same_stem:
        return same_stem[0], False  # its own mask, whatever else is there
    if len(masks) == 1:  # (the folder is read only in this case: clips hold thousands)
        lone = job_stem(masks[0]).lower()
        if not any(is_input_name(n) and job_stem(n).lower() == lone for n in names):
            return masks[0], True
    number = frame_number(stem)
    same_number = [n for n in masks if number is not None and frame_number(n) == number]
    return (same_number[0] if same_number else None), False


def image_of_companion(companion: Path) -> Path | None:
    """The image beside `companion` (``a.mask.png``, ``a.sketch.png``, ``a.yaml``,
    ``a.txt`` → ``a.png`` or another image type), if there is one."""
    name = companion.name.lower()
    for ending in (".mask", ".sketch"):
        stem = PurePosixPath(name).stem
        if stem.endswith(ending):
            name = stem[: -len(ending)]
            break
    else:
        name = PurePosixPath(name).stem
    try:
        beside = {entry.name.lower(): entry for entry in _files(companion.parent)}
    except OSError:
        return None
    for extension in sorted(IMAGE_EXTENSIONS):
        found = beside.get(f"{name}{extension}")
        if found is not None:
            return found
    return None


def companions_on_disk(image: Path) -> Companions:
    folder = image.parent
    try:
        names = {entry.name for entry in _files(folder)}
        mask_names = {entry.name for entry in _files(folder / MASK_FOLDER)}
    except OSError:
        return Companions()
    names.discard(image.name)
    return find_companions(image, names, mask_names)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if not is_ignored_name(p.name)]
