"""SDXL (base, and the fine-tunes most LoRAs and anime models are made for): A1111's prompt
encoding with both CLIP towers, as the engine does it; real CFG on ``guidance_scale``."""

from __future__ import annotations

from daemon.families.family import Family, frozen
from daemon.families.sd import classifier_free

FAMILY = Family(
    name="SDXL",
    classes=frozenset(
        {
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        }
    ),
    pipelines=frozen(
        img2img="StableDiffusionXLImg2ImgPipeline", inpaint="StableDiffusionXLInpaintPipeline"
    ),
    guide=classifier_free,
)
