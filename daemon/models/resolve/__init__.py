"""Model references → the files, folders or hub ids they name: one resolver for every kind.

Checkpoints and diffusers folders (``model``), VAEs (``vae``), LoRAs and textual-inversion
embeddings (named in prompts), the CLIP interrogator (``interrogate_model``) and taggers
(``tagger_model``) are all found by :func:`~daemon.models.resolve.search.find`, driven by one
row per kind in :data:`~daemon.models.resolve.kinds.KINDS`, in the places and under the rules
of one :class:`~daemon.models.resolve.search.Search` (``Search.of(settings)``). Every kind
follows the same rules:

* ``builtin:<name>`` — a built-in tiny model (:mod:`daemon.models.builtin`), generated once
  into the state folder (checkpoints, interrogators, taggers);
* a path: absolute, or relative to the working directory;
* a name in ``models_dir`` or one of the sub-folders A1111 and its extensions use for that
  kind (``Stable-diffusion``, ``VAE``, ``Lora``/``LyCORIS`` and ``embeddings``, searched
  recursively by file stem, ``interrogators``, ``torch_deepdanbooru``, ``BLIP``, ``CLIP``),
  with or without the weight file's extension;
* a hub repo id (``org/name``, or ``org/name@revision``) where the kind allows one, used from
  the local Hugging Face cache only: downloads are explicit (``img2imgd pull``, or
  ``download_models: true``; see :mod:`daemon.models.hub`). ``build=False`` checks only the
  id's shape.

Pickled weights (``.ckpt``/``.pt``/``.pth``/``.bin``) can run code when loaded: every kind
refuses them with the same message (:class:`PickleRefused`) unless the configuration sets
``allow_pickle``. A reference that names nothing is a :class:`ModelNotFound` (a ConfigError)
saying the names tried, the folders searched and what each is, and where the file belongs.
Nothing is loaded here.

A new kind of model (ControlNet, IP-Adapter) is one row in ``KINDS``; the functions below
only add what is special to four kinds: built-ins, the ``<blip> + <clip>`` pair, and the
``ModelSource`` a pipeline is loaded from.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.errors import ConfigError
from daemon.models.builtin import (
    BUILTIN_MODELS,
    BUILTIN_PREFIX,
    CONTROLNET_BUILTINS,
    INTERROGATION_BUILTINS,
    IP_ADAPTER_BUILTINS,
    ensure_builtin,
    is_builtin,
    model_hash_file,
)
from daemon.models.hub_cache import HubRef
from daemon.models.resolve.failures import (
    ALLOW_PICKLE_SETTING,
    ModelNotFound,
    PickleRefused,
    check_pickle,
)
from daemon.models.resolve.kinds import KINDS, WEIGHT_SUFFIXES, Kind, kind_folders
from daemon.models.resolve.search import (
    Search,
    candidates,
    files_by_stem,
    find,
    looks_like_repo_id,
    walk_weight_files,
)
from daemon.models.tiny_ip_adapter import ADAPTER_FILE, ENCODER_FOLDER

__all__ = [
    "ALLOW_PICKLE_SETTING", "KINDS", "WEIGHT_SUFFIXES", "Kind", "ModelNotFound", "ModelSource",
    "PickleRefused", "Search", "candidates", "check_pickle", "files_by_stem", "find",
    "kind_folders", "looks_like_repo_id", "resolve_clip", "resolve_controlnet",
    "resolve_image_encoder", "resolve_ip_adapter", "resolve_model", "resolve_tagger",
    "resolve_vae", "walk_weight_files", "without_hash",
]  # fmt: skip

SourceKind = Literal["folder", "single_file", "hub"]
_PAIR = " + "  # spaced, so that a folder named "blip+clip" stays one path


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


def resolve_model(ref: str, search: Search, *, build: bool = True) -> ModelSource:
    """A diffusion model: a diffusers folder, a single-file checkpoint or a hub id.

    ``build=False`` only checks a built-in's name instead of generating it, and a hub id's
    shape instead of the cache (``check`` stays fast).
    """
    ref = ref.strip()
    if is_builtin(ref):
        name = ref[len(BUILTIN_PREFIX) :]
        if name in INTERROGATION_BUILTINS:
            raise ConfigError(
                f"model '{ref}' is an interrogation model: use it with `task: interrogate`, "
                "or as interrogate_model / tagger_model"
            )
        if name in CONTROLNET_BUILTINS:
            raise ConfigError(
                f"model '{ref}' is a ControlNet: use it as a `controlnet:` unit's model"
            )
        if name in IP_ADAPTER_BUILTINS:
            raise ConfigError(f"model '{ref}' is an IP-Adapter: use it as `ip_adapter: model:`")
        pipelines = (
            BUILTIN_MODELS.keys() - INTERROGATION_BUILTINS - CONTROLNET_BUILTINS
        ) - IP_ADAPTER_BUILTINS
        folder = _builtin(ref, search, pipelines, build=build)
        return ModelSource(ref, "folder", str(folder), f"builtin-{name}")
    found = find("model", ref, search, build=build)
    if found not in candidates(ref, search.models_dir, "model"):  # not on disk: a hub id
        return ModelSource(ref, "hub", str(found), HubRef.parse(ref).name)
    if found.is_dir():
        return ModelSource(ref, "folder", str(found.resolve()), found.name)
    return ModelSource(ref, "single_file", str(found.resolve()), found.stem)


def resolve_controlnet(ref: str, search: Search, *, build: bool = True) -> Path:
    """A ControlNet: a built-in, a diffusers folder (``config.json`` and its weights) or a
    single file (``.safetensors``; ``.pth`` and other pickles only with ``allow_pickle``).

    A path (absolute, or relative to the working folder) names one; so does a folder's name
    in one of the ControlNet folders (``models_dir/ControlNet``, ComfyUI's
    ``models_dir/controlnet``, and the extension's ``extensions/sd-webui-controlnet/models``
    beside an A1111 ``models`` folder); any other name is a file's stem, looked up through
    those folders and their sub-folders, as the extension does. A trailing `` [hash]``, as
    infotexts write the model (``control_v11p_sd15_canny [d14c016b]``), is not part of the
    name."""
    ref = ref.strip()
    if is_builtin(ref):
        return _builtin(ref, search, CONTROLNET_BUILTINS, build=build)
    name = without_hash(ref)
    given = Path(name).expanduser()
    places = [given] if given.is_absolute() else [Path.cwd() / given]
    if not given.is_absolute():
        places += [folder / given for folder in kind_folders("controlnet", search.models_dir)]
    for place in places:
        if (place / "config.json").is_file() or place.is_file():
            check_pickle("controlnet", ref, place, allowed=search.allow_pickle)
            return place.resolve()
    if given.is_dir() or given.is_absolute():
        raise ModelNotFound(
            f"ControlNet '{ref}': no ControlNet file or diffusers ControlNet folder "
            f"(config.json) at {given}",
            what="ControlNet",
            ref=ref,
            by_name=False,
        )
    stem = given.stem if given.suffix.lower() in WEIGHT_SUFFIXES else name  # x.pth: by x
    return find("controlnet", stem, search)


_HASH = re.compile(r"\s+\[[0-9a-fA-F]{8,12}\]$")


def without_hash(ref: str) -> str:
    """``control_v11p_sd15_canny [d14c016b]`` → ``control_v11p_sd15_canny``."""
    return _HASH.sub("", ref.strip())


def resolve_ip_adapter(ref: str, search: Search, *, build: bool = True) -> Path:
    """An IP-Adapter's weight file: a built-in's, a path, or a name (its stem) in the
    adapter folders (:data:`KINDS` ``ip_adapter``)."""
    ref = ref.strip()
    if is_builtin(ref):
        return _builtin(ref, search, IP_ADAPTER_BUILTINS, build=build) / ADAPTER_FILE
    given = Path(ref).expanduser()
    if given.is_file():
        check_pickle("ip_adapter", ref, given, allowed=search.allow_pickle)
        return given.resolve()
    return find("ip_adapter", ref, search, build=build)


def resolve_image_encoder(ref: str | None, adapter: Path, search: Search) -> Path:
    """The CLIP vision folder an IP-Adapter encodes its reference with: `ref` (a path, or a
    name in ``models_dir/clip_vision``), else ``image_encoder/`` beside the adapter's file."""
    if ref is None:
        beside = adapter.parent / ENCODER_FOLDER
        if not (beside / "config.json").is_file():
            raise ConfigError(
                f"IP-Adapter {adapter.name}: no image_encoder set, and no {beside} with a "
                "config.json beside it; set ip_adapter.image_encoder to a CLIP vision folder "
                "(e.g. h94/IP-Adapter's models/image_encoder, in models_dir/clip_vision)"
            )
        return beside
    return find("image_encoder", ref, search)


