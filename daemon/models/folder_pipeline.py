"""A diffusers folder as an img2img pipeline, importing only the pipeline class it needs.

``AutoPipelineForImage2Image`` imports every pipeline diffusers has (Kandinsky, Flux, Sana
and the rest) to build its tables: about 0.4 s of a 2-core machine's start-up, on the first
job's path. For the families below, the folder's ``model_index.json`` names its class, and
the img2img class it maps to is loaded directly, with the arguments AutoPipeline would pass
it; any other folder (or a name that is not a folder) still goes through AutoPipeline.

A folder downloaded as the hub offers it to save space (``--include "*.fp16.safetensors"``)
holds only ``<name>.fp16.safetensors`` weights; diffusers loads those only when asked for
the ``fp16`` variant, and otherwise fails looking for ``diffusion_pytorch_model.bin``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# model_index.json's _class_name -> the img2img pipeline AutoPipelineForImage2Image picks
IMG2IMG_CLASS = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionImg2ImgPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLImg2ImgPipeline",
}


def img2img_class_name(folder: str | Path) -> str | None:
    """The img2img pipeline class for a diffusers folder, when it is one of ours to name."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    named = index.get("_class_name") if isinstance(index, dict) else None
    return IMG2IMG_CLASS.get(named) if isinstance(named, str) else None


def weights_variant(folder: str | Path) -> str | None:
    """``fp16`` when a component of the folder has fp16-variant weights and no plain ones
    (then diffusers must be asked for that variant); None otherwise, the plain files first."""
    for component in Path(folder).iterdir() if Path(folder).is_dir() else ():
        names = [p.name for p in component.glob("*.safetensors")] + [
            p.name for p in component.glob("*.bin")
        ]
        if names and all(".fp16." in name for name in names):
            return "fp16"
    return None


def load_folder_pipeline(folder: str | Path, **options: Any) -> Any:
    """The img2img pipeline of a model folder, from local files only (never the network)."""
    import diffusers

    variant = weights_variant(folder)
    if variant is not None:
        options = {"variant": variant, **options}
    name = img2img_class_name(folder)
    if name is None:
        return diffusers.AutoPipelineForImage2Image.from_pretrained(
            folder, local_files_only=True, **options
        )
    return getattr(diffusers, name).from_pretrained(folder, local_files_only=True, **options)
