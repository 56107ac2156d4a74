"""Tests for daemon.a1111.masks: A1111's inpaint pre- and postprocessing steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from daemon.a1111.imaging import resize_image
from daemon.a1111.masks import (
    blend_sketch_for_inpaint,
    composite_sketch,
    expand_to_aspect,
    fill_masked,
    mask_bbox,
    overlay_original,
    paste_back,
    prepare_mask,
    sketch_mask,
)
from daemon.a1111.sizes import ResizeMode

DATA = Path(__file__).parent / "data"


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(DATA / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def mask() -> Image.Image:
    return Image.open(DATA / "astronaut.mask.png").convert("L")


@pytest.fixture(scope="module")
def sketch() -> Image.Image:
    return Image.open(DATA / "astronaut.sketch.png").convert("RGBA")


def _dot(size: int = 41) -> Image.Image:
    """A single white pixel in the centre of a black square."""
    img = Image.new("L", (size, size), 0)
    img.putpixel((size // 2, size // 2), 255)
    return img


# --------------------------------------------------------------------------------------------
# prepare_mask
# --------------------------------------------------------------------------------------------


def test_prepare_mask_without_changes_is_identity(mask: Image.Image) -> None:
    out = prepare_mask(mask, invert=False, blur=0)
    assert out.mode == "L" and out is not mask
    assert np.array_equal(_array(out), _array(mask))


def test_prepare_mask_invert(mask: Image.Image) -> None:
    out = prepare_mask(mask, invert=True, blur=0)
    assert np.array_equal(_array(out), 255 - _array(mask))


def test_prepare_mask_blur_is_a1111s_separable_gaussian() -> None:
    """A dot blurs into the outer product of the cv2 kernel A1111 uses (sigma 4, 21 taps)."""
    out = _array(prepare_mask(_dot(), invert=False, blur=4))
    size = 2 * int(2.5 * 4 + 0.5) + 1
    assert size == 21
    x = np.arange(size) - size // 2
    kernel = np.exp(-(x**2) / (2 * 4.0**2))
    kernel /= kernel.sum()
    # Two 8-bit passes: x first (rounded), then y.
    row = np.rint(255 * kernel)
    expected = np.rint(np.outer(kernel, row))
    centre = 20
    window = out[centre - 10 : centre + 11, centre - 10 : centre + 11]
    assert np.abs(window - expected).max() <= 1
    # Nothing beyond the kernel's reach (10 px) in either axis.
    assert out[:, : centre - 10].max() == 0 and out[: centre - 10, :].max() == 0
    assert out[:, centre + 11 :].max() == 0 and out[centre + 11 :, :].max() == 0


def test_prepare_mask_blur_feathers_the_sample_mask(mask: Image.Image) -> None:
    blurred = _array(prepare_mask(mask, invert=False, blur=4))
    original = _array(mask)
    soft = (blurred > 0) & (blurred < 255)
    assert soft.sum() > 1000  # the edge became a ramp
    assert not ((original > 0) & (original < 255)).any()
    # Mass is (nearly) preserved and the blur stays within the kernel's reach.
    assert abs(blurred.sum() - original.sum()) / original.sum() < 0.01
    ys, xs = np.nonzero(blurred)
    oys, oxs = np.nonzero(original)
    assert ys.min() >= oys.min() - 10 and xs.max() <= oxs.max() + 10


def test_prepare_mask_invert_then_blur_and_rejects_negative(mask: Image.Image) -> None:
    both = prepare_mask(mask, invert=True, blur=4)
    blurred = prepare_mask(mask, invert=False, blur=4)
    assert np.abs(_array(both) - (255 - _array(blurred))).max() <= 1
    with pytest.raises(ValueError):
        prepare_mask(mask, invert=False, blur=-1)


# --------------------------------------------------------------------------------------------
# mask_bbox, expand_to_aspect
# --------------------------------------------------------------------------------------------


def _nonzero_bounds(mask: Image.Image) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.asarray(mask))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_mask_bbox_on_sample(mask: Image.Image) -> None:
    x1, y1, x2, y2 = _nonzero_bounds(mask)
    assert mask_bbox(mask, 0) == (x1, y1, x2, y2)
    assert mask_bbox(mask, 32) == (
        max(x1 - 32, 0),
        max(y1 - 32, 0),
        min(x2 + 32, 512),
        min(y2 + 32, 512),
    )
    assert mask_bbox(mask, 10_000) == (0, 0, 512, 512)  # clamped to the image


def test_mask_bbox_empty_and_corner() -> None:
    assert mask_bbox(Image.new("L", (64, 64), 0), 8) is None
    corner = Image.new("L", (64, 64), 0)
    corner.paste(255, (56, 0, 64, 4))
    assert mask_bbox(corner, 8) == (48, 0, 64, 12)


def test_expand_to_aspect_a1111_example() -> None:
    # From A1111's docstring: a 128x32 region processed at 512x512 becomes 128x128.
    assert expand_to_aspect((100, 200, 228, 232), 512, 512, 1024, 1024) == (100, 152, 228, 280)


def test_expand_to_aspect_on_sample(mask: Image.Image) -> None:
    region = mask_bbox(mask, 32)
    assert region is not None
    for width, height in [(512, 512), (768, 512), (512, 768)]:
        x1, y1, x2, y2 = expand_to_aspect(region, width, height, 512, 512)
        # Contains the padded bbox, stays inside the image, has the processing ratio.
        assert x1 <= region[0] and y1 <= region[1] and x2 >= region[2] and y2 >= region[3]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
        assert abs((x2 - x1) / (y2 - y1) - width / height) < 0.02


def test_expand_to_aspect_shifts_back_inside_and_clamps() -> None:
    # Wide strip at the bottom edge: grows upwards instead of past the edge.
    assert expand_to_aspect((0, 90, 40, 100), 512, 512, 100, 100) == (0, 60, 40, 100)
    # Too tall for the image width: clamped, so not quite the requested ratio.
    assert expand_to_aspect((40, 0, 60, 100), 512, 512, 80, 100) == (0, 0, 80, 100)
    with pytest.raises(ValueError):
        expand_to_aspect((5, 5, 5, 10), 512, 512, 64, 64)


# --------------------------------------------------------------------------------------------
# fill_masked
# --------------------------------------------------------------------------------------------


def test_fill_masked_fills_hole_with_surrounding_colour() -> None:
    image = Image.new("RGB", (128, 64), (200, 30, 30))
    image.paste((30, 30, 200), (64, 0, 128, 64))  # left red, right blue
    image.paste((0, 255, 0), (16, 16, 48, 48))  # green content to be removed, inside red
    hole = Image.new("L", image.size, 0)
    hole.paste(255, (16, 16, 48, 48))
    out = _array(fill_masked(image, hole))
    original = _array(image)
    keep = _array(hole) == 0
    assert np.abs(out[keep] - original[keep]).max() <= 1
    filled = out[16:48, 16:48]
    assert filled[..., 1].max() < 60  # the green is gone...
    assert filled[..., 0].min() > 120  # ...replaced by reddish surroundings, not black
    assert filled[..., 0].mean() > filled[..., 2].mean() + 50


def test_fill_masked_on_sample_has_no_black_holes(
    astronaut: Image.Image, mask: Image.Image
) -> None:
    out = _array(fill_masked(astronaut, mask))
    original = _array(astronaut)
    masked = _array(mask) == 255
    assert np.abs(out[~masked] - original[~masked]).max() <= 1
    # The face's dark collar (17 % of the hole is near-black) is gone, not turned into a hole.
    assert (original[masked].sum(axis=-1) < 30).mean() > 0.1
    assert (out[masked].sum(axis=-1) < 30).mean() < 0.01
    # The hole takes the colour of its surroundings: compare with a ~24-px ring around it.
    ring = (_array(mask.filter(ImageFilter.BoxBlur(24))) > 0) & ~masked
    assert ring.sum() > 5000
    assert np.abs(out[masked].mean(axis=0) - original[ring].mean(axis=0)).max() < 40
    # And it is smooth: far less detail than the original had there.
    assert out[masked].std(axis=0).mean() < original[masked].std(axis=0).mean()


# --------------------------------------------------------------------------------------------
# overlay_original, paste_back
# --------------------------------------------------------------------------------------------


def test_overlay_original_keeps_unmasked_pixels_exactly(
    astronaut: Image.Image, mask: Image.Image
) -> None:
    result = Image.new("RGB", astronaut.size, (12, 200, 99))
    soft = prepare_mask(mask, invert=False, blur=4)
    out = _array(overlay_original(result, astronaut, soft))
    m = _array(soft)
    assert np.array_equal(out[m == 0], _array(astronaut)[m == 0])
    assert np.array_equal(out[m == 255], _array(result)[m == 255])
    # In between: a blend, on the segment between the two colours.
    mid = (m > 60) & (m < 200)
    assert mid.any()
    lo = np.minimum(_array(astronaut), _array(result))[mid] - 2
    hi = np.maximum(_array(astronaut), _array(result))[mid] + 2
    assert ((out[mid] >= lo) & (out[mid] <= hi)).all()


def test_paste_back_places_processed_crop(astronaut: Image.Image) -> None:
    processed = Image.new("RGB", (512, 512), (255, 0, 255))
    region = (100, 50, 300, 250)
    out = _array(paste_back(processed, astronaut, region))
    original = _array(astronaut)
    assert (out[50:250, 100:300] == (255, 0, 255)).all()
    outside = np.ones((512, 512), dtype=bool)
    outside[50:250, 100:300] = False
    assert np.array_equal(out[outside], original[outside])


def test_only_masked_round_trip_lands_on_the_same_pixels(
    astronaut: Image.Image, mask: Image.Image
) -> None:
    """Crop -> Resize and fill to W x H -> paste back reproduces the crop in place."""
    region = mask_bbox(mask, 32)
    assert region is not None
    region = expand_to_aspect(region, 768, 512, 512, 512)
    crop = astronaut.crop(region)
    processed = resize_image(crop, ResizeMode.RESIZE_AND_FILL, 768, 512)
    out = _array(paste_back(processed, astronaut, region))
    x1, y1, x2, y2 = region
    diff = np.abs(out[y1:y2, x1:x2] - _array(astronaut)[y1:y2, x1:x2])
    assert diff.mean() < 6  # only resampling blur, no shift


def test_paste_back_rejects_region_outside(astronaut: Image.Image) -> None:
    with pytest.raises(ValueError):
        paste_back(astronaut, astronaut, (400, 400, 600, 600))


# --------------------------------------------------------------------------------------------
# Sketch and inpaint sketch
# --------------------------------------------------------------------------------------------


def test_composite_sketch_on_sample(astronaut: Image.Image, sketch: Image.Image) -> None:
    out, note = composite_sketch(astronaut, sketch)
    assert note is None and out.mode == "RGB" and out.size == (512, 512)
    px, alpha = _array(out), _array(sketch)[..., 3]
    assert np.array_equal(px[alpha == 0], _array(astronaut)[alpha == 0])
    assert np.array_equal(px[alpha == 255], _array(sketch)[..., :3][alpha == 255])


def test_composite_sketch_resizes_with_note(astronaut: Image.Image, sketch: Image.Image) -> None:
    small = sketch.resize((256, 256), Image.Resampling.LANCZOS)
    out, note = composite_sketch(astronaut, small)
    assert out.size == (512, 512)
    assert note == "sketch was 256x256, resized to 512x512"


def test_sketch_mask_is_stroke_alpha(sketch: Image.Image) -> None:
    m = sketch_mask(sketch, (512, 512))
    assert m.mode == "L" and m.size == (512, 512)
    alpha = _array(sketch)[..., 3]
    assert np.array_equal(_array(m) > 0, alpha > 0)
    assert np.array_equal(_array(m), alpha)
    # Half-opaque strokes give a half-strength mask.
    faint = sketch.copy()
    faint.putalpha(Image.eval(sketch.getchannel("A"), lambda a: a // 2))
    assert _array(sketch_mask(faint, (512, 512))).max() == 127
    assert sketch_mask(sketch, (256, 128)).size == (256, 128)


def test_blend_sketch_for_inpaint(astronaut: Image.Image, sketch: Image.Image) -> None:
    sketched, _ = composite_sketch(astronaut, sketch)
    m = sketch_mask(sketch, astronaut.size)
    sharp = _array(blend_sketch_for_inpaint(astronaut, sketched, m, 0))
    alpha = _array(m)
    assert np.array_equal(sharp[alpha == 255], _array(sketched)[alpha == 255])
    assert np.array_equal(sharp[alpha == 0], _array(astronaut)[alpha == 0])

    soft = blend_sketch_for_inpaint(astronaut, sketched, m, 4)
    expected = Image.composite(
        sketched.filter(ImageFilter.GaussianBlur(4)),
        astronaut,
        m.filter(ImageFilter.GaussianBlur(4)),
    )
    assert np.array_equal(_array(soft), _array(expected))
    far = _array(m.filter(ImageFilter.GaussianBlur(4))) == 0
    assert np.array_equal(_array(soft)[far], _array(astronaut)[far])
