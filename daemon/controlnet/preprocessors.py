"""The model-free preprocessors, as the extension runs them: pure numpy / Pillow / SciPy.

Each takes the raw control image (``uint8``, H×W×C) and the unit's ``processor_res``,
``threshold_a`` and ``threshold_b`` (already bounded by :mod:`daemon.controlnet.units`) and
returns the detected map, three channels, which :func:`daemon.controlnet.images.fit_control`
then fits to the painting. The extension runs these on OpenCV, which img2imgd does not
depend on; each OpenCV step is written out instead, checked against OpenCV 5.1:

* ``canny``: :func:`opencv_canny`, OpenCV's algorithm (3×3 Sobel with replicated borders,
  L1 norm, the strongest channel per pixel, its fixed-point sectors, hysteresis): the same
  edge pixels on the test pictures at every threshold tried;
* ``blur_gaussian``, ``lineart_standard``: SciPy's Gaussian with OpenCV's kernel radius and
  border (reflect 101): within 1e-4 in float, one grey level in 8 bit;
* ``tile_resample`` and every shrink: :func:`daemon.controlnet.images.area_resize`, OpenCV's
  area mean (the same pixels to within one level); growing uses Pillow's bicubic, where the
  two differ most (0.4 of a level on average);
* ``binary``: Otsu's threshold computed in numpy; Pillow's luma, as OpenCV's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from daemon.controlnet.images import (
    Pixels,
    area_resize,
    hwc3,
    otsu_threshold,
    resize_to_64,
    resize_with_pad,
)
from daemon.controlnet.modules import module_named

Preprocess = Callable[[Pixels, float, float, float], Pixels]
"""(image, processor_res, threshold_a, threshold_b) → detected map."""


def none(image: Pixels, _res: float, _a: float, _b: float) -> Pixels:
    return image


def invert(image: Pixels, _res: float, _a: float, _b: float) -> Pixels:
    """White background and black lines made black and white (no resize)."""
    return 255 - hwc3(image)


def _luma(image: Pixels) -> Pixels:
    """ITU-R 601 grey, as OpenCV's RGB2GRAY (Pillow's "L" is the same formula)."""
    return np.asarray(Image.fromarray(hwc3(image)).convert("L"))


def canny(image: Pixels, res: float, low: float, high: float) -> Pixels:
    """Edges at the processor resolution, with the low and high hysteresis thresholds."""
    padded, remove_pad = resize_with_pad(image, int(res))
    edges = opencv_canny(padded, int(low), int(high))
    return remove_pad(hwc3(np.where(edges, 255, 0).astype(np.uint8)))


_TG22 = 13573  # tan(22.5°) · 2^15, OpenCV's fixed-point sector bound


def opencv_canny(image: Pixels, low: int, high: int) -> np.ndarray:
    """OpenCV's ``Canny(image, low, high)`` (3×3 Sobel, L1 norm) on a colour image: per
    pixel, the channel with the strongest gradient; non-maximum suppression in OpenCV's four
    sectors; weak edges kept where 8-connected to a strong one. Boolean edge map."""
    from scipy.ndimage import label, sobel

    x = image.astype(np.int32)
    gx = np.stack([sobel(x[:, :, c], axis=1, mode="nearest") for c in range(3)], axis=2)
    gy = np.stack([sobel(x[:, :, c], axis=0, mode="nearest") for c in range(3)], axis=2)
    strongest = np.argmax(np.abs(gx) + np.abs(gy), axis=2)[:, :, None]  # first on a tie
    dx = np.take_along_axis(gx, strongest, axis=2)[:, :, 0]
    dy = np.take_along_axis(gy, strongest, axis=2)[:, :, 0]
    magnitude = np.abs(dx) + np.abs(dy)
    m = np.pad(magnitude, 1)  # zeros around, as OpenCV's border rows
    centre = m[1:-1, 1:-1]

    def at(row: int, col: int) -> np.ndarray:
        return m[1 + row : m.shape[0] - 1 + row, 1 + col : m.shape[1] - 1 + col]

    ax, ay = np.abs(dx).astype(np.int64), np.abs(dy).astype(np.int64)
    tg22x = ax * _TG22
    horizontal = (ay << 15) < tg22x
    vertical = ~horizontal & ((ay << 15) > tg22x + (ax << 16))
    diagonal = ~horizontal & ~vertical
    down_right = (dx ^ dy) >= 0  # same signs: the gradient runs along the main diagonal
    keep = np.where(horizontal, (centre > at(0, -1)) & (centre >= at(0, 1)), False)
    keep |= vertical & (centre > at(-1, 0)) & (centre >= at(1, 0))
    keep |= diagonal & down_right & (centre > at(-1, -1)) & (centre > at(1, 1))
    keep |= diagonal & ~down_right & (centre > at(-1, 1)) & (centre > at(1, -1))
    candidates = keep & (magnitude > low)
    groups, _ = label(candidates, structure=np.ones((3, 3), dtype=int))
    strong = np.unique(groups[candidates & (magnitude > high)])
    return np.isin(groups, strong[strong > 0])


def tile_resample(image: Pixels, _res: float, rate: float, _b: float) -> Pixels:
    """Shrunk by the down-sampling rate (area filter); under 1.1 left as it is."""
    image = hwc3(image)
    if rate < 1.1:
        return image
    height, width = image.shape[:2]
    return area_resize(image, (int(width / rate), int(height / rate)))


def _gaussian(image: np.ndarray, sigma: float, *, truncate: float) -> np.ndarray:
    """OpenCV's ``GaussianBlur(img, (0, 0), sigma)`` per channel: a kernel of radius
    ``round(truncate·sigma)`` (OpenCV: 3σ for 8-bit images, 4σ for float ones), borders
    mirrored without repeating the edge pixel (reflect 101)."""
    from scipy.ndimage import gaussian_filter

    sigmas = (sigma, sigma, 0.0) if image.ndim == 3 else sigma
    return gaussian_filter(image, sigma=sigmas, mode="mirror", truncate=truncate)


def lineart_standard(image: Pixels, res: float, _a: float, _b: float) -> Pixels:
    """Dark lines on a light background found by how much darker each pixel is than its
    blurred surroundings, normalised by the median line strength: lines white on black."""
    padded, remove_pad = resize_with_pad(image, int(res))
    x = padded.astype(np.float32)
    blurred = _gaussian(x, 6.0, truncate=4.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    lines = (intensity / scale * 127).clip(0, 255).astype(np.uint8)
    return remove_pad(hwc3(lines))


def binary(image: Pixels, res: float, threshold: float, _b: float) -> Pixels:
    """White where the image is dark: at the threshold, or Otsu's at 0 or 255 (the
    extension's ``binary`` of 2023, ``THRESH_BINARY_INV``)."""
    grey = _luma(resize_to_64(image, int(res)))
    level = otsu_threshold(grey) if int(threshold) in (0, 255) else int(threshold)
    return hwc3(np.where(grey > level, 0, 255).astype(np.uint8))


