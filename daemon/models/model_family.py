"""Which family a model is, known before it is loaded (for ``check``, and the load's dtype).

A diffusers folder names its pipeline class in ``model_index.json``; a built-in names its own;
a single file is known by its tensors' names (:mod:`daemon.models.checkpoints`,
:mod:`daemon.models.flow_files`). A hub id not
yet in the local cache cannot be known without downloading: None, as for anything unknown.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.errors import ConfigError
from daemon.families import Family, family_of_class
from daemon.models.builtin import BUILTIN_PREFIX
from daemon.models.flow_files import FlowFile, detect_file
from daemon.models.folder_pipeline import EDIT_CLASS, edit_class_name
from daemon.models.resolve import ModelSource

BUILTIN_CLASSES = {
    "tiny-sd": "StableDiffusionPipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "tiny-flux": "FluxPipeline",
    "tiny-flux-kontext": "FluxKontextPipeline",
    "tiny-qwen-image": "QwenImagePipeline",
    "tiny-qwen-image-edit": "QwenImageEditPlusPipeline",
    "tiny-flux2": "Flux2KleinPipeline",
    "tiny-flux2-dev": "Flux2Pipeline",
}
"""The pipeline class each built-in diffusion model is saved as (known before it is built)."""

_SINGLE_FILE_CLASSES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sd2-v": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


def is_edit_model(source: ModelSource) -> bool | None:
    """Whether a resolved model is an instruction-edit model (Flux Kontext, Qwen-Image-Edit),
    from its files' names only; None when that cannot be known without it (a hub id not in
    the cache)."""
    if source.ref.startswith(BUILTIN_PREFIX):
        return BUILTIN_CLASSES.get(source.ref.removeprefix(BUILTIN_PREFIX)) in EDIT_CLASS
    if source.kind == "single_file":
        return False  # (edit models load from diffusers folders today)
    location = Path(source.location)
    return edit_class_name(location) is not None if location.is_dir() else None


def folder_family(folder: Path) -> Family | None:
    """The family a diffusers folder's ``model_index.json`` names (None: not one known)."""
    try:
        named = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return family_of_class(named) if isinstance(named, str) else None


def source_family(source: ModelSource) -> Family | None:
    """The family of a resolved model, from its files' names and headers only."""
    if source.ref.startswith(BUILTIN_PREFIX):
        named = BUILTIN_CLASSES.get(source.ref.removeprefix(BUILTIN_PREFIX))
        return family_of_class(named) if named else None
    location = Path(source.location)
    if source.kind == "single_file":
        try:
            found = detect_file(location)
        except (ConfigError, OSError):
            return None
        named = found.pipeline if isinstance(found, FlowFile) else _SINGLE_FILE_CLASSES[found]
        return family_of_class(named)
    return folder_family(location) if location.is_dir() else None
