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

``tiny-flux2-dev`` is FLUX.2 [dev]'s layout: the same transformer with the distilled-guidance
embedding, and a Mistral3 (Mistral Small 3.1) text encoder of four layers with a tiny
Pixtral vision tower. Its ``model_index.json`` names the hub's ``PixtralProcessor`` for the
tokenizer, which transformers cannot import without torchvision; the folder holds the
tokenizer alone, as the daemon loads it (:mod:`daemon.models.folder_pipeline`).
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


MISTRAL_CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}[/{{ m['role'] }}]{% endfor %}"
)
"""[dev]'s prompt is a system and a user message whose content is a list of parts."""


def _text_model(tokenizer: Any) -> dict[str, Any]:
    """The decoder both text encoders share: four layers, :data:`_TEXT_WIDTH` wide."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _TEXT_WIDTH,
        "intermediate_size": 32,
        "num_hidden_layers": _TEXT_LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 1024,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen3(tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**_text_model(tokenizer), tie_word_embeddings=True))


def _mistral3(tokenizer: Any) -> Any:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    vision = {"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8,
              "patch_size": 16, "image_size": 64}  # fmt: skip
    config = Mistral3Config(
        text_config={"model_type": "mistral", **_text_model(tokenizer)},
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
    )
    return Mistral3ForConditionalGeneration(config)


def _components(folder: Path, *, dev: bool) -> dict[str, Any]:
    """Klein's (``dev=False``) or [dev]'s components: the text encoder and its tokenizer
    differ, and [dev]'s transformer embeds the distilled guidance."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Transformer2DModel,
    )

    tokenizer = qwen_tokenizer(folder / "tokenizer")
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE if dev else CHAT_TEMPLATE
    if dev:  # Pixtral's image tokens (never used: the prompt is text alone)
        tokenizer.add_tokens(["[IMG]", "[IMG_BREAK]", "[IMG_END]"], special_tokens=True)
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
            guidance_embeds=dev,  # [dev]: distilled guidance; Klein: none
        ),
        vae=lambda: AutoencoderKLFlux2(
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=32,
            norm_num_groups=8,
            sample_size=64,
        ),
        text_encoder=lambda: (_mistral3 if dev else _qwen3)(tokenizer),
    )
    # Flux.2's own schedule: its pipelines compute μ from the image size and step count.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return {**modules, "tokenizer": tokenizer, "scheduler": scheduler}


def build_tiny_flux2(folder: Path) -> None:
    """Build the tiny Flux.2-Klein-like pipeline into `folder` (``Flux2KleinPipeline``, not
    step-distilled: ``cfg_scale`` is real classifier-free guidance, as Klein's base models)."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(**_components(folder, dev=False), is_distilled=False)
    save_as(folder, pipe, "Flux2KleinPipeline")


def build_tiny_flux2_dev(folder: Path) -> None:
    """Build the tiny FLUX.2-[dev]-like pipeline into `folder` (``Flux2Pipeline``), its
    ``model_index.json`` naming the hub's tokenizer class, ``PixtralProcessor``."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    pipe = Flux2Pipeline(**_components(folder, dev=True))
    save_as(folder, pipe, "Flux2Pipeline", {"tokenizer": ["transformers", "PixtralProcessor"]})
