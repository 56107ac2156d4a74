"""Clips whose motion is known exactly: a photo panned and zoomed by an affine map (notes §7.2).

No flow estimator is involved, so the same clip checks the estimator (end-point error) and
scores a method's outputs (warp error by the exact flow, over pixels visible in both frames).
Coordinates are continuous, pixel i spanning [i, i + 1), as Pillow's ``transform`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PAN_AT_512 = (2.0, 0.5)
"""Pan per frame in pixels at 512 px, scaled with the frame size."""
ZOOM = 0.01
"""Zoom in per frame (1 %)."""
DISC_COLOUR = (230, 40, 40)


@dataclass(frozen=True)
class KnownMotionClip:
    """Frames and, for each frame t ≥ 1, its exact flow to frame t − 1 and what both show."""

    frames: tuple[Image.Image, ...]
    backward: tuple[np.ndarray, ...]
    """(H, W, 2) float32, the exact flow of frame t → t − 1, for t ≥ 1 (len = frames − 1)."""
    visible: tuple[np.ndarray, ...]
    """(H, W) bool: the pixel's point is visible in both frames t and t − 1."""


def known_motion_clip(
    photo: Image.Image,
    *,
    size: tuple[int, int],
    frames: int = 24,
    entering: int = 6,
    sprite: Image.Image | None = None,
    pan_at_512: tuple[float, float] = PAN_AT_512,
) -> KnownMotionClip:
    """The photo panned (`pan_at_512` px/frame at 512 px, scaled to `size`) and zoomed
    (~1 %/frame); an object enters.

    During the last ``entering`` frames the sprite (or a flat red disc) comes in from the right
    edge at a whole number of pixels per frame; the pixels it covers, and those whose previous
    position it covered, are not visible in both frames.
    """
    if frames < 2 or not 0 <= entering < frames:
        raise ValueError(f"need frames ≥ 2 and 0 ≤ entering < frames, got {frames}, {entering}")
    width, height = size
    pan = np.array([pan_at_512[0] * width / 512, pan_at_512[1] * height / 512])
    scales = [(1 + ZOOM) ** t for t in range(frames)]
    view = _View.fitting(photo, size, reach=pan * (frames - 1))
    rendered = [view.render(scales[t], pan * t) for t in range(frames)]
    backward = [_affine_flow(size, scales[t - 1], scales[t], pan) for t in range(1, frames)]
    visible = [_inside(size, flow) for flow in backward]
    if entering:
        thing = _Entering.make(size, entering, sprite)
        for t in range(frames - entering, frames):
            step = t - (frames - entering) + 1  # 1 on the first frame that shows it
            rendered[t] = thing.paste(rendered[t], step)
            covered_now, covered_before = thing.cover(step), thing.cover(step - 1)
            flow, seen = backward[t - 1], visible[t - 1]
            seen &= ~covered_now & ~_read(covered_before, flow)
            flow[covered_now] = (thing.speed, 0.0)
    return KnownMotionClip(frames=tuple(rendered), backward=tuple(backward), visible=tuple(visible))


def cut_clip(
    first: Image.Image,
    second: Image.Image,
    *,
    size: tuple[int, int],
    frames: int,
    cut_at: int,
    pan_at_512: tuple[float, float] = PAN_AT_512,
) -> tuple[Image.Image, ...]:
    """A panned clip of ``first`` that switches to ``second`` at frame ``cut_at``."""
    if not 0 < cut_at < frames:
        raise ValueError(f"cut_at must lie inside the clip (0 < cut_at < {frames}), got {cut_at}")
    pan = np.array([pan_at_512[0] * size[0] / 512, pan_at_512[1] * size[1] / 512])
    clip = []
    for t in range(frames):
        photo = first if t < cut_at else second
        view = _View.fitting(photo, size, reach=pan * (frames - 1))
        clip.append(view.render(1.0, pan * t))
    return tuple(clip)


