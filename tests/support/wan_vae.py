"""A Qwen-Image VAE's weights under the original Wan names, as ComfyUI saves
``qwen_image_vae.safetensors``: the inverse of diffusers' ``convert_wan_vae_to_diffusers``
(its layout: ``dim_mult`` [1, 2, 4, 4], two residual blocks a level, as Qwen-Image's VAE)."""

from __future__ import annotations

import re

import torch

_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma":
             "residual.3.gamma", "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip
_FIXED = {
    "encoder.conv_in": "encoder.conv1",
    "decoder.conv_in": "decoder.conv1",
    "encoder.norm_out.gamma": "encoder.head.0.gamma",
    "decoder.norm_out.gamma": "decoder.head.0.gamma",
    "encoder.conv_out": "encoder.head.2",
    "decoder.conv_out": "decoder.head.2",
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
}


def _residual(part: str) -> str:
    for ours, theirs in _RESIDUAL.items():
        if part.startswith(ours):
            return theirs + part[len(ours) :]
    return part


def wan_name(key: str) -> str:
    for ours, theirs in _FIXED.items():
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours) :]
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_residual(m[3])}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
        return f"{m[1]}.middle.1.{m[2]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.+)$", key):
        return f"encoder.downsamples.{m[1]}.{_residual(m[2])}"
    if m := re.match(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)$", key):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_residual(m[3])}"
    if m := re.match(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)$", key):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    return key


def to_wan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {wan_name(k): v for k, v in state.items()}
