"""Reading the ControlNet units' own control images of a job: one per unit, or the input.

``<stem>.control.png`` (or ``control/<frame>`` in a clip folder) is unit 0's image,
``.control-<n>`` unit n's, n counting the units in the profile's ``controlnet:`` list. The
images are decoded here, at prepare, so that one that does not decode fails its input with a
report (input and companions archived together: nothing lost), and so that the render side
receives pixels, never paths. How each image is fitted to the painting is the unit's
business (its ``resize_mode``, at render).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from daemon.a1111.imaging import flatten_on_white, load_image
from daemon.config.profiles import Profile
from daemon.errors import InputError
from daemon.intake.jobs import Job
from daemon.intake.names import is_video
from daemon.prepare.inputs import check_regular_file, storage_safe


@dataclass(frozen=True)
class JobControls:
    """Per unit of ``controlnet:``, its own control image (None: the unit uses the input)."""

    images: tuple[Image.Image | None, ...] = ()
    notes: tuple[str, ...] = ()


def read_controls(job: Job, settings: Profile, *, max_pixels: int, max_bytes: int) -> JobControls:
    """The control images that came with `job`, decoded, placed by unit.

    A control image for a unit the profile does not have (or has disabled) is said in a
    note and not read; a unit that waits for its own image (``own_image``) and has none
    fails the input, as a missing mask fails an inpaint input."""
    units = settings.controlnet
    images: list[Image.Image | None] = [None] * len(units)
    notes = []
    for unit, path in job.companions.controls:
        if unit >= len(units) or not units[unit].enabled:
            notes.append(f"{path.name}: the profile has no enabled ControlNet unit {unit}: unused")
            continue
        check_regular_file(path, max_bytes=max_bytes)
        if is_video(path):  # a control video: read frame by frame (prepare/control_video.py)
            if not is_video(job.image):
                raise InputError(
                    f"{path.name} is a control video, which steers a video's frames; "
                    f"{job.image.name} is an image: give it a control image"
                )
            continue
        try:
            image = storage_safe(load_image, path, max_pixels=max_pixels)
        except InputError as exc:  # same class: an unreadable one gets the same retries
            raise type(exc)(f"ControlNet unit {unit}'s control image: {exc}") from exc
        images[unit] = flatten_on_white(image)  # the extension's HWC3: RGBA on white
    for unit in settings.awaited_controls:
        if images[unit] is None and job.companions.control(unit) is None:
            raise InputError(missing_control(job, unit))
    return JobControls(tuple(images) if any(images) else (), tuple(notes))


def missing_control(job: Job, unit: int) -> str:
    """Why `job` cannot be painted without unit `unit`'s control image, and what to drop."""
    stem = job.image.stem
    mark, folder = (".control", "control") if unit == 0 else (f".control-{unit}", f"control-{unit}")
    return (
        f"no control image for {job.image.name}: ControlNet unit {unit} has own_image: true "
        f"and needs {stem}{mark}.png beside it (or {folder}/{stem}.png in a clip folder)"
    )
