"""What the model paints on: the input with its sketch laid on and its mask, at which size."""

from __future__ import annotations

from PIL import Image

from daemon.a1111.imaging import load_image, load_mask
from daemon.a1111.masks import blend_sketch_for_inpaint, composite_sketch, sketch_mask
from daemon.a1111.sizes import aspect_mismatch, fit_size, scaled_size
from daemon.config.profiles import Profile
from daemon.engines.diffusion import Canvas
from daemon.errors import InputError
from daemon.intake.jobs import Job
from daemon.prepare.inputs import check_regular_file, storage_safe

ASPECT_TOLERANCE = 0.03  # fixed sizes further than this from the input's ratio are logged


def build_canvas(
    job: Job, settings: Profile, image: Image.Image, *, max_pixels: int, max_bytes: int
) -> tuple[Canvas, tuple[str, ...]]:
    """Lay the sketch on the (flattened) input and load its mask; check what the task needs."""
    notes: list[str] = []
    mask: Image.Image | None = None
    companions = job.companions
    if companions.sketch is not None:
        check_regular_file(companions.sketch, max_bytes=max_bytes)
        sketch = storage_safe(load_image, companions.sketch, max_pixels=max_pixels)
        sketch = sketch.convert("RGBA")
        sketched, note = composite_sketch(image, sketch)
        if note:
            notes.append(f"sketch: {note}")
        if settings.task == "inpaint_sketch" and companions.mask is None:
            mask = sketch_mask(sketch, image.size)
            image = blend_sketch_for_inpaint(image, sketched, mask, settings.mask_blur)
        else:
            image = sketched
    if companions.mask is not None:
        check_regular_file(companions.mask, max_bytes=max_bytes)
        mask, note = storage_safe(load_mask, companions.mask, image.size, max_pixels=max_pixels)
        if note:
            notes.append(f"mask: {note}")
    if settings.needs_mask and mask is None:
        raise InputError(
            f"no mask for {job.image.name}: an inpaint profile needs {job.image.stem}.mask.png "
            "beside it (or masks/" + job.image.stem + ".png)"
        )
    if settings.needs_sketch and companions.sketch is None:
        raise InputError(
            f"no sketch for {job.image.name}: a {settings.task} profile needs "
            f"{job.image.stem}.sketch.png beside it"
        )
    return Canvas(image, mask), tuple(notes)


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
