"""A full-size FLUX.1-dev with random weights, as a diffusers folder (the hub's download).

Same reason as :mod:`tests.support.real_models`: the real layout, memory and compute, offline;
only the pictures are noise. The shapes are FLUX.1-dev's published configs
(``black-forest-labs/FLUX.1-dev``: ``transformer/config.json``, 3072 wide, 24 heads of 128,
19 double and 38 single blocks, 11.90 B parameters; T5 v1.1 XXL's encoder, 4.76 B; CLIP
ViT-L/14's text model, 0.12 B; the 16-channel VAE, 84 M), in bf16 as they ship: 33.7 GB in
all. Where that does not fit, :data:`FLUX_SHALLOW` keeps every width and fewer blocks, and
says so in its name.

The modules are built on the meta device (no memory, no initialiser time), then each tensor
is drawn (bf16 normal × 0.02, from a seed of its own) as it is written by the streaming
writer: the peak memory is the largest tensor, not the model. Tokenizers, scheduler and
``model_index.json`` are the built-in tiny Flux's (a small vocabulary in front of full-size
embedding tables: the ids it makes are valid ones).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from daemon.models.builtin import ensure_builtin
from tests.support.safetensors_stream import save_streaming

SEED = 0
SCALE = 0.02  # the weights' standard deviation: finite activations through 57 blocks


@dataclass(frozen=True)
class FluxShape:
    double_blocks: int = 19
    single_blocks: int = 38
    heads: int = 24
    head_width: int = 128
    rope: tuple[int, int, int] = (16, 56, 56)  # sums to head_width
    t5_width: int = 4096
    t5_ff: int = 10240
    t5_layers: int = 24
    t5_heads: int = 64
    t5_vocab: int = 32128
    clip_width: int = 768
    clip_ff: int = 3072
    clip_layers: int = 12
    clip_heads: int = 12
    clip_vocab: int = 49408
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers: int = 2
    vae_groups: int = 32


FLUX_DEV = FluxShape()
FLUX_SHALLOW = FluxShape(double_blocks=2, single_blocks=4)
"""Every width of FLUX.1-dev, 2 + 4 of its 19 + 38 blocks: 1.31 B transformer parameters."""


def flux_modules(shape: FluxShape, clip_ids: tuple[int, int, int]) -> dict[str, Any]:
    """The four modules of a Flux.1-dev pipeline of `shape`, on the meta device; `clip_ids`:
    the CLIP tokenizer's (bos, eos, pad) ids (the pooled vector is taken at the eos)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        return {
            "transformer": FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=shape.double_blocks,
                num_single_layers=shape.single_blocks, attention_head_dim=shape.head_width,
                num_attention_heads=shape.heads, joint_attention_dim=shape.t5_width,
                pooled_projection_dim=shape.clip_width, guidance_embeds=True,
                axes_dims_rope=shape.rope,
            ),
            "text_encoder": CLIPTextModel(CLIPTextConfig(
                vocab_size=shape.clip_vocab, hidden_size=shape.clip_width,
                intermediate_size=shape.clip_ff, num_hidden_layers=shape.clip_layers,
                num_attention_heads=shape.clip_heads, max_position_embeddings=77,
                hidden_act="quick_gelu", projection_dim=shape.clip_width,
                bos_token_id=clip_ids[0], eos_token_id=clip_ids[1], pad_token_id=clip_ids[2],
            )),
            "text_encoder_2": T5EncoderModel(T5Config(
                vocab_size=shape.t5_vocab, d_model=shape.t5_width, d_ff=shape.t5_ff, d_kv=64,
                num_layers=shape.t5_layers, num_heads=shape.t5_heads,
                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            )),
            "vae": AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16,
                down_block_types=("DownEncoderBlock2D",) * len(shape.vae_channels),
                up_block_types=("UpDecoderBlock2D",) * len(shape.vae_channels),
                block_out_channels=shape.vae_channels, layers_per_block=shape.vae_layers,
                norm_num_groups=shape.vae_groups, sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
            ),
        }  # fmt: skip


def build_flux_folder(folder: Path, shape: FluxShape = FLUX_DEV) -> Path:
    """Write a random Flux.1-dev of `shape` as a diffusers folder at `folder`."""
    tiny = ensure_builtin("tiny-flux", folder.parent / ".tiny-flux")
    shutil.copytree(tiny, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    from transformers import AutoTokenizer

    clip = AutoTokenizer.from_pretrained(folder / "tokenizer")
    clip_ids = (clip.bos_token_id, clip.eos_token_id, clip.pad_token_id)
    for name, module in flux_modules(shape, clip_ids).items():
        target = folder / name
        shutil.rmtree(target)
        if name.startswith("text_encoder"):
            module.config.save_pretrained(target)
            weights = target / "model.safetensors"
        else:
            module.save_config(target)
            weights = target / "diffusion_pytorch_model.safetensors"
        save_streaming(_tensors(module), weights, metadata={"format": "pt"}, fill=_random)
    (folder / "random-weights.json").write_text(json.dumps(vars(shape), indent=1) + "\n")
    return folder


def _tensors(module: Any) -> dict[str, torch.Tensor]:
    """What the module's file holds, in bf16: its parameters (a tied one once: T5's shared
    embedding) and its persistent buffers."""
    state = module.state_dict()
    kept = dict(module.named_parameters())
    kept.update((name, buffer) for name, buffer in module.named_buffers() if name in state)
    return {name: tensor.to(torch.bfloat16) for name, tensor in kept.items()}


def _random(name: str, like: torch.Tensor) -> torch.Tensor:
    seed = SEED + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(like.shape, generator=generator, dtype=torch.bfloat16)
    return values.mul_(SCALE)
