"""A1111's inpaint preprocessing and postprocessing, as pure Pillow + numpy functions.

The numbered steps refer to "The inpaint pipeline, in order" in the A1111 reference. The
engine strings them together; each function here does one step and is checked on its own.
Masks are mode ``L``: 255 = repaint, 0 = keep.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from daemon.a1111.imaging import resize_image
from daemon.a1111.sizes import ResizeMode

Region = tuple[int, int, int, int]
"""A crop region as (x1, y1, x2, y2), right and bottom exclusive, like Pillow's boxes."""


# --------------------------------------------------------------------------------------------
# Steps 2-3: invert and blur
# --------------------------------------------------------------------------------------------


def prepare_mask(mask: Image.Image, *, invert: bool, blur: int) -> Image.Image:
    """Step 2 (invert for "Inpaint not masked") and step 3 (Gaussian blur by ``blur`` px).

    The blur is A1111's, not Pillow's: A1111 calls ``cv2.GaussianBlur`` with sigma = blur and
    a kernel of ``2*int(2.5*blur + 0.5) + 1`` taps, first along x, then along y, with
    OpenCV's default reflect-101 border and a round to 8 bits after each pass. That is
    reproduced here in numpy (no OpenCV dependency); OpenCV's fixed-point 8-bit path can
    differ from it by one grey level. Pillow's ``GaussianBlur`` is a box-blur approximation
    with a different reach, which would visibly change how far the repaint area feathers.
    ``blur`` 0 leaves the mask unchanged.
    """
    if blur < 0:
        raise ValueError(f"mask blur must be 0 or more, got {blur}")
    result = mask.convert("L")
    if invert:
        result = ImageOps.invert(result)
    if blur == 0:
        return result.copy() if result is mask else result
    values = np.asarray(result)
    values = _blur_axis(values, float(blur), axis=1)  # x, like A1111's (ksize, 1) kernel
    values = _blur_axis(values, float(blur), axis=0)  # then y
    return Image.fromarray(values, mode="L")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """``cv2.getGaussianKernel(2*int(2.5*sigma + 0.5) + 1, sigma)``: sampled and normalised."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def _blur_axis(values: np.ndarray, sigma: float, *, axis: int) -> np.ndarray:
    """One separable Gaussian pass over a 2-D uint8 array along ``axis``."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    # numpy's "reflect" is OpenCV's BORDER_REFLECT_101 (edge pixel not repeated).
    padded = np.pad(values.astype(np.float32), pad, mode="reflect")
    out = np.zeros(values.shape, dtype=np.float32)
    length = values.shape[axis]
    for offset, weight in enumerate(kernel):
        window = [slice(None), slice(None)]
        window[axis] = slice(offset, offset + length)
        out += np.float32(weight) * padded[tuple(window)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Step 4: "only masked" crop region
# --------------------------------------------------------------------------------------------


def mask_bbox(mask: Image.Image, padding: int) -> Region | None:
    """A1111's ``masking.get_crop_region``: bounding box of the non-zero pixels plus
    ``padding`` on every side, clamped to the image. ``None`` for an all-zero mask, where
    A1111 falls back to plain img2img."""
    if padding < 0:
        raise ValueError(f"padding must be 0 or more, got {padding}")
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def expand_to_aspect(
    region: Region,
    processing_width: int,
    processing_height: int,
    image_width: int,
    image_height: int,
) -> Region:
    """A1111's ``masking.expand_crop_region``: grow ``region`` to the W:H aspect ratio.

    The short side grows symmetrically (the odd pixel going to the right/bottom); a region
    pushed past an edge is shifted back inside, and if it is still too big it is clamped to
    the image, so the result can fall short of the exact ratio. Integer arithmetic and
    truncation follow A1111's code so crops land on the same pixels.
    """
    x1, y1, x2, y2 = region
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"crop region {region} is empty")
    ratio_region = (x2 - x1) / (y2 - y1)
    ratio_processing = processing_width / processing_height

    if ratio_region > ratio_processing:
        desired_height = (x2 - x1) / ratio_processing
        diff = int(desired_height - (y2 - y1))
        y1, y2 = _grow_span(y1, y2, diff, image_height)
    else:
        desired_width = (y2 - y1) * ratio_processing
        diff = int(desired_width - (x2 - x1))
        x1, x2 = _grow_span(x1, x2, diff, image_width)
    return x1, y1, x2, y2


def only_masked_region(mask: Image.Image, padding: int, width: int, height: int) -> Region | None:
    """The part of the picture "only masked" inpainting paints: the prepared (inverted,
    blurred) `mask`'s bounding box plus `padding`, grown to the processing size's aspect
    (`width` x `height`). None for an empty mask (A1111 then paints the whole picture).
    The engine crops the painting to it, and ControlNet its control images."""
    box = mask_bbox(mask, padding)
    if box is None:
        return None
    return expand_to_aspect(box, width, height, mask.width, mask.height)


