"""Colour correction: A1111's ``img2img_color_correction``, used to keep a sequence's colours.

img2img drifts in colour from frame to frame, which a video shows as flicker. A1111's fix,
done here the same way: match each result's colour histograms to a reference image in LAB
space (scikit-image's ``match_histograms``), then keep the result's own luminosity and take
only hue and saturation from the matched image (the "luminosity" blend), so detail and
lighting stay as painted. For a sequence the reference is its first finished frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

Lab = NDArray[np.float64]
_LUMA = np.array([0.3, 0.59, 0.11])
"""The weights of the W3C compositing spec's Lum(), which the luminosity blend uses."""


@dataclass(frozen=True)
class ColorReference:
    """A reference's colours, as histogram matching needs them: per CIE LAB channel, its
    distinct values and their cumulative quantiles. A clip corrects every frame towards its
    key frame, so these are worked out once, not once per frame as ``match_histograms``
    would."""

    values: tuple[NDArray[np.float64], ...]
    quantiles: tuple[NDArray[np.float64], ...]


def color_reference(image: Image.Image) -> ColorReference:
    """The reference's colours, to correct later images towards."""
    lab = to_lab(image)
    values, quantiles = [], []
    for channel in range(lab.shape[-1]):
        distinct, counts = np.unique(lab[..., channel], return_counts=True)
        values.append(distinct)
        quantiles.append(np.cumsum(counts) / counts.sum())
    return ColorReference(tuple(values), tuple(quantiles))


def to_lab(image: Image.Image) -> Lab:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(image.convert("RGB")))


def apply_color_correction(reference: ColorReference, image: Image.Image) -> Image.Image:
    """`image` with the colour distribution of `reference` and its own luminosity."""
    from skimage.color import lab2rgb, rgb2lab

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    with warnings.catch_warnings():
        # Matched histograms can leave a few colours outside sRGB; clipping them is right.
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        matched = lab2rgb(match_histograms(rgb2lab(rgb), reference))
    blended = _set_luminosity(matched, _luminosity(rgb))
    return Image.fromarray(np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def match_histograms(lab: Lab, reference: ColorReference) -> Lab:
    """scikit-image's ``match_histograms(lab, reference_lab, channel_axis=-1)``, the same
    arithmetic, with the reference's side computed beforehand."""
    matched = np.empty_like(lab)
    for channel, (values, quantiles) in enumerate(
        zip(reference.values, reference.quantiles, strict=True)
    ):
        own = lab[..., channel]
        _, lookup, counts = np.unique(own, return_inverse=True, return_counts=True)
        own_quantiles = np.cumsum(counts) / own.size
        matched[..., channel] = np.interp(own_quantiles, quantiles, values)[lookup].reshape(
            own.shape
        )
    return matched


def _luminosity(rgb: NDArray[np.float64]) -> NDArray[np.float64]:
    return rgb @ _LUMA


def _set_luminosity(rgb: NDArray[np.float64], lum: NDArray[np.float64]) -> NDArray[np.float64]:
    """W3C SetLum: shift `rgb` to luminosity `lum`, then bring it back into gamut (ClipColor)
    by scaling towards the grey of that luminosity, which keeps the hue. Only the pixels out
    of gamut need ClipColor, a few in a painting: the rest is left alone."""
    shifted = rgb + (lum - _luminosity(rgb))[..., None]
    low = shifted.min(axis=-1)
    high = shifted.max(axis=-1)
    out = (low < 0.0) | (high > 1.0)
    if out.any():
        shifted[out] = _clip_color(shifted[out], low[out, None], high[out, None])
    return shifted


def _clip_color(
    rgb: NDArray[np.float64], low: NDArray[np.float64], high: NDArray[np.float64]
) -> NDArray[np.float64]:
    grey = _luminosity(rgb)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(low < 0.0, grey + (rgb - grey) * grey / (grey - low), rgb)
        above = np.where(high > 1.0, grey + (below - grey) * (1.0 - grey) / (high - grey), below)
    return np.nan_to_num(above, nan=0.0)
