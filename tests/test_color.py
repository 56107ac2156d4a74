"""Colour correction (A1111's img2img_color_correction), pure image maths."""

from __future__ import annotations

import numpy as np
from PIL import Image

from daemon.a1111.color import _luminosity, apply_color_correction, color_reference, to_lab
from tests.conftest import DATA


def luminosity(image: Image.Image) -> np.ndarray:
    return _luminosity(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)


def test_colours_move_towards_the_reference_and_luminosity_stays() -> None:
    photo = Image.open(DATA / "chelsea.png").convert("RGB").resize((96, 64))
    pixels = np.asarray(photo, dtype=np.float64)
    tinted = Image.fromarray(
        np.clip(pixels * [1.0, 0.7, 0.5] + [40, 0, 0], 0, 255).astype(np.uint8)
    )

    corrected = apply_color_correction(color_reference(photo), tinted)

    def chroma(image: Image.Image) -> np.ndarray:
        """Mean a* and b* (LAB): the colour, apart from the lightness."""
        return to_lab(image)[..., 1:].reshape(-1, 2).mean(axis=0)

    before = np.abs(chroma(tinted) - chroma(photo)).sum()
    assert np.abs(chroma(corrected) - chroma(photo)).sum() < 0.2 * before
    # The painted image's own light and detail are kept (the luminosity blend).
    assert np.abs(luminosity(corrected) - luminosity(tinted)).mean() < 0.02
    assert corrected.size == tinted.size and corrected.mode == "RGB"


def test_an_image_corrected_to_itself_barely_changes() -> None:
    photo = Image.open(DATA / "astronaut.png").convert("RGB").resize((64, 64))
    again = apply_color_correction(color_reference(photo), photo)
    difference = np.abs(np.asarray(again, dtype=int) - np.asarray(photo, dtype=int))
    assert difference.mean() < 2.0


def test_flat_and_extreme_images_stay_in_range() -> None:
    for colour in ((0, 0, 0), (255, 255, 255), (255, 0, 0)):
        flat = Image.new("RGB", (16, 16), colour)
        reference = color_reference(Image.new("RGB", (16, 16), (20, 200, 90)))
        out = np.asarray(apply_color_correction(reference, flat))
        assert out.dtype == np.uint8 and out.shape == (16, 16, 3)


def test_matching_against_a_prepared_reference_is_scikit_images_arithmetic() -> None:
    """The reference's side of the histogram matching is worked out once per clip; the
    result is exactly what scikit-image's ``match_histograms`` gives."""
    from skimage.exposure import match_histograms as skimage_match

    from daemon.a1111.color import match_histograms

    cat = Image.open(DATA / "chelsea.png").convert("RGB").resize((80, 60))
    astronaut = Image.open(DATA / "astronaut.png").convert("RGB").resize((80, 60))
    expected = skimage_match(to_lab(astronaut), to_lab(cat), channel_axis=-1)
    assert np.array_equal(match_histograms(to_lab(astronaut), color_reference(cat)), expected)
