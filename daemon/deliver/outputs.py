"""Writing results and moving inputs, so that a crash never leaves a half-written file.

Every file is written through :mod:`daemon.atomic` (temporary name, fsync, rename). Names are
never overwritten unless the profile says so: the next free ``-1``, ``-2``… suffix is taken for
the whole group (image and sidecar together), so an output and its parameters always share one
name."""

from __future__ import annotations

import contextlib
import os
import shutil
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

from daemon.a1111.infotext import exif_with_user_comment, pnginfo_chunk
from daemon.atomic import atomic_writer
from daemon.errors import Img2ImgdError
from daemon.paths import escaped, escaped_lines
from daemon.platform_seam import fit_stem, name_taken

PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def claim_names(
    folder: Path, stems: Sequence[str], suffixes: Sequence[str], *, overwrite: bool
) -> list[str]:
    """Stems for a group of outputs such that no file of the group exists yet.

    ``suffixes`` are the extensions each stem is written with (``.png``, ``.txt``). A name is
    taken as the platform compares names (case-insensitively on Windows and macOS), and a
    stem too long for the platform is shortened first. With ``overwrite`` the stems are
    returned without a tag.
    """
    room = len("-99999") + max((len(suffix) for suffix in suffixes), default=0)
    stems = [fit_stem(folder, stem, room=room) for stem in stems]
    for attempt in range(100_000):
        tag = "" if attempt == 0 else f"-{attempt}"
        candidates = [f"{stem}{tag}" for stem in stems]
        if overwrite or not any(
            name_taken(folder, f"{candidate}{suffix}")
            for candidate in candidates
            for suffix in suffixes
        ):
            return candidates
    raise FileExistsError(f"no free output name for {stems[0]} in {folder}")


def write_image(
    image: Image.Image, path: Path, *, output_format: str, infotext: str, quality: int
) -> None:
    """Save with the A1111 parameters: PNG ``parameters`` chunk, or EXIF UserComment (none
    when `infotext` is empty: a control image)."""
    pil_format = PIL_FORMATS[output_format]
    options: dict[str, object] = {}
    if pil_format == "PNG":
        if infotext:
            options["pnginfo"] = pnginfo_chunk(infotext)
    else:
        if infotext:
            options["exif"] = exif_with_user_comment(infotext)
        options["quality"] = quality
        # WebP keeps an alpha channel (keep_alpha); JPEG has none.
        if image.mode not in ("RGB", "L") and not (pil_format == "WEBP" and image.mode == "RGBA"):
            image = image.convert("RGB")
    with atomic_writer(path) as handle:
        image.save(handle, format=pil_format, **options)


@contextlib.contextmanager
def all_or_nothing(written: list[Path]) -> Iterator[list[Path]]:
    """Collect the paths of one output group; if writing fails, remove those already written,
    so that a retry never finds half a group."""
    try:
        yield written
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def move_into(sources: Sequence[Path], folder: Path) -> list[Path]:
    """Move files into ``folder`` (created), never overwriting: a taken name gets ``-N``."""
    folder.mkdir(parents=True, exist_ok=True)
    moved = []
    for source in sources:
        stem, suffix = _split(source.name)
        target = folder / source.name
        counter = 0
        while name_taken(folder, target.name):  # `Cat.png` takes `cat.png` where case is ignored
            counter += 1
            target = folder / f"{stem}-{counter}{suffix}"
        try:
            os.rename(source, target)  # keeps a symlink a symlink: it is never followed
        except OSError:
            shutil.move(str(source), str(target))  # another filesystem
        moved.append(target)
    return moved


def _split(name: str) -> tuple[str, str]:
    """``a.mask.png`` → (``a``, ``.mask.png``) so that suffixes stay readable."""
    head, dot, rest = name.partition(".")
    return (head, dot + rest) if head else (name, "")


RETRY_BY_HAND = "To retry, fix the problem and move the file back into its profile folder."


def failure_report(
    reason: str, error: BaseException | None, *, job_name: str, next_step: str = RETRY_BY_HAND
) -> str:
    """The ``.error.txt`` text: the reason in one plain sentence first, what comes next
    (`next_step`), then the details.

    Expected problems (InputError) need no traceback; an unexpected exception gets one, so
    that a bug report can be made from the file alone (the traceback only: never the values of
    local variables, which may hold prompts, paths or credentials). Names in it are escaped:
    a report is read with ``cat`` too, and a name may hold a terminal escape sequence.
    """
    lines = [escaped(reason.rstrip()), "", f"Input: {escaped(job_name)}", next_step]
    if error is not None and not isinstance(error, Img2ImgdError):
        details = "".join(traceback.format_exception(error)).rstrip()
        lines += ["", "Details:", escaped_lines(details)]
    return "\n".join(lines) + "\n"
