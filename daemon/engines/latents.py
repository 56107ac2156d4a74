"""An SD pipeline's latents and VAE, as A1111's img2img uses them beyond the pipeline: the
input encoded (latent upscale, latent-noise fills), a mask at the latents' resolution, and
VAE tiling for large outputs. torch is imported inside the functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def encode_image(pipe: Any, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
    import torch

    device = pipe._execution_device
    pixels = pipe.image_processor.preprocess(image).to(device=device, dtype=pipe.vae.dtype)
    with torch.inference_mode():
        posterior = pipe.vae.encode(pixels).latent_dist
        sample = posterior.sample(generator=generator)
    return sample * pipe.vae.config.scaling_factor


def latent_mask(pipe: Any, mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    """1 where the latent is kept, 0 where it is repainted, at the latents' resolution."""
    import torch

    small = mask.resize((latents.shape[-1], latents.shape[-2]), Image.Resampling.BILINEAR)
    repaint = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).round()
    return (1 - repaint)[None, None].to(latents)


VAE_TILING_ABOVE = 2048 * 2048
"""Pixels above which the VAE decodes in tiles on a GPU: a 2048x2048 decode takes a few GB in
fp16, and beyond it tiling keeps memory flat at a small cost in time (and at seams, rarely)."""


def vae_tiling(pipe: Any, pixels: int, *, low_memory: bool) -> None:
    """Tile the VAE for large outputs on a GPU; never on a CPU (memory is the machine's)."""
    if low_memory:
        return  # low-memory mode keeps tiling on for good
    if pipe._execution_device.type == "cuda" and pixels > VAE_TILING_ABOVE:  # offloaded too
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
