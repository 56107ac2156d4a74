"""Model references → the files, folders or hub ids they name: one resolver for every kind.

A profile names its models by reference: the diffusion ``model`` and ``vae``, the CLIP
interrogator (``interrogate_model``) and the tagger (``tagger_model``). Every kind follows the
same rules, in this order:

* ``builtin:<name>`` — a built-in tiny model (:mod:`daemon.models.builtin`), generated once
  into the state folder;
* a path: absolute, or relative to the working directory;
* a name in ``models_dir`` or one of the sub-folders A1111 and its extensions use for that
  kind (``Stable-diffusion``, ``VAE``, ``interrogators``, ``torch_deepdanbooru``, ``BLIP``,
  ``CLIP``), with or without the weight file's extension;
* a hub repo id (``org/name``, or ``org/name@revision``), used from the local Hugging Face
  cache only: downloads are explicit (``img2imgd pull``, or ``download_models: true``; see
  :mod:`daemon.models.hub`). ``build=False`` checks only the id's shape.

Pickled weights (``.ckpt``/``.pt``/``.pth``/``.bin``) can run code when loaded: every kind
refuses them with the same message unless the configuration sets ``allow_pickle``. Nothing is
loaded here; a reference that names nothing is a ConfigError saying where it looked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.errors import ConfigError
from daemon.models.builtin import (
    BUILTIN_MODELS,
    BUILTIN_PREFIX,
    INTERROGATION_BUILTINS,
    ensure_builtin,
    is_builtin,
    model_hash_file,
)
from daemon.models.checkpoints import PICKLE_SUFFIXES, is_pickle
from daemon.models.hub import locate
from daemon.models.hub_cache import HubRef, is_hub_id
from daemon.models.layouts import WD14_MODEL
from daemon.paths import shown

SourceKind = Literal["folder", "single_file", "hub"]
SAFE_SUFFIXES = (".safetensors",)
WEIGHT_SUFFIXES = (*SAFE_SUFFIXES, *PICKLE_SUFFIXES)  # a safetensors file wins over a pickle
DIFFUSION_FOLDERS = ("", "Stable-diffusion")
VAE_FOLDERS = ("VAE", "")
INTERROGATOR_FOLDERS = ("", "interrogators", "torch_deepdanbooru", "BLIP", "CLIP")
"""Sub-folders of ``models_dir`` searched for each kind ("" is models_dir itself), in order."""
_PAIR = " + "  # spaced, so that a folder named "blip+clip" stays one path


class ModelNotFound(ConfigError):
    """A reference that names nothing on disk, with where it was looked for: what a
    newcomer needs to put the file in the right place (or to set ``models_dir``)."""

    def __init__(self, message: str, *, by_name: bool, models_dir: Path | None, home: Path | None):
        super().__init__(message)
        self.by_name = by_name  # a name to look up, not a path: models_dir matters
        self.models_dir = models_dir
        self.home = home  # where a file of this kind belongs under models_dir

    @classmethod
    def looked(
        cls,
        kind: str,
        ref: str,
        expected: str,
        looked: Sequence[Path],
        models_dir: Path | None,
        folders: Sequence[str],
    ) -> ModelNotFound:
        by_name = not Path(ref).expanduser().is_absolute()
        home = None
        if models_dir is not None and by_name:
            home = next((models_dir / f for f in folders if f), models_dir)
        message = f"{kind} '{ref}' not found: looked for {expected} named {_tried(looked)} in "
        message += _searched(looked, models_dir, folders)
        return cls(message, by_name=by_name, models_dir=models_dir, home=home)


@dataclass(frozen=True)
class ModelSource:
    ref: str  # as written in the profile
    kind: SourceKind
    location: str  # a path, or a hub repo id
    name: str  # A1111's "Model": the checkpoint's stem

    @property
    def hash_file(self) -> Path | None:
        """The file whose sha256 is A1111's "Model hash"."""
        if self.kind == "single_file":
            return Path(self.location)
        if self.kind == "folder":
            return model_hash_file(Path(self.location))
        if self.kind == "hub" and Path(self.location).is_dir():  # found in the local cache
            with contextlib.suppress(FileNotFoundError):
                return model_hash_file(Path(self.location))
        return None


