"""Initial noise that follows the picture: "How I Warped Your Noise" by point-sampled sub-pixels.

Warping noise by interpolation averages neighbours: the result is too weak (std ≈ 0.67 after a
bilinear pan and zoom) and, once renormalised, correlated between neighbours, which the UNet
turns into blur (notes §4.4). HIWYN (Chang et al., ICLR 2024) keeps it Gaussian: each noise
pixel is split into k×k sub-pixels that are independent N(0, 1) given that they add up to k
times the pixel (conditional upsampling); every sub-pixel moves by the flow to exactly one
target pixel, and a target pixel is the sum of what it received divided by √count. Disjoint
sums of independent N(0, 1) values, so the output is exactly N(0, 1) per pixel and independent
between pixels. HIWYN rasterises each warped pixel's polygon; sampling the sub-pixel centres
(notes §4.5) keeps the same guarantee without a rasteriser.
"""

from __future__ import annotations

import numpy as np

from daemon.temporal.flow import Motion, is_cut

RELIABLE_AT_LEAST = 0.5
"""Latent pixels whose (resized) soft reliability is below this get fresh noise."""


def warped_noise(
    previous: np.ndarray, motion: Motion, seed: int, *, subpixels: int = 4
) -> np.ndarray:
    """The previous frame's (C, h, w) initial noise carried along ``motion``; float32 (C, h, w).

    ``motion`` is measured at the image size (H, W); the latent is smaller by the VAE's factor
    (any factor). Target pixels that receive no sub-pixel (new content, the edge a pan uncovers)
    or whose flow is unreliable get fresh noise from ``np.random.default_rng(seed)``, and a cut
    gets fresh noise everywhere. The same inputs and seed give the same noise.
    """
    if previous.ndim != 3:
        raise ValueError(f"warped_noise takes (C, h, w) noise, got shape {previous.shape}")
    if subpixels < 1:
        raise ValueError(f"subpixels must be at least 1, got {subpixels}")
    channels, height, width = previous.shape
    rng = np.random.default_rng(seed)
    fresh = rng.standard_normal((channels, height, width), dtype=np.float32)
    if is_cut(motion):
        return fresh
    k = subpixels
    pieces = _conditional_upsample(previous.astype(np.float32), k, rng).reshape(channels, -1)
    target = _landing(motion.forward, (height, width), k)
    landed = target >= 0
    target = target[landed]
    count = np.bincount(target, minlength=height * width)
    received = count > 0
    received &= _reliable_at(motion.reliable, (height, width)).ravel() >= RELIABLE_AT_LEAST
    out = fresh.reshape(channels, -1)
    scale = np.sqrt(np.maximum(count[received], 1))
    for channel in range(channels):
        total = np.bincount(target, weights=pieces[channel, landed], minlength=height * width)
        out[channel, received] = (total[received] / scale).astype(np.float32)
    return out.reshape(channels, height, width)


def _conditional_upsample(noise: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(C, h·k, w·k) sub-pixels, i.i.d. N(0, 1), each k×k block adding up to k × its pixel.

    ``pixel/k + Z − mean_block(Z)``: the block's sum is k·pixel, and two sub-pixels of a block
    have covariance 1/k² − 1/k² − 1/k² + 1/k² = 0 and variance 1 (HIWYN, notes §4.2).
    """
    channels, height, width = noise.shape
    z = rng.standard_normal((channels, height * k, width * k), dtype=np.float32)
    block_mean = z.reshape(channels, height, k, width, k).mean(axis=(2, 4))
    spread = (noise / k).repeat(k, axis=1).repeat(k, axis=2)
    return spread + (z - block_mean.repeat(k, axis=1).repeat(k, axis=2))


def _landing(forward: np.ndarray, latent: tuple[int, int], k: int) -> np.ndarray:
    """(h·k·w·k,) the latent pixel each sub-pixel centre moves into by the flow; −1: outside."""
    import cv2

    height, width = latent
    image_height, image_width = forward.shape[:2]
    flow = cv2.resize(forward, (width * k, height * k), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.mgrid[0 : height * k, 0 : width * k].astype(np.float32)
    # Sub-pixel centres in latent pixels, moved by the flow converted to latent pixels.
    x = np.floor((xs + 0.5) / k + flow[..., 0] * (width / image_width)).astype(np.int64)
    y = np.floor((ys + 0.5) / k + flow[..., 1] * (height / image_height)).astype(np.int64)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return np.where(inside, y * width + x, -1).ravel()


def _reliable_at(reliable: np.ndarray, latent: tuple[int, int]) -> np.ndarray:
    import cv2

    height, width = latent
    return cv2.resize(reliable.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
