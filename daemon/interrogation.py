"""Interrogation models by reference, kept warm; an image in, a prompt line and its details out.

Two interrogators, as in A1111:

* ``clip`` — a BLIP caption, then CLIP ranks label lists (:mod:`daemon.engines.interrogate_clip`).
  Its model reference names both models: a folder holding ``blip/`` and ``clip/``,
  ``builtin:tiny-interrogator``, or ``<blip> + <clip>`` where each side is a folder or a hub
  repo id (the default: ``Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14``).
* ``deepbooru`` — a tagger (:mod:`daemon.engines.tagger`): a WD14 ONNX folder (``model.onnx``
  and ``selected_tags.csv``), A1111's DeepDanbooru ``.pt``, ``builtin:tiny-tagger``, or a hub
  repo id of a WD14 tagger (its two files are fetched into the hub cache).

Names are also looked up in ``models_dir`` and the sub-folders A1111 and its tagger extension
use (``interrogators``, ``torch_deepdanbooru``, ``BLIP``, ``CLIP``). Loaded models stay warm
until they have been idle for ``unload_after`` seconds, like the diffusion pipelines.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from daemon import __version__
from daemon.builtin import BUILTIN_PREFIX, ensure_builtin, is_builtin
from daemon.errors import ConfigError
from daemon.labels import load_label_lists
from daemon.profiles import Interrogator, Profile

if TYPE_CHECKING:
    from PIL import Image

    from daemon.models import ModelCache

INTERROGATOR_FOLDERS = ("interrogators", "torch_deepdanbooru", "BLIP", "CLIP")
"""Sub-folders of ``models_dir`` where A1111 and its WD14 extension keep these models."""
_PAIR = " + "


@dataclass(frozen=True)
class Interrogation:
    """What an interrogator made of one image."""

    line: str  # the prompt, one line
    interrogator: Interrogator
    model: str  # the reference as the profile wrote it
    details: dict[str, Any]  # caption and ranked terms, or tags and ratings, with scores
    settings: dict[str, Any]  # the options that shaped the line

    def as_json(self, image_name: str) -> dict[str, Any]:
        return {
            "image": image_name,
            "prompt": self.line,
            "interrogator": self.interrogator,
            "model": self.model,
            **self.details,
            "settings": self.settings,
            "version": f"img2imgd v{__version__}",
        }


@dataclass
class _Loaded:
    engine: Any
    last_used: float


class Interrogators:
    """The warm interrogation models of one daemon; use from the worker thread."""

    def __init__(self, models: ModelCache) -> None:
        self.models = models  # its device, folders, pickle policy and state folder
        self._loaded: dict[tuple[Interrogator, str], _Loaded] = {}
        self._lock = threading.Lock()

    def interrogate(
        self, image: Image.Image, settings: Profile, kind: Interrogator, ref: str
    ) -> Interrogation:
        """Interrogate `image` with model `ref` of `kind`, options from `settings`.

        ConfigError when the model cannot be found or loaded (the caller makes the job wait).
        """
        engine = self._engine(kind, ref)
        if kind == "clip":
            return self._clip(engine, image, settings, ref)
        return self._tags(engine, image, settings, ref)

    def _clip(self, engine: Any, image: Image.Image, settings: Profile, ref: str) -> Interrogation:
        from daemon.engines.interrogate_clip import ClipOptions

        labels_dir = Path(settings.labels_dir).expanduser() if settings.labels_dir else None
        labels = load_label_lists(
            labels_dir, dict_limit=settings.dict_limit, skip_categories=settings.skip_categories
        )
        options = _options(ClipOptions, settings)
        result = engine.interrogate(image, labels, options)
        terms = [{"category": t.category, "term": t.text, "score": t.score} for t in result.terms]
        used = {
            **asdict(options),
            "dict_limit": settings.dict_limit,
            "skip_categories": list(settings.skip_categories),
            "labels_dir": settings.labels_dir,
            "lists": {label.name: len(label.terms) for label in labels},
        }
        details = {"caption": result.caption, "terms": terms}
        return Interrogation(result.line, "clip", ref, details, used)

    def _tags(self, engine: Any, image: Image.Image, settings: Profile, ref: str) -> Interrogation:
        from daemon.engines.tagger import TaggerOptions

        options = _options(TaggerOptions, settings)
        result = engine.tag(image, options)
        tags = [
            {"tag": t.text, "name": t.name, "score": t.score, "category": _category(t.category)}
            for t in result.tags
        ]
        used = {**asdict(options), "format": engine.kind}
        if options.threshold is None:
            used["threshold"] = engine.default_threshold
        details = {"tags": tags, "ratings": dict(result.ratings)}
        return Interrogation(result.line, "deepbooru", ref, details, used)

    # -- models ----------------------------------------------------------------------------

    def _engine(self, kind: Interrogator, ref: str) -> Any:
        key = (kind, ref)
        with self._lock:
            loaded = self._loaded.get(key)
        if loaded is None:
            loaded = _Loaded(self._load(kind, ref), 0.0)
            with self._lock:
                self._loaded[key] = loaded
        loaded.last_used = time.monotonic()
        return loaded.engine

    def _load(self, kind: Interrogator, ref: str) -> Any:
        models = self.models
        device, dtype = models.device
        started = time.monotonic()
        if kind == "clip":
            from daemon.engines.interrogate_clip import ClipInterrogator

            blip, clip = resolve_clip(ref, models_dir=models.models_dir, state_dir=models.state_dir)
            engine: Any = ClipInterrogator.load(
                blip,
                clip,
                device=device,
                dtype=dtype,
                cache_dir=models.state_dir / "label-embeddings",
                local_files_only=Path(blip).is_dir() and Path(clip).is_dir(),
            )
        else:
            from daemon.engines.tagger import load_tagger

            path = resolve_tagger(
                ref,
                models_dir=models.models_dir,
                state_dir=models.state_dir,
                allow_pickle=models.allow_pickle,
            )
            engine = load_tagger(path, device=device, allow_pickle=models.allow_pickle)
        if is_builtin(ref):
            logger.warning(
                "interrogation model {} has random weights: its words are noise. It exists to "
                "try the flow offline; point the profile at a real model for real prompts.",
                ref,
            )
        logger.info("loaded {} interrogator {} in {:.1f}s", kind, ref, time.monotonic() - started)
        return engine

    def unload_idle(self, max_idle: float, *, now: float | None = None) -> list[str]:
        """Drop models unused for `max_idle` seconds; returns their references."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [key for key, item in self._loaded.items() if now - item.last_used >= max_idle]
            for key in idle:
                self._unload(key)
        return [ref for _, ref in idle]

    def unload_all(self) -> None:
        with self._lock:
            for key in list(self._loaded):
                self._unload(key)

    def _unload(self, key: tuple[Interrogator, str]) -> None:
        engine = self._loaded.pop(key).engine
        unload = getattr(engine, "unload", None)
        if callable(unload):
            unload()

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return [ref for _, ref in self._loaded]


