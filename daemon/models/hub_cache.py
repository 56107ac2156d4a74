"""Hub models in the local Hugging Face cache: is one there, which of its files count, and
what to tell the user when it is not.

The daemon never downloads behind the user's back: at run time a hub id (``org/name``, or
``org/name@revision``) is looked up in the local cache only — a few file reads, no network,
so a missing model is known in milliseconds, not after the hub client's 47 s of retries.
Downloads are explicit (``img2imgd pull``, or ``download_models: true``; see
:mod:`daemon.models.hub`), and both take the same files: :func:`select_files` decides, from
the repo's file list, what a torch pipeline reads. A snapshot counts as present only when
every one of those files is there, so an interrupted pull is not mistaken for a model.

The cache is huggingface_hub's own (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), the one diffusers and transformers read; the service unit sets
``HF_HOME`` to ``state/huggingface``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

HubRole = Literal["pipeline", "model", "tagger"]
"""What a profile uses a repo as: a diffusers pipeline (``model:``), one model folder with a
``config.json`` (a VAE, BLIP, CLIP), or a WD14 tagger (``model.onnx`` + ``selected_tags.csv``)."""

MARKERS: dict[HubRole, tuple[str, ...]] = {
    "pipeline": ("model_index.json",),
    "model": ("config.json",),
    "tagger": ("model.onnx", "selected_tags.csv"),
}
_KIND_NAMES: dict[HubRole, str] = {
    "pipeline": "diffusers pipeline",
    "model": "model folder",
    "tagger": "WD14 tagger",
}
TORCH_WEIGHTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
# Weights for other runtimes (Flax, TensorFlow, ONNX, Rust, Core ML, GGUF): torch pipelines
# never read them, and they are often as large as the torch weights.
OTHER_RUNTIMES = (".msgpack", ".h5", ".onnx", ".onnx_data", ".pb", ".tflite", ".ot", ".gguf",
                  ".mlmodel", ".mlpackage")  # fmt: skip
PICTURES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".mp4")  # model-card illustrations
# A diffusers pipeline's folders the daemon never loads: it turns the safety checker off, as
# A1111 does (render/cache.py), and the checker is 1.2 GB.
UNUSED_COMPONENTS = ("safety_checker",)
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")


@dataclass(frozen=True)
class HubRef:
    """A hub reference as a profile writes it, split: ``org/name@rev`` → repo, revision."""

    repo: str
    revision: str | None = None

    @classmethod
    def parse(cls, ref: str) -> HubRef:
        repo, _, revision = ref.strip().partition("@")
        return cls(repo, revision or None)

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"

    @property
    def name(self) -> str:
        return self.repo.split("/")[-1]


def is_hub_id(ref: str) -> bool:
    """``org/name`` or ``org/name@revision``: the shape of a hub id (not whether it exists)."""
    return bool(_REPO_ID.match(ref.strip()))


def cache_dir() -> Path:
    """The hub cache this process reads and writes (what huggingface_hub computed from the
    environment when it was imported)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def pull_command(ref: str) -> str:
    """The command that downloads `ref` into this process's cache: with the environment
    variable that moved the cache, so that a service's cache (the unit sets ``HF_HOME``) is
    the one filled, whoever runs the command."""
    prefix = "".join(
        f"{name}={os.environ[name]} " for name in ("HF_HOME", "HF_HUB_CACHE") if name in os.environ
    )
    return f"{prefix}img2imgd pull {ref}"


def not_cached(what: str, ref: str) -> str:
    """The one line said when a hub model the daemon needs is not in the local cache (the
    run-time log, ``check`` and ``pull``'s hints share it)."""
    return (
        f"{what} '{ref}' is not in the local Hugging Face cache ({cache_dir()}): run "
        f"`{pull_command(ref)}` to download it (or set `download_models: true` in "
        "img2imgd.yaml to download on first use)"
    )


def cached_line(what: str, ref: str, folder: Path) -> str:
    return f"{what} '{ref}' is in the local Hugging Face cache ({folder})"


def wrong_kind(what: str, ref: str, role: HubRole, folder: Path) -> str:
    missing = " and ".join(MARKERS[role])
    return (
        f"{what} '{ref}' in the local cache ({folder}) is not a {_KIND_NAMES[role]}: it has "
        f"no {missing}"
    )


