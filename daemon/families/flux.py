"""Flux.1 (dev, schnell, and Kontext's weights for img2img): a flow-matching transformer with
CLIP-L (pooled only) and T5-XXL.

Guidance, as Forge does it: ``cfg_scale`` is true classifier-free guidance (two passes a
step) and ``distilled_cfg_scale`` is the guidance dev was distilled with, fed to the
transformer ("Distilled CFG Scale", default 3.5). schnell has no guidance embedding, so the
distilled value means nothing to it and is not written. Forge runs Flux at CFG 1; here true
CFG runs when ``cfg_scale`` > 1 *and* the negative prompt is not empty (diffusers' rule), so
a profile that keeps SD's CFG 7 and no negative prompt paints as Forge's Flux does.
"""

from __future__ import annotations

from typing import Any

from daemon.families.family import Family, Guidance, frozen


def guide(
    pipe: Any, *, cfg_scale: float, distilled_cfg_scale: float, negative_prompt: str
) -> Guidance:
    true_cfg = cfg_scale > 1 and bool(negative_prompt.strip())
    call: dict[str, Any] = {"true_cfg_scale": cfg_scale if true_cfg else 1.0}
    infotext: dict[str, object] = {"CFG scale": cfg_scale if true_cfg else 1}
    if pipe.transformer.config.guidance_embeds:
        call["guidance_scale"] = distilled_cfg_scale
        infotext["Distilled CFG Scale"] = distilled_cfg_scale
    return Guidance(frozen(**call), frozen(**infotext), negative_prompt if true_cfg else None)


def encode(pipe: Any, prompt: str, negative: str | None, *, clip_skip: int) -> dict[str, Any]:
    """T5 tokens and CLIP's pooled vector, as the pipeline itself would make them."""
    import torch

    def one(text: str) -> tuple[Any, Any]:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=text, prompt_2=None, device=pipe._execution_device,
            num_images_per_prompt=1, max_sequence_length=FAMILY.max_sequence_length,
        )  # fmt: skip
        return embeds, pooled

    with torch.inference_mode():
        embeds, pooled = one(prompt)
        found = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if negative is not None:
            embeds, pooled = one(negative)
            found.update(negative_prompt_embeds=embeds, negative_pooled_prompt_embeds=pooled)
    return found


def edit_inputs(
    pipe: Any, image: Any, mask: Any, references: list[Any], size: tuple[int, int]
) -> tuple[dict[str, Any], list[str]]:
    """Kontext paints at the job's size: told not to snap to its ~1 MP list (``max_area``
    is the job's area). Its inpaint pipeline takes one reference image to copy from."""
    width, height = size
    inputs: dict[str, Any] = {"image": image, "width": width, "height": height,
                              "max_area": width * height, "_auto_resize": False}  # fmt: skip
    notes = []
    if mask is not None:
        inputs["mask_image"] = mask
        if references:
            inputs["image_reference"] = references[0]
    if len(references) > (1 if mask is not None else 0):
        notes.append("Flux Kontext takes no reference image without a mask, and one with it: "
                     "the others were not used")  # fmt: skip
    return inputs, notes


FAMILY = Family(
    name="Flux.1",
    classes=frozenset(
        {
            "FluxPipeline",
            "FluxImg2ImgPipeline",
            "FluxInpaintPipeline",
            "FluxKontextPipeline",
            "FluxKontextInpaintPipeline",
        }
    ),
    pipelines=frozen(
        img2img="FluxImg2ImgPipeline",
        inpaint="FluxInpaintPipeline",
        edit_inpaint="FluxKontextInpaintPipeline",
    ),
    guide=guide,
    encode=encode,
    edit_inputs=edit_inputs,
    size_multiple=16,
    flow=True,
    clip_skip=False,  # CLIP gives Flux only its pooled vector
    latent_fill=False,
    unet_steps=False,
)
