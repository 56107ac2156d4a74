"""The built-in tiny Qwen-Image pipelines (text-to-image and Edit), random weights.

Qwen-Image's layout at toy size: a Qwen2.5-VL text encoder (its vision tower reads the
input image in the Edit model), the causal-3D ``AutoencoderKLQwenImage`` with 16 latent
channels and the real 8x scale factor, an MMDiT transformer of one layer and Qwen-Image's
dynamically shifted flow schedule. The sizes are diffusers' own test configuration
(``tests/pipelines/qwenimage``) with a narrower VAE and the token ids of the local
tokenizer, a byte-level BPE of the 256 byte symbols (no merges: every byte is a token) plus
Qwen's special tokens.

The Edit pipelines read the input at ~1 MP whatever the size asked (diffusers 0.42.1), so
an edit with ``tiny-qwen-image-edit`` takes seconds on a CPU, not tenths: the tiny model
keeps the real pipeline rather than a faster copy of it.

``tiny-qwen-image-edit`` adds what Qwen-Image-Edit-2509 adds: the ``processor/`` folder of
the hub layout (image-processor settings and the tokenizer) and ``model_index.json``
naming ``QwenImageEditPlusPipeline`` and its ``Qwen2VLProcessor``. The weights are those of
``tiny-qwen-image``; the real Edit model is a fine-tune of the same architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.models.tiny_flow import PACKED_ROPE_TRANSFORMER, save_as, seeded_modules

_WIDTH = 16
"""The text encoder's hidden size = the transformer's joint attention width."""
_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def qwen_tokenizer(folder: Path) -> Any:
    """The byte-level BPE tokenizer (264 ids, Qwen's specials after the 256 bytes), saved to
    `folder` and loaded from there (the real path)."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer, Qwen2Tokenizer

    # transformers 5 ignores vocab_file/merges_file here: the vocabulary goes in as a dict.
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    # A plain dict: the stubs want strings where Qwen's tokenizer has no unk or bos token.
    settings: dict[str, Any] = {"unk_token": None, "bos_token": None}
    made = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        **settings,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    made.add_special_tokens({"additional_special_tokens": list(_SPECIALS)})
    made.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _text_encoder(tokenizer: Any) -> Any:
    """A two-layer Qwen2.5-VL (text and vision), :data:`_WIDTH` wide."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": _WIDTH,
            "intermediate_size": _WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": _WIDTH,
            "intermediate_size": _WIDTH,
            "num_heads": 2,
            "out_hidden_size": _WIDTH,
        },
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _components(folder: Path) -> dict[str, Any]:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )

    tokenizer = qwen_tokenizer(folder / "tokenizer")
    modules = seeded_modules(
        transformer=lambda: QwenImageTransformer2DModel(
            **PACKED_ROPE_TRANSFORMER,
            patch_size=2,
            out_channels=16,
            joint_attention_dim=_WIDTH,
            guidance_embeds=False,
        ),
        # Narrow (widths 2 to 8): the Edit pipelines encode their input at ~1 MP whatever
        # the size asked, and the width of the full-resolution layers is what that costs
        # (encoding 1024 px on one core: 3.3 s at base_dim 8, 1.6 s at 2).
        vae=lambda: AutoencoderKLQwenImage(
            base_dim=2,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        ),
        text_encoder=lambda: _text_encoder(tokenizer),
    )
    # Qwen-Image's own schedule settings.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        use_dynamic_shifting=True,
        time_shift_type="exponential",
    )
    return {**modules, "tokenizer": tokenizer, "scheduler": scheduler}


def build_tiny_qwen_image(folder: Path) -> None:
    """Build the tiny Qwen-Image pipeline into `folder` (``QwenImagePipeline``)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

    components: dict[str, Any] = _components(folder)
    save_as(folder, QwenImagePipeline(**components), "QwenImagePipeline")


def build_tiny_qwen_image_edit(folder: Path) -> None:
    """Build the tiny Qwen-Image-Edit-2509-like pipeline into `folder`
    (``QwenImageEditPlusPipeline``), with the hub layout's ``processor/`` folder."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline
    from transformers import Qwen2VLImageProcessorPil

    components: dict[str, Any] = _components(folder)
    # The hub's processor/ folder: the image processor's settings beside the tokenizer. The
    # pipeline is saved by the text-to-image class because diffusers would save the Edit
    # class's processor under our class's name, which no other program could load.
    Qwen2VLImageProcessorPil().save_pretrained(folder / "processor")
    components["tokenizer"].save_pretrained(folder / "processor")
    hub_processor = {"processor": ["transformers", "Qwen2VLProcessor"]}
    save_as(folder, QwenImagePipeline(**components), "QwenImageEditPlusPipeline", hub_processor)
