"""Single files of the flow-matching families (SD 3 / 3.5, Flux.1, Flux.2, Qwen-Image): what
a file is, from its safetensors header alone (key names, shapes and dtypes; no tensor data).

Users have these models as ComfyUI, Forge and civitai save them, not as diffusers folders:

* transformer only (ComfyUI ``models/diffusion_models`` or ``models/unet``), its keys bare or
  under ``model.diffusion_model.``; the text encoders and the VAE are separate files;
* all in one (Forge / civitai): the transformer under ``model.diffusion_model.``, the text
  encoders under ``text_encoders.<clip_l|clip_g|t5xxl>.``, the VAE under ``vae.`` or
  ``first_stage_model.``.

The tell-tale keys are those diffusers' own ``infer_diffusers_model_type`` reads
(``loaders/single_file_utils.py``), plus Qwen-Image's, which diffusers 0.42.1 cannot tell.
Pure functions over a header; nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.errors import ConfigError
from daemon.models.checkpoints import (
    Architecture,
    classify_layout,
    detect_architecture,
    read_layout,
)

TRANSFORMER_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIX = "text_encoders."
VAE_PREFIXES = ("vae.", "first_stage_model.")
Fp8 = Literal["plain", "scaled"]


@dataclass(frozen=True)
class FlowFile:
    """What a flow family's single file holds, and how to load it."""

    variant: str  # the shipped config folder (daemon/data/configs/<variant>): flux-dev, …
    pipeline: str  # the diffusers pipeline class of the family (model_index's _class_name)
    label: str  # for messages and `check`: "Flux.1 dev transformer"
    prefix: str  # "" or "model.diffusion_model.": where the transformer's keys start
    text_encoders: tuple[str, ...]  # encoders inside the file: clip_l, clip_g, t5xxl
    vae_prefix: str | None  # where the file's own VAE is, None: it has none
    fp8: Fp8 | None  # float8 weights: "plain" (cast up) or ComfyUI's "scaled" (scales in)
    blocks: Mapping[str, int]  # block counts found: {"double": 19, "single": 38}

    @property
    def all_in_one(self) -> bool:
        return bool(self.text_encoders) or self.vae_prefix is not None


_PIPELINES = {
    "flux-dev": "FluxPipeline",
    "flux-schnell": "FluxPipeline",
    "flux-fill": "FluxFillPipeline",
    "sd3-medium": "StableDiffusion3Pipeline",
    "sd35-medium": "StableDiffusion3Pipeline",
    "sd35-large": "StableDiffusion3Pipeline",
    "qwen-image": "QwenImagePipeline",
    "flux2-dev": "Flux2Pipeline",
    "flux2-klein": "Flux2KleinPipeline",
}
_LABELS = {
    "flux-dev": "Flux.1 dev",
    "flux-schnell": "Flux.1 schnell",
    "flux-fill": "Flux.1 Fill",
    "sd3-medium": "SD 3 Medium",
    "sd35-medium": "SD 3.5 Medium",
    "sd35-large": "SD 3.5 Large",
    "qwen-image": "Qwen-Image",
    "flux2-dev": "Flux.2 dev",
    "flux2-klein": "Flux.2 Klein",
}
_BLOCK = re.compile(r"^([a-z_]+blocks)\.(\d+)\.")


def classify_flow(path: Path, header: Mapping[str, Any]) -> FlowFile | None:
    """The flow family file `header` is, None when it is none of them (an SD checkpoint, a
    LoRA, …). Raises ConfigError for a flow model the daemon cannot run (Chroma, Flux Depth)."""
    keys = [k for k in header if k != "__metadata__"]
    prefix = TRANSFORMER_PREFIX if any(k.startswith(TRANSFORMER_PREFIX) for k in keys) else ""
    bare = {k.removeprefix(prefix): header[k] for k in keys if k.startswith(prefix)}
    variant = _variant(path, bare)
    if variant is None:
        return None
    encoders = sorted(
        {k.split(".")[1] for k in keys if k.startswith(TEXT_ENCODER_PREFIX) and k.count(".") > 1}
    )
    vae = next((p for p in VAE_PREFIXES if any(k.startswith(p + "decoder.") for k in keys)), None)
    return FlowFile(
        variant=variant,
        pipeline=_PIPELINES[variant],
        label=_LABELS[variant] + (" checkpoint" if encoders or vae else " transformer"),
        prefix=prefix,
        text_encoders=tuple(encoders),
        vae_prefix=vae,
        fp8=fp8_kind(header),
        blocks=block_counts(bare),
    )


