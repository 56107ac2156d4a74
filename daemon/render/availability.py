"""Is everything a profile renders with on disk? Asked before its files become jobs.

A profile names models: the checkpoint (or diffusers folder, or hub id), a VAE, the
interrogators its prompt asks for, and LoRAs in its own prompt. When one of them is missing
it is not the files' fault: they wait in the inbox, the log says once what was looked for
and where, and they go as soon as the model is there. ``check`` and start-up report the same
findings through :func:`missing_models`; nothing is loaded or generated here, only looked up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.a1111.prompts import extract_extra_networks
from daemon.config.profiles import Profile
from daemon.config.settings import Settings
from daemon.engines.labels import load_label_lists
from daemon.errors import ConfigError
from daemon.models.checkpoints import detect_architecture
from daemon.models.hub_cache import (
    HubRole,
    cached_folder,
    has_markers,
    is_hub_id,
    not_cached,
    wrong_kind,
)
from daemon.models.resolve import (
    ModelNotFound,
    find,
    resolve_clip,
    resolve_model,
    resolve_tagger,
    resolve_vae,
)
from daemon.paths import shown

MODELS_DIR_EXAMPLE = "/path/to/stable-diffusion-webui/models"
MISSING_RECHECK = 2.0  # s between looks for a missing model (a few stat calls)
PRESENT_RECHECK = 60.0  # s a found model is trusted; the job itself says if it vanished


def missing_models(profile: Profile, settings: Settings) -> list[str]:
    """Every model `profile` names that cannot be found, each said with where it was looked
    for and what to do; [] when all are there. A hub id must be in the local cache, unless
    ``download_models`` lets its first job download it."""
    problems = []
    for lookup in _lookups(profile, settings):
        try:
            found = lookup.find()
        except ConfigError as exc:
            problems.append(explain(exc, settings))
            continue
        if not settings.download_models:
            problems += _not_in_cache(lookup, found)
    return problems


def _not_in_cache(lookup: _Lookup, found: object) -> list[str]:
    """What a lookup found that is a hub id (it comes back as itself, not as a path) and is
    not complete in the local cache (files only: never the network)."""
    if lookup.role is None:
        return []
    results = found if isinstance(found, tuple) else (found,)
    problems = []
    for result in results:
        ref = str(result)
        if Path(ref).is_absolute() or not is_hub_id(ref):
            continue
        folder = cached_folder(ref)
        if folder is None:
            problems.append(not_cached(lookup.what, ref))
        elif not has_markers(folder, lookup.role):
            problems.append(wrong_kind(lookup.what, ref, lookup.role, folder))
    return problems


def explain(exc: ConfigError, settings: Settings) -> str:
    """A resolver's error, with the step that fixes it: where to put the file, or which
    config file sets ``models_dir``."""
    if not isinstance(exc, ModelNotFound) or not exc.by_name:
        return str(exc)
    if exc.home is None:
        where = settings.where_to_set("models_dir", MODELS_DIR_EXAMPLE)
        return f"{exc}. To find {exc.what}s by name, {where}"
    if exc.models_dir is None or not exc.home.is_relative_to(exc.models_dir):
        return f"{exc}. Put the file in {shown(exc.home)}"  # a folder of its own: lora_dirs
    where = shown(settings.config_file) if settings.config_file else "the defaults"
    return (
        f"{exc}. Put the file in {shown(exc.home)} (models_dir is {shown(exc.models_dir)}, "
        f"from {where})"
    )


@dataclass(frozen=True)
class _Lookup:
    what: str  # for messages: model, vae, interrogation model, tagger
    find: Callable[[], object]  # the resolver call (raises ConfigError when not found)
    role: HubRole | None = None  # what a hub id must be, when the reference may be one


def _lookups(profile: Profile, settings: Settings) -> list[_Lookup]:
    """One resolver call per model the profile names, as the render side resolves them, but
    without loading, generating or downloading anything."""
    models_dir, state_dir, pickles = settings.models_dir, settings.state_dir, settings.allow_pickle
    calls: list[_Lookup] = []
    kinds = set(profile.prompt_sources)
    if profile.task == "interrogate":
        kinds.add(profile.interrogator)
    else:

        def diffusion_model() -> str:
            source = resolve_model(
                profile.model, models_dir=models_dir, state_dir=state_dir, build=False,
                allow_pickle=pickles,
            )  # fmt: skip
            if source.kind == "single_file":
                detect_architecture(Path(source.location))  # reads the key layout only
            return source.location

        calls.append(_Lookup("model", diffusion_model, "pipeline"))
        if profile.vae is not None:
            vae = profile.vae
            calls.append(
                _Lookup(
                    "vae",
                    lambda: resolve_vae(
                        vae, models_dir=models_dir, allow_pickle=pickles, build=False
                    ),
                    "model",
                )
            )
        calls += [_Lookup("LoRA", _lora_lookup(name, settings)) for name in _profile_loras(profile)]
    if "clip" in kinds:
        clip = profile.interrogation_model("clip")
        calls.append(
            _Lookup(
                "interrogation model",
                lambda: resolve_clip(clip, models_dir=models_dir, state_dir=state_dir, build=False),
                "model",
            )
        )
        labels_dir = Path(profile.labels_dir).expanduser() if profile.labels_dir else None
        calls.append(
            _Lookup(
                "label lists",
                lambda: load_label_lists(labels_dir, skip_categories=profile.skip_categories),
            )
        )
    if "deepbooru" in kinds:
        tagger = profile.interrogation_model("deepbooru")
        calls.append(
            _Lookup(
                "tagger",
                lambda: resolve_tagger(
                    tagger,
                    models_dir=models_dir,
                    state_dir=state_dir,
                    allow_pickle=pickles,
                    build=False,
                ),
                "tagger",
            )
        )
    return calls


def _profile_loras(profile: Profile) -> list[str]:
    """The LoRAs the profile's own prompts name. A LoRA named only in an input's settings or
    parameters is skipped with a note when missing, as A1111 does; one the profile promises
    for every job makes its files wait instead."""
    names: list[str] = []
    for text in (profile.prompt, profile.negative_prompt):
        try:
            names += [lora.name for lora in extract_extra_networks(text)[1]]
        except ValueError:
            continue  # a malformed tag: the job reports it, with the input's name
    return list(dict.fromkeys(names))


def _lora_lookup(name: str, settings: Settings) -> Callable[[], object]:
    def lookup() -> Path:
        try:
            return find(
                "lora", name, models_dir=settings.models_dir, dirs=settings.lora_dirs or None,
                allow_pickle=settings.allow_pickle,
            )  # fmt: skip
        except ModelNotFound as exc:
            raise exc.noted("named in the profile's prompt") from exc

    return lookup


class ModelReadiness:
    """Whether each profile's models are on disk, looked up again every few seconds while
    something is missing (so files go as soon as the model is copied in), and trusted for
    a minute once found (a job whose model vanished later waits in the inbox anyway)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        # name -> (the profile as checked, recheck after, its problems)
        self._known: dict[str, tuple[Profile, float, list[str]]] = {}

    def problems(self, name: str, profile: Profile, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            known = self._known.get(name)
        if known is not None and known[0] == profile and now < known[1]:
            return known[2]
        problems = missing_models(profile, self.settings)
        recheck = MISSING_RECHECK if problems else PRESENT_RECHECK
        with self._lock:
            self._known[name] = (profile, now + recheck, problems)
        if known is not None and known[2] and not problems and known[0] == profile:
            logger.success("profile {}: its models are there now; its waiting files go", name)
        return problems
