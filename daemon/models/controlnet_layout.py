"""What a ControlNet file is, read from its keys and shapes alone (never its weights).

ControlNets come as users have them: lllyasviel's ControlNet 1.1 files for SD 1.5
(``control_v11p_sd15_canny.pth`` / ``.safetensors``) and the SD 2.x ones (thibaud's) in the
original (LDM) key layout, with or without the ``control_model.`` prefix; SDXL ControlNets
as diffusers saves them (``diffusion_pytorch_model.safetensors`` renamed) or in the original
layout; and xinsir's ControlNet Union (ProMax) for SDXL in diffusers' layout. A single file
carries no config: the one it is loaded with is chosen here, by family, from the shipped
ones (``daemon/data/configs/controlnet-<family>[-union]``).

The family is the width of the text the net attends to (its ``attn2.to_k`` input: 768 for
SD 1.x, 1024 for SD 2.x, 2048 for SDXL, as the extension's ``build_model_by_guess`` reads
it) and, for SDXL, its size conditioning (``label_emb`` / ``add_embedding``). So a net for
another architecture than the checkpoint's is told before any weight is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.errors import ConfigError
from daemon.models.checkpoints import read_layout
from daemon.models.single_file import CONFIGS_DIR

Family = Literal["sd1", "sd2", "sdxl"]
LDM_PREFIX = "control_model."
"""The prefix of a ControlNet's weights in lllyasviel's files (some have none)."""

SHIPPED_CONFIGS: dict[str, Path] = {
    name: CONFIGS_DIR / name
    for name in ("controlnet-sd1", "controlnet-sd2", "controlnet-sdxl", "controlnet-sdxl-union")
}
"""The diffusers config a single file of each kind is loaded with (:attr:`ControlNetLayout.
config_name`): SD 1.5's, SD 2.1's and SDXL base's encoder, with the ControlNet 1.1
conditioning embedding (16, 32, 96, 256); the union one has ProMax's 8 control types."""

_CROSS_ATTENTION = re.compile(r"\.attn2\.to_k\.weight$")
_WIDTHS: dict[int, Family] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class ControlNetLayout:
    """What :func:`controlnet_layout` found in a file."""

    family: Family
    width: int  # the cross-attention width: the text it attends to
    union: bool  # ControlNet Union (ProMax): one net, a control type per image
    ldm: bool  # the original key layout, to be converted to diffusers'
    prefix: str  # a prefix of every weight's name (``control_model.``), or ""
    control_types: int | None = None  # a union net's number of control types

    @property
    def config_name(self) -> str:
        """The shipped config it loads with: ``controlnet-sd1``, … ``controlnet-sdxl-union``."""
        return f"controlnet-{self.family}" + ("-union" if self.union else "")


def controlnet_layout(path: Path) -> ControlNetLayout:
    """The layout of ControlNet file `path` (a ``.safetensors`` header, or an allowed
    pickle read with tensors on the meta device). ConfigError naming the file when it is
    not a ControlNet img2imgd can load, saying what it looks like instead."""
    return layout_of(path, read_layout(path))


def layout_of(path: Path, header: Mapping[str, Any]) -> ControlNetLayout:
    keys = [k for k in header if k != "__metadata__"]
    prefix = LDM_PREFIX if any(k.startswith(LDM_PREFIX) for k in keys) else ""
    names = {k[len(prefix) :]: header[k] for k in keys if k.startswith(prefix)}
    ldm = "input_hint_block.0.weight" in names
    diffusers = "controlnet_cond_embedding.conv_in.weight" in names
    if "difference" in keys:  # its weights are added to SD 1.5's own: diffusers has no way
        raise ConfigError(
            f"{path}: a ControlNet 1.0 'difference' model, which img2imgd cannot load; use "
            "the ControlNet 1.1 file of the same kind"
        )
    if not (ldm or diffusers):
        raise ConfigError(f"{path}: not a ControlNet{_what_else(keys)}")
    union = "task_embedding" in names
    if union and ldm:
        raise ConfigError(
            f"{path}: a ControlNet Union in the original layout; use the diffusers-layout "
            "file (xinsir's diffusion_pytorch_model*.safetensors)"
        )
    width = next((_shape(v)[1] for k, v in names.items() if _CROSS_ATTENTION.search(k)), 0)
    if not width:
        raise ConfigError(f"{path}: a ControlNet without cross-attention weights: unknown layout")
    sdxl = "label_emb.0.0.weight" in names or "add_embedding.linear_1.weight" in names
    family: Family = "sdxl" if sdxl else _WIDTHS.get(width, "sd1")
    if family == "sdxl" and width in _WIDTHS and _WIDTHS[width] != "sdxl":
        raise ConfigError(
            f"{path}: an SDXL ControlNet (size conditioning) attending to {width}-wide text: "
            "unknown layout"
        )
    types = _shape(names["task_embedding"])[0] if union else None
    return ControlNetLayout(family, width, union, ldm, prefix, types)


def _shape(entry: Any) -> list[int]:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return [int(n) for n in shape] if isinstance(shape, list) else [0, 0]


def _what_else(keys: list[str]) -> str:
    """What a file that is no ControlNet looks like, as a hint."""
    if any(k.startswith(("model.diffusion_model.", "cond_stage_model.")) for k in keys):
        return " (it is a Stable Diffusion checkpoint: use it as `model:`)"
    if any("lora" in k for k in keys):
        return " (it looks like a LoRA or a Control-LoRA, which img2imgd does not load)"
    if any(k.startswith(("adapter.", "body.")) for k in keys):
        return " (it looks like a T2I-Adapter, which img2imgd does not load)"
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return f": no conditioning embedding (input_hint_block.*); first keys: {sample}"
