"""The built-in tiny diffusion pipelines (``tiny-sd``, ``tiny-sdxl``): random weights from a
fixed seed, the real architectures' layout, a BPE tokenizer written from a short word list.
See :mod:`daemon.models.builtin` for why they exist."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

_SEED = 0
"""Every module is built right after ``torch.manual_seed(_SEED)``: same bytes on every build."""

# Words given whole-word BPE merges, so that ordinary prompts tokenize to a few ids per word
# (like the real CLIP vocabulary) instead of one id per letter. Anything else still works,
# spelled out from the 256 byte-level symbols. Letters only: CLIP splits digits one by one.
_WORDS = (
    "a an the of and or in on at to with by for from is are it this that as be no not very "
    "photo photograph portrait picture painting drawing sketch illustration art artwork style "
    "detailed highly best quality masterpiece high low resolution sharp focus blurry lowres "
    "ugly bad worst cropped watermark text signature deformed realistic cinematic lighting "
    "light dark color colorful black white red green blue yellow orange purple pink brown "
    "gray man woman girl boy person people face eyes hair hand smile cat dog bird horse tree "
    "flower forest mountain sky cloud sun moon sea water river city street house castle car "
    "astronaut space night day snow rain fire landscape background oil canvas digital concept "
    "anime cartoon render hdr soft beautiful cute old young small big"
)

_SD_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,  # as in SD-1.5 (diffusers warns without it)
    "prediction_type": "epsilon",
}
"""SD's noise schedule, which SDXL base shares."""

_UNET_LAYOUT: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}
"""The block layout both tiny UNets share (two levels, attention in the lower one)."""
_SPECIAL_BOS = "<|startoftext|>"
_SPECIAL_EOS = "<|endoftext|>"
_VOCAB_SIZE = 1000
_MAX_LENGTH = 77


def _bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build a tiny CLIP-style BPE vocabulary: the real layout, with far fewer merges.

    Layout as in OpenAI's CLIP: the 256 byte-level symbols, the same 256 with ``</w>``, one
    entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. The merges are learnt
    from :data:`_WORDS` by the ordinary BPE training loop (most frequent pair first, ties by
    text, so the result is fixed) until every word is one token: applying them in rank order,
    as the tokenizer does, then turns each of those words back into a single token.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    words = [[*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(_WORDS.split())]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for w in words for pair in pairwise(w))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        tokens.append(best[0] + best[1])
        words = [_apply_merge(w, best) for w in words]
    tokens += [_SPECIAL_BOS, _SPECIAL_EOS]
    if len(tokens) > _VOCAB_SIZE:
        raise AssertionError(f"tiny vocabulary has {len(tokens)} entries > {_VOCAB_SIZE}")
    return {token: i for i, token in enumerate(tokens)}, merges


def _apply_merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Join every occurrence of `pair` in `symbols`, left to right."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _write_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt``, the two files a CLIP tokenizer is made from."""
    vocab, merges = _bpe_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_clip_tokenizer(folder: Path, pad_token: str) -> Any:
    """The tiny CLIP tokenizer, written to `folder` and loaded from there (the real path)."""
    from transformers import CLIPTokenizer

    _write_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=_MAX_LENGTH, pad_token=pad_token)


def _tiny_vae(scaling_factor: float) -> Any:
    """The tiny 8x VAE. The caller seeds torch first.

    Four blocks, so that its scale factor is 8 and image sizes behave like real SD (64 px ->
    8x8 latents). SD-1 and SDXL VAEs differ only in the latent scaling factor.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=16,
        scaling_factor=scaling_factor,
    )


def tiny_unet() -> Any:
    """The tiny SD-1 UNet (random weights from torch's current state)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **_UNET_LAYOUT, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32
    )


