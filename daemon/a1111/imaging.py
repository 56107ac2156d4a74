"""Loading untrusted images safely and sizing them the way A1111's img2img does.

Everything here is pure Pillow + numpy so it can be tested without torch. Two concerns live
side by side because they meet at the same moment, when a dropped file becomes the engine's
input:

* decoding hostile files (wrong extension, truncated, decompression bombs, CMYK, 16-bit,
  palette, animated, EXIF-rotated) into a predictable RGB/RGBA image, and
* the output-size arithmetic and A1111's four resize modes.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from daemon.a1111.sizes import ResizeMode
from daemon.errors import InputError, UnreadableInput
from daemon.intake.names import image_kinds

DEFAULT_MAX_PIXELS: int = 64_000_000
"""Cap on width*height. Pillow only warns at ~89 MP and refuses at ~179 MP; a 64 MP RGBA image
already needs 256 MB decoded, so anything bigger in a hot folder is treated as hostile."""

# Formats we let Pillow decode. Anything else (EPS runs Ghostscript, exotic plugins have had
# parser bugs) is refused even if Pillow could open it. GIF and BMP are not in the inbox's
# extension list but arrive renamed often enough (messages name only what the inbox takes).
# "JPEG" also admits MPO (many phone JPEGs): Pillow's JPEG opener returns an MpoImageFile.
_ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP")

# What Pillow and its codecs raise for corrupt or truncated data. Deliberately not a bare
# `Exception`: MemoryError and programming errors must not be blamed on the file.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # Pillow's plugins use it for "not a valid file"
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
)

# What Pillow's PNG reader says (a ValueError) when a zTXt/iTXt chunk inflates past
# PngImagePlugin.MAX_TEXT_CHUNK, or all text chunks together past MAX_TEXT_MEMORY (Pillow
# 10+: "Decompressed data too large for …"; older: "Decompressed Data Too Large").
_TEXT_BOMB_MESSAGES = ("decompressed data too large", "too much memory used in text chunks")

_ALPHA_MODES: frozenset[str] = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an RGB or RGBA image, refusing anything hostile or broken.

    The type comes from the content, not the extension. The pixel count is checked right
    after the lazy open (header only) and before any pixel data is decoded, so a tiny file
    that claims 20000x20000 costs nothing. The image is then fully decoded so a truncated
    file fails here rather than half-way through a job (Pillow's ``LOAD_TRUNCATED_IMAGES``
    is left False on purpose). Animated files give their first frame; EXIF orientation is
    applied; CMYK, 16-bit greyscale, palette, LA and 1-bit images are normalised.

    Raises :class:`InputError` for anything that is not a decodable image within the cap.
    """
    image = _decode(path, max_pixels=max_pixels)
    return image.convert("RGB") if image.mode == "L" else image


def flatten_on_white(img: Image.Image) -> Image.Image:
    """Composite a transparent image onto white and return RGB; opaque modes just convert.

    A1111 flattens transparent img2img inputs onto white (``images.flatten(img, "#ffffff")``):
    the VAE has no alpha channel, and black (what a plain ``convert("RGB")`` leaves behind
    transparent pixels with zero colour) would bleed dark halos into the result.
    """
    if img.mode == "RGB":
        return img
    if not _has_alpha(img):
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    # Same operation as A1111: paste through the alpha onto an opaque white canvas.
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    background.paste(rgba, mask=rgba)
    return background.convert("RGB")


def load_mask(
    path: Path, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, str | None]:
    """Load an inpainting mask as mode ``L`` at ``size`` (white = repaint, black = keep).

    A1111's rule: a mask with real transparency (some alpha < 255) is its alpha channel, so
    a layer exported from a paint program with strokes on a transparent background works;
    anything else is converted to greyscale. A mask of another size is resized (LANCZOS,
    aspect ratio ignored, as A1111 does); the second value then says so for the job report.
    """
    decoded = _decode(path, max_pixels=max_pixels)
    if decoded.mode == "RGBA" and _has_real_transparency(decoded):
        mask = decoded.getchannel("A")
    else:
        mask = decoded.convert("L")
    if mask.size == tuple(size):
        return mask, None
    note = f"mask was {mask.width}x{mask.height}, resized to {size[0]}x{size[1]}"
    return mask.resize((size[0], size[1]), Image.Resampling.LANCZOS), note


