"""A diffusers folder as an img2img pipeline, importing only the pipeline class it needs.

``AutoPipelineForImage2Image`` imports every pipeline diffusers has (Kandinsky, Flux, Sana
and the rest) to build its tables: about 0.4 s of a 2-core machine's start-up, on the first
job's path. For the families below, the folder's ``model_index.json`` names its class, and
the img2img class it maps to is loaded directly, with the arguments AutoPipeline would pass
it; any other folder (or a name that is not a folder) still goes through AutoPipeline. An
edit model (Flux Kontext, Qwen-Image-Edit) loads as its architecture's img2img pipeline too,
and :func:`edit_pipeline` makes its instruction-edit pipeline from that one. Flux.2, which
has no img2img pipeline, loads as its own class, which is also its edit pipeline.

A folder downloaded as the hub offers it to save space (``--include "*.fp16.safetensors"``)
holds only ``<name>.fp16.safetensors`` weights; diffusers loads those only when asked for
the ``fp16`` variant, and otherwise fails looking for ``diffusion_pytorch_model.bin``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.models.qwen_processor import processor_from_folder

# model_index.json's _class_name -> the img2img pipeline AutoPipelineForImage2Image picks
# (for the edit models, the img2img pipeline of their architecture: their weights are a
# fine-tune of it, and an img2img or inpaint job with an edit model is still valid)
IMG2IMG_CLASS = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionImg2ImgPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLImg2ImgPipeline",
    "FluxPipeline": "FluxImg2ImgPipeline",  # FLUX.1-dev, -schnell, -Krea-dev
    "FluxImg2ImgPipeline": "FluxImg2ImgPipeline",
    "FluxKontextPipeline": "FluxImg2ImgPipeline",  # FLUX.1-Kontext-dev
    "StableDiffusion3Pipeline": "StableDiffusion3Img2ImgPipeline",  # SD 3 and 3.5
    "StableDiffusion3Img2ImgPipeline": "StableDiffusion3Img2ImgPipeline",
    "QwenImagePipeline": "QwenImageImg2ImgPipeline",
    "QwenImageImg2ImgPipeline": "QwenImageImg2ImgPipeline",
    "QwenImageEditPipeline": "QwenImageImg2ImgPipeline",  # Qwen-Image-Edit
    "QwenImageEditPlusPipeline": "QwenImageImg2ImgPipeline",  # Qwen-Image-Edit-2509, -2511
    # Flux.2 has no img2img pipeline: its folder loads as itself (the family's img2img and
    # inpaint pipelines are made from it; see daemon/families/flux2.py)
    "Flux2KleinPipeline": "Flux2KleinPipeline",  # FLUX.2-klein-4B, -9B (and -base)
    "Flux2Pipeline": "Flux2Pipeline",  # FLUX.2-dev
}

# model_index.json's _class_name -> the instruction-edit pipeline (the `edit` task) of an
# edit model; other models have none
EDIT_CLASS = {
    "FluxKontextPipeline": "FluxKontextPipeline",
    "QwenImageEditPipeline": "QwenImageEditPipeline",
    "QwenImageEditPlusPipeline": "QwenImageEditPlusPipeline",
    "Flux2KleinPipeline": "Flux2KleinPipeline",  # every Flux.2 model edits from references
    "Flux2Pipeline": "Flux2Pipeline",
}

_TOKENIZER_ALONE = frozenset({"Flux2Pipeline"})
"""Pipelines whose folder names a processor (FLUX.2 [dev]: ``PixtralProcessor``) of which
only the tokenizer is used: the prompt is text alone. transformers 5.25 cannot import
Pixtral's processor without torchvision, so the tokenizer is loaded by itself."""

_NEEDS_PROCESSOR = frozenset({"QwenImageEditPipeline", "QwenImageEditPlusPipeline"})
"""Edit pipelines that read the input through Qwen2-VL's processor (see qwen_processor)."""


def _index_class_name(folder: str | Path) -> str | None:
    """The ``_class_name`` of a diffusers folder's ``model_index.json``, if it has one."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    named = index.get("_class_name") if isinstance(index, dict) else None
    return named if isinstance(named, str) else None


def img2img_class_name(folder: str | Path) -> str | None:
    """The img2img pipeline class for a diffusers folder, when it is one of ours to name."""
    return IMG2IMG_CLASS.get(_index_class_name(folder) or "")


def edit_class_name(folder: str | Path) -> str | None:
    """The instruction-edit pipeline class of an edit model's folder (Flux Kontext,
    Qwen-Image-Edit); None for any other model, which cannot run the `edit` task."""
    return EDIT_CLASS.get(_index_class_name(folder) or "")


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
    if name not in _TOKENIZER_ALONE:
        return getattr(diffusers, name).from_pretrained(folder, local_files_only=True, **options)
    from transformers import AutoTokenizer

    # (Passed as tokenizer=, diffusers would check it against the class the folder names.)
    pipe = getattr(diffusers, name).from_pretrained(
        folder, local_files_only=True, tokenizer=None, **options
    )
    tokenizer = AutoTokenizer.from_pretrained(Path(folder) / "tokenizer", local_files_only=True)
    pipe.register_modules(tokenizer=tokenizer)
    return pipe


def edit_pipeline(img2img_pipe: Any, folder: str | Path) -> Any:
    """The instruction-edit pipeline of an edit model's folder, sharing the modules of its
    loaded img2img pipeline (:func:`load_folder_pipeline`): no weights are loaded twice.

    Qwen-Image-Edit also gets its processor, built without torchvision from the folder's
    files (see :mod:`daemon.models.qwen_processor`). Raises ValueError for a folder that
    is not an edit model (see :func:`edit_class_name`).
    """
    import diffusers

    name = edit_class_name(folder)
    if name is None:
        raise ValueError(
            f"{folder} is not an instruction-edit model (Flux Kontext, Qwen-Image-Edit, "
            "Flux.2): use one for the edit task"
        )
    extra = {"processor": processor_from_folder(folder)} if name in _NEEDS_PROCESSOR else {}
    return getattr(diffusers, name).from_pipe(img2img_pipe, **extra)
