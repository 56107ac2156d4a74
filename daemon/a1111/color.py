"""Colour correction: A1111's ``img2img_color_correction``, used to keep a sequence's colours.

img2img drifts in colour from frame to frame, which a video shows as flicker. A1111's fix,
done here the same way: match each result's colour histograms to a reference image in LAB
space (scikit-image's ``match_histograms``), then keep the result's own luminosity and take
only hue and saturation from the matched image (the "luminosity" blend), so detail and
lighting stay as painted. For a sequence the reference is its first finished frame.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray
from PIL import Image

Colors = NDArray[np.float64]
"""A reference's colours: its pixels in CIE LAB."""
_LUMA = np.array([0.3, 0.59, 0.11])
"""The weights of the W3C compositing spec's Lum(), which the luminosity blend uses."""


def color_reference(image: Image.Image) -> Colors:
    """The reference's colours, in LAB, to correct later images towards."""
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(image.convert("RGB")))


def apply_color_correction(reference: Colors, image: Image.Image) -> Image.Image:
    """`image` with the colour distribution of `reference` and its own luminosity."""
    from skimage.color import lab2rgb, rgb2lab
    from skimage.exposure import match_histograms

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    with warnings.catch_warnings():
        # Matched histograms can leave a few colours outside sRGB; clipping them is right.
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        matched = lab2rgb(match_histograms(rgb2lab(rgb), reference, channel_axis=-1))
    blended = _set_luminosity(matched, _luminosity(rgb))
    return Image.fromarray(np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def _luminosity(rgb: NDArray[np.float64]) -> NDArray[np.float64]:
    return rgb @ _LUMA


def _set_luminosity(rgb: NDArray[np.float64], lum: NDArray[np.float64]) -> NDArray[np.float64]:
    """W3C SetLum: shift `rgb` to luminosity `lum`, then bring it back into gamut (ClipColor)
    by scaling towards the grey of that luminosity, which keeps the hue."""
    shifted = rgb + (lum - _luminosity(rgb))[..., None]
    grey = _luminosity(shifted)[..., None]
    low = shifted.min(axis=-1, keepdims=True)
    high = shifted.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(low < 0.0, grey + (shifted - grey) * grey / (grey - low), shifted)
        above = np.where(high > 1.0, grey + (below - grey) * (1.0 - grey) / (high - grey), below)
    return np.nan_to_num(above, nan=0.0)