def resolve_model(
    ref: str,
    *,
    models_dir: Path | None,
    state_dir: Path,
    build: bool = True,
    allow_pickle: bool = False,
    download: bool = False,
) -> ModelSource:
    """A diffusion model: a diffusers folder, a single-file checkpoint or a hub id.

    ``build=False`` only checks a built-in's name instead of generating it, and a hub id's
    shape instead of the cache (``check`` stays fast). ``download``: ``download_models``.
    """
    ref = ref.strip()
    if is_builtin(ref):
        name = ref[len(BUILTIN_PREFIX) :]
        if name in INTERROGATION_BUILTINS:
            raise ConfigError(
                f"model '{ref}' is an interrogation model: use it with `task: interrogate`, "
                "or as interrogate_model / tagger_model"
            )
        folder = _builtin(ref, state_dir, BUILTIN_MODELS.keys() - INTERROGATION_BUILTINS, build)
        return ModelSource(ref, "folder", str(folder), f"builtin-{name}")
    looked = []
    for candidate in candidates(ref, models_dir, DIFFUSION_FOLDERS):
        looked.append(candidate)
        if candidate.is_dir() and (candidate / "model_index.json").is_file():
            return ModelSource(ref, "folder", str(candidate.resolve()), candidate.name)
        if candidate.is_file() and candidate.suffix.lower() in WEIGHT_SUFFIXES:
            _check_pickle("model", candidate, allow_pickle)
            return ModelSource(ref, "single_file", str(candidate.resolve()), candidate.stem)
    if looks_like_repo_id(ref):
        where = locate(ref, "pipeline", what="model", download=download) if build else ref
        return ModelSource(ref, "hub", str(where), HubRef.parse(ref).name)
    raise ModelNotFound.looked(
        "model", ref, "a diffusers folder or a checkpoint file", looked, models_dir,
        DIFFUSION_FOLDERS,
    )  # fmt: skip


def resolve_vae(
    ref: str,
    *,
    models_dir: Path | None,
    allow_pickle: bool = False,
    build: bool = True,
    download: bool = False,
) -> Path:
    """A VAE: a weight file or a diffusers folder (A1111 keeps them in ``models_dir/VAE``),
    or a hub id of a diffusers VAE (``build=False``: its shape only, as the id)."""
    looked = []
    for candidate in candidates(ref.strip(), models_dir, VAE_FOLDERS):
        looked.append(candidate)
        if candidate.is_dir():
            return candidate
        if candidate.is_file():
            _check_pickle("vae", candidate, allow_pickle)
            return candidate
    if looks_like_repo_id(ref.strip()):
        hub_id = ref.strip()
        return locate(hub_id, "model", what="vae", download=download) if build else Path(hub_id)
    raise ModelNotFound.looked("vae", ref, "a VAE file or folder", looked, models_dir, VAE_FOLDERS)


def resolve_clip(
    ref: str,
    *,
    models_dir: Path | None,
    state_dir: Path,
    build: bool = True,
    download: bool = False,
) -> tuple[str, str]:
    """BLIP and CLIP of a CLIP-interrogator reference: a folder holding ``blip/`` and
    ``clip/``, or ``<blip> + <clip>`` where each side is a model folder or a hub repo id
    (from the local cache; ``build=False``: the id as it is)."""
    ref = ref.strip()
    if is_builtin(ref):
        folder = _builtin(ref, state_dir, {"tiny-interrogator"}, build)
        return str(folder / "blip"), str(folder / "clip")
    if _PAIR in ref:
        blip, _, clip = (part.strip() for part in ref.partition(_PAIR))
        if not blip or not clip:
            raise ConfigError(f"interrogation model '{ref}': write it as '<blip> + <clip>'")
        return (
            _model_folder_or_repo(blip, models_dir, build=build, download=download),
            _model_folder_or_repo(clip, models_dir, build=build, download=download),
        )
    looked = []
    for candidate in candidates(ref, models_dir, INTERROGATOR_FOLDERS):
        looked.append(candidate)
        if (candidate / "blip").is_dir() and (candidate / "clip").is_dir():
            return str(candidate / "blip"), str(candidate / "clip")
    raise ModelNotFound.looked(
        "interrogation model", ref,
        "a folder holding blip/ and clip/ (or write '<blip> + <clip>', each a folder or a hub "
        "repo id, e.g. 'Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14')",
        looked, models_dir, INTERROGATOR_FOLDERS,
    )  # fmt: skip


def resolve_tagger(
    ref: str,
    *,
    models_dir: Path | None,
    state_dir: Path,
    allow_pickle: bool = False,
    build: bool = True,
    download: bool = False,
) -> Path:
    """A tagger: a WD14 folder (``model.onnx`` + ``selected_tags.csv``), A1111's DeepDanbooru
    ``.pt`` (or its folder), or a hub repo id of a WD14 tagger, from the local cache (unless
    ``build=False``: then a hub id is only checked for its shape)."""
    ref = ref.strip()
    if is_builtin(ref):
        return _builtin(ref, state_dir, {"tiny-tagger"}, build)
    looked = []
    for candidate in candidates(ref, models_dir, INTERROGATOR_FOLDERS):
        looked.append(candidate)
        if candidate.is_file():
            _check_pickle("tagger", candidate, allow_pickle)
            return candidate
        if (candidate / WD14_MODEL).is_file() or (
            candidate.is_dir() and any(candidate.glob("*.pt"))  # A1111's torch_deepdanbooru
        ):
            return candidate
    if looks_like_repo_id(ref):
        return locate(ref, "tagger", what="tagger", download=download) if build else Path(ref)
    raise ModelNotFound.looked(
        "tagger", ref,
        "a WD14 folder (model.onnx + selected_tags.csv) or A1111's DeepDanbooru .pt file (or "
        "give a hub repo id such as SmilingWolf/wd-v1-4-moat-tagger-v2)",
        looked, models_dir, INTERROGATOR_FOLDERS,
    )  # fmt: skip


