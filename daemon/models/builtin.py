"""Built-in tiny models: random weights from a fixed seed, saved as a normal diffusers folder.

Why: the product and its tests must exercise the real ``from_pretrained`` loading path, on a
CPU, offline, in seconds. A real Stable Diffusion checkpoint is gigabytes and needs a download;
a *tiny* pipeline with the same architecture (SD-1 layout, 8x VAE, CLIP text encoder, BPE
tokenizer) behaves the same way towards the code around it — sizes, schedulers, prompts,
clip skip, LoRA, single-file conversion — while its output is just noise. ``tiny-sdxl`` does
the same for the SDXL layout (two text encoders, pooled text and size conditioning).

The folder is generated on first use into ``cache_dir/<name>-v<BUILD_VERSION>/`` and reused
afterwards. Bump :data:`BUILD_VERSION` whenever the recipe changes, so that old caches are
never mistaken for the new recipe.

torch, diffusers and transformers are imported inside the functions that need them, so that
importing this module (e.g. for ``is_builtin`` in config validation) is instant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from daemon.atomic import build_folder
from daemon.models.tiny_controlnet import (
    build_tiny_controlnet,
    build_tiny_controlnet_sdxl,
    build_tiny_controlnet_union,
)
from daemon.models.tiny_flow import build_tiny_flux, build_tiny_flux_kontext, build_tiny_sd3
from daemon.models.tiny_flux2 import build_tiny_flux2, build_tiny_flux2_dev
from daemon.models.tiny_interrogator import build_tiny_interrogator
from daemon.models.tiny_ip_adapter import build_tiny_ip_adapter, build_tiny_ip_adapter_sdxl
from daemon.models.tiny_qwen import build_tiny_qwen_image, build_tiny_qwen_image_edit
from daemon.models.tiny_sd import build_tiny_sd, build_tiny_sdxl
from daemon.models.tiny_tagger import build_tiny_tagger

BUILTIN_PREFIX = "builtin:"
"""A model reference of the form ``builtin:<name>`` names a built-in model, not a path or repo."""

BUILTIN_MODELS: dict[str, str] = {
    "tiny-sd": "tiny random SD-1-style pipeline (output is noise)",
    "tiny-sdxl": "tiny random SDXL-style pipeline (output is noise)",
    "tiny-flux": "tiny random Flux.1-dev-style pipeline (output is noise)",
    "tiny-flux-kontext": "tiny random Flux.1-Kontext-style edit pipeline (tiny-flux's weights)",
    "tiny-sd3": "tiny random SD 3.5-style pipeline (output is noise)",
    "tiny-flux2": "tiny random Flux.2-Klein-style pipeline, img2img, inpaint and edit",
    "tiny-flux2-dev": "tiny random FLUX.2-dev-style pipeline (Mistral3 encoder), edit only",
    "tiny-qwen-image": "tiny random Qwen-Image-style pipeline (output is noise)",
    "tiny-qwen-image-edit": "tiny random Qwen-Image-Edit-2509-style edit pipeline",
    "tiny-interrogator": "tiny random BLIP + CLIP for the CLIP interrogator (words are noise)",
    "tiny-tagger": "tiny random WD14-style ONNX tagger with a short tag list (tags are noise)",
    "tiny-controlnet": "tiny random ControlNet for tiny-sd (a control image moves the noise)",
    "tiny-controlnet-sdxl": "tiny random ControlNet for tiny-sdxl",
    "tiny-controlnet-union": "tiny random ControlNet Union (ProMax's 8 types) for tiny-sdxl",
    "tiny-ip-adapter": "tiny random IP-Adapter and CLIP vision encoder for tiny-sd",
    "tiny-ip-adapter-sdxl": "tiny random IP-Adapter and CLIP vision encoder for tiny-sdxl",
}

INTERROGATION_BUILTINS = frozenset({"tiny-interrogator", "tiny-tagger"})
"""Built-ins that are interrogation models, not diffusion pipelines."""

CONTROLNET_BUILTINS = frozenset(
    {"tiny-controlnet", "tiny-controlnet-sdxl", "tiny-controlnet-union"}
)
"""Built-ins that are ControlNets (a ``controlnet:`` unit's model), not pipelines."""

IP_ADAPTER_BUILTINS = frozenset({"tiny-ip-adapter", "tiny-ip-adapter-sdxl"})
"""Built-ins that are IP-Adapters (``ip_adapter: model:``), with their image encoder."""

BUILD_VERSION = 1
"""Bump when a recipe changes (configs, seed, tokenizer): the cache folder names change too.

Adding a model is not a change of recipe: its folder name is new anyway."""

_BUILD_LOCK = threading.Lock()
"""Temp build folders older than this are leftovers of a crashed build and may be deleted."""


def is_builtin(ref: str) -> bool:
    """True for a ``builtin:<name>`` model reference."""
    return ref.startswith(BUILTIN_PREFIX)


def ensure_builtin(name: str, cache_dir: Path) -> Path:
    """Return the folder of built-in model `name` (see BUILTIN_MODELS), made on first use.

    The folder is ``cache_dir/<name>-v<BUILD_VERSION>/``. Generation is deterministic (fixed
    seed, same bytes every time) and needs no network. It is atomic: the model is built in a
    temp folder beside the final one and renamed into place, so the final folder exists only
    when complete. Two processes building at once both succeed; the loser discards its copy.

    Raises ValueError for an unknown name, listing the known names.
    """
    if name not in BUILTIN_MODELS:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ValueError(f"unknown built-in model {name!r}; known: {known}")
    final = Path(cache_dir) / f"{name}-v{BUILD_VERSION}"

    def build(folder: Path) -> None:
        _BUILDERS[name](folder)
        (folder / _DONE_MARK).write_text(f"{name} v{BUILD_VERSION}\n")

    with _BUILD_LOCK:  # one build per process; other processes are handled by the rename
        return build_folder(final, build, complete=_is_complete)


def model_hash_file(folder: Path) -> Path:
    """Return the file whose sha256 identifies a diffusers folder (A1111's "Model hash").

    That is the denoiser's weights file, the UNet's (SD, SDXL) or the transformer's (SD 3.5,
    Flux, Qwen-Image): the denoiser is what makes a model what it is, and the file is the
    same bytes however the folder was copied. Folders saved in other variants (fp16, legacy
    ``.bin``) fall back to those files; a sharded one, to its first shard. Raises
    FileNotFoundError if there is none.
    """
    for denoiser in (Path(folder) / "unet", Path(folder) / "transformer"):
        for pattern in _WEIGHTS_FILES:
            found = sorted(denoiser.glob(pattern))
            if found:
                return found[0]
    raise FileNotFoundError(f"no UNet or transformer weights file in {folder}")


_WEIGHTS_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model-*.safetensors",  # sharded: -00001-of-00003 first
    "diffusion_pytorch_model.fp16-*.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
"""A denoiser's weights files, in the order they are preferred."""


_DONE_MARK = ".built"


def _is_complete(folder: Path) -> bool:
    """A built folder only ever appears whole (by rename), so a file in it is the sign: the
    mark every build writes last, or the index of a diffusers folder built before the mark."""
    return (folder / _DONE_MARK).is_file() or (folder / "model_index.json").is_file()


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-sd": build_tiny_sd,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-flux": build_tiny_flux,
    "tiny-flux-kontext": build_tiny_flux_kontext,
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux2": build_tiny_flux2,
    "tiny-flux2-dev": build_tiny_flux2_dev,
    "tiny-qwen-image": build_tiny_qwen_image,
    "tiny-qwen-image-edit": build_tiny_qwen_image_edit,
    "tiny-interrogator": build_tiny_interrogator,
    "tiny-tagger": build_tiny_tagger,
    "tiny-controlnet": build_tiny_controlnet,
    "tiny-controlnet-sdxl": build_tiny_controlnet_sdxl,
    "tiny-controlnet-union": build_tiny_controlnet_union,
    "tiny-ip-adapter": build_tiny_ip_adapter,
    "tiny-ip-adapter-sdxl": build_tiny_ip_adapter_sdxl,
}
