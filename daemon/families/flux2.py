"""Flux.2: FLUX.2 [klein] (a Qwen3 text encoder; 4B and 9B, step-distilled or base) and
FLUX.2 [dev] (Mistral Small 3.1 as text encoder). Two families, since diffusers 0.42.1 has
different pipelines for them: Klein paints img2img, inpaint and edits; [dev] only edits.

Every Flux.2 model is a reference-editing model: its text-to-image pipeline takes the input
(and further reference images) as a list of conditions, so the ``edit`` task runs it with
``image=[input, *references]``. diffusers has no Flux.2 img2img pipeline: Klein's img2img is
its inpaint pipeline with a mask that covers the whole picture, at ``denoising_strength``
(the pipeline still blends the sampled latents with the original through that mask, which
a full mask makes the sampled ones alone).

Guidance: Klein's ``guidance_scale`` is true classifier-free guidance (``cfg_scale``, the
negative prompt is used) unless the model is step-distilled (``is_distilled``: then it is
ignored, and CFG 1 is written); [dev]'s is the guidance it was distilled with, embedded in
the transformer (``distilled_cfg_scale``, "Distilled CFG Scale").

The prompt goes through the pipeline's own ``encode_prompt``, which stacks three hidden
layers of the text encoder (:func:`text_encoder_out_layers`).
"""

from __future__ import annotations

import inspect
from typing import Any

from daemon.families.family import Family, Guidance, frozen

MIN_REFERENCE_SIDE = 64
"""Flux.2's image processor refuses a reference image with a side under 64 px."""


def guide(
    pipe: Any, *, cfg_scale: float, distilled_cfg_scale: float, negative_prompt: str
) -> Guidance:
    if pipe.transformer.config.guidance_embeds:  # [dev]: distilled guidance, no negative
        return Guidance(
            frozen(guidance_scale=distilled_cfg_scale),
            frozen(**{"CFG scale": 1, "Distilled CFG Scale": distilled_cfg_scale}),
            None,
        )
    if cfg_scale <= 1 or pipe.config.get("is_distilled", False):
        # One pass a step (a step-distilled Klein warns of any scale above 1).
        return Guidance(frozen(guidance_scale=1.0), frozen(**{"CFG scale": 1}), None)
    return Guidance(
        frozen(guidance_scale=cfg_scale), frozen(**{"CFG scale": cfg_scale}), negative_prompt
    )


def text_encoder_out_layers(pipe: Any) -> tuple[int, ...]:
    """The text encoder's hidden-state layers the prompt embedding stacks: the pipeline's
    default ((9, 18, 27) for Klein's 36-layer Qwen3, (10, 20, 30) for [dev]'s 40-layer
    Mistral) when the encoder has them, else the same places on a shallower encoder: a
    quarter, a half and three quarters of the way up (the tiny model's (1, 2, 3))."""
    default = tuple(
        inspect.signature(pipe.encode_prompt).parameters["text_encoder_out_layers"].default
    )
    layers = int(pipe.text_encoder.config.get_text_config().num_hidden_layers)
    if max(default) <= layers:
        return default
    return tuple(layers * k // (len(default) + 1) for k in range(1, len(default) + 1))


def encode(pipe: Any, prompt: str, negative: str | None, *, clip_skip: int) -> dict[str, Any]:
    """The prompt (and the negative) as the pipelines take them; the text token ids are
    made by the pipeline from the embeddings' shape."""
    import torch

    layers = text_encoder_out_layers(pipe)

    def one(text: str) -> Any:
        embeds, _ = pipe.encode_prompt(
            prompt=text, device=pipe._execution_device, num_images_per_prompt=1,
            max_sequence_length=KLEIN.max_sequence_length, text_encoder_out_layers=layers,
        )  # fmt: skip
        return embeds

    with torch.inference_mode():
        found = {"prompt_embeds": one(prompt)}
        if negative is not None:
            found["negative_prompt_embeds"] = one(negative)
    return found


def edit_inputs(
    pipe: Any, image: Any, mask: Any, references: list[Any], size: tuple[int, int]
) -> tuple[dict[str, Any], list[str]]:
    """Without a mask, the input and its references are the pipeline's list of conditions
    (each at least 64 px a side, enlarged if smaller); with one, Klein's inpaint pipeline
    repaints the masked part and takes one reference image to copy from."""
    width, height = size
    inputs: dict[str, Any] = {"width": width, "height": height}
    notes: list[str] = []
    if mask is None:
        inputs["image"] = [_at_least(each, MIN_REFERENCE_SIDE) for each in (image, *references)]
        return inputs, notes
    inputs.update(image=image, mask_image=mask)
    if references:
        inputs["image_reference"] = references[0]
    if len(references) > 1:
        notes.append("Flux.2 inpainting takes one reference image: the others were not used")
    return inputs, notes


def _at_least(image: Any, side: int) -> Any:
    """`image`, enlarged (keeping its aspect) so that both sides are at least `side`."""
    scale = side / min(image.size)
    if scale <= 1:
        return image
    width, height = (max(side, round(n * scale)) for n in image.size)
    return image.resize((width, height))


_COMMON: dict[str, Any] = dict(
    guide=guide, encode=encode, edit_inputs=edit_inputs, size_multiple=16, flow=True,
    clip_skip=False, latent_fill=False, unet_steps=False, img2img_as_inpaint=True,
    # Flux.2 packs patchified latents (B, 128, h/2, w/2) with a one-argument _pack_latents,
    # which the warped-noise hook does not know yet.
    warped_noise=False,
)  # fmt: skip

KLEIN = Family(
    name="Flux.2 Klein",
    classes=frozenset({"Flux2KleinPipeline", "Flux2KleinInpaintPipeline"}),
    pipelines=frozen(inpaint="Flux2KleinInpaintPipeline", edit_inpaint="Flux2KleinInpaintPipeline"),
    **_COMMON,
)

DEV = Family(
    name="Flux.2 [dev]",
    classes=frozenset({"Flux2Pipeline"}),
    pipelines=frozen(),  # diffusers 0.42.1 has no Flux.2 [dev] img2img or inpaint pipeline
    **_COMMON,
)