def candidates(ref: str, models_dir: Path | None, folders: Sequence[str]) -> list[Path]:
    """Where a reference may be, in order: as given (absolute, or relative to the working
    directory), then in each of `folders` under `models_dir`. A name without a weight
    extension is also tried with each (``dream`` → ``dream.safetensors``, ``dream.ckpt``)."""
    given = Path(ref).expanduser()
    roots = [Path("/")] if given.is_absolute() else [Path.cwd()]
    if models_dir is not None and not given.is_absolute():
        roots += [models_dir / folder if folder else models_dir for folder in folders]
    found = []
    for root in roots:
        base = root / given
        found.append(base)
        if base.suffix.lower() not in WEIGHT_SUFFIXES:
            found += [base.with_name(base.name + suffix) for suffix in WEIGHT_SUFFIXES]
    return found


def looks_like_repo_id(ref: str) -> bool:
    """``org/name`` on the hub; never something that is plainly a file name or a path."""
    is_file_name = Path(ref).suffix.lower() in WEIGHT_SUFFIXES
    return is_hub_id(ref) and not is_file_name and not ref.startswith((".", "~"))


def _check_pickle(kind: str, path: Path, allowed: bool) -> None:
    if is_pickle(path) and not allowed:
        raise ConfigError(
            f"{kind} {path} is a pickled checkpoint ({path.suffix}), which can run code when "
            "loaded; convert it to .safetensors, or set `allow_pickle: true` in the daemon's "
            "configuration if you trust the file"
        )


def _builtin(ref: str, state_dir: Path, allowed: set[str] | frozenset[str], build: bool) -> Path:
    name = ref[len(BUILTIN_PREFIX) :]
    if name not in allowed:
        choices = ", ".join(f"builtin:{n}" for n in sorted(allowed))
        raise ConfigError(f"model '{ref}': the built-in model for this is {choices}")
    if not build:
        return state_dir / "builtin" / name
    return ensure_builtin(name, state_dir / "builtin")


def _model_folder_or_repo(ref: str, models_dir: Path | None, *, build: bool, download: bool) -> str:
    for candidate in candidates(ref, models_dir, INTERROGATOR_FOLDERS):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if looks_like_repo_id(ref):
        what = "interrogation model"
        return str(locate(ref, "model", what=what, download=download)) if build else ref
    raise ModelNotFound.looked(
        "model",
        ref,
        "a model folder with config.json (or give a hub repo id)",
        candidates(ref, models_dir, INTERROGATOR_FOLDERS),
        models_dir,
        INTERROGATOR_FOLDERS,
    )


def _tried(looked: Sequence[Path]) -> str:
    """The names tried, once each: ``dream, dream.safetensors, .ckpt, .pt, .pth or .bin``."""
    names = list(dict.fromkeys(p.name for p in looked))
    if not names:
        return "nothing"
    shown = [names[0]]
    for name in names[1:]:
        stem, dot, suffix = name.rpartition(".")
        plain = Path(names[0]).name
        shown.append(f".{suffix}" if dot and stem == plain and len(shown) > 1 else name)
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _searched(looked: Sequence[Path], models_dir: Path | None, folders: Sequence[str]) -> str:
    """The folders searched, each said for what it is (the working folder, models_dir, one
    of its A1111 sub-folders)."""
    roles = {Path.cwd(): "the working folder", Path("/"): "the file system root"}
    if models_dir is not None:
        roles[models_dir] = "models_dir"
        roles.update({models_dir / f: "an A1111 sub-folder of models_dir" for f in folders if f})
    places = []
    for parent in dict.fromkeys(p.parent for p in looked):
        role = roles.get(parent)
        where = str(parent) if parent == Path.cwd() else shown(parent)
        places.append(f"{where} ({role})" if role else where)
    said = ", ".join(places) or "no folder"
    if models_dir is None and any(roles.get(p.parent) == "the working folder" for p in looked):
        said += "; no models_dir is set, so no models folder was searched"
    return said