def _decode(path: Path, *, max_pixels: int) -> Image.Image:
    """Open, size-check, fully decode and orient ``path``; return it as RGB, RGBA or L."""
    name = path.name
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped Pillow's global switch; truncated files would then decode into
        # half-grey images and be processed as if nothing were wrong.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(
            f"{name} cannot be read ({exc.strerror or exc}); check that it is a readable file."
        ) from exc
    with fh:
        try:
            with warnings.catch_warnings():
                # Pillow warns (above ~89 MP) inside Image.open; our own cap below decides,
                # so the warning is only noise. (catch_warnings is process-wide; racing it
                # from another thread can at worst leave this one filter in place.)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(fh, formats=_ALLOWED_FORMATS)
        except Image.DecompressionBombError as exc:
            # Pillow refuses above twice its MAX_IMAGE_PIXELS, whatever our cap says.
            pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) or max_pixels
            raise InputError(
                f"{name} has more pixels than the limit of {min(max_pixels, pillow_limit):,} "
                "pixels (a possible decompression bomb); shrink it and drop it again."
            ) from exc
        except _DECODE_ERRORS as exc:
            _refuse_text_bomb(name, exc)
            raise UnreadableInput(
                f"{name} is not an image img2imgd can read (it takes {image_kinds()} images, "
                "known by their content); save it as PNG or JPEG and drop it again."
            ) from exc
        with opened:
            _check_pixel_count(name, opened.size, max_pixels)
            try:
                # Image.open leaves an animated file on frame 0, so load() decodes exactly
                # the first frame.
                opened.load()
                oriented = ImageOps.exif_transpose(opened) or opened
                result = _standard_mode(oriented)
            except _DECODE_ERRORS as exc:
                _refuse_text_bomb(name, exc)
                raise UnreadableInput(
                    f"{name} is truncated or corrupt ({exc}); export it again and drop it again."
                ) from exc
            # Detach from the file handle that is about to close.
            return result.copy() if result is opened else result


def _refuse_text_bomb(name: str, exc: BaseException) -> None:
    """A PNG text chunk that inflates to megabytes is built to exhaust memory: the file's
    fault, said as such (not "corrupt", and not worth the retries a paused writer gets)."""
    if isinstance(exc, ValueError) and str(exc).lower().startswith(_TEXT_BOMB_MESSAGES):
        limit = PngImagePlugin.MAX_TEXT_CHUNK // (1024 * 1024)
        raise InputError(
            f"{name} has PNG text metadata that decompresses to more than {limit} MB (a "
            "possible decompression bomb); save the image again without its metadata and drop "
            "it again."
        ) from exc


