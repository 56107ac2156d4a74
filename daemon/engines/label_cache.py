"""Label-list text embeddings on disk: computed once per (CLIP model, list), then read.

A real flavors list (100k terms) takes minutes to embed on a CPU, and the embeddings depend
only on the CLIP model and the terms. Each list's are stored in ``cache_dir`` as a
``.safetensors`` file named by a sha256 over the model's identity and the terms; a damaged or
mismatched file is recomputed, and a cache that cannot be written only costs a warning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.atomic import written_path

if TYPE_CHECKING:
    import torch

CACHE_VERSION = 1
"""Part of every cache key: bump when the way embeddings are computed changes."""
_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash"}
)
"""Config keys that change with where or how a model was loaded, not with what it is."""
_IDENTITY_TENSORS = (
    "text_projection.weight",
    "token_embedding.weight",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
)
"""Text-side tensors hashed into the model identity: cheap, and any fine-tune changes them."""


def cache_key(model_identity: str, name: str, texts: Sequence[str]) -> str:
    """sha256 naming one list's embeddings: changes with the model, the name or any term."""
    digest = hashlib.sha256()
    for part in (f"v{CACHE_VERSION}", model_identity, name, *texts):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")  # separator: ("ab", "c") and ("a", "bc") must differ
    return digest.hexdigest()


def _clean_config(value: Any) -> Any:
    """A config dict without the keys that depend on where the model was loaded from."""
    if isinstance(value, dict):
        return {k: _clean_config(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    return value


def model_identity(model: Any) -> str:
    """sha256 over the CLIP config and a few text-side tensors (see _IDENTITY_TENSORS).

    Hashing every weight of a real CLIP would take seconds; these tensors are what turns
    token ids into the embedding space, so a fine-tune or another checkpoint changes them.
    """
    import torch

    digest = hashlib.sha256()
    config = _clean_config(model.config.to_dict())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith(_IDENTITY_TENSORS):
            raw = tensor.detach().to("cpu").contiguous().flatten().view(torch.uint8)
            digest.update(name.encode("utf-8"))
            digest.update(str(tensor.dtype).encode("utf-8"))
            digest.update(memoryview(raw.numpy()))
    return digest.hexdigest()


class LabelCache:
    """The stored embeddings of one CLIP model's label lists."""

    def __init__(self, cache_dir: Path, model_identity: str) -> None:
        self.cache_dir = cache_dir
        self.model_identity = model_identity

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.safetensors"

    def read(self, key: str, count: int, dim: int) -> torch.Tensor | None:
        """The stored embeddings, or None if absent or unusable (then they are recomputed)."""
        import torch
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                metadata = file.metadata() or {}
                embeddings = file.get_tensor("embeddings")
            valid = (
                metadata.get("model") == self.model_identity
                and embeddings.shape == (count, dim)
                and embeddings.is_floating_point()
                and bool(torch.isfinite(embeddings).all())
            )
        except Exception as exc:  # a damaged file: safetensors, OSError, … never fatal
            logger.warning("CLIP: label cache {} is unreadable ({}); recomputing", path.name, exc)
            return None
        if not valid:
            logger.warning("CLIP: label cache {} does not match its list; recomputing", path.name)
            return None
        return embeddings

    def write(self, key: str, embeddings: torch.Tensor, name: str) -> None:
        """Store atomically (see daemon.atomic); a read-only cache only costs a warning."""
        from safetensors.torch import save_file

        metadata = {"model": self.model_identity, "list": name, "count": str(len(embeddings))}
        tensors = {"embeddings": embeddings.detach().to("cpu").contiguous()}
        try:
            with written_path(self.path(key), durable=False) as temporary:
                save_file(tensors, str(temporary), metadata)
        except OSError as exc:
            logger.warning("CLIP: cannot store label embeddings in {}: {}", self.cache_dir, exc)
