"""Reading a job's reference images, at prepare, so that the render side gets pixels and an
image that does not decode fails its input (with its companions): the IP-Adapter's one, and
the edit task's several (:func:`read_edit_references`).

In order: ``<stem>.reference.png`` beside the input, the image in its folder's ``reference/`` (a
clip's key frame for every frame), else the profile's ``ip_adapter.reference`` path. The
profile's path missing is the profile's problem, not the input's: the input waits.
``reference: key_frame`` reads nothing here: the clip's key frame is the clip state's
(:func:`key_frame_reference`).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from daemon.a1111.imaging import flatten_on_white, load_image
from daemon.config.profiles import Profile
from daemon.errors import InputError, TransientError
from daemon.intake.jobs import Job
from daemon.intake.names import REFERENCE_MARK
from daemon.prepare.inputs import check_regular_file, storage_safe
from daemon.tasks.registry import task_of


def read_reference(
    job: Job, settings: Profile, *, max_pixels: int, max_bytes: int
) -> tuple[Image.Image | None, tuple[str, ...]]:
    """The reference image for `job` (None without ``ip_adapter``), and notes."""
    adapter = settings.ip_adapter
    found = job.companions.reference
    if adapter is None:
        if task_of(settings).pipeline == "edit":
            return None, ()  # the edit's own reference: read_edit_references
        unused = f"{found.name}: the profile has no ip_adapter: unused" if found else None
        return None, (unused,) if unused and not job.companions.reference_shared else ()
    if found is not None:
        check_regular_file(found, max_bytes=max_bytes)
        try:
            image = storage_safe(load_image, found, max_pixels=max_pixels)
        except InputError as exc:  # same class: an unreadable one gets the same retries
            raise type(exc)(f"the IP-Adapter reference image: {exc}") from exc
        return flatten_on_white(image), ()
    if adapter.refers_to_key_frame:
        return None, ()  # the clip's key frame, once painted: see key_frame_reference
    if adapter.reference is None:
        raise InputError(
            f"no reference image for {job.image.name}: the profile's ip_adapter has no "
            f"reference: path, so it needs {job.image.stem}{REFERENCE_MARK}.png beside it "
            "(or one image in a reference/ folder beside it)"
        )
    path = Path(adapter.reference).expanduser()
    if not path.is_file():
        raise TransientError(
            f"the profile's ip_adapter.reference {path} is not a file; put the reference "
            "image there or fix the path (the input waits in the inbox)"
        )
    try:
        return flatten_on_white(load_image(path, max_pixels=max_pixels)), ()
    except InputError as exc:
        raise TransientError(f"the profile's ip_adapter.reference {path}: {exc}") from exc


def read_edit_references(
    job: Job, settings: Profile, *, max_pixels: int, max_bytes: int
) -> tuple[tuple[Image.Image, ...], tuple[str, ...]]:
    """The edit task's reference images: ``<stem>.reference.png`` (or the folder's
    ``reference/`` image), then ``<stem>.reference-<n>.png`` by n; and notes. Another task
    takes no numbered ones: they are said unused (and archived with the input)."""
    companions = job.companions
    if task_of(settings).pipeline != "edit":
        return (), tuple(f"{path.name}: only the edit task takes numbered reference images: "
                         "unused" for path in companions.references)  # fmt: skip
    images = []
    for path in (companions.reference, *companions.references):
        if path is None:
            continue
        check_regular_file(path, max_bytes=max_bytes)
        try:
            image = storage_safe(load_image, path, max_pixels=max_pixels)
        except InputError as exc:  # same class: an unreadable one gets the same retries
            raise type(exc)(f"the reference image {path.name}: {exc}") from exc
        images.append(flatten_on_white(image))
    return tuple(images), ()


def key_frame_reference(
    settings: Profile, found: Image.Image | None, key_frame: Image.Image | None, *, in_clip: bool
) -> tuple[Image.Image | None, tuple[str, ...]]:
    """The reference of a frame under ``reference: key_frame``: the image that came with the
    input (`found`) wins; else the clip's `key_frame` as painted (None for the key frame
    itself, which paints without the adapter); and a note where the adapter sits out."""
    adapter = settings.ip_adapter
    if adapter is None or not adapter.refers_to_key_frame or found is not None:
        return found, ()
    if key_frame is not None:
        return key_frame, ()
    if in_clip:
        return None, ("the clip's key frame: painted without the IP-Adapter (reference: "
                      "key_frame), it is the reference of the frames after it",)  # fmt: skip
    return None, (
        "painted without the IP-Adapter: reference: key_frame refers to a clip's key frame "
        "and this image is not in a clip (a sub-folder or a video); give it a "
        f"<stem>{REFERENCE_MARK}.png or a reference: path for single images",
    )


def refers_to_key_frame(settings: Profile, job: Job) -> bool:
    """Whether `job`'s frames take their clip's key frame as reference: an image that comes
    with the input (``<stem>.reference.png``, a ``reference/`` folder's) wins over it."""
    adapter = settings.ip_adapter
    return adapter is not None and adapter.refers_to_key_frame and job.companions.reference is None