def _check_pixel_count(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InputError(
            f"{name} is {width}x{height} ({width * height:,} pixels), more than the limit of "
            f"{max_pixels:,} pixels; shrink it and drop it again."
        )


def _has_real_transparency(rgba: Image.Image) -> bool:
    """True when some pixel of an RGBA image is not fully opaque (A1111's mask test)."""
    lowest, _highest = rgba.getchannel("A").getextrema()
    return isinstance(lowest, (int, float)) and lowest < 255


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (
        img.mode in {"P", "L", "RGB"} and "transparency" in img.info
    )


def _standard_mode(img: Image.Image) -> Image.Image:
    """Normalise any decoded mode to RGB, RGBA or L (greyscale kept so masks stay exact)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(img)
    if mode == "F":
        return _float_to_l(img)
    if _has_alpha(img):
        # Palette/greyscale/RGB with a tRNS chunk, LA, PA: transparency survives as alpha.
        return img if mode == "RGBA" else img.convert("RGBA")
    if mode in {"RGB", "L"}:
        return img
    if mode == "1":
        return img.convert("L")
    # CMYK, YCbCr, LAB, HSV, RGBX, opaque palette.
    return img.convert("RGB")


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """16-bit greyscale to 8 bits by scaling 0..65535 onto 0..255.

    Pillow's own ``convert("L")`` clips instead of scaling, so almost every 16-bit image
    would come out white. Mode ``I`` (32-bit) is what Pillow uses for 16-bit PNGs in some
    versions and for 16-bit TIFFs, so it is read as 16-bit data too (values clipped to it).
    """
    values = np.asarray(img).astype(np.float64)
    scaled = np.rint(np.clip(values, 0, 65535) / 257.0)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _float_to_l(img: Image.Image) -> Image.Image:
    """32-bit float greyscale: 0..1 data is scaled to 0..255, anything else clipped to it."""
    values = np.nan_to_num(np.asarray(img).astype(np.float64))
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8), mode="L")


# --------------------------------------------------------------------------------------------
# Resize modes (the modes themselves: daemon.a1111.sizes)
# --------------------------------------------------------------------------------------------


def resize_image(img: Image.Image, mode: ResizeMode, width: int, height: int) -> Image.Image:
    """A1111's ``images.resize_image`` (without upscalers), operation for operation.

    * JUST_RESIZE: stretch to ``width`` x ``height`` with LANCZOS.
    * CROP_AND_RESIZE: scale to cover, keeping the aspect ratio, centre, crop the excess.
    * RESIZE_AND_FILL: scale to fit inside, centre, then fill the empty bands by stretching
      the resized image's outermost row/column (a zero-height resize box, as A1111 does).
    * LATENT_UPSCALE: the engine interpolates the latent; here the image only goes to its own
      size rounded down to multiples of 8 (min 8), the size the VAE encodes at.

    One deliberate difference: A1111 pastes onto an RGB canvas whatever the input mode; here
    the canvas has the input's mode, so a mode-``L`` mask stays ``L`` (same values).
    """
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    img = _resizable(img)
    lanczos = Image.Resampling.LANCZOS

    if mode is ResizeMode.JUST_RESIZE:
        return img.resize((width, height), lanczos)

    if mode is ResizeMode.LATENT_UPSCALE:
        own = (max(8, img.width - img.width % 8), max(8, img.height - img.height % 8))
        return img.copy() if own == img.size else img.resize(own, lanczos)

    ratio = width / height
    src_ratio = img.width / img.height
    canvas = Image.new(img.mode, (width, height))

    if mode is ResizeMode.CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else img.width * height // img.height
        src_h = height if ratio <= src_ratio else img.height * width // img.width
        resized = img.resize((src_w, src_h), lanczos)
        canvas.paste(resized, (width // 2 - src_w // 2, height // 2 - src_h // 2))
        return canvas

    # RESIZE_AND_FILL
    x, y, src_w, src_h = fill_placement(img.size, width, height)
    resized = img.resize((src_w, src_h), lanczos)
    canvas.paste(resized, (x, y))
    if ratio < src_ratio:
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            top = resized.resize((width, fill_height), lanczos, box=(0, 0, width, 0))
            bottom_box = (0, resized.height, width, resized.height)
            bottom = resized.resize((width, fill_height), lanczos, box=bottom_box)
            canvas.paste(top, (0, 0))
            canvas.paste(bottom, (0, fill_height + src_h))
    elif ratio > src_ratio:
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            left = resized.resize((fill_width, height), lanczos, box=(0, 0, 0, height))
            right_box = (resized.width, 0, resized.width, height)
            right = resized.resize((fill_width, height), lanczos, box=right_box)
            canvas.paste(left, (0, 0))
            canvas.paste(right, (fill_width + src_w, 0))
    return canvas


def fill_placement(size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Resize and Fill's placement of a ``size`` image on a ``width`` x ``height`` canvas:
    (left, top, scaled width, scaled height); the bands around it are the fill."""
    ratio, src_ratio = width / height, size[0] / size[1]
    src_w = width if ratio < src_ratio else size[0] * height // size[1]
    src_h = height if ratio >= src_ratio else size[1] * width // size[0]
    return width // 2 - src_w // 2, height // 2 - src_h // 2, src_w, src_h


def _resizable(img: Image.Image) -> Image.Image:
    """LANCZOS needs RGB, RGBA or L (and friends); bring palette/1-bit/CMYK images there."""
    if img.mode in {"RGB", "RGBA", "L"}:
        return img
    return img.convert("RGBA") if _has_alpha(img) else img.convert("RGB")
