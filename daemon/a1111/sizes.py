"""A1111's img2img size arithmetic and resize modes: pure numbers, no image library.

Kept apart from :mod:`daemon.a1111.imaging` so that the profile schema (which names the
resize modes) and the size decisions of *prepare* import neither Pillow nor numpy.
"""

from __future__ import annotations

import math
from enum import Enum

ASPECT_SLACK = 0.01  # fit_size: ratio error (log) traded for pixels


def fit_size(width: int, height: int, *, max_pixels: int, multiple: int = 8) -> tuple[int, int]:
    """The output size for an input of ``width`` x ``height`` at a pixel budget.

    Candidates keep the aspect ratio to within one step: one side is a multiple of
    ``multiple`` bracketing the exact-budget size (``width * sqrt(max_pixels / area)``), the
    other a multiple bracketing what that side implies (``w * height / width``), built from
    the width and from the height; each side is at least ``multiple``. Of those within the
    budget, the ones within one percent of the best aspect ratio compete, and the largest
    area wins. So 451x300 at 512*512 gives 624x416, and 256x256 scales up to 512x512.

    The aspect ratio comes first (a folder of mixed inputs must keep each one's shape; at
    small sizes one step of 8 px is a large ratio error), then the pixels: chasing the last
    0.5 % of ratio would throw away 5 % of them (980x3949 -> 256x1024, not 248x1000).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    if max_pixels < multiple * multiple:
        raise ValueError(f"max_pixels {max_pixels} is below the minimum {multiple}x{multiple}")
    target = width / height
    scale = math.sqrt(max_pixels / (width * height))

    def brackets(value: float) -> tuple[int, int]:
        below = max(multiple, math.floor(value / multiple) * multiple)
        return below, below + multiple

    candidates: set[tuple[int, int]] = set()
    for w in brackets(width * scale):
        candidates.update((w, h) for h in brackets(w / target))
    for h in brackets(height * scale):
        candidates.update((w, h) for w in brackets(h * target))
    fitting = [(w, h) for w, h in candidates if w * h <= max_pixels]
    if not fitting:
        # A strip so thin that even its short side at `multiple` overflows the bracketing:
        # keep the short side at the minimum and give the long side the whole budget.
        longest = max_pixels // multiple // multiple * multiple
        return (longest, multiple) if width >= height else (multiple, longest)

    def ratio_error(size: tuple[int, int]) -> float:
        return abs(math.log(size[0] / size[1] / target))

    best = min(ratio_error(size) for size in fitting)
    close = [size for size in fitting if ratio_error(size) <= best + ASPECT_SLACK]
    return max(close, key=lambda wh: (wh[0] * wh[1], -ratio_error(wh)))


def scaled_size(width: int, height: int, scale: float, multiple: int = 8) -> tuple[int, int]:
    """A1111's "Resize by": ``int(side * scale)`` rounded down to a multiple of 8 (at least 8)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")

    def side(value: int) -> int:
        scaled = int(value * scale)
        return max(multiple, scaled - scaled % multiple)

    return side(width), side(height)


def aspect_mismatch(src: tuple[int, int], dst: tuple[int, int]) -> float:
    """How far two aspect ratios differ: ``larger / smaller - 1`` (0.0 = same ratio).

    Symmetric, so a landscape and the matching portrait score the same: 451x300 against
    512x512 gives about 0.503, and so does 300x451.
    """
    a = src[0] / src[1]
    b = dst[0] / dst[1]
    return max(a, b) / min(a, b) - 1.0


class ResizeMode(str, Enum):
    """A1111's img2img resize modes; the values are its UI labels (lower-cased)."""

    JUST_RESIZE = "just resize"
    CROP_AND_RESIZE = "crop and resize"
    RESIZE_AND_FILL = "resize and fill"
    LATENT_UPSCALE = "just resize (latent upscale)"

    @classmethod
    def parse(cls, value: int | str | ResizeMode) -> ResizeMode:
        """Accept A1111's API integers 0..3 (also as strings) or a label, case-insensitively."""
        if isinstance(value, ResizeMode):
            return value
        members = list(cls)
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(members):
                return members[value]
        elif isinstance(value, str):
            text = " ".join(value.strip().lower().replace("_", " ").split())
            if text.isdigit() and int(text) < len(members):
                return members[int(text)]
            for member in members:
                if text == member.value:
                    return member
            if text == "latent upscale":
                return cls.LATENT_UPSCALE
        valid = ", ".join(f"{i} or {m.value!r}" for i, m in enumerate(members))
        raise ValueError(f"unknown resize mode {value!r}; valid values are {valid}")
