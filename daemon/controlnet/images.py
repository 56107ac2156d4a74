"""A control image's geometry, as the extension computes it: pure numpy and Pillow.

Images are ``uint8`` arrays of shape (height, width, channels). OpenCV, which the extension
resizes with, is not a dependency: its area shrink is written out here (:func:`area_resize`),
its cubic filter is Pillow's bicubic (``a = -0.5`` where OpenCV uses ``-0.75``: on average
0.4 of a grey level apart, at most about 10 at sharp edges).
A binary map that is resized is thresholded again with Otsu's method, as the extension
does; the extension's extra thinning of one-pixel edges (``lvmin_thin``) is not done.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from daemon.controlnet.units import ControlResize

Pixels = np.ndarray
"""A ``uint8`` image array, (height, width, channels)."""


def pixel_perfect_resolution(
    raw: tuple[int, int], target: tuple[int, int], resize_mode: ControlResize
) -> int:
    """The preprocessor resolution that maps the control image one to one onto the painting:
    the extension's ``pixel_perfect_resolution``. `raw` and `target` are (width, height);
    the target is the processing size rounded down to the latent grid (multiples of 8)."""
    (raw_w, raw_h), (target_w, target_h) = raw, target
    k0, k1 = (target_h // 8 * 8) / raw_h, (target_w // 8 * 8) / raw_w
    k = min(k0, k1) if resize_mode is ControlResize.OUTER_FIT else max(k0, k1)
    return round(k * min(raw_h, raw_w))  # np.round: half to even, as round()


def hwc3(image: Pixels) -> Pixels:
    """Three channels: grey repeated; RGBA laid on white (the extension's ``HWC3``)."""
    if image.dtype != np.uint8:
        raise ValueError(f"a control image must be uint8, not {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.concatenate([image] * 3, axis=2)
    if channels == 4:
        color = image[:, :, :3].astype(np.float32)
        alpha = image[:, :, 3:].astype(np.float32) / 255.0
        blended = color * alpha + 255.0 * (1.0 - alpha)
        return blended.clip(0, 255).astype(np.uint8)
    raise ValueError(f"a control image has 1, 3 or 4 channels, not {channels}")


def _area_mean(values: np.ndarray, new: int, axis: int) -> np.ndarray:
    """`values` shrunk to `new` along `axis`: each output the mean of the span of source
    pixels it covers, fractional ones by their share, from the running sum (linear time)."""
    v = np.moveaxis(values, axis, 0)
    old = v.shape[0]
    running = np.concatenate([np.zeros((1, *v.shape[1:])), np.cumsum(v, axis=0)])
    edges = np.arange(new + 1) * (old / new)
    whole = np.minimum(np.floor(edges).astype(int), old)
    share = (edges - whole).reshape(-1, *[1] * (v.ndim - 1))
    upto = running[whole] + share * v[np.minimum(whole, old - 1)]  # the sum over [0, edge)
    return np.moveaxis((upto[1:] - upto[:-1]) / (old / new), 0, axis)


def area_resize(image: Pixels, size: tuple[int, int]) -> Pixels:
    """OpenCV's ``INTER_AREA`` shrink: each output pixel the mean of the source area it
    covers (fractional pixels weighted by their share)."""
    width, height = size
    mean = _area_mean(_area_mean(image.astype(np.float64), height, 0), width, 1)
    return np.rint(mean).clip(0, 255).astype(np.uint8)


def resized(image: Pixels, size: tuple[int, int], *, nearest: bool = False) -> Pixels:
    """`image` at `size` (width, height): area mean shrinking, bicubic growing."""
    width, height = size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    if not nearest and shrinking:
        return area_resize(image, size)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    channels = [
        np.asarray(Image.fromarray(image[:, :, c]).resize(size, resample))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


def otsu_threshold(grey: Pixels) -> int:
    """Otsu's threshold of a grey image: values above it are foreground."""
    counts = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * levels)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return int(np.argmax(between))


def color_count(image: Pixels) -> int:
    """How many distinct colours `image` holds: the channels packed into one integer per
    pixel, sorted, and the changes counted. ``np.unique(axis=0)`` on the rows took 1.4 s
    for a megapixel here (numpy 2.4's ``np.unique`` of the packed values 0.7 s); this 0.1 s."""
    packed = np.zeros(image.shape[:2], dtype=np.uint64)
    for channel in range(image.shape[2]):
        packed = (packed << np.uint64(8)) | image[:, :, channel].astype(np.uint64)
    ordered = np.sort(packed, axis=None)
    return int(1 + np.count_nonzero(ordered[1:] != ordered[:-1])) if ordered.size else 0


def high_quality_resize(image: Pixels, size: tuple[int, int]) -> Pixels:
    """The extension's ``high_quality_resize``: maps of a few colours (segmentation) keep
    their colours (nearest), binary maps (edges) stay binary (Otsu), the rest is filtered."""
    width, height = size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    colors = color_count(image)
    binary = colors == 2 and int(image.min()) < 16 and int(image.max()) > 240
    result = resized(image, size, nearest=2 < colors < 200)
    if not binary:
        return result
    grey = result.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
    edges = np.where(grey > otsu_threshold(grey), 255, 0).astype(np.uint8)
    return np.stack([edges] * 3, axis=2)


def fit_control(
    image: Pixels, mode: ControlResize, size: tuple[int, int], *, fill: int | None = None
) -> Pixels:
    """A (preprocessed) control map fitted to the painting's `size` (width, height) by the
    unit's resize mode: the extension's ``detectmap_proc``.

    Just Resize stretches; Crop and Resize scales to cover and crops the middle; Resize and
    Fill scales to fit and fills the rest with the median colour of the map's border (or
    `fill`: an inpaint mask's bands are masked, 255)."""
    image = hwc3(image)
    width, height = size
    if mode is ControlResize.RESIZE:
        return high_quality_resize(image, size)
    old_h, old_w = image.shape[:2]
    k0, k1 = height / old_h, width / old_w
    k = min(k0, k1) if mode is ControlResize.OUTER_FIT else max(k0, k1)
    scaled = high_quality_resize(image, (round(old_w * k), round(old_h * k)))
    new_h, new_w = scaled.shape[:2]
    if mode is ControlResize.INNER_FIT:
        top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
        return scaled[top : top + height, left : left + width]
    borders = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    color = np.median(borders, axis=0) if fill is None else np.full(3, fill)
    canvas = np.tile(color.astype(np.uint8)[None, None], (height, width, 1))
    top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


def pad_to_64(size: int) -> int:
    """Pixels to add so that `size` is a multiple of 64."""
    return -size % 64


def resize_with_pad(image: Pixels, resolution: int) -> tuple[Pixels, Callable[[Pixels], Pixels]]:
    """`image` scaled so that its short side is `resolution`, then edge-padded right and
    bottom to multiples of 64; and the function that crops a result back (the extension's
    ``resize_image_with_pad``: preprocessors see the aspect ratio exactly)."""
    image = hwc3(image)
    raw_h, raw_w = image.shape[:2]
    k = resolution / min(raw_h, raw_w)
    height, width = round(raw_h * k), round(raw_w * k)
    scaled = resized(image, (width, height))
    padded = np.pad(scaled, [(0, pad_to_64(height)), (0, pad_to_64(width)), (0, 0)], mode="edge")

    def remove_pad(result: Pixels) -> Pixels:
        return np.ascontiguousarray(result[:height, :width])

    return padded, remove_pad


def resize_to_64(image: Pixels, resolution: int) -> Pixels:
    """The old annotators' ``resize_image``: short side to `resolution`, each side then
    rounded to a multiple of 64 (stretching a little)."""
    image = hwc3(image)
    raw_h, raw_w = image.shape[:2]
    k = resolution / min(raw_h, raw_w)
    height, width = (round(side * k / 64) * 64 for side in (raw_h, raw_w))
    return resized(image, (max(64, width), max(64, height)))