def _grow_span(start: int, end: int, diff: int, limit: int) -> tuple[int, int]:
    """Widen [start, end) by ``diff`` around its centre, then shift/clamp into [0, limit]."""
    start -= diff // 2
    end += diff - diff // 2
    if end >= limit:
        overshoot = end - limit
        end -= overshoot
        start -= overshoot
    if start < 0:
        end -= start
        start = 0
    if end >= limit:
        end = limit
    return start, end


# --------------------------------------------------------------------------------------------
# Step 6: masked content "fill"
# --------------------------------------------------------------------------------------------


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's ``masking.fill``: replace the masked area with blurred surrounding colours.

    The kept pixels are blurred in premultiplied alpha (so the masked hole, at alpha 0,
    contributes no colour) at decreasing radii and stacked, coarse to fine; the finest layer
    (radius 0) is the kept pixels themselves. The hole thus takes the average colour of its
    neighbourhood instead of the original content, which "fill" exists to remove.
    """
    if image.size != mask.size:
        raise ValueError(f"image {image.size} and mask {mask.size} differ in size")
    size = (image.width, image.height)
    image_mod = Image.new("RGBA", size)
    image_masked = Image.new("RGBa", size)
    image_masked.paste(
        image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L"))
    )
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


# --------------------------------------------------------------------------------------------
# Step 9 and "only masked" paste-back
# --------------------------------------------------------------------------------------------


def overlay_original(result: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Step 9: composite the original back over ``result`` through the (blurred) mask.

    Done as A1111 does it (the original with alpha = 255 - mask, alpha-composited on top),
    so where the mask is 0 the output pixel is the original's exactly, and where it is 255
    it is the result's; in between they blend.
    """
    if not result.size == original.size == mask.size:
        raise ValueError(
            f"result {result.size}, original {original.size} and mask {mask.size} differ in size"
        )
    overlay = Image.new("RGBa", original.size)
    overlay.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    combined = result.convert("RGBA")
    combined.alpha_composite(overlay.convert("RGBA"))
    return combined.convert("RGB")


def paste_back(processed: Image.Image, original: Image.Image, region: Region) -> Image.Image:
    """ "Only masked": put the W x H ``processed`` crop back into a copy of ``original``.

    The crop is resized to the region's size with Crop and resize (LANCZOS), which is what
    A1111's ``uncrop`` does: it undoes the Resize and fill used on the way in even when the
    region was clamped at an image edge and so is not exactly W:H.
    """
    x1, y1, x2, y2 = region
    if not (0 <= x1 < x2 <= original.width and 0 <= y1 < y2 <= original.height):
        raise ValueError(f"region {region} is not inside the {original.size} image")
    patch = resize_image(processed, ResizeMode.CROP_AND_RESIZE, x2 - x1, y2 - y1)
    out = original.copy()
    out.paste(patch.convert(out.mode), (x1, y1))
    return out


# --------------------------------------------------------------------------------------------
# Sketch and inpaint sketch
# --------------------------------------------------------------------------------------------


def composite_sketch(image: Image.Image, sketch: Image.Image) -> tuple[Image.Image, str | None]:
    """Sketch: the scribble layer (RGBA, transparent where untouched) baked onto the image.

    A sketch of another size is resized to the image's size first (LANCZOS) and the second
    value says so, as for masks.
    """
    layer, note = _sketch_at(sketch, image.size)
    canvas = image.convert("RGBA")
    canvas.alpha_composite(layer)
    return canvas.convert("RGB"), note


def sketch_mask(sketch: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Inpaint sketch: the mask is where the strokes are, as strong as the strokes are opaque.

    A1111 derives it from the pixels the strokes changed, scaled by the stroke opacity; with
    the strokes on their own transparent layer that is exactly the layer's alpha channel.
    """
    layer, _ = _sketch_at(sketch, size)
    return layer.getchannel("A")


def blend_sketch_for_inpaint(
    image: Image.Image, sketched: Image.Image, mask: Image.Image, blur: int
) -> Image.Image:
    """Inpaint sketch image: the sketched canvas blended into the original through the mask,
    both blurred by ``blur`` (A1111's ``Image.composite(sketched.filter(GaussianBlur(blur)),
    image, mask.filter(GaussianBlur(blur)))``), so stroke edges are soft before inpainting."""
    if blur < 0:
        raise ValueError(f"blur must be 0 or more, got {blur}")
    if not image.size == sketched.size == mask.size:
        raise ValueError(
            f"image {image.size}, sketched {sketched.size} and mask {mask.size} differ in size"
        )
    gaussian = ImageFilter.GaussianBlur(blur)
    return Image.composite(
        sketched.convert("RGB").filter(gaussian),
        image.convert("RGB"),
        mask.convert("L").filter(gaussian),
    )


def _sketch_at(sketch: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, str | None]:
    layer = sketch.convert("RGBA")
    if layer.size == tuple(size):
        return layer, None
    note = f"sketch was {layer.width}x{layer.height}, resized to {size[0]}x{size[1]}"
    return layer.resize((size[0], size[1]), Image.Resampling.LANCZOS), note