def tiny_sdxl_unet() -> Any:
    """The tiny SDXL UNet (random weights from torch's current state)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **_UNET_LAYOUT,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=32 + 64,
        attention_head_dim=(4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _SDXL_TIME_EMBED_DIM + _SDXL_POOLED_DIM,
        norm_num_groups=32,
    )


def _seeded_unet_and_vae(unet: Callable[[], Any], *, scaling_factor: float) -> tuple[Any, Any]:
    """The UNet and the VAE, each from the seed alone (neither changes with the other)."""
    import torch

    torch.manual_seed(_SEED)
    made = unet()
    torch.manual_seed(_SEED)
    return made, _tiny_vae(scaling_factor=scaling_factor)


def build_tiny_sd(folder: Path) -> None:
    """Build the tiny SD-1-style img2img pipeline and save it to `folder` (safetensors).

    SD-1's shape at toy sizes. The UNet has two blocks on 4 latent channels, with 2 layers per
    block like SD; its cross-attention sits in the lower-resolution block, because attention
    over the full latent grid costs 8x more at 512 px. The VAE is :func:`_tiny_vae`. The CLIP
    text encoder has 3 layers, so that clip skip 2 still leaves a layer to skip to.
    """
    import torch
    from diffusers import DPMSolverMultistepScheduler

    # From its own module: mypy reads `from diffusers import` as diffusers' dummy placeholder
    # class (no `save_pretrained`), because diffusers' lazy __init__ defeats type checking.
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        StableDiffusionImg2ImgPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer(folder / "tokenizer", pad_token=_SPECIAL_EOS)
    eos_id = tokenizer.eos_token_id

    # fork_rng: seeding must not disturb the random state of the process that asked for it.
    with torch.random.fork_rng(devices=[]):
        unet, vae = _seeded_unet_and_vae(tiny_unet, scaling_factor=0.18215)
        torch.manual_seed(_SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=3,
                vocab_size=_VOCAB_SIZE,
                max_position_embeddings=_MAX_LENGTH,
                hidden_act="quick_gelu",
                layer_norm_eps=1e-5,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=eos_id,  # the pooled output is taken at the first eos token
                pad_token_id=eos_id,
            )
        )
    scheduler = DPMSolverMultistepScheduler(**_SD_NOISE_SCHEDULE)
    # A plain dict: diffusers' annotations reject None for the safety checker (and mypy sees
    # the dummy classes of `from diffusers import`), although None is what SD without it takes.
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    pipe = StableDiffusionImg2ImgPipeline(**components)
    pipe.save_pretrained(folder, safe_serialization=True)


_SDXL_TIME_EMBED_DIM = 8
"""Width of each of SDXL's six size/crop conditioning numbers after embedding (real: 256)."""
_SDXL_POOLED_DIM = 16
"""Projection (pooled) width of the tiny second text encoder (real: 1280)."""


def build_tiny_sdxl(folder: Path) -> None:
    """Build the tiny SDXL-style img2img pipeline and save it to `folder` (safetensors).

    SDXL's shape at toy sizes, so that everything SDXL does differently is exercised: two text
    encoders whose last-but-one hidden states are concatenated (32 + 64 = 96 wide, the UNet's
    cross-attention width), the pooled and projected output of the second one, and the six
    size/crop numbers (original size, crop corner, target size) — together the "text_time"
    added conditioning, ``6 * addition_time_embed_dim + projection_dim`` wide. The two
    encoders have different widths, as in SDXL (768 and 1280): single-file loading tells
    them apart by width. Like SDXL, the first block has no attention, the second has
    transformer depth 2 (SDXL: 1, 2, 10), attention uses linear projections, the second
    tokenizer pads with "!" and the scheduler is Euler with SDXL's settings.
    """
    import torch
    from diffusers import EulerDiscreteScheduler

    # From its own module: see _build_tiny_sd.
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
        StableDiffusionXLImg2ImgPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer(folder / "tokenizer", pad_token=_SPECIAL_EOS)
    tokenizer_2 = tiny_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id

    def text_config(hidden: int, act: str, **extra: Any) -> Any:
        return CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_attention_heads=4,
            num_hidden_layers=3,  # clip skip 2 still leaves a layer to skip to
            vocab_size=_VOCAB_SIZE,
            max_position_embeddings=_MAX_LENGTH,
            hidden_act=act,
            layer_norm_eps=1e-5,
            bos_token_id=bos_id,
            eos_token_id=eos_id,  # the pooled output is taken at the first eos token
            pad_token_id=eos_id,
            **extra,
        )

    with torch.random.fork_rng(devices=[]):
        unet, vae = _seeded_unet_and_vae(tiny_sdxl_unet, scaling_factor=0.13025)
        torch.manual_seed(_SEED)
        text_encoder = CLIPTextModel(text_config(32, "quick_gelu"))
        torch.manual_seed(_SEED)
        text_encoder_2 = CLIPTextModelWithProjection(
            text_config(64, "gelu", projection_dim=_SDXL_POOLED_DIM)
        )
    # SDXL base's scheduler settings: SD's schedule, "leading" timesteps.
    scheduler = EulerDiscreteScheduler(**_SD_NOISE_SCHEDULE, timestep_spacing="leading")
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": scheduler,
        "requires_aesthetics_score": False,  # a base model, not the refiner
        "force_zeros_for_empty_prompt": True,  # as SDXL base
        "add_watermarker": False,  # needs an extra package; A1111 does not watermark either
    }
    pipe = StableDiffusionXLImg2ImgPipeline(**components)
    pipe.save_pretrained(folder, safe_serialization=True)
