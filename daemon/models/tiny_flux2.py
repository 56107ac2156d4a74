"""The built-in tiny Flux.2 pipeline, Klein-shaped (FLUX.2 [klein]), random weights.

Flux.2 Klein's layout at toy size: a Qwen3 causal language model as text encoder (three of
its hidden-state layers stacked make the transformer's text width), Flux.2's 32-channel
``AutoencoderKLFlux2`` with the real 8x scale factor (latents patchified 2x2 to 128
channels), and a ``Flux2Transformer2DModel`` with one double and one single block.

The text encoder has four layers so that the layers the daemon reads (a quarter, a half
and three quarters of the way up: (1, 2, 3) here, (9, 18, 27) for Klein's 36-layer Qwen3,
see :func:`daemon.families.flux2.text_encoder_out_layers`) all exist. The tokenizer is
tiny-qwen-image's byte-level BPE with a three-line chat template, which Klein's prompt
encoding applies.

Flux.2 [dev] (``Flux2Pipeline``) is not built: its text encoder is Mistral Small 3.1 read
through a Pixtral processor whose tokenizer (tekken) needs the ``mistral_common`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.models.tiny_flow import save_as, seeded_modules
from daemon.models.tiny_qwen import qwen_tokenizer

_TEXT_WIDTH = 16
_TEXT_LAYERS = 4
_STACKED_LAYERS = 3  # hidden-state layers the pipeline stacks into one text token

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's chat format, without the thinking switch (Klein asks ``enable_thinking=False``,
which a template that never thinks can ignore)."""


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config)


def build_tiny_flux2(folder: Path) -> None:
    """Build the tiny Flux.2-Klein-like pipeline into `folder` (``Flux2KleinPipeline``, not
    step-distilled: ``cfg_scale`` is real classifier-free guidance, as Klein's base models)."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Transformer2DModel,
    )
    from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

    tokenizer = qwen_tokenizer(folder / "tokenizer")
    tokenizer.chat_template = CHAT_TEMPLATE
    modules = seeded_modules(
        transformer=lambda: Flux2Transformer2DModel(
            patch_size=1,
            in_channels=128,  # 32 latent channels, patchified 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=_STACKED_LAYERS * _TEXT_WIDTH,
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
            guidance_embeds=False,  # Klein: no distilled guidance
        ),
        vae=lambda: AutoencoderKLFlux2(
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=32,
            norm_num_groups=8,
            sample_size=64,
        ),
        text_encoder=lambda: _text_encoder(tokenizer),
    )
    # Flux.2's own schedule: its pipelines compute μ from the image size and step count.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = Flux2KleinPipeline(
        **modules, tokenizer=tokenizer, scheduler=scheduler, is_distilled=False
    )
    save_as(folder, pipe, "Flux2KleinPipeline")