def select_files(paths: Iterable[str], components: Collection[str] | None = None) -> list[str]:
    """The files of a repo that a pipeline needs, from its file list (sorted).

    * A WD14 tagger (``selected_tags.csv`` at the top): ``model.onnx`` and the tag list.
    * A diffusers pipeline (``model_index.json`` at the top): the index and the folders of
      its `components` (those its index names; all folders when not known), without the
      checkpoints beside them (single-file copies of the same model) and without the safety
      checker.
    * Anything else (a VAE, BLIP, CLIP): the files at the top.

    In each folder only one copy of the weights is kept: the plain ones over variants
    (``.fp16.``, ``.non_ema.``) and ``.safetensors`` over pickles; other runtimes' weights and
    pictures are never taken. Each kept weight brings its shard index along.
    """
    paths = sorted(set(paths))
    if "selected_tags.csv" in paths:
        return [p for p in ("model.onnx", "selected_tags.csv") if p in paths]
    if "model_index.json" in paths:
        parts = [PurePosixPath(p).parts for p in paths]
        wanted = [
            p
            for p, part in zip(paths, parts, strict=True)
            if len(part) > 1
            and part[0] not in UNUSED_COMPONENTS
            and (components is None or part[0] in components)
        ]
        return sorted(["model_index.json", *_one_copy_per_folder(wanted)])
    return _one_copy_per_folder([p for p in paths if "/" not in p])


def components_of(index: Path) -> set[str] | None:
    """The component folders a ``model_index.json`` names (``"unet": ["diffusers", ...]``);
    None when it cannot be read."""
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entries, dict):
        return None
    return {
        name
        for name, value in entries.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0]
    }


def _one_copy_per_folder(paths: list[str]) -> list[str]:
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(str(PurePosixPath(path).parent), []).append(path)
    kept: list[str] = []
    for files in by_folder.values():
        kept += _one_copy(files)
    return sorted(kept)


def _one_copy(files: list[str]) -> list[str]:
    """One folder's files: no other runtimes, no pictures, one copy of the weights."""
    files = [f for f in files if not f.lower().endswith(OTHER_RUNTIMES + PICTURES)]
    weights = [f for f in files if f.lower().endswith(TORCH_WEIGHTS)]
    if any(_variant(f) is None for f in weights):
        weights = [f for f in weights if _variant(f) is None]
    if any(f.lower().endswith(".safetensors") for f in weights):
        weights = [f for f in weights if f.lower().endswith(".safetensors")]
    kept_formats = {(_variant(f), _suffix(f)) for f in weights}
    others = [
        f
        for f in files
        if not f.lower().endswith(TORCH_WEIGHTS)
        and (_index_of(f) is None or _index_of(f) in kept_formats)
    ]
    return others + weights


def _suffix(path: str) -> str:
    return PurePosixPath(path).suffix.lower()


def _variant(weight: str) -> str | None:
    """``unet/diffusion_pytorch_model.fp16.safetensors`` → fp16; shards count as their file
    (``model.fp16-00001-of-00002.safetensors`` → fp16)."""
    stem = _SHARD.sub("", PurePosixPath(weight).stem)
    return stem.split(".", 1)[1] if "." in stem else None


def _index_of(path: str) -> tuple[str | None, str] | None:
    """The weights a shard index lists, as (variant, suffix):
    ``model.safetensors.index.json`` → (None, .safetensors),
    ``diffusion_pytorch_model.safetensors.index.fp16.json`` → (fp16, .safetensors)."""
    name = PurePosixPath(path).name
    match = re.match(r"^[^.]+(\.[^.]+)?(\.safetensors|\.bin)\.index(\.[^.]+)?\.json$", name)
    if match is None:
        return None
    variant = (match.group(1) or match.group(3) or "").lstrip(".") or None
    return variant, match.group(2)


def cached_folder(ref: str) -> Path | None:
    """The snapshot folder of `ref` in the local cache, when every file :func:`select_files`
    takes from it is there; None otherwise. Reads files only: never the network."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    hub = HubRef.parse(ref)
    folder = _snapshot(hub)
    if folder is None:
        return None
    try:
        listing = [f.path for f in get_cached_repo_tree(hub.repo, revision=hub.revision)]
    except (CachedRepoTreeNotFoundError, ValueError):
        return folder  # cached by a tool that kept no file list: the caller checks its files
    needed = select_files(listing, components_of(folder / "model_index.json"))
    return folder if all((folder / path).is_file() for path in needed) else None


def _snapshot(hub: HubRef) -> Path | None:
    """The revision's snapshot folder, as huggingface_hub lays out its cache:
    ``models--org--name/refs/<branch>`` holds the commit of ``snapshots/<commit>/``."""
    storage = cache_dir() / f"models--{hub.repo.replace('/', '--')}"
    revision = hub.revision or "main"
    commit = revision
    if not _COMMIT.fullmatch(revision):
        try:
            commit = (storage / "refs" / revision).read_text().strip()
        except OSError:
            return None
    folder = storage / "snapshots" / commit
    return folder if commit and folder.is_dir() else None


def has_markers(folder: Path, role: HubRole) -> bool:
    return all((folder / marker).is_file() for marker in MARKERS[role])


def literal(path: str) -> str:
    """A file name as a pattern that matches only itself (fnmatch's special characters)."""
    return re.sub(r"([\[\]*?])", r"[\1]", path)
