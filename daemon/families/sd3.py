"""SD 3 and 3.5 (Medium, Large, Large Turbo): a flow-matching MMDiT with two CLIP towers and
T5-XXL. Real CFG on ``guidance_scale``, the negative prompt always encoded (as SD's).
A1111's "Clip skip" reaches the CLIP towers (diffusers' ``clip_skip``: layers skipped
beyond the penultimate one SD3 uses anyway)."""

from __future__ import annotations

from typing import Any

from daemon.families.family import Family, frozen
from daemon.families.sd import classifier_free


def encode(pipe: Any, prompt: str, negative: str | None, *, clip_skip: int) -> dict[str, Any]:
    import torch

    with torch.inference_mode():
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=pipe._execution_device,
            num_images_per_prompt=1, do_classifier_free_guidance=negative is not None,
            negative_prompt=negative or "", clip_skip=clip_skip - 1 if clip_skip > 1 else None,
            max_sequence_length=FAMILY.max_sequence_length,
        )  # fmt: skip
    found = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if negative is not None:
        found.update(negative_prompt_embeds=negative_embeds,
                     negative_pooled_prompt_embeds=negative_pooled)  # fmt: skip
    return found


FAMILY = Family(
    name="SD 3.5",
    classes=frozenset(
        {
            "StableDiffusion3Pipeline",
            "StableDiffusion3Img2ImgPipeline",
            "StableDiffusion3InpaintPipeline",
        }
    ),
    pipelines=frozen(
        img2img="StableDiffusion3Img2ImgPipeline", inpaint="StableDiffusion3InpaintPipeline"
    ),
    guide=classifier_free,
    encode=encode,
    size_multiple=16,
    flow=True,
    sets_sigmas=False,
    latent_fill=False,
    unet_steps=False,
    max_sequence_length=256,
)
