"""ControlNet with A1111's inpaint mask: "only masked" crops, and the inpaint preprocessors.

Pure numpy and Pillow, after the extension's ``controlnet.py``:

* ``try_crop_image_with_a1111_mask``: with "only masked" inpainting, a unit's control image
  (not a ``reference*`` one) is fitted to the input's size by its resize mode, cropped to
  the region the painting is cropped to, then resized and filled to the processing size,
  channel by channel, before the preprocessor sees it (:func:`crop_to_region`);
* the inpaint preprocessors (``inpaint`` = ``inpaint_global_harmonious``, ``inpaint_only``)
  pass the input through with the prepared mask as a fourth channel (:func:`inpaint_hint`);
  the map is fitted with the mask thresholded at 127 and Resize and Fill's bands counted as
  masked (``detectmap_proc``); the UNet hook hands the net ``c · (1 − m) − m``, so masked
  pixels are −1 in every channel (:func:`net_input`), which is what the inpaint ControlNet
  was trained on (diffusers' ``make_inpaint_condition`` does the same);
* the preview of such a map, as the extension shows it (``visualize_inpaint_mask``): masked
  pixels half transparent (:func:`preview`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from daemon.a1111.imaging import resize_image
from daemon.a1111.masks import Region
from daemon.a1111.sizes import ResizeMode
from daemon.controlnet.images import Pixels, fit_control
from daemon.controlnet.modules import module_named
from daemon.controlnet.units import ControlResize

INPAINT_MODULES = frozenset({"inpaint", "inpaint_only"})
"""The preprocessors whose map carries the inpaint mask (by name; labels resolve to them)."""

_A1111_RESIZE = {
    ControlResize.RESIZE: ResizeMode.JUST_RESIZE,
    ControlResize.INNER_FIT: ResizeMode.CROP_AND_RESIZE,
    ControlResize.OUTER_FIT: ResizeMode.RESIZE_AND_FILL,
}
"""A unit's resize mode as A1111's (the extension's ``ResizeMode.int_value``)."""


def marks_mask(module: str) -> bool:
    """Whether preprocessor `module` (name or label) is an inpaint one."""
    return module_named(module).name in INPAINT_MODULES


def is_cropped(module: str) -> bool:
    """Whether "only masked" crops this unit's control image: all but ``reference*``."""
    return not module_named(module).name.startswith("reference")


def crop_to_region(
    image: Pixels,
    region: Region,
    mode: ControlResize,
    input_size: tuple[int, int],
    size: tuple[int, int],
) -> Pixels:
    """`image` (any channels) fitted to the input's size (width, height) by `mode`, cropped
    to `region` and resized and filled to the processing `size`, each channel alone (as the
    extension, so that an inpaint mask channel is resized like a colour)."""
    channels = []
    for channel in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, channel]))
        plane = resize_image(plane, _A1111_RESIZE[mode], *input_size).crop(region)
        channels.append(np.asarray(resize_image(plane, ResizeMode.RESIZE_AND_FILL, *size)))
    return np.stack(channels, axis=2)


def inpaint_hint(image: Pixels, mask: Pixels) -> Pixels:
    """The input (RGB) with the prepared mask (L, 255 = repaint) as its alpha channel."""
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[1::-1]}, the image {image.shape[1::-1]}")
    return np.dstack([image[:, :, :3], mask])


def fit_hint(hint: Pixels, mode: ControlResize, size: tuple[int, int]) -> Pixels:
    """An inpaint hint (RGBA) fitted to `size` (width, height): the colour as any map, the
    mask the same way, then made 0 or 255 (masked above 127; the bands Resize and Fill adds
    are masked, as the extension's)."""
    color = fit_control(hint[:, :, :3], mode, size)
    mask = fit_control(hint[:, :, 3], mode, size, fill=255)[:, :, 0]
    return np.dstack([color, np.where(mask > 127, 255, 0).astype(np.uint8)])


def net_input(control: Pixels) -> np.ndarray:
    """What the net gets, float32 (height, width, 3): a map's colours in 0..1; for an inpaint
    hint (four channels), −1 in every channel where it is masked."""
    values = control.astype(np.float32) / 255.0
    if control.shape[2] != 4:
        return values
    color, masked = values[:, :, :3], np.round(values[:, :, 3:])
    return color * (1.0 - masked) - masked


def preview(control: Pixels) -> Pixels:
    """The map as a picture: an inpaint hint's masked pixels half transparent (alpha 128),
    the rest opaque; any other map as it is."""
    if control.shape[2] != 4:
        return control
    shown = control.copy()
    shown[:, :, 3] = 255 - control[:, :, 3] // 2
    return shown
