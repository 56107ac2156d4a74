"""The model-free preprocessors, as the extension runs them: pure numpy / Pillow / SciPy.

Each takes the raw control image (``uint8``, H×W×C) and the unit's ``processor_res``,
``threshold_a`` and ``threshold_b`` (already bounded by :mod:`daemon.controlnet.units`) and
returns the detected map, three channels, which :func:`daemon.controlnet.images.fit_control`
then fits to the painting. The extension runs these on OpenCV, which img2imgd does not
depend on. Where that changes pixels:

* ``canny``: scikit-image's Canny on the image's luma, with no smoothing and OpenCV's 3×3
  Sobel, where OpenCV takes, per pixel, the channel with the strongest gradient and the L1
  norm (|gx| + |gy|). Same thresholds, same hysteresis: thin edges in the same places, with
  fewer weak edges than OpenCV finds on colour edges;
* ``blur_gaussian``, ``lineart_standard``: SciPy's Gaussian with OpenCV's kernel radius and
  border (reflect 101): the same to within rounding;
* ``binary``: Otsu's threshold computed in numpy; Pillow's luma, as OpenCV's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from daemon.controlnet.images import Pixels, hwc3, otsu_threshold, resize_to_64, resize_with_pad
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
    from skimage.feature import canny as skimage_canny

    padded, remove_pad = resize_with_pad(image, int(res))
    grey = _luma(padded).astype(np.float64)
    edges = skimage_canny(grey, sigma=0.0, low_threshold=int(low), high_threshold=int(high))
    return remove_pad(hwc3(np.where(edges, 255, 0).astype(np.uint8)))


def tile_resample(image: Pixels, _res: float, rate: float, _b: float) -> Pixels:
    """Shrunk by the down-sampling rate (area filter); under 1.1 left as it is."""
    image = hwc3(image)
    if rate < 1.1:
        return image
    height, width = image.shape[:2]
    size = (int(width / rate), int(height / rate))
    channels = [
        np.asarray(Image.fromarray(image[:, :, c]).resize(size, Image.Resampling.BOX))
        for c in range(3)
    ]
    return np.stack(channels, axis=2)


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
