"""How much a clip flickers, and how far it strays from its input (notes §7.1).

The warp error is Lai et al.'s (ECCV 2018) with the absolute difference the issue asks for in
place of their squared one: each frame against the previous one brought onto it by the known
flow, over the pixels both frames show. Values are on the 0–255 scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def warp_error(
    frames: Sequence[np.ndarray], backward: Sequence[np.ndarray], visible: Sequence[np.ndarray]
) -> float:
    """Mean over t ≥ 1 of the mean |frames[t](x) − frames[t−1](x + backward(x))| over visible x.

    ``backward[t − 1]`` and ``visible[t − 1]`` belong to frame t. Sampling is bilinear, so even
    a clip that moves exactly by the flow scores a little above 0 (the interpolation's blur).
    """
    if len(frames) < 2:
        raise ValueError("warp_error needs at least two frames")
    if not len(backward) == len(visible) == len(frames) - 1:
        raise ValueError(
            f"warp_error needs one flow and one mask per frame after the first: {len(frames)} "
            f"frames, {len(backward)} flows, {len(visible)} masks"
        )
    errors = []
    for t in range(1, len(frames)):
        now = _pixels(frames[t])
        before = _sample_bilinear(_pixels(frames[t - 1]), backward[t - 1])
        seen = np.asarray(visible[t - 1], bool)
        if seen.any():
            errors.append(float(np.abs(now - before).mean(axis=-1)[seen].mean()))
    return float(np.mean(errors)) if errors else 0.0


def distance(outputs: Sequence[np.ndarray], inputs: Sequence[np.ndarray]) -> float:
    """Mean |output − input| over every frame and pixel, 0–255: how far a method strays."""
    if len(outputs) != len(inputs) or not outputs:
        raise ValueError(
            f"distance needs as many outputs as inputs, got {len(outputs)} and {len(inputs)}"
        )
    pairs = zip(outputs, inputs, strict=True)
    return float(np.mean([np.abs(_pixels(out) - _pixels(into)).mean() for out, into in pairs]))


def _pixels(frame: np.ndarray) -> np.ndarray:
    pixels = np.asarray(frame, dtype=np.float64)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _sample_bilinear(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image(x + flow(x)), bilinear, edges repeated; exact in float (no fixed-point grid)."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    x = np.clip(xs + flow[..., 0], 0, width - 1)
    y = np.clip(ys + flow[..., 1], 0, height - 1)
    left = np.clip(np.floor(x).astype(int), 0, max(width - 2, 0))
    top = np.clip(np.floor(y).astype(int), 0, max(height - 2, 0))
    right, bottom = np.minimum(left + 1, width - 1), np.minimum(top + 1, height - 1)
    fx, fy = (x - left)[..., None], (y - top)[..., None]
    upper = image[top, left] * (1 - fx) + image[top, right] * fx
    lower = image[bottom, left] * (1 - fx) + image[bottom, right] * fx
    return upper * (1 - fy) + lower * fy
