"""Write passes into an :class:`~daemon.engines.attention_bank.AttentionBank`: another
image's latent noised to the model call's timestep and run through the UNet once, so that
its self-attention inputs are stored for the real pass to read.

Shared by ``reference_only`` (:mod:`daemon.engines.reference_step`: a reference image) and
cross-frame attention (:mod:`daemon.engines.temporal_steps`: earlier frames' results).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from daemon.engines.call_steps import CallContext

PASSED_ON = (
    "encoder_hidden_states",
    "timestep_cond",
    "added_cond_kwargs",
    "cross_attention_kwargs",
    "attention_mask",
    "encoder_attention_mask",
)
"""The UNet call's keyword arguments a write pass takes too (not ControlNet's residuals)."""


def image_seeds(call: dict[str, Any], context: CallContext) -> list[int]:
    """The seed of each image the call paints, from its generators (one, or one each)."""
    generators = call.get("generator")
    if not isinstance(generators, list):
        generators = [generators] * context.images
    return [generator.initial_seed() for generator in generators]


def noise_generators(seeds: list[int]) -> list[Any]:
    """The write passes' own generators, one per image, seeded with the images' seeds (the
    pipeline's generators are left alone, so its own draws are as without the pass)."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def encoded(pipe: Any, image: Image.Image) -> Any:
    """`image`'s latent as the UNet takes it: the VAE's mean, scaled, on the UNet's device
    and dtype. A half-precision VAE that asks for it (SDXL's ``force_upcast``) encodes in
    float32, as the SDXL pipelines do, since in half precision it overflows to NaN."""
    import torch

    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        pixels = pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
    finally:
        if upcast:
            vae.to(dtype=dtype)
    return (mean * vae.config.scaling_factor).to(pipe.unet.device, pipe.unet.dtype)


def model_rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The rows of the UNet call a forward pre-hook sees (images × guidance rows)."""
    sample = args[0] if args else kwargs["sample"]
    return int(sample.shape[0])


def write_pass(
    pipe: Any, latent: Any, args: tuple[Any, ...], kwargs: dict[str, Any], noise: list[Any]
) -> None:
    """One UNet pass over `latent` noised to the timestep of the model call whose
    ``(args, kwargs)`` a forward pre-hook sees, rows and prompts as that call's. The caller
    holds the bank in write mode; `noise` are the images' generators (one draw each)."""
    import torch

    unet = pipe.unet
    sample = args[0] if args else kwargs["sample"]
    timestep = args[1] if len(args) > 1 else kwargs["timestep"]
    rows = sample.shape[0]
    noisy = _noised(latent, timestep, pipe.scheduler, noise, rows)
    if sample.shape[1] > noisy.shape[1]:  # an inpainting UNet: mask 0, latent
        masked = latent.expand(rows, -1, -1, -1)
        noisy = torch.cat([noisy, torch.zeros_like(noisy[:, :1]), masked], dim=1)
    passed = {key: kwargs[key] for key in PASSED_ON if key in kwargs}
    # forward, not __call__: no hook runs (no ControlNet, no recursion)
    unet.forward(noisy, timestep, **passed, return_dict=False)


def _noised(latent: Any, timestep: Any, scheduler: Any, noise: list[Any], rows: int) -> Any:
    """`latent` noised to `timestep` for `rows` rows: image ``k``'s rows (every ``k``-th of
    each block of ``len(noise)``) share the noise of image ``k``'s generator."""
    import torch

    alphas = scheduler.alphas_cumprod
    index = int(torch.as_tensor(timestep, dtype=torch.float32).flatten()[0].round())
    alpha = alphas[min(max(index, 0), len(alphas) - 1)].to(latent.device, torch.float32)
    drawn = torch.cat([torch.randn(latent.shape, generator=gen) for gen in noise])
    epsilon = drawn.to(latent).repeat(rows // len(noise), 1, 1, 1)
    mixed = alpha.sqrt() * latent.float() + (1 - alpha).sqrt() * epsilon.float()
    return mixed.to(latent.dtype)
