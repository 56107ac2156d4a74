"""How big a diffusion model is, known before it is loaded: parameter counts per part.

Read from the ``.safetensors`` headers (the JSON before the tensors: names, dtypes, shapes)
of a diffusers folder's components, or of a single file's tensors by their prefixes. The
counts, not the bytes on disk, are what matter: an fp32 file loaded in bf16 takes half its
size on the GPU, an fp8 one twice. Reading a header is a few hundred KB, never the weights,
so the daemon can decide where a 24 GB transformer goes before it reads a byte of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError
from daemon.models.checkpoints import read_header
from daemon.models.resolve import ModelSource

_SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # model-00001-of-00004.safetensors
# A single file's tensors by prefix (LDM/SGM layouts; BFL/ComfyUI Flux files hold only the
# transformer, often without the prefix: whatever is not an encoder or the VAE is the denoiser).
_ENCODER_PREFIXES = ("cond_stage_model.", "conditioner.", "text_encoders.", "text_encoder")
_VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass(frozen=True)
class ModelSize:
    """Parameters of a model's parts: the denoiser (UNet or transformer), the text encoders
    (with any other part, such as an image encoder) and the VAE."""

    denoiser: int
    encoders: int = 0
    vae: int = 0

    @property
    def total(self) -> int:
        return self.denoiser + self.encoders + self.vae

    @property
    def largest(self) -> int:
        """The largest part: what model offload must fit on the GPU at once. The encoders
        count as one (conservative: they move one by one, but T5 or Qwen is most of them)."""
        return max(self.denoiser, self.encoders, self.vae)


def model_size(source: ModelSource) -> ModelSize | None:
    """The parts' parameter counts of a resolved model, or None where its files cannot be
    read without loading it (a hub id not in the local cache, a pickled checkpoint)."""
    location = Path(source.location)
    try:
        if location.is_dir():
            return folder_size(location)
        if location.suffix == ".safetensors":
            return single_file_size(read_header(location))
    except (ConfigError, OSError, ValueError):
        return None
    return None


def folder_size(folder: Path) -> ModelSize | None:
    """A diffusers folder: each component sub-folder's weights, by the component's name."""
    parts = {"denoiser": 0, "encoders": 0, "vae": 0}
    found = False
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = _weights(component.glob("*.safetensors"))
        if not files:
            continue
        found = True
        parts[_part(component.name)] += sum(parameters(read_header(f)) for f in files)
    return ModelSize(**parts) if found else None


def single_file_size(header: Mapping[str, Any]) -> ModelSize:
    """One checkpoint file's tensors, split by their names' prefixes."""
    parts = {"denoiser": 0, "encoders": 0, "vae": 0}
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, Mapping):
            continue
        if name.startswith(_ENCODER_PREFIXES):
            part = "encoders"
        elif name.startswith(_VAE_PREFIXES):
            part = "vae"
        else:
            part = "denoiser"
        parts[part] += math.prod(entry.get("shape", ()))
    return ModelSize(**parts)


def parameters(header: Mapping[str, Any]) -> int:
    """The number of values in a safetensors file, from its header."""
    return sum(
        math.prod(entry.get("shape", ()))
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, Mapping)
    )


def _part(component: str) -> str:
    if component in ("transformer", "unet", "prior", "decoder"):
        return "denoiser"
    return "vae" if component == "vae" else "encoders"


def _weights(files: Iterable[Path]) -> list[Path]:
    """The files diffusers loads by default: those without a variant (``.fp16``), all shards;
    where there are only variants, one variant's (counting two copies would double it)."""
    by_variant: dict[str, list[Path]] = {}
    for file in files:
        stem = _SHARD.sub("", file.name.removesuffix(".safetensors"))
        variant = stem.split(".", 1)[1] if "." in stem else ""
        by_variant.setdefault(variant, []).append(file)
    if not by_variant:
        return []
    return by_variant.get("", by_variant[min(by_variant)])
