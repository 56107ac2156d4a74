"""What the model paints on: the input's sketch and mask read, laid out by its task, at which
size."""

from __future__ import annotations

from PIL import Image

from daemon.a1111.imaging import load_image, load_mask
from daemon.a1111.sizes import aspect_mismatch, fit_size, scaled_size
from daemon.config.profiles import Profile
from daemon.errors import InputError
from daemon.intake.jobs import Job
from daemon.intake.pairing import Kind
from daemon.prepare.inputs import check_regular_file, storage_safe
from daemon.tasks.task import Canvas, Painting, Task

ASPECT_TOLERANCE = 0.03  # fixed sizes further than this from the input's ratio are logged


def build_canvas(
    job: Job,
    task: Painting,
    settings: Profile,
    image: Image.Image,
    *,
    max_pixels: int,
    max_bytes: int,
) -> Canvas:
    """Read the job's sketch and mask, check that its task has what it needs, and have the
    task lay them out on the (flattened) input."""
    companions = job.companions
    sketch: Image.Image | None = None
    if companions.sketch is not None:
        check_regular_file(companions.sketch, max_bytes=max_bytes)
        sketch = storage_safe(load_image, companions.sketch, max_pixels=max_pixels)
        sketch = sketch.convert("RGBA")
    mask: Image.Image | None = None
    mask_notes: tuple[str, ...] = ()
    if companions.mask is not None:
        check_regular_file(companions.mask, max_bytes=max_bytes)
        mask, note = storage_safe(load_mask, companions.mask, image.size, max_pixels=max_pixels)
        mask_notes = (f"mask: {note}",) if note else ()
    missing = task.companions.missing(companions)
    if missing is not None:
        raise InputError(missing_companion(job, task, missing))
    canvas = task.canvas(image, sketch=sketch, mask=mask, settings=settings)
    return Canvas(canvas.image, canvas.mask, (*canvas.notes, *mask_notes))


def missing_companion(job: Job, task: Task, kind: Kind) -> str:
    """Why `job` cannot be painted without its `kind` companion, and what to drop."""
    name, stem = job.image.name, job.image.stem
    needs = f"no {kind.value} for {name}: {task.a_profile} needs {stem}.{kind.value}.png beside it"
    return f"{needs} (or masks/{stem}.png)" if kind is Kind.MASK else needs


def processing_size(settings: Profile, width: int, height: int) -> tuple[int, int]:
    """The size the model works at: fixed, scaled (A1111 "Resize by") or auto.

    Auto (width/height left out) keeps the input's aspect ratio at ``max_pixels``; one side
    given derives the other from the input's ratio; all sides are multiples of 8.
    """
    if settings.scale is not None:
        return scaled_size(width, height, settings.scale)
    if settings.width and settings.height:
        return settings.width, settings.height
    if settings.width:
        return settings.width, max(8, round(settings.width * height / width / 8) * 8)
    if settings.height:
        return max(8, round(settings.height * width / height / 8) * 8), settings.height
    return fit_size(width, height, max_pixels=settings.max_pixels)


def aspect_note(settings: Profile, source: tuple[int, int], size: tuple[int, int]) -> str | None:
    """Say so when a fixed size distorts or crops the input noticeably."""
    if not (settings.width and settings.height):
        return None
    mismatch = aspect_mismatch(source, size)
    if mismatch <= ASPECT_TOLERANCE:
        return None
    return (
        f"input is {source[0]}x{source[1]} but the profile asks for {size[0]}x{size[1]} "
        f"({mismatch:.0%} off in aspect ratio); '{settings.resize_mode.value}' applies"
    )
