"""The kinds of model a profile or a prompt can name, one row each: the whole difference
between finding a checkpoint, a VAE, a LoRA, an embedding, an interrogator or a tagger.

A new kind (ControlNet, IP-Adapter) is one more row in :data:`KINDS`: its name for messages,
what its files look like, the sub-folders of ``models_dir`` A1111 keeps it in, whether it is
found by file stem through every sub-folder (as LoRAs are), the weight suffixes it accepts
and whether a hub id may name it. The search, the pickle rule and the "not found" message
(:mod:`daemon.models.resolve.search`, :mod:`daemon.models.resolve.failures`) then work for it
unchanged; ``tests/test_resolve.py`` adds a throwaway row to prove it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.models.checkpoints import PICKLE_SUFFIXES
from daemon.models.hub_cache import HubRole
from daemon.models.layouts import WD14_MODEL

SAFE_SUFFIXES = (".safetensors",)
WEIGHT_SUFFIXES = (*SAFE_SUFFIXES, *PICKLE_SUFFIXES)  # a safetensors file wins over a pickle
BESIDE = "../"
"""A folder written ``../name`` lies beside ``models_dir``: the webui's own folder, searched
only when ``models_dir`` is an A1111 ``models`` folder (A1111's ``embeddings``)."""


def _weight_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES


GGUF_SUFFIXES = (".gguf",)
"""city96's quantized transformers (the gguf extra reads them): named with their extension."""


def _checkpoint(path: Path) -> bool:
    gguf = path.is_file() and path.suffix.lower() in GGUF_SUFFIXES
    return (path / "model_index.json").is_file() or _weight_file(path) or gguf


def _file_or_folder(path: Path) -> bool:
    return path.is_file() or path.is_dir()


def _blip_and_clip(path: Path) -> bool:
    return (path / "blip").is_dir() and (path / "clip").is_dir()


def _model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _folder_or_weight_file(path: Path) -> bool:
    return _model_folder(path) or _weight_file(path)


def _tagger(path: Path) -> bool:
    # WD14's folder, A1111's DeepDanbooru .pt, or its torch_deepdanbooru folder holding one.
    return (
        path.is_file()
        or (path / WD14_MODEL).is_file()
        or (path.is_dir() and any(path.glob("*.pt")))
    )


@dataclass(frozen=True)
class Kind:
    """How one kind of model is found (see the module's docstring)."""

    name: str  # in messages: "LoRA 'x' not found"
    expected: str  # what it looks like on disk, in messages: "a LoRA file"
    folders: tuple[str, ...]  # under models_dir, in order ("" is models_dir, see BESIDE)
    recursive: bool = False  # by file stem through every sub-folder, not by name or path
    suffixes: tuple[str, ...] = WEIGHT_SUFFIXES  # tried after a bare name, in this order
    hub: HubRole | None = None  # a hub id may name it (from the local cache), as this role
    accepts: Callable[[Path], bool] = _weight_file  # what counts as found (non-recursive)


INTERROGATOR_FOLDERS = ("", "interrogators", "torch_deepdanbooru", "BLIP", "CLIP")

KINDS: dict[str, Kind] = {
    "model": Kind(
        "model",
        "a diffusers folder or a checkpoint file",
        # A1111's and Forge's folder, then ComfyUI's: checkpoints, transformer-only files.
        ("", "Stable-diffusion", "checkpoints", "diffusion_models", "unet"),
        hub="pipeline",
        accepts=_checkpoint,
    ),
    "vae": Kind(
        "vae", "a VAE file or folder", ("VAE", "", "vae"), hub="model", accepts=_file_or_folder
    ),
    "lora": Kind("LoRA", "a LoRA file", ("Lora", "LyCORIS"), recursive=True),
    "embedding": Kind(
        "embedding",
        "a textual-inversion embedding file",
        ("embeddings", f"{BESIDE}embeddings"),
        recursive=True,
    ),
    "interrogator": Kind(
        "interrogation model",
        "a folder holding blip/ and clip/ (or write '<blip> + <clip>', each a folder or a hub "
        "repo id, e.g. 'Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14')",
        INTERROGATOR_FOLDERS,
        suffixes=(),
        accepts=_blip_and_clip,
    ),
    "interrogator_part": Kind(  # one side of '<blip> + <clip>'
        "interrogation model",
        "a model folder with config.json (or give a hub repo id)",
        INTERROGATOR_FOLDERS,
        suffixes=(),
        hub="model",
        accepts=_model_folder,
    ),
    "controlnet": Kind(
        "ControlNet",
        "a ControlNet file (a diffusers folder is found by its path or folder name)",
        # A1111's folder, ComfyUI's, and the extension's own (beside an A1111 `models`).
        ("ControlNet", "controlnet", f"{BESIDE}extensions/sd-webui-controlnet/models"),
        recursive=True,
    ),
    "tagger": Kind(
        "tagger",
        "a WD14 folder (model.onnx + selected_tags.csv) or A1111's DeepDanbooru .pt file (or "
        "give a hub repo id such as SmilingWolf/wd-v1-4-moat-tagger-v2)",
        INTERROGATOR_FOLDERS,
        hub="tagger",
        accepts=_tagger,
    ),
    "ip_adapter": Kind(
        "IP-Adapter",
        "an IP-Adapter weight file (ip-adapter_sd15.safetensors)",
        # ComfyUI's folder, A1111's ControlNet folder and the extension's own, where it keeps
        # its ip-adapter_*.safetensors / .bin (a .bin only with allow_pickle).
        ("ipadapter", "ControlNet", f"{BESIDE}extensions/sd-webui-controlnet/models"),
        recursive=True,
    ),
    "image_encoder": Kind(
        "image encoder",
        "a CLIP vision model: a folder with config.json (h94/IP-Adapter's "
        "models/image_encoder) or its weights as one file (ComfyUI's clip_vision, the "
        "extension's clip_h.pth)",
        # ComfyUI's folder, then where the extension downloads clip_h.pth / clip_g.pth.
        ("clip_vision", f"{BESIDE}extensions/sd-webui-controlnet/annotator/downloads/clip_vision"),
        accepts=_folder_or_weight_file,
    ),
    # The flow families' separate parts (daemon.models.flow_components picks them by name).
    "text_encoder": Kind(
        "text encoder",
        "a text-encoder file (clip_l, clip_g, t5xxl, qwen_2.5_vl …) or a folder with config.json",
        ("text_encoders", "clip", "text_encoder"),  # ComfyUI's folders, then Forge's
        accepts=_folder_or_weight_file,
    ),
    "tokenizer": Kind(
        "tokenizer",
        "a tokenizer folder (tokenizer.json, or vocab.json and merges.txt)",
        # Our own folder, then where ComfyUI and Forge keep the ones they ship.
        (
            "tokenizers",
            f"{BESIDE}comfy/text_encoders",
            f"{BESIDE}backend/huggingface/black-forest-labs/FLUX.1-dev",
            f"{BESIDE}backend/huggingface/stabilityai/stable-diffusion-3-medium-diffusers",
        ),
        suffixes=(),
        accepts=_file_or_folder,
    ),
}
"""Every kind of model, by the name callers use (``find("lora", …)``)."""


def kind_folders(kind: str, models_dir: Path | None) -> list[Path]:
    """Where A1111 keeps files of `kind` under `models_dir`, in search order (none without
    a models_dir): ``models_dir/Lora`` and ``models_dir/LyCORIS`` for LoRAs."""
    if models_dir is None:
        return []
    models_dir = Path(models_dir)
    folders = []
    for folder in KINDS[kind].folders:
        if not folder.startswith(BESIDE):
            folders.append(models_dir / folder if folder else models_dir)
        elif models_dir.name.lower() == "models":  # the webui's folder, beside its models
            folders.append(models_dir.parent / folder.removeprefix(BESIDE))
    return folders


def folder_roles(kind: str, models_dir: Path | None) -> dict[Path, str]:
    """What each folder `kind` is searched in is, for messages; the working folder too."""
    roles = {Path.cwd(): "the working folder", Path("/"): "the file system root"}
    if models_dir is None:
        return roles
    for folder in kind_folders(kind, models_dir):
        if folder == models_dir:
            roles[folder] = "models_dir"
        elif folder.parent == models_dir:
            roles[folder] = "an A1111 sub-folder of models_dir"
        else:
            roles[folder] = "the webui's own folder, beside models_dir"
    return roles


def home_of(searched: Sequence[Path], models_dir: Path | None) -> Path | None:
    """Where a missing file belongs: the first folder searched other than models_dir itself
    (``models_dir/Stable-diffusion`` for a checkpoint, the first of ``lora_dirs``)."""
    return next((folder for folder in searched if folder != models_dir), models_dir)
