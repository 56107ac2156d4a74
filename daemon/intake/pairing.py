"""What a path in the inbox is, which profile it belongs to, and which files go with it.

Pure functions on names: nothing here touches the disk except ``companions_on_disk``, which
lists one folder. The folder contract:

* ``inbox/<profile>/<sub-path>/<stem>.<image ext>`` is a job for ``profiles/<profile>.yaml``;
* ``<stem>.mask.<image ext>`` or ``masks/<stem>.<image ext>`` is its inpaint mask;
* ``<stem>.sketch.png`` is its scribble layer; ``<stem>.yaml`` its per-image settings;
* ``<stem>.prompt.txt`` is its prompt (``<stem>.txt``: its parameters, for use_png_info);
* ``<stem>.control.png`` / ``<stem>.control-<n>.png`` is ControlNet unit 0's / n's image; in
  a clip folder, ``control/`` / ``control-<n>/`` hold them by stem or by frame number;
* ``<stem>.reference.png`` is its IP-Adapter reference image; the image in a folder's
  ``reference/`` is the reference of every image (every frame of a clip) without its own;
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
    PROMPT_ENDING,
    REFERENCE_FOLDER,
    SETTINGS_EXTENSIONS,
    SKETCH_ENDING,
    VIDEO_EXTENSIONS,
    control_folder_unit,
    control_of_stem,
    frame_number,
    is_companion_folder,
    is_ignored_dir,
    is_ignored_name,
    is_input_name,
    is_prompt_name,
    is_reference_stem,
    job_stem,
    reference_of_stem,
)


class Kind(enum.Enum):
    IMAGE = "image"
    MASK = "mask"
    SKETCH = "sketch"
    CONTROL = "control"  # a ControlNet unit's own control image
    REFERENCE = "reference"  # an IP-Adapter reference image (<stem>.reference, reference)
    SETTINGS = "settings"
    PROMPT = "prompt"  # <stem>.prompt.txt: the prompt, in place of the profile's
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
    if is_prompt_name(name):  # before any other .txt
        return Kind.PROMPT
    if suffix == PARAMETERS_EXTENSION:
        return Kind.PARAMETERS
    if suffix in VIDEO_EXTENSIONS:  # a job of its own, like an image; or a control video
        return Kind.CONTROL if control_of_stem(PurePosixPath(name).stem) else Kind.IMAGE
    if suffix not in IMAGE_EXTENSIONS:
        return Kind.UNSUPPORTED
    if where.sub_dir.name == MASK_FOLDER or PurePosixPath(name).stem.endswith(MASK_MARK):
        return Kind.MASK
    if name.endswith(SKETCH_ENDING):
        return Kind.SKETCH
    if control_folder_unit(where.sub_dir.name) is not None:
        return Kind.CONTROL
    if control_of_stem(PurePosixPath(name).stem) is not None:
        return Kind.CONTROL
    if where.sub_dir.name == REFERENCE_FOLDER or is_reference_stem(PurePosixPath(name).stem):
        return Kind.REFERENCE
    return Kind.IMAGE


def pending_images(folder: Path, *, exclude: Path | None = None) -> Iterator[Path]:
    """The inputs (images and videos, not companions) waiting in `folder` itself, lazily:
    ``any(pending_images(f))`` stops at the first one. Called after every frame of a clip
    of thousands, so names are checked as strings, without building paths."""
    if is_companion_folder(folder.name):
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
    prompt: Path | None = None  # <stem>.prompt.txt
    mask_shared: bool = False  # the only file in masks/: it serves every image of the folder
    controls: tuple[tuple[int, Path], ...] = ()  # (unit, its control image), by unit
    reference: Path | None = None  # <stem>.reference.png, else the one in reference/
    reference_shared: bool = False  # the folder's: it stays for the folder's other images
    references: tuple[Path, ...] = ()  # <stem>.reference-<n>.png, by n: an edit's further ones

    @property
    def shared(self) -> tuple[Path, ...]:
        """The folder's files among these (a lone mask, ``reference/``'s): they serve its
        other images too, so they stay until its clip ends."""
        mask = (self.mask,) if self.mask_shared and self.mask else ()
        reference = (self.reference,) if self.reference_shared and self.reference else ()
        return (*mask, *reference)

    def control(self, unit: int) -> Path | None:
        """Unit `unit`'s own control image, if one came."""
        return next((path for n, path in self.controls if n == unit), None)

    def has(self, kind: Kind) -> bool:
        """Whether the companion of `kind` (a mask, a sketch …) is among these."""
        found = {Kind.MASK: self.mask, Kind.SKETCH: self.sketch, Kind.SETTINGS: self.settings,
                 Kind.PARAMETERS: self.parameters, Kind.PROMPT: self.prompt}.get(kind)  # fmt: skip
        return found is not None

    def paths(self) -> tuple[Path, ...]:
        """The files that belong to this image alone (they move with it); a shared mask
        stays for the folder's other images."""
        mask = None if self.mask_shared else self.mask
        reference = None if self.reference_shared else self.reference
        found = (mask, self.sketch, self.settings, self.parameters, self.prompt, reference)
        return (
            *(p for p in found if p is not None),
            *(path for _, path in self.controls),
            *self.references,
        )


