"""diffusers modules written in the original (LDM) single-file layout, as A1111/civitai files are.

The key mapping is the inverse of diffusers' conversion, after diffusers' public script
``scripts/convert_diffusers_to_original_stable_diffusion.py``, generalised to any block count,
layers per block and transformer depth. Used by the single-file tests (tiny models written out
and loaded back) and by the full-size random checkpoints (:mod:`tests.support.real_models`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.support.safetensors_stream import save_streaming

Tensors = dict[str, torch.Tensor]


_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


_ENCODER = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "mid_block.resnets.0.": "middle_block.0.",
    "mid_block.attentions.0.": "middle_block.1.",
    "mid_block.resnets.1.": "middle_block.2.",
}
"""What a UNet and a ControlNet name alike, besides the down blocks (:func:`_down_block`)."""


def unet_to_ldm(unet: Any) -> Tensors:
    """UNet weights under their LDM names (``model.diffusion_model.`` added by the caller).

    As the published script, but with the block count, layers per block and attention
    placement read from the config (it hard-codes SD 1.x's 4 blocks x 2 layers): an up
    block has one layer more than a down block, and its upsampler sits after the attention
    (index 2) when it has one, after the resnet (index 1) when not.
    """
    config = unet.config
    per = config.layers_per_block + 1
    prefixes = {**_ENCODER, "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for i, up_type in enumerate(config.up_block_types):
        prefixes.update(_down_block(i, config.layers_per_block))
        for j in range(per):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per + j}.1."
        upsampler_index = 2 if "CrossAttn" in up_type else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = (
            f"output_blocks.{i * per + per - 1}.{upsampler_index}."
        )
    return _renamed(unet.state_dict(), prefixes)


def _renamed(state: Tensors, prefixes: dict[str, str]) -> Tensors:
    """Each key under the LDM name of its longest diffusers prefix (resnet layers renamed)."""
    out: Tensors = {}
    for key, value in state.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len)
        rest = key[len(prefix) :]
        if ".resnets." in prefix:
            for hf, sd in _RESNET:
                rest = re.sub(rf"^{hf}\.", f"{sd}.", rest)
        out[prefixes[prefix] + rest] = value
    return out


def _down_block(i: int, layers: int) -> dict[str, str]:
    """Down block `i`'s prefixes: its resnets, attentions and downsampler among LDM's
    ``input_blocks`` (each block holds `layers` layers and a downsampler)."""
    per = layers + 1
    prefixes = {}
    for j in range(layers):
        prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * per + j}.0."
        prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * per + j}.1."
    prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per}.0.op."
    return prefixes


def vae_to_ldm(vae: Any) -> Tensors:
    """VAE weights under their LDM names: decoder blocks count down, mid-attention is 1x1 convs."""
    blocks = len(vae.config.up_block_types)
    rules: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.",
        ),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"conv_norm_out\.", "norm_out."),
        (r"conv_shortcut\.", "nin_shortcut."),
        (r"attn_1\.group_norm\.", "attn_1.norm."),
        (r"attn_1\.to_([qkv])\.", r"attn_1.\1."),
        (r"attn_1\.to_out\.0\.", "attn_1.proj_out."),
    ]
    out: Tensors = {}
    for key, value in vae.state_dict().items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", key):
            value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 conv, as in LDM
        out[key] = value
    return out


def clip_to_ldm(text_encoder: Any) -> Tensors:
    """OpenAI CLIP (SD 1.x, SDXL's first encoder): transformers' names under ``text_model.``.

    transformers >= 5.6 dropped the ``text_model.`` level of CLIPTextModel; the original
    layout keeps it. The position ids buffer is in real files too, so it is here.
    """
    out = {f"text_model.{k}": v for k, v in text_encoder.state_dict().items()}
    positions = text_encoder.config.max_position_embeddings
    out["text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def open_clip_to_ldm(text_encoder: Any) -> Tensors:
    """OpenCLIP (SD 2.x, SDXL's second encoder): fused q/k/v, transposed projection."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out: Tensors = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    hidden = text_encoder.config.hidden_size
    # OpenCLIP multiplies by text_projection (hidden x proj); SD 2.x files have one too.
    projection = state.pop("text_projection.weight", torch.eye(hidden))
    out["text_projection"] = projection.T.contiguous()
    for layer in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
            for hf, sd in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[f"{dst}{sd}.{kind}"] = state.pop(f"{src}{hf}.{kind}")
    assert not state, f"unmapped text encoder weights: {sorted(state)}"
    return out


def write_ldm_checkpoint(pipe: Any, path: Path, *, open_clip: bool = False) -> Path:
    """Write `pipe` as one original-layout file: SD 1.x, SD 2.x (`open_clip`) or SDXL."""
    state: Tensors = {}

    def add(prefix: str, tensors: Tensors) -> None:
        # No copies: the streaming writer reads each tensor where it lies (at SDXL size a
        # clone of everything would be a second 7 GB).
        state.update({prefix + k: v.detach() for k, v in tensors.items()})

    add("model.diffusion_model.", unet_to_ldm(pipe.unet))
    add("first_stage_model.", vae_to_ldm(pipe.vae))
    if getattr(pipe, "text_encoder_2", None) is not None:
        add("conditioner.embedders.0.transformer.", clip_to_ldm(pipe.text_encoder))
        add("conditioner.embedders.1.model.", open_clip_to_ldm(pipe.text_encoder_2))
    elif open_clip:
        add("cond_stage_model.model.", open_clip_to_ldm(pipe.text_encoder))
    else:
        add("cond_stage_model.transformer.", clip_to_ldm(pipe.text_encoder))
    # Real files also carry the training noise schedule; loaders must ignore it.
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    return save_streaming(state, path)


def controlnet_to_ldm(net: Any) -> Tensors:
    """A diffusers ControlNet's weights under lllyasviel's names (``control_model.`` added by
    the caller where a file has it): the inverse of diffusers' ``convert_controlnet_checkpoint``
    (the encoder as the UNet's, a zero convolution per residual, the hint block's convs at
    even indices from 0 to 14), and the SDXL size embedding under ``label_emb``."""
    config = net.config
    prefixes = {
        **_ENCODER,
        "controlnet_mid_block.": "middle_block_out.0.",
        "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
        "controlnet_cond_embedding.conv_out.": "input_hint_block.14.",
    }
    for j in range(2 * (len(config.conditioning_embedding_out_channels) - 1)):
        prefixes[f"controlnet_cond_embedding.blocks.{j}."] = f"input_hint_block.{2 * (j + 1)}."
    for i in range(len(config.down_block_types)):
        prefixes.update(_down_block(i, config.layers_per_block))
    for i in range(len(net.controlnet_down_blocks)):
        prefixes[f"controlnet_down_blocks.{i}."] = f"zero_convs.{i}.0."
    return _renamed(net.state_dict(), prefixes)
