"""Reading LoRA and embedding files, and naming them (see :mod:`daemon.engines.adapters` for
how they are applied). Finding them is the resolver's (:mod:`daemon.models.resolve`), as
for every kind of model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.errors import ConfigError
from daemon.models.checkpoints import is_pickle, load_pickle
from daemon.paths import shown

if TYPE_CHECKING:
    import torch

_EXTRA_NETWORK_TAG = re.compile(r"<[^<>:]+:[^<>]*>")


def embeddings_in(text: str, names: Iterable[str]) -> list[tuple[int, int, str]]:
    """Where embedding names occur in `text` as words: ``(start, end, name)``, in order.

    A1111 matches embeddings on the lower-cased CLIP tokens, so the match is
    case-insensitive; an exact-case name wins over another that differs only in case.
    Longer names win over their prefixes; text inside ``<lora:…>``-style tags is ignored.
    """
    ordered = sorted(set(names), key=lambda n: (-len(n), n))
    if not ordered or not text:
        return []
    by_fold: dict[str, str] = {}
    for name in ordered:
        by_fold.setdefault(name.casefold(), name)
    exact = set(ordered)
    pattern = re.compile(
        r"(?<!\w)(?:" + "|".join(re.escape(n) for n in ordered) + r")(?!\w)", re.IGNORECASE
    )
    tags = [m.span() for m in _EXTRA_NETWORK_TAG.finditer(text)]
    found: list[tuple[int, int, str]] = []
    for match in pattern.finditer(text):
        if any(a <= match.start() < b for a, b in tags):
            continue
        word = match.group(0)
        chosen = word if word in exact else by_fold.get(word.casefold())
        if chosen is not None:
            found.append((match.start(), match.end(), chosen))
    return found


def torch_load(path: Path) -> Any:
    """Unpickle an allowed pickle: tensors-only first, the full unpickler only if needed."""
    import torch

    try:
        return load_pickle(path)
    except ConfigError as exc:  # an old file with module objects in it
        logger.warning(
            "{} needs the full unpickler ({}); loading it because pickles are allowed",
            shown(path),
            exc,
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """The vectors of an embedding file: ``{"clip": [n, dim]}``, or SDXL's
    ``{"clip_l": …, "clip_g": …}``. Raises ValueError if the file is not an embedding.

    Formats: A1111's ``{"string_to_param": {"*": tensor}, "name": …}`` (pickles); its
    safetensors form, one tensor (``emb_params``); diffusers' ``{"<token>": tensor}``; a bare
    tensor; SDXL's ``clip_l`` / ``clip_g``. Pickles are only read if already allowed.
    """
    import torch

    if is_pickle(path):
        data = torch_load(path)
    else:
        from safetensors.torch import load_file

        data = load_file(str(path), device="cpu")

    def vectors(tensor: Any) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2):
            raise ValueError(f"{path.name} is not a textual-inversion embedding")
        tensor = tensor.detach().to(dtype=torch.float32)
        return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor

    if isinstance(data, torch.Tensor):
        return {"clip": vectors(data)}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path.name} is not a textual-inversion embedding")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # an old nn.ParameterDict
        if not isinstance(params, Mapping) or len(params) != 1:
            raise ValueError(f"{path.name} does not hold exactly one embedding")
        return {"clip": vectors(next(iter(params.values())))}
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": vectors(data["clip_l"]), "clip_g": vectors(data["clip_g"])}
    flat = [k for k in data if str(k).startswith("string_to_param.")]
    if len(flat) == 1:
        return {"clip": vectors(data[flat[0]])}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:
        return {"clip": vectors(tensors[0])}
    raise ValueError(
        f"{path.name} is not a textual-inversion embedding (keys: {', '.join(map(str, data))})"
    )


def file_stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def infotext_name(name: str) -> str:
    """A1111 drops ':' and ',' from the names in "Lora hashes" / "TI hashes"."""
    return name.replace(":", "").replace(",", "")


def _digest(path: Path) -> str:
    """Names a file version: its real path, size and modification time."""
    return hashlib.sha1("|".join(map(str, file_stamp(path))).encode()).hexdigest()[:8]


def adapter_name(path: Path) -> str:
    slug = re.sub(r"\W+", "_", path.stem, flags=re.ASCII).strip("_")[:40] or "lora"
    return f"{slug}_{_digest(path)}"  # no dots: peft keeps adapters in a ModuleDict


def embedding_tokens(path: Path, count: int) -> tuple[str, ...]:
    # Lower-case ASCII, so that the tokenizer's normalisation leaves them as they are;
    # fixed-width indices, so that no token is a prefix of another.
    slug = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_")[:32] or "emb"
    return tuple(f"{slug}_ti{_digest(path)}_{i:03d}" for i in range(count))
