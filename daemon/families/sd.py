"""SD 1.x and 2.x: the daemon's first family. A1111's own prompt encoding (emphasis, 75-token
chunks, clip skip, prompt editing, embeddings) is the engine's; real CFG on ``guidance_scale``."""

from __future__ import annotations

from typing import Any

from daemon.families.family import Family, Guidance, frozen


def classifier_free(
    pipe: Any, *, cfg_scale: float, distilled_cfg_scale: float, negative_prompt: str
) -> Guidance:
    """A1111's CFG: the negative prompt is always encoded (empty or not)."""
    return Guidance(frozen(guidance_scale=cfg_scale), frozen(), negative_prompt)


FAMILY = Family(
    name="SD 1.x/2.x",
    classes=frozenset(
        {
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
        }
    ),
    pipelines=frozen(
        img2img="StableDiffusionImg2ImgPipeline", inpaint="StableDiffusionInpaintPipeline"
    ),
    guide=classifier_free,
)
