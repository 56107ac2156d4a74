"""A CLIP vision encoder kept as one weight file, as ComfyUI (``models/clip_vision/*.safetensors``)
and the ControlNet extension (``annotator/downloads/clip_vision/clip_h.pth``) keep them.

Both are h94/IP-Adapter's ``image_encoder`` weights renamed: a transformers
``CLIPVisionModelWithProjection`` state dict (``vision_model.…``, ``visual_projection.weight``)
without its ``config.json``. The configuration is read from the tensors' shapes (width,
depth, MLP width, patch and image size, projection); what shapes cannot tell is set as the
published encoders have it: 16 attention heads (ViT-L/14, ViT-H/14, ViT-bigG/14 all have 16;
a toy encoder narrower than 128 one per 8 channels) and the activation, ``gelu`` for the
OpenCLIP encoders (ViT-H 1280 wide, bigG 1664 wide), ``quick_gelu`` (OpenAI's) otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from daemon.models.checkpoints import is_pickle

_OPEN_CLIP_WIDTHS = frozenset({1280, 1664})  # ViT-H/14, ViT-bigG/14: trained with gelu
_PREFIX = "vision_model."


def load_clip_vision_file(file: Path, *, dtype: Any) -> Any:
    """The encoder in `file` (a pickle only when the resolver allowed it), in `dtype`."""
    from transformers import CLIPVisionModelWithProjection

    state = _state_dict(file)
    model: Any = CLIPVisionModelWithProjection(config_from_shapes(state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file.name} is not a CLIP vision encoder as h94/IP-Adapter's image_encoder is: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return model.to(dtype=dtype)


def config_from_shapes(state: dict[str, Any]) -> Any:
    """The ``CLIPVisionConfig`` the tensors in `state` were made with (see the module)."""
    from transformers import CLIPVisionConfig

    try:
        width = state[f"{_PREFIX}embeddings.class_embedding"].shape[0]
        patch = state[f"{_PREFIX}embeddings.patch_embedding.weight"].shape[-1]
        positions = state[f"{_PREFIX}embeddings.position_embedding.weight"].shape[0]
        depth = 1 + max(
            int(key.split(".")[3]) for key in state if key.startswith(f"{_PREFIX}encoder.layers.")
        )
        mlp = state[f"{_PREFIX}encoder.layers.0.mlp.fc1.weight"].shape[0]
        projection = state["visual_projection.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"no CLIP vision encoder: no {exc} among its tensors") from exc
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth,
        num_attention_heads=16 if width >= 128 else max(1, width // 8),
        image_size=patch * math.isqrt(positions - 1), patch_size=patch,
        projection_dim=projection,
        hidden_act="gelu" if width in _OPEN_CLIP_WIDTHS else "quick_gelu",
    )  # fmt: skip


def _state_dict(file: Path) -> dict[str, Any]:
    if is_pickle(file):
        from diffusers.models.model_loading_utils import load_state_dict

        state: dict[str, Any] = load_state_dict(str(file))
    else:
        from safetensors.torch import load_file

        state = load_file(str(file))
    # Older transformers saved the position ids as a buffer; the model makes its own.
    return {key: value for key, value in state.items() if not key.endswith("position_ids")}
