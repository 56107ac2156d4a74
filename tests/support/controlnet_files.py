"""Tiny ControlNets written as single files, as users have them: lllyasviel's original key
layout (with or without ``control_model.``), as ``.safetensors`` or a ``.pth`` pickle, and
xinsir's union nets in diffusers' layout. Their weights are the built-ins' (so a file paints
exactly as its built-in folder does), and the built-ins' folders are the configs they load
with, where the shipped full-size configs would be."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from daemon.models.builtin import ensure_builtin
from daemon.models.controlnet_loading import load_controlnet_folder
from tests.support.ldm import controlnet_to_ldm

BUILTIN_OF_CONFIG = {
    "controlnet-sd1": "tiny-controlnet",
    "controlnet-sdxl": "tiny-controlnet-sdxl",
    "controlnet-sdxl-union": "tiny-controlnet-union",
}


def tiny_configs(state_dir: Path) -> dict[str, Path]:
    """The config folder for each kind of single file: the tiny built-ins' (there is no
    tiny SD 2.x net; an SD 2.x file takes the shipped config)."""
    return {
        config: ensure_builtin(name, state_dir / "builtin")
        for config, name in BUILTIN_OF_CONFIG.items()
    }


def write_controlnet(
    builtin: str, path: Path, state_dir: Path, *, ldm: bool = True, prefix: str = ""
) -> Path:
    """Built-in ControlNet `builtin` written to `path` (``.safetensors``, else a pickle), in
    the original layout (`ldm`, each key after `prefix`) or diffusers' own."""
    net = load_controlnet_folder(
        ensure_builtin(builtin, state_dir / "builtin"), dtype=torch.float32
    )
    weights = controlnet_to_ldm(net) if ldm else net.state_dict()
    state = {prefix + key: value.detach().contiguous() for key, value in weights.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