@dataclass(frozen=True)
class _View:
    """Frame point u shows photo point ``centre + scale·((u − c)/zoom + pan)``.

    c is the frame's centre, ``centre`` the photo's; ``scale`` is photo pixels per frame pixel.
    """

    photo: Image.Image
    size: tuple[int, int]
    centre: np.ndarray
    scale: float

    @classmethod
    def fitting(cls, photo: Image.Image, size: tuple[int, int], reach: np.ndarray) -> _View:
        """The largest view that stays inside the photo over the whole pan (zoom only shrinks it).

        A photo larger than the view needs is first shrunk with a filter that averages: the
        affine render samples it point by point, and a point-sampled shrink aliases, so that a
        sub-pixel pan would change the picture, not only move it.
        """
        half_frame = np.array(size, float) / 2 + np.abs(reach) + 1
        scale = float(np.min(np.array(photo.size, float) / 2 / half_frame))
        if scale > 1:
            shrunk = np.maximum(1, np.rint(np.array(photo.size) / scale)).astype(int)
            photo = photo.resize((int(shrunk[0]), int(shrunk[1])), Image.Resampling.LANCZOS)
            scale = float(np.min(np.array(photo.size, float) / 2 / half_frame))
        centre = np.array(photo.size, float) / 2
        return cls(photo=photo.convert("RGB"), size=size, centre=centre, scale=scale)

    def render(self, zoom: float, pan: np.ndarray) -> Image.Image:
        step = self.scale / zoom
        frame_centre = np.array(self.size, float) / 2
        offset = self.centre + self.scale * pan - step * frame_centre
        coefficients = (step, 0.0, offset[0], 0.0, step, offset[1])
        return self.photo.transform(
            self.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC
        )


def _affine_flow(
    size: tuple[int, int], zoom_before: float, zoom_now: float, pan: np.ndarray
) -> np.ndarray:
    """u' − u for u' = c + zoom_before·((u − c)/zoom_now + pan): exact, the view's scale cancels."""
    width, height = size
    x, y = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    ratio = zoom_before / zoom_now - 1
    dx = (x - width / 2) * ratio + zoom_before * pan[0]
    dy = (y - height / 2) * ratio + zoom_before * pan[1]
    return np.stack([dx, dy], axis=-1).astype(np.float32)


def _inside(size: tuple[int, int], flow: np.ndarray) -> np.ndarray:
    """Pixels whose previous position lies between the previous frame's pixel centres."""
    width, height = size
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    fx, fy = x + flow[..., 0], y + flow[..., 1]
    return (fx >= 0) & (fx <= width - 1) & (fy >= 0) & (fy <= height - 1)


def _read(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The mask at each pixel's previous position (nearest; outside the frame reads False)."""
    height, width = mask.shape
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    fx = np.rint(x + flow[..., 0]).astype(int)
    fy = np.rint(y + flow[..., 1]).astype(int)
    inside = (fx >= 0) & (fx < width) & (fy >= 0) & (fy < height)
    found = np.zeros_like(mask)
    found[inside] = mask[fy[inside], fx[inside]]
    return found


@dataclass(frozen=True)
class _Entering:
    """An object that slides in from the right edge, ``speed`` whole pixels per frame."""

    picture: Image.Image
    shape: Image.Image  # mode L, 255 where the object is
    frame: tuple[int, int]
    speed: int

    @classmethod
    def make(cls, size: tuple[int, int], entering: int, sprite: Image.Image | None) -> _Entering:
        width, height = size
        side = max(4, height // 3)
        if sprite is None:
            shape = Image.new("L", (side, side), 0)
            ImageDraw.Draw(shape).ellipse((0, 0, side - 1, side - 1), fill=255)
            picture = Image.new("RGB", (side, side), DISC_COLOUR)
        else:
            fitted = sprite.convert("RGBA").resize(
                (max(1, round(sprite.width * side / sprite.height)), side), Image.Resampling.LANCZOS
            )
            shape = fitted.getchannel("A").point(lambda a: 255 if a > 127 else 0)
            picture = fitted.convert("RGB")
        # It shows most of itself by the last frame, without crossing the whole frame.
        speed = max(1, round(min(picture.width, width) * 0.8 / entering))
        return cls(picture=picture, shape=shape, frame=size, speed=speed)

    def _corner(self, step: int) -> tuple[int, int]:
        return self.frame[0] - step * self.speed, (self.frame[1] - self.picture.height) // 2

    def paste(self, frame: Image.Image, step: int) -> Image.Image:
        shown = frame.copy()
        shown.paste(self.picture, self._corner(step), self.shape)
        return shown

    def cover(self, step: int) -> np.ndarray:
        """(H, W) bool: the pixels the object covers after ``step`` frames (0: none)."""
        canvas = Image.new("L", self.frame, 0)
        if step > 0:
            canvas.paste(self.shape, self._corner(step), self.shape)
        return np.asarray(canvas) > 0


def frames_as_arrays(frames: Sequence[Image.Image]) -> list[np.ndarray]:
    """The frames as (H, W, 3) uint8 arrays, as ``metrics`` takes them."""
    return [np.asarray(frame.convert("RGB")) for frame in frames]