_Options = TypeVar("_Options")


def _options(cls: type[_Options], settings: Profile) -> _Options:
    """An engine's options from the profile: their fields carry the profile's key names."""
    return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _category(code: int | None) -> str:
    """selected_tags.csv's category numbers, by name (DeepDanbooru files have none)."""
    return (
        {0: "general", 4: "character", 9: "rating"}.get(code, "unknown")
        if code is not None
        else "unknown"
    )


# -- references ------------------------------------------------------------------------------


def resolve_clip(
    ref: str, *, models_dir: Path | None, state_dir: Path, build: bool = True
) -> tuple[str, str]:
    """BLIP and CLIP of a CLIP-interrogator reference: local folders or hub repo ids.

    ``build=False`` checks a built-in's name without generating it (``check`` stays fast)."""
    ref = ref.strip()
    if is_builtin(ref):
        folder = _builtin(ref, state_dir, "tiny-interrogator", build=build)
        return str(folder / "blip"), str(folder / "clip")
    if _PAIR in ref:  # spaced, so that a folder named "blip+clip" stays one path
        blip, _, clip = (part.strip() for part in ref.partition(_PAIR))
        if not blip or not clip:
            raise ConfigError(f"interrogation model '{ref}': write it as '<blip> + <clip>'")
        return _folder_or_repo(blip, models_dir), _folder_or_repo(clip, models_dir)
    for candidate in _candidates(ref, models_dir):
        if (candidate / "blip").is_dir() and (candidate / "clip").is_dir():
            return str(candidate / "blip"), str(candidate / "clip")
    raise ConfigError(
        f"interrogation model '{ref}' not found: give a folder holding blip/ and clip/, or "
        "'<blip> + <clip>' (each a folder or a hub repo id), e.g. "
        "'Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14'"
    )


