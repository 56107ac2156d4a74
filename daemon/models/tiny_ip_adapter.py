"""The built-in tiny IP-Adapters (``tiny-ip-adapter``, ``tiny-ip-adapter-sdxl``): random
weights from a fixed seed, in the files users have.

The folder holds ``ip-adapter.safetensors`` in h94/IP-Adapter's key layout
(``image_proj.proj.*``, ``image_proj.norm.*`` and ``ip_adapter.<n>.to_k_ip/to_v_ip.weight``
per cross-attention layer of the UNet, n = 1, 3, 5 …), so it loads through diffusers'
IP-Adapter conversion as ``ip-adapter_sd15.safetensors`` does, and ``image_encoder/``, a tiny
``CLIPVisionModelWithProjection`` saved as h94's ``models/image_encoder`` is.
See :mod:`daemon.models.builtin` for why built-ins exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.models.ip_adapter_layout import cross_attention_layers
from daemon.models.tiny_sd import tiny_sdxl_unet, tiny_unet

ADAPTER_FILE = "ip-adapter.safetensors"
ENCODER_FOLDER = "image_encoder"
_SEED = 0
_IMAGE_EMBED_DIM = 16  # the tiny encoder's projection: the adapter's input
_TOKENS = 4  # image tokens per reference, as IP-Adapter's ImageProjection makes


def _tiny_encoder(folder: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=_IMAGE_EMBED_DIM,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder, safe_serialization=True)


def _adapter_weights(unet: Any) -> dict[str, Any]:
    """Random adapter weights for `unet`'s cross-attention layers, in h94's layout: the
    numbering diffusers' ``_convert_ip_adapter_attn_to_diffusers`` reads back."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection

    width = unet.config.cross_attention_dim
    projection = ImageProjection(
        cross_attention_dim=width, image_embed_dim=_IMAGE_EMBED_DIM, num_image_text_embeds=_TOKENS
    )
    weights = {
        f"image_proj.{name.replace('image_embeds', 'proj')}": tensor
        for name, tensor in projection.state_dict().items()
    }
    for _, hidden, key in cross_attention_layers(unet):
        layer = IPAdapterAttnProcessor2_0(hidden, width, num_tokens=(_TOKENS,))
        weights[f"ip_adapter.{key}.to_k_ip.weight"] = layer.to_k_ip[0].weight
        weights[f"ip_adapter.{key}.to_v_ip.weight"] = layer.to_v_ip[0].weight
    return {name: tensor.detach().contiguous() for name, tensor in weights.items()}


def _build(folder: Path, unet_builder: Any) -> None:
    import torch
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        weights = _adapter_weights(unet_builder())
        torch.manual_seed(_SEED)
        _tiny_encoder(folder / ENCODER_FOLDER)
    save_file(weights, str(folder / ADAPTER_FILE))


def build_tiny_ip_adapter(folder: Path) -> None:
    """For ``tiny-sd`` (cross-attention 32 wide)."""
    _build(folder, tiny_unet)


def build_tiny_ip_adapter_sdxl(folder: Path) -> None:
    """For ``tiny-sdxl`` (cross-attention 96 wide, two transformer layers in the lower block)."""
    _build(folder, tiny_sdxl_unet)