def threshold(image: Pixels, res: float, level: float, _b: float) -> Pixels:
    """White where every channel is brighter than the threshold (today's replacement of
    ``binary``; not inverted)."""
    padded, remove_pad = resize_with_pad(image, int(res))
    bright = np.min(padded, axis=2) > level
    return remove_pad(hwc3(np.where(bright, 255, 0).astype(np.uint8)))


def blur_gaussian(image: Pixels, res: float, sigma: float, _b: float) -> Pixels:
    """A Gaussian blur of the given sigma at the processor resolution."""
    padded, remove_pad = resize_with_pad(image, int(res))
    blurred = _gaussian(remove_pad(padded).astype(np.float32), sigma, truncate=3.0)
    return np.round(blurred).clip(0, 255).astype(np.uint8)


PREPROCESSORS: dict[str, Preprocess] = {
    "none": none,
    "reference_only": none,  # the reference as it is: encoded by the VAE, not detected
    "invert": invert,
    "canny": canny,
    "tile_resample": tile_resample,
    "lineart_standard": lineart_standard,
    "binary": binary,
    "threshold": threshold,
    "blur_gaussian": blur_gaussian,
}


def preprocess(module: str, image: Pixels, res: float, a: float, b: float) -> Pixels:
    """The detected map of preprocessor `module` (its name or label)."""
    return PREPROCESSORS[module_named(module).name](image, res, a, b)
