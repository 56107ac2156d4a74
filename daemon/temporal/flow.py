"""Optical flow between two source frames, its reliability, and what is done with it.

OpenCV's DIS (preset MEDIUM) measures the flow: maintained, CPU only, 55 ms for both directions
and the mask at 512 px on one core, with a mean end-point error of about 0.1 px on a pan and zoom
(tests), against 2.5 s per direction for scikit-image's only comparably accurate method (notes
§3.1). Flows follow OpenCV's convention, (dx, dy) per
pixel of the frame they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

CUT_SHARE = 0.5
"""Below this share of reliable pixels the frame is a cut: the flow explains too little of it,
so callers blend nothing from the previous frame."""

_CONSISTENCY_RELATIVE = 0.01
_CONSISTENCY_ABSOLUTE = 0.5  # px²: forward and backward flow may disagree by ~0.7 px
_EDGE_RELATIVE = 0.01
_EDGE_ABSOLUTE = 0.002  # (px/px)²: the flow's gradient above this is a motion edge
# The thresholds are Sundaram et al. 2010's, as Lai et al. 2018's evaluation code uses them
# (squared norms): they make the mask comparable with the papers' warp-error figures.


@dataclass(frozen=True)
class Motion:
    """How the current source frame's pixels came from the previous one, at one size."""

    backward: np.ndarray
    """(H, W, 2) float32 (dx, dy): current pixel x was at x + backward[x] in the previous frame."""
    forward: np.ndarray
    """(H, W, 2) float32: previous → current."""
    reliable: np.ndarray
    """(H, W) float32 in [0, 1]: soft mask, 1 where the backward flow is trusted."""
    reliable_share: float
    """Share of pixels whose backward flow passed the checks (the hard mask's mean)."""


def measure_motion(previous: Image.Image, current: Image.Image) -> Motion:
    """The flow between two same-size frames, both ways, and where the backward one holds.

    A pixel is unreliable when the forward flow, read where the backward flow points, does not
    bring it back (occlusion), when the flow changes sharply around it (a motion edge), or when
    it comes from outside the previous frame. The soft mask grows and blurs the unreliable
    pixels so that a blend by it shows no seams.
    """
    if previous.size != current.size:
        raise ValueError(
            f"measure_motion needs frames of one size, got {previous.size} and {current.size}: "
            "resize the frames to the processing size first"
        )
    # DIS gives bit-identical flow with 1, 2, 4 or 8 threads (checked by the tests), which a
    # resumed clip needs to repaint its remaining frames pixel for pixel; so OpenCV's thread
    # count, which other users of cv2 may set, is left alone.
    before, now = _gray(previous), _gray(current)
    backward = _dis().calc(now, before, None)
    forward = _dis().calc(before, now, None)
    unreliable = _occluded(backward, forward) | _motion_edges(backward) | _from_outside(backward)
    return Motion(
        backward=backward,
        forward=forward,
        reliable=_soften(unreliable),
        reliable_share=float(1.0 - unreliable.mean()),
    )


def warp_image(image: Image.Image, backward: np.ndarray) -> Image.Image:
    """The previous frame (or result) brought onto the current frame by the backward flow."""
    import cv2

    if image.mode not in ("RGB", "RGBA", "L"):  # palette indices must not be interpolated
        image = image.convert("RGB")
    pixels = np.asarray(image)
    _check_shape(pixels.shape[:2], backward.shape[:2], "warp_image")
    x, y = _sample_grid(backward)
    warped = cv2.remap(pixels, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(warped, mode=image.mode)


def blend_init(
    source: Image.Image, warped: Image.Image, reliable: np.ndarray, blend: float
) -> Image.Image:
    """``source·(1 − blend·M) + warped·blend·M``: SD-CN-Animation's init blend, softly masked.

    Where the flow is not trusted (M = 0) the init is the source frame; blend 0 gives the
    source exactly. There is no post-blend of the output: copying the warped previous result
    over the new one would lower flicker by ignoring the prompt.
    """
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"temporal_blend must lie in [0, 1], got {blend}")
    if source.size != warped.size:
        raise ValueError(f"blend_init needs one size, got {source.size} and {warped.size}")
    _check_shape((source.height, source.width), reliable.shape, "blend_init")
    weight = (np.float32(blend) * reliable.astype(np.float32))[..., None]
    mixed = (
        np.asarray(source.convert("RGB"), np.float32) * (1 - weight)
        + np.asarray(warped.convert("RGB"), np.float32) * weight
    )
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode="RGB")


def is_cut(motion: Motion) -> bool:
    """Whether too little of the frame follows from the previous one to blend anything."""
    return motion.reliable_share < CUT_SHARE


def _gray(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8))


def _dis() -> Any:
    import cv2

    # A fresh instance per call: DIS then keeps nothing between calls, whatever came before.
    return cv2.DISOpticalFlow.create(cv2.DISOpticalFlow_PRESET_MEDIUM)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel reads from: its own coordinates plus the flow, as remap's two maps."""
    height, width = flow.shape[:2]
    x, y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return x + flow[..., 0], y + flow[..., 1]


def _occluded(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Forward–backward consistency (Sundaram et al. 2010, squared norms)."""
    import cv2

    x, y = _sample_grid(backward)
    forward_there = cv2.remap(forward, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mismatch = _squared(forward_there + backward)
    allowed = _CONSISTENCY_RELATIVE * (_squared(forward_there) + _squared(backward))
    return mismatch > allowed + _CONSISTENCY_ABSOLUTE


def _motion_edges(backward: np.ndarray) -> np.ndarray:
    """Pixels where the flow changes sharply: the boundary of something moving on its own."""
    change = np.zeros(backward.shape[:2], np.float32)
    for axis in (0, 1):
        step = np.diff(backward, axis=axis, append=backward.take([-1], axis=axis))
        change += _squared(step)
    return change > _EDGE_RELATIVE * _squared(backward) + _EDGE_ABSOLUTE


def _from_outside(backward: np.ndarray) -> np.ndarray:
    height, width = backward.shape[:2]
    x, y = _sample_grid(backward)
    return (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)


def _soften(unreliable: np.ndarray) -> np.ndarray:
    """1 − (dilated, blurred unreliable mask): trusted pixels near an untrusted one fade out."""
    import cv2

    radius = max(1, round(min(unreliable.shape) / 128))  # Rerender's 9-px max-pool at 512 px
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    grown = cv2.dilate(unreliable.astype(np.uint8), kernel).astype(np.float32)
    blurred = cv2.GaussianBlur(grown, (2 * radius + 1, 2 * radius + 1), radius / 2)
    return np.clip(1.0 - blurred, 0.0, 1.0).astype(np.float32)


def _squared(flow: np.ndarray) -> np.ndarray:
    return np.square(flow[..., 0]) + np.square(flow[..., 1])


def _check_shape(image: tuple[int, ...], flow: tuple[int, ...], caller: str) -> None:
    if tuple(image) != tuple(flow):
        raise ValueError(
            f"{caller}: the image is {image[1]}x{image[0]} but the flow is {flow[1]}x{flow[0]}; "
            "measure the motion at the size of the frames it moves"
        )