def resolve_tagger(
    ref: str,
    *,
    models_dir: Path | None,
    state_dir: Path,
    allow_pickle: bool = False,
    build: bool = True,
) -> Path:
    """The local folder or file of a tagger reference; a hub repo's files are fetched
    (unless ``build=False``: then a hub id is only checked for its shape)."""
    from daemon.checkpoints import is_pickle

    ref = ref.strip()
    if is_builtin(ref):
        return _builtin(ref, state_dir, "tiny-tagger", build=build)
    for candidate in _candidates(ref, models_dir):
        if candidate.is_file() or (candidate / "model.onnx").is_file():
            if candidate.is_file() and is_pickle(candidate) and not allow_pickle:
                raise ConfigError(
                    f"tagger {candidate} is a pickle ({candidate.suffix}), which can run code "
                    "when loaded; set `allow_pickle: true` in the daemon's configuration if "
                    "you trust the file"
                )
            return candidate
        if candidate.is_dir() and any(candidate.glob("*.pt")):
            return candidate  # A1111's models/torch_deepdanbooru
    if _looks_like_repo_id(ref):
        return _hub_tagger(ref) if build else Path(ref)
    raise ConfigError(
        f"tagger '{ref}' not found: give a WD14 folder (model.onnx + selected_tags.csv), "
        "A1111's DeepDanbooru .pt file, or a hub repo id such as "
        "SmilingWolf/wd-v1-4-moat-tagger-v2"
    )


def _builtin(ref: str, state_dir: Path, expected: str, *, build: bool) -> Path:
    name = ref[len(BUILTIN_PREFIX) :]
    if name != expected:
        raise ConfigError(f"model '{ref}': the built-in model for this is builtin:{expected}")
    return ensure_builtin(name, state_dir / "builtin") if build else state_dir / "builtin" / name


def _candidates(ref: str, models_dir: Path | None) -> list[Path]:
    given = Path(ref).expanduser()
    if given.is_absolute():
        return [given]
    found = [Path.cwd() / given]
    if models_dir is not None:
        found += [models_dir / given] + [models_dir / sub / given for sub in INTERROGATOR_FOLDERS]
    return found


def _folder_or_repo(ref: str, models_dir: Path | None) -> str:
    for candidate in _candidates(ref, models_dir):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if _looks_like_repo_id(ref):
        return ref
    raise ConfigError(f"model '{ref}' not found: not a model folder (config.json) nor a hub id")


def _looks_like_repo_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~"))


def _hub_tagger(repo: str) -> Path:
    """A WD14 tagger repo's two files, from the hub cache (downloaded when online)."""
    from huggingface_hub import hf_hub_download

    try:
        model = hf_hub_download(repo, "model.onnx")
        hf_hub_download(repo, "selected_tags.csv")
    except Exception as exc:  # offline and not cached, no such repo, network down
        raise ConfigError(
            f"tagger '{repo}': could not get model.onnx and selected_tags.csv from the hub "
            f"or its local cache ({type(exc).__name__}); download them into a folder and "
            "point the profile at it"
        ) from exc
    return Path(model).parent
