"""Finding and reading LoRA and embedding files in A1111's folders (see
:mod:`daemon.engines.adapters` for how they are found and applied)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.errors import ConfigError, InputError
from daemon.models.checkpoints import PICKLE_SUFFIXES, is_pickle, load_pickle
from daemon.paths import shown

if TYPE_CHECKING:
    import torch

LORA_FOLDERS = ("Lora", "LyCORIS")
"""Sub-folders of ``models_dir`` holding LoRAs, as in A1111."""
EMBEDDINGS_FOLDER = "embeddings"
SAFE_SUFFIXES = (".safetensors",)
ALLOW_PICKLE_SETTING = "allow_pickle"
"""The configuration key named in the refusal message."""


class AdapterError(InputError):
    """A LoRA or embedding named by a prompt cannot be used."""


class AdapterNotFound(AdapterError):
    """No file with that name in the searched folders."""


class PickleRefused(AdapterError):
    """The only file with that name is a pickle, and pickles are not allowed."""


# --- finding files -----------------------------------------------------------------------


def default_lora_dirs(models_dir: Path | None) -> list[Path]:
    """``models_dir/Lora`` and ``models_dir/LyCORIS`` (A1111's layout)."""
    return [Path(models_dir) / name for name in LORA_FOLDERS] if models_dir else []


def default_embedding_dirs(models_dir: Path | None) -> list[Path]:
    """``models_dir/embeddings``, and the webui's ``embeddings`` beside an A1111 ``models``."""
    if not models_dir:
        return []
    models_dir = Path(models_dir)
    dirs = [models_dir / EMBEDDINGS_FOLDER]
    if models_dir.name.lower() == "models":
        dirs.append(models_dir.parent / EMBEDDINGS_FOLDER)
    return dirs


def walk_adapter_files(dirs: Iterable[Path]) -> Iterator[Path]:
    """Every adapter-like file under `dirs`, recursively, in a stable order.

    Symlinked folders are followed (users link their A1111 folders), each real folder once.
    Hidden files (partial downloads, macOS ``._`` files) and empty files are skipped.
    """
    suffixes = (*SAFE_SUFFIXES, *PICKLE_SUFFIXES)
    seen: set[str] = set()
    for root in dirs:
        if not Path(root).is_dir():
            continue
        for folder, subdirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subdirs[:] = []
                continue
            seen.add(real)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not name.lower().endswith(suffixes):
                    continue
                path = Path(folder) / name
                try:
                    if path.stat().st_size > 0:
                        yield path
                except OSError:
                    continue  # a broken link, or removed meanwhile


def _choose(name: str, files: Sequence[Path]) -> list[Path]:
    """Files named `name`: exact-case stems if any, else case-insensitive; safetensors first."""
    found = [p for p in files if p.stem == name]
    if not found:
        folded = name.casefold()
        found = [p for p in files if p.stem.casefold() == folded]
    return sorted(found, key=is_pickle)  # stable: keeps the walk order otherwise


def find_file(
    kind: str, name: str, dirs: Sequence[Path], files: Sequence[Path], allow: bool
) -> Path:
    candidates = _choose(name, files)
    if not candidates:
        places = (
            ", ".join(f"{d}" if Path(d).is_dir() else f"{d} (missing)" for d in dirs)
            or "nowhere (no folder configured)"
        )
        kinds = ", ".join((*SAFE_SUFFIXES, *PICKLE_SUFFIXES) if allow else SAFE_SUFFIXES)
        raise AdapterNotFound(
            f"{kind} '{name}' not found: looked for {kinds} files named '{name}' "
            f"(any case) in {places}, recursively"
        )
    best = candidates[0]
    if is_pickle(best) and not allow:
        raise PickleRefused(
            f"{kind} '{name}' is {best}, a pickle ({best.suffix}): loading a pickle can run "
            f"arbitrary code. Convert it to .safetensors, or set `{ALLOW_PICKLE_SETTING}: true` "
            "in the daemon's configuration if you trust the file"
        )
    return best


def find_lora(name: str, lora_dirs: Sequence[Path], *, allow_pickle: bool) -> Path:
    """The LoRA file named `name` (its stem) under `lora_dirs`.

    Raises AdapterNotFound (saying where it looked) or PickleRefused.
    """
    return find_file("LoRA", name, lora_dirs, list(walk_adapter_files(lora_dirs)), allow_pickle)


def find_embedding(name: str, embedding_dirs: Sequence[Path], *, allow_pickle: bool) -> Path:
    """The textual-inversion embedding file named `name` under `embedding_dirs`.

    Raises AdapterNotFound (saying where it looked) or PickleRefused.
    """
    return find_file(
        "embedding", name, embedding_dirs, list(walk_adapter_files(embedding_dirs)), allow_pickle
    )


def embedding_names(dirs: Sequence[Path]) -> dict[str, Path]:
    """Every embedding available, by file stem (pickles included; .safetensors preferred)."""
    names: dict[str, Path] = {}
    for path in walk_adapter_files(dirs):
        known = names.get(path.stem)
        if known is None or (is_pickle(known) and not is_pickle(path)):
            names[path.stem] = path
    return names


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


# --- reading files -----------------------------------------------------------------------


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