def _variant(path: Path, bare: Mapping[str, Any]) -> str | None:
    def has(key: str) -> bool:
        return key in bare

    if any(k.startswith("distilled_guidance_layer.") for k in bare):
        raise ConfigError(
            f"{path}: a Chroma model; Chroma is not supported (its pipelines are not "
            "img2img/inpaint ones the daemon runs): use Flux.1, SD 3.5 or Qwen-Image"
        )
    blocks = block_counts(bare)
    if has("single_stream_modulation.lin.weight"):
        # FLUX.2 [dev] is 8 double + 48 single blocks; the Klein models are smaller.
        dev = blocks.get("double_blocks") == 8 and blocks.get("single_blocks") == 48
        return "flux2-dev" if dev else "flux2-klein"
    if has("double_blocks.0.img_attn.qkv.weight") or has(
        "double_blocks.0.img_attn.norm.key_norm.scale"
    ):
        in_channels = _shape(bare.get("img_in.weight"))[1:2]
        if in_channels == [384]:
            return "flux-fill"
        if in_channels == [128]:
            raise ConfigError(
                f"{path}: a Flux.1 Depth model (128 input channels); only Flux.1 dev, "
                "schnell and Fill are supported as single files"
            )
        return "flux-dev" if has("guidance_in.in_layer.weight") else "flux-schnell"
    if has("joint_blocks.0.x_block.attn.qkv.weight") or has(
        "joint_blocks.0.context_block.adaLN_modulation.1.bias"
    ):
        if blocks.get("joint_blocks", 0) >= 38:
            return "sd35-large"
        if has("joint_blocks.0.x_block.attn2.qkv.weight"):
            return "sd35-medium"  # 3.5 Medium's dual attention (MMDiT-X)
        return "sd3-medium"
    if has("txt_norm.weight") and has("transformer_blocks.0.img_mod.1.weight"):
        return "qwen-image"
    return None


def block_counts(bare: Mapping[str, Any]) -> dict[str, int]:
    """``{"double_blocks": 19, "single_blocks": 38}``: how many blocks of each kind."""
    highest: dict[str, int] = {}
    for key in bare:
        match = _BLOCK.match(key)
        if match:
            name, index = match.group(1), int(match.group(2))
            highest[name] = max(highest.get(name, -1), index)
    return {name: top + 1 for name, top in highest.items()}


def fp8_kind(header: Mapping[str, Any]) -> Fp8 | None:
    """``scaled`` for ComfyUI's scaled fp8 (a ``scaled_fp8`` marker or ``.scale_weight``
    tensors), ``plain`` for float8 weights alone, None for none."""
    keys = [k for k in header if k != "__metadata__"]
    if any(k.endswith("scaled_fp8") or k.endswith(".scale_weight") for k in keys):
        return "scaled"
    dtypes = {str(v.get("dtype", "")) for v in header.values() if isinstance(v, dict)}
    return "plain" if dtypes & {"F8_E4M3", "F8_E5M2"} else None


def _shape(entry: Any) -> list[int]:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return [int(n) for n in shape] if isinstance(shape, list) else []


GGUF_SUFFIX = ".gguf"


def read_model_layout(path: Path) -> dict[str, Any]:
    """``{key: {"shape", "dtype"}}`` of a checkpoint: safetensors, an allowed pickle, or GGUF
    (city96's quantized transformers; shapes in torch's order)."""
    if Path(path).suffix.lower() != GGUF_SUFFIX:
        return read_layout(path)
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise ConfigError(
            f"{path}: a GGUF file; GGUF needs the gguf package: pip install 'img2imgd[gguf]'"
        ) from exc
    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from exc
    return {
        t.name: {"shape": [int(n) for n in reversed(t.shape.tolist())], "dtype": t.tensor_type.name}
        for t in reader.tensors
    }


def detect_file(path: Path) -> Architecture | FlowFile:
    """What a single-file checkpoint is: an SD architecture (see
    :func:`daemon.models.checkpoints.detect_architecture`) or a flow family's file."""
    path = Path(path)
    header = read_model_layout(path)
    flow = classify_flow(path, header)
    if flow is not None:
        return flow
    classify_layout(path, header)  # raises ConfigError for what is no model at all
    return detect_architecture(path)
