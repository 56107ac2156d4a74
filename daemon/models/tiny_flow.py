"""The built-in tiny flow-matching pipelines of the Flux.1 and SD 3.5 families.

Random weights from a fixed seed, in the real layouts: Flux's CLIP + T5 text encoders and
joint transformer with distilled-guidance embedding (a Flux.1-dev shape), SD3's two CLIP
encoders with projections + T5 and its MMDiT, each with a 16-channel KL VAE whose scale
factor is the real 8 (so the real size rule, multiples of 16, holds). ``tiny-flux-kontext``
is the same weights under ``FluxKontextPipeline``: Kontext is a Flux-dev transformer
fine-tuned to read image tokens, which the pipeline appends; nothing in the weights differs.

Tokenizers are written locally: CLIP's is tiny-sd's BPE, T5's a sentencepiece-style Unigram
built with the ``tokenizers`` package (the sentencepiece package is not needed). The
component builders here are shared with :mod:`daemon.models.tiny_qwen`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.models.tiny_sd import tiny_clip_tokenizer

SEED = 0
"""Every module is built right after ``torch.manual_seed(SEED)``: same bytes on every build."""

_CLIP_WIDTH = 32
_T5_WIDTH = 64

PACKED_ROPE_TRANSFORMER: dict[str, Any] = {
    "in_channels": 64,  # 16 latent channels, packed 2x2
    "num_layers": 1,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "axes_dims_rope": (4, 6, 6),  # sums to attention_head_dim
}
"""What the tiny Flux and Qwen-Image transformers share: packed latents, one joint block,
two 16-wide heads with 3-axis RoPE (real: 3072 / 24 heads, Flux 19 blocks, Qwen 60)."""

# Letters and punctuation of the T5 Unigram; the lower-case letters also as word starts.
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()"
_WORD_START = "\u2581"  # sentencepiece's word-boundary mark


def seeded_modules(**makers: Callable[[], Any]) -> dict[str, Any]:
    """Each ``makers[name]()`` right after seeding torch with :data:`SEED`, so that each
    module depends on the seed alone, never on what was built before it; in a forked random
    state, so that the caller's stays as it was."""
    import torch

    made = {}
    with torch.random.fork_rng(devices=[]):
        for name, make in makers.items():
            torch.manual_seed(SEED)
            made[name] = make()
    return made


def t5_tokenizer(folder: Path) -> Any:
    """A T5-style Unigram tokenizer (sentencepiece's model, without the sentencepiece
    package), saved to `folder` and loaded from there (the real path): 102 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_WORD_START, -2.0)]
    pieces += [(c, -3.0) for c in _T5_CHARS]
    pieces += [(_WORD_START + c, -2.5) for c in _T5_CHARS[:26]]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_WORD_START, prepend_scheme="always"
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    made = T5Tokenizer(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )
    made.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def t5_encoder(vocab_size: int) -> Any:
    """A one-layer T5 encoder, :data:`_T5_WIDTH` wide (random weights from torch's state)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=_T5_WIDTH,
        d_ff=64,
        d_kv=16,
        num_layers=1,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def clip_text_config(tokenizer: Any) -> Any:
    """A two-layer CLIP text encoder's config for `tokenizer` (Flux: pooled output; SD3:
    projected output), :data:`_CLIP_WIDTH` wide."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the pooled output is taken at the first eos
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=_CLIP_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        projection_dim=_CLIP_WIDTH,
        max_position_embeddings=77,
    )


def kl_vae(*, shift: float, scale: float) -> Any:
    """A 16-channel KL VAE with four blocks, so the real 8x scale factor (Flux and SD3 differ
    only in the latent shift and scale)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift,
        scaling_factor=scale,
    )


def save_as(
    folder: Path, pipe: Any, class_name: str, components: dict[str, list[str]] | None = None
) -> None:
    """Save `pipe` to `folder` (safetensors), its ``model_index.json`` naming `class_name`
    (the class a hub folder of that kind names, whichever pipeline class built it) and
    listing `components` too (``name -> [library, class]``: parts saved by the caller)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_class_name"] = class_name
    index.update(components or {})
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _flux_components(folder: Path) -> dict[str, Any]:
    """Flux.1-dev's components at toy size: CLIP (pooled) + T5, a joint transformer with one
    double and one single block and the distilled-guidance embedding, Flux's VAE latent
    shift/scale and its dynamically shifted flow schedule."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    tokenizer_2 = t5_tokenizer(folder / "tokenizer_2")
    modules = seeded_modules(
        transformer=lambda: FluxTransformer2DModel(
            **PACKED_ROPE_TRANSFORMER,
            patch_size=1,
            out_channels=64,
            num_single_layers=1,
            joint_attention_dim=_T5_WIDTH,
            pooled_projection_dim=_CLIP_WIDTH,
            guidance_embeds=True,  # dev (distilled guidance); schnell has none
        ),
        vae=lambda: kl_vae(shift=0.1159, scale=0.3611),
        text_encoder=lambda: CLIPTextModel(clip_text_config(tokenizer)),
        text_encoder_2=lambda: t5_encoder(len(tokenizer_2)),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {**modules, "tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "scheduler": scheduler}


def _build_flux(folder: Path, class_name: str) -> None:
    # From its own module: mypy reads `from diffusers import` as a dummy placeholder class.
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    # No IP-Adapter image encoder, as in the hub folders.
    components = {**_flux_components(folder), "image_encoder": None, "feature_extractor": None}
    pipe = FluxPipeline(**components)
    save_as(folder, pipe, class_name)


def build_tiny_flux(folder: Path) -> None:
    """Build the tiny Flux.1-dev-like pipeline into `folder` (``FluxPipeline``)."""
    _build_flux(folder, "FluxPipeline")


def build_tiny_flux_kontext(folder: Path) -> None:
    """Build the tiny Flux.1-Kontext-like pipeline into `folder`: tiny-flux's weights under
    ``FluxKontextPipeline`` (the edit model)."""
    _build_flux(folder, "FluxKontextPipeline")


def build_tiny_sd3(folder: Path) -> None:
    """Build the tiny SD 3.5-like pipeline into `folder` (``StableDiffusion3Pipeline``):
    two CLIP encoders with projections (their pooled outputs concatenated, 32 + 32) and T5,
    an MMDiT of one layer with patch size 2, SD3's VAE latent shift/scale, shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    tokenizer_2 = tiny_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    tokenizer_3 = t5_tokenizer(folder / "tokenizer_3")
    modules = seeded_modules(
        transformer=lambda: SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=_T5_WIDTH,
            caption_projection_dim=16,  # heads x head width
            pooled_projection_dim=2 * _CLIP_WIDTH,  # both CLIP projections
            out_channels=16,
            pos_embed_max_size=32,
        ),
        vae=lambda: kl_vae(shift=0.0609, scale=1.5305),
        text_encoder=lambda: CLIPTextModelWithProjection(clip_text_config(tokenizer)),
        text_encoder_2=lambda: CLIPTextModelWithProjection(clip_text_config(tokenizer_2)),
        text_encoder_3=lambda: t5_encoder(len(tokenizer_3)),
    )
    components: dict[str, Any] = {
        **modules,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }
    save_as(folder, StableDiffusion3Pipeline(**components), "StableDiffusion3Pipeline")
