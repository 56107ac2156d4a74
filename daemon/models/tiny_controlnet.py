"""The built-in tiny ControlNets (``tiny-controlnet``, ``tiny-controlnet-sdxl``): random
weights from a fixed seed, the encoder layout of ``tiny-sd`` / ``tiny-sdxl``.

A ControlNet made as they are trained (``ControlNetModel.from_unet``) starts with its "zero
convolutions" at zero, so its residuals are exactly zero and a control image would change
nothing: useless to test that one does. Here every weight is random, the zero convolutions
(the conditioning embedding's last convolution and one per residual) included, at a small
scale, so that a control image moves the pixels without drowning the painting.
See :mod:`daemon.models.builtin` for why built-ins exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_SEED = 0
_ZERO_CONV_STD = 0.05
"""Spread of the "zero" convolutions' random weights: residuals of a few percent of the
UNet's own activations."""

_LAYOUT: dict[str, Any] = {
    "in_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "norm_num_groups": 32,
    # Three stride-2 convolutions: a control image at the painting's size meets 8x latents.
    "conditioning_embedding_out_channels": (8, 16, 16, 32),
}
"""The encoder of both tiny UNets (:mod:`daemon.models.tiny_sd`)."""


def _randomised_zero_convs(net: Any) -> Any:
    import torch

    zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    zero_convs.append(net.controlnet_cond_embedding.conv_out)
    if hasattr(net, "spatial_ch_projs"):  # a union net's control-type projection
        zero_convs.append(net.spatial_ch_projs)
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.normal_(0.0, _ZERO_CONV_STD)
            conv.bias.normal_(0.0, _ZERO_CONV_STD)
    return net


def _build(folder: Path, *, union: bool = False, **architecture: Any) -> None:
    import torch
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.controlnets.controlnet_union import ControlNetUnionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        net = (ControlNetUnionModel if union else ControlNetModel)(**_LAYOUT, **architecture)
        net = _randomised_zero_convs(net)
    net.save_pretrained(folder, safe_serialization=True)


def build_tiny_controlnet(folder: Path) -> None:
    """The SD-1 variant: cross-attention 32 wide, as ``tiny-sd``."""
    _build(folder, cross_attention_dim=32, attention_head_dim=8)


def _sdxl_architecture() -> dict[str, Any]:
    time_embed_dim, pooled_dim = 8, 16  # tiny_sd's _SDXL_TIME_EMBED_DIM, _SDXL_POOLED_DIM
    return {
        "cross_attention_dim": 32 + 64,
        "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (4, 8),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": 6 * time_embed_dim + pooled_dim,
    }


def build_tiny_controlnet_sdxl(folder: Path) -> None:
    """The SDXL variant: cross-attention 96 wide, pooled text and size conditioning, as
    ``tiny-sdxl``."""
    _build(folder, **_sdxl_architecture())


def build_tiny_controlnet_union(folder: Path) -> None:
    """A ControlNet Union for ``tiny-sdxl``, with ProMax's eight control types; its
    control-type transformer as wide as the first block."""
    width = _LAYOUT["block_out_channels"][0]
    _build(
        folder,
        union=True,
        **_sdxl_architecture(),
        num_control_type=8,
        num_trans_channel=width,
        num_trans_head=4,
        num_proj_channel=width,
    )