def find_companions(
    image: Path,
    names: set[str],
    mask_names: set[str],
    control_names: dict[str, set[str]] | None = None,
    reference_names: set[str] | frozenset[str] = frozenset(),
) -> Companions:
    """Companions of ``image`` among the names in its folder and in its ``masks/`` folder.

    A mask next to the image wins over one in ``masks/``. In ``masks/`` (A1111's batch mask
    folder) the mask is the file with the image's stem; else, when the folder holds a single
    image, that one for every image; else the one with the same trailing frame number
    (``frame_0012.png`` ↔ ``mask_12.png``). Matching is case-insensitive on the extension
    because Windows tools write ``.PNG``. Control images pair the same way, per unit
    (`control_names`: the names in each ``control[-<n>]/`` folder, by folder name), except
    that a lone one is never shared: each frame has its own. The reference image is
    ``<stem>.reference.<ext>`` beside the image, else the (first) image in ``reference/``
    (`reference_names`), which every image of the folder shares.
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
    prompt = by_lower.get(f"{stem.lower()}{PROMPT_ENDING}")
    own_reference = first([f"{stem.lower()}.reference{ext}" for ext in image_exts], by_lower)
    in_folder = sorted(
        n for n in reference_names if PurePosixPath(n.lower()).suffix in IMAGE_EXTENSIONS
    )
    shared_reference = REFERENCE_FOLDER + "/" + in_folder[0] if in_folder else None
    reference = own_reference or shared_reference
    return Companions(
        references=_numbered_references(stem, folder, names),
        reference=folder / reference if reference else None,
        reference_shared=own_reference is None and shared_reference is not None,
        controls=_controls(stem, folder, names, control_names or {}),
        mask_shared=shared,
        mask=mask_path,
        sketch=folder / sketch if sketch else None,
        settings=folder / settings if settings else None,
        parameters=folder / parameters if parameters else None,
        prompt=folder / prompt if prompt else None,
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


# Beside a video, <stem>.control.mp4 is a control video: frame i steers frame i.
_CONTROL_EXTENSIONS = IMAGE_EXTENSIONS | frozenset(VIDEO_EXTENSIONS)


def _controls(
    stem: str, folder: Path, names: set[str], control_names: dict[str, set[str]]
) -> tuple[tuple[int, Path], ...]:
    """Each unit's control image: ``<stem>.control[-<n>].<ext>`` beside the image first, then
    the one in ``control[-<n>]/`` with the image's stem, then with its frame number."""
    found: dict[int, Path] = {}
    for name in sorted(names):
        whose = control_of_stem(job_stem(name))
        suffix = PurePosixPath(name.lower()).suffix
        if whose and whose[0].lower() == stem.lower() and suffix in _CONTROL_EXTENSIONS:
            found.setdefault(whose[1], folder / name)
    number = frame_number(stem)
    for folder_name, in_folder in sorted(control_names.items()):
        unit = control_folder_unit(folder_name)
        if unit is None or unit in found:
            continue
        images = sorted(n for n in in_folder if PurePosixPath(n.lower()).suffix in IMAGE_EXTENSIONS)
        match = next((n for n in images if job_stem(n).lower() == stem.lower()), None)
        if match is None and number is not None:
            match = next((n for n in images if frame_number(n) == number), None)
        if match is not None:
            found[unit] = folder / folder_name / match
    return tuple(sorted(found.items()))


def _numbered_references(stem: str, folder: Path, names: set[str]) -> tuple[Path, ...]:
    """``<stem>.reference-<n>.<ext>`` beside the image, in the order of n."""
    found: dict[int, Path] = {}
    for name in sorted(names):
        whose = reference_of_stem(job_stem(name))
        is_image = PurePosixPath(name.lower()).suffix in IMAGE_EXTENSIONS
        if whose and whose[1] > 0 and whose[0].lower() == stem.lower() and is_image:
            found.setdefault(whose[1], folder / name)
    return tuple(path for _, path in sorted(found.items()))


def image_of_companion(companion: Path) -> Path | None:
    """The image beside `companion` (``a.mask.png``, ``a.sketch.png``, ``a.control-1.png``,
    ``a.yaml``, ``a.txt``, ``a.prompt.txt`` → ``a.png`` or another image type), if there is
    one."""
    name = companion.name.lower()
    if companion.parent.name == REFERENCE_FOLDER:
        return None  # the folder's reference: no one image's
    if is_prompt_name(name):
        name = name[: -len(PROMPT_ENDING)] + PARAMETERS_EXTENSION  # a.prompt.txt: as a.txt
    for ending in (".mask", ".sketch"):
        stem = PurePosixPath(name).stem
        if stem.endswith(ending):
            name = stem[: -len(ending)]
            break
    else:
        name = PurePosixPath(name).stem
        whose = control_of_stem(name) or reference_of_stem(name)
        name = whose[0] if whose else name
    try:
        beside = {entry.name.lower(): entry for entry in _files(companion.parent)}
    except OSError:
        return None
    # A control video (a.control.mp4) steers a video's frames; other companions an image's.
    suffix = PurePosixPath(companion.name.lower()).suffix
    extensions = VIDEO_EXTENSIONS if suffix in VIDEO_EXTENSIONS else IMAGE_EXTENSIONS
    for extension in sorted(extensions):
        found = beside.get(f"{name}{extension}")
        if found is not None:
            return found
    return None


def companions_on_disk(image: Path) -> Companions:
    folder = image.parent
    try:
        entries = _files(folder)
        names = {entry.name for entry in entries}
        mask_names = {entry.name for entry in _files(folder / MASK_FOLDER)}
        control_names = {
            entry.name: {found.name for found in _files(entry)}
            for entry in entries
            if control_folder_unit(entry.name) is not None and entry.is_dir()
        }
        reference_names = (
            {entry.name for entry in _files(folder / REFERENCE_FOLDER)}
            if REFERENCE_FOLDER in names
            else set()
        )
    except OSError:
        return Companions()
    names.discard(image.name)
    return find_companions(image, names, mask_names, control_names, reference_names)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if not is_ignored_name(p.name)]