def resolve_vae(ref: str, search: Search, *, build: bool = True) -> Path:
    """A VAE: a weight file or a diffusers folder (A1111 keeps them in ``models_dir/VAE``),
    or a hub id of a diffusers VAE (``build=False``: its shape only, as the id)."""
    return find("vae", ref, search, build=build)


def resolve_clip(ref: str, search: Search, *, build: bool = True) -> tuple[str, str]:
    """BLIP and CLIP of a CLIP-interrogator reference: a folder holding ``blip/`` and
    ``clip/``, or ``<blip> + <clip>`` where each side is a model folder or a hub repo id
    (from the local cache; ``build=False``: the id as it is)."""
    ref = ref.strip()
    if is_builtin(ref):
        folder = _builtin(ref, search, {"tiny-interrogator"}, build=build)
        return str(folder / "blip"), str(folder / "clip")
    if _PAIR in ref:
        blip, _, clip = (part.strip() for part in ref.partition(_PAIR))
        if not blip or not clip:
            raise ConfigError(f"interrogation model '{ref}': write it as '<blip> + <clip>'")
        blip_found, clip_found = (
            find("interrogator_part", side, search, build=build) for side in (blip, clip)
        )
        return str(blip_found), str(clip_found)
    folder = find("interrogator", ref, search, build=build)
    return str(folder / "blip"), str(folder / "clip")


def resolve_tagger(ref: str, search: Search, *, build: bool = True) -> Path:
    """A tagger: a WD14 folder (``model.onnx`` + ``selected_tags.csv``), A1111's DeepDanbooru
    ``.pt`` (or its folder), or a hub repo id of a WD14 tagger, from the local cache (unless
    ``build=False``: then a hub id is only checked for its shape)."""
    ref = ref.strip()
    if is_builtin(ref):
        return _builtin(ref, search, {"tiny-tagger"}, build=build)
    return find("tagger", ref, search, build=build)


def _builtin(ref: str, search: Search, allowed: set[str] | frozenset[str], *, build: bool) -> Path:
    name = ref[len(BUILTIN_PREFIX) :]
    if name not in allowed:
        choices = ", ".join(f"builtin:{n}" for n in sorted(allowed))
        raise ConfigError(f"model '{ref}': the built-in model for this is {choices}")
    state_dir = search.state_dir
    if state_dir is None:  # a lookup made for LoRAs or embeddings in their own folders
        raise ConfigError(f"model '{ref}': no state folder to generate built-in models in")
    if not build:
        return state_dir / "builtin" / name
    return ensure_builtin(name, state_dir / "builtin")
