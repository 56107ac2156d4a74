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
from pathlib import Path

from loguru import logger

from daemon.config.profiles import Profile
from daemon.config.settings import Settings
from daemon.errors import ConfigError
from daemon.models.hub_cache import cached_folder, has_markers, is_hub_id, not_cached, wrong_kind
from daemon.models.resolve import ModelNotFound
from daemon.paths import shown
from daemon.render.profile_models import NamedModel, named_models

MODELS_DIR_EXAMPLE = "/path/to/stable-diffusion-webui/models"
MISSING_RECHECK = 2.0  # s between looks for a missing model (a few stat calls)
PRESENT_RECHECK = 60.0  # s a found model is trusted; the job itself says if it vanished


def missing_models(profile: Profile, settings: Settings) -> list[str]:
    """Every model `profile` names that cannot be found, each said with where it was looked
    for and what to do; [] when all are there. A hub id must be in the local cache, unless
    ``download_models`` lets its first job download it."""
    problems = []
    for named in named_models(profile, settings):
        try:
            found = named.find()
        except ConfigError as exc:
            problems.append(explain(exc, settings))
            continue
        if not settings.download_models:
            problems += _not_in_cache(named, found)
    return problems


def _not_in_cache(named: NamedModel, found: object) -> list[str]:
    """What a lookup found that is a hub id (it comes back as itself, not as a path) and is
    not complete in the local cache (files only: never the network)."""
    if named.role is None:
        return []
    results = found if isinstance(found, tuple) else (found,)
    problems = []
    for result in results:
        ref = str(result)
        if Path(ref).is_absolute() or not is_hub_id(ref):
            continue
        folder = cached_folder(ref)
        if folder is None:
            problems.append(not_cached(named.what, ref))
        elif not has_markers(folder, named.role):
            problems.append(wrong_kind(named.what, ref, named.role, folder))
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
