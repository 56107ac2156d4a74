"""Qwen-Image (and Qwen-Image-Edit's weights for img2img): a flow-matching MMDiT whose text
encoder is the Qwen2.5-VL language model; a 16-channel video VAE used on single frames.

Guidance: the released models have no distilled guidance; ``cfg_scale`` is true CFG
(``true_cfg_scale``), which diffusers runs only when a negative prompt is passed, so an empty
negative is passed as one space, as the model's card does.
"""

from __future__ import annotations

from typing import Any

from daemon.families.family import Family, Guidance, frozen


def guide(
    pipe: Any, *, cfg_scale: float, distilled_cfg_scale: float, negative_prompt: str
) -> Guidance:
    if cfg_scale <= 1:
        return Guidance(frozen(true_cfg_scale=1.0), frozen(), None)
    return Guidance(frozen(true_cfg_scale=cfg_scale), frozen(), negative_prompt or " ")


_READS_THE_IMAGE = ("QwenImageEdit",)
"""Pipelines whose text encoder reads the input image with the instruction (Qwen2.5-VL):
their prompt is encoded in the call, with that image, not ahead from the text alone."""

_TAKES_SEVERAL = frozenset({"QwenImageEditPlusPipeline"})


def encode(pipe: Any, prompt: str, negative: str | None, *, clip_skip: int) -> dict[str, Any]:
    if type(pipe).__name__.startswith(_READS_THE_IMAGE):
        return {"prompt": prompt, **({"negative_prompt": negative} if negative is not None else {})}
    import torch

    def one(text: str, prefix: str) -> dict[str, Any]:
        embeds, mask = pipe.encode_prompt(
            prompt=text, device=pipe._execution_device, num_images_per_prompt=1,
            max_sequence_length=FAMILY.max_sequence_length,
        )  # fmt: skip
        # diffusers drops a mask that is all ones; the call then takes none.
        found = {f"{prefix}prompt_embeds": embeds}
        return found if mask is None else {**found, f"{prefix}prompt_embeds_mask": mask}

    with torch.inference_mode():
        found = one(prompt, "")
        if negative is not None:
            found.update(one(negative, "negative_"))
    return found


def edit_inputs(
    pipe: Any, image: Any, mask: Any, references: list[Any], size: tuple[int, int]
) -> tuple[dict[str, Any], list[str]]:
    """Edit Plus (2509, 2511) takes the input and its references as one list; Edit and the
    edit-inpaint pipeline take the input alone. They read it at ~1 MP whatever the size
    asked (the engine resizes the result to the job's size)."""
    width, height = size
    inputs: dict[str, Any] = {"image": image, "width": width, "height": height}
    notes = []
    if mask is not None:
        inputs["mask_image"] = mask
    elif type(pipe).__name__ in _TAKES_SEVERAL:
        inputs["image"] = [image, *references]
        references = []
    if references:
        notes.append(
            f"{type(pipe).__name__} takes the input alone: the reference images were not "
            "used (Qwen-Image-Edit-2509 or later takes them, without a mask)"
        )
    return inputs, notes


FAMILY = Family(
    name="Qwen-Image",
    classes=frozenset(
        {
            "QwenImagePipeline",
            "QwenImageImg2ImgPipeline",
            "QwenImageInpaintPipeline",
            "QwenImageEditPipeline",
            "QwenImageEditPlusPipeline",
            "QwenImageEditInpaintPipeline",
        }
    ),
    pipelines=frozen(
        img2img="QwenImageImg2ImgPipeline",
        inpaint="QwenImageInpaintPipeline",
        edit_inpaint="QwenImageEditInpaintPipeline",
    ),
    guide=guide,
    encode=encode,
    edit_inputs=edit_inputs,
    size_multiple=16,
    flow=True,
    clip_skip=False,
    latent_fill=False,
    unet_steps=False,
)
