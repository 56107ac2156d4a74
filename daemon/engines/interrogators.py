"""Interrogation models by reference, kept warm; an image in, a prompt line and its details out.

Two interrogators, as in A1111:

* ``clip`` — a BLIP caption, then CLIP ranks label lists (:mod:`daemon.engines.interrogate_clip`).
  Its model reference names both models: a folder holding ``blip/`` and ``clip/``,
  ``builtin:tiny-interrogator``, or ``<blip> + <clip>`` where each side is a folder or a hub
  repo id (the default: ``Salesforce/blip-image-captioning-large + openai/clip-vit-large-patch14``).
* ``deepbooru`` — a tagger (:mod:`daemon.engines.tagger`): a WD14 ONNX folder (``model.onnx``
  and ``selected_tags.csv``), A1111's DeepDanbooru ``.pt``, ``builtin:tiny-tagger``, or a hub
  repo id of a WD14 tagger (its two files are fetched into the hub cache).

References are found by :mod:`daemon.models.resolve`, with the same rules as every model. Loaded
models stay warm until they have been idle for ``unload_after`` seconds, like the diffusion
pipelines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from daemon import __version__
from daemon.config.profiles import Profile
from daemon.engines.interrogate_clip import ClipInterrogator, ClipOptions
from daemon.engines.labels import load_label_lists
from daemon.engines.tagger import TaggerOptions
from daemon.engines.taggers import load_tagger
from daemon.models.builtin import is_builtin
from daemon.models.resolve import Search, resolve_clip, resolve_tagger
from daemon.tasks.keys import Interrogator

if TYPE_CHECKING:
    import torch
    from PIL import Image


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
    """The warm interrogation models of one model cache; use from the worker thread.

    Models are looked up with `search`; `label_cache` keeps CLIP's label embeddings between
    runs; `device` is asked on the first load (picking it imports torch)."""

    def __init__(
        self,
        search: Search,
        *,
        label_cache: Path,
        device: Callable[[], tuple[str, torch.dtype]],
        on_load: Callable[[str, float], None] = lambda name, seconds: None,
    ) -> None:
        self.search = search
        self.label_cache = label_cache
        self._device = device
        self._loaded: dict[tuple[Interrogator, str], _Loaded] = {}
        self._lock = threading.Lock()
        self.on_load = on_load  # a model loaded in so many seconds (the metrics)

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

    def warm(self, kind: Interrogator, ref: str) -> None:
        """Load model `ref` of `kind` now, ahead of the first image."""
        self._engine(kind, ref)

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
        device, dtype = self._device()
        started = time.monotonic()
        if kind == "clip":
            blip, clip = resolve_clip(ref, self.search)
            engine: Any = ClipInterrogator.load(
                blip,
                clip,
                device=device,
                dtype=dtype,
                cache_dir=self.label_cache,
                local_files_only=True,  # folders: hub ids come from the local cache
            )
        else:
            path = resolve_tagger(ref, self.search)
            engine = load_tagger(path, device=device, allow_pickle=self.search.allow_pickle)
        if is_builtin(ref):
            logger.warning(
                "interrogation model {} has random weights: its words are noise. It exists to "
                "try the flow offline; point the profile at a real model for real prompts.",
                ref,
            )
        seconds = time.monotonic() - started
        logger.info("loaded {} interrogator {} in {:.1f} s", kind, ref, seconds)
        self.on_load(ref, seconds)
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
