"""The hub models the profiles name, and whether each is in the local cache: what ``check``
reports and what ``img2imgd pull`` (with no id) downloads.

Which reference is a hub id is the resolver's decision (a folder or file of that name wins,
see :mod:`daemon.models.resolve`): each reference is resolved as ``check`` resolves it
(``build=False``), and a hub id is what comes back as itself — every local match comes back as
an absolute path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.profiles import LoadedProfile
from daemon.errors import ConfigError
from daemon.models.hub_cache import (
    HubRole,
    cached_folder,
    cached_line,
    has_markers,
    not_cached,
    wrong_kind,
)
from daemon.models.resolve import resolve_clip, resolve_model, resolve_tagger, resolve_vae


@dataclass(frozen=True)
class NamedHubModel:
    ref: str  # the hub id as written
    role: HubRole
    what: str  # for messages: model, vae, interrogation model, tagger
    where: str  # file:line of the profile key that names it


@dataclass
class HubReport:
    """For ``check``: one line per hub id (the places that name it first)."""

    cached: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def hub_models(
    profiles: Iterable[LoadedProfile], *, models_dir: Path | None, state_dir: Path
) -> list[NamedHubModel]:
    """Every hub id the profiles use, in profile order (an id named twice, twice)."""
    found = []
    for profile in profiles:
        found += _named_by(profile, models_dir=models_dir, state_dir=state_dir)
    return found


def hub_report(
    profiles: Iterable[LoadedProfile], *, models_dir: Path | None, state_dir: Path
) -> HubReport:
    """Whether each hub id the profiles use is in the local cache (files only: no network).
    One not there is a problem, as any missing model is for ``check``."""
    report = HubReport()
    by_ref: dict[tuple[str, HubRole], list[NamedHubModel]] = {}
    for named in hub_models(profiles, models_dir=models_dir, state_dir=state_dir):
        by_ref.setdefault((named.ref, named.role), []).append(named)
    for (ref, role), uses in by_ref.items():
        where = ", ".join(dict.fromkeys(use.where for use in uses))
        what = uses[0].what
        folder = cached_folder(ref)
        if folder is None:
            report.problems.append(f"{where}: {not_cached(what, ref)}")
        elif not has_markers(folder, role):
            report.problems.append(f"{where}: {wrong_kind(what, ref, role, folder)}")
        else:
            report.cached.append(f"{where}: {cached_line(what, ref, folder)}")
    return report


def _named_by(
    profile: LoadedProfile, *, models_dir: Path | None, state_dir: Path
) -> list[NamedHubModel]:
    """The hub ids one profile uses, walked as ``render.availability`` walks them."""
    keys = profile.settings
    interrogating = keys.task == "interrogate"
    kinds = set(keys.prompt_sources) | ({keys.interrogator} if interrogating else set())
    found: list[NamedHubModel] = []

    def look(key: str, what: str, role: HubRole, ref: str, resolve: Callable[[], Any]) -> None:
        try:
            resolved = resolve()
        except ConfigError:
            return  # found nowhere, and not a hub id: the preflight reports it
        results = resolved if isinstance(resolved, tuple) else (resolved,)
        sides = ref.split(" + ") if len(results) > 1 else [ref]
        for side, result in zip(sides, results, strict=False):
            if not Path(result).is_absolute():  # came back as itself: a hub id
                found.append(NamedHubModel(side.strip(), role, what, profile.where(key)))

    if not interrogating:
        look("model", "model", "pipeline", keys.model, lambda: resolve_model(
            keys.model, models_dir=models_dir, state_dir=state_dir, build=False,
            allow_pickle=True).location)  # fmt: skip
        if keys.vae is not None:
            vae = keys.vae
            look("vae", "vae", "model", vae, lambda: resolve_vae(
                vae, models_dir=models_dir, allow_pickle=True, build=False))  # fmt: skip
    if "clip" in kinds:
        clip = keys.interrogation_model("clip")
        look(_key(keys.task, keys.interrogator, "clip"), "interrogation model", "model",
             clip, lambda: resolve_clip(clip, models_dir=models_dir, state_dir=state_dir,
                                        build=False))  # fmt: skip
    if "deepbooru" in kinds:
        tagger = keys.interrogation_model("deepbooru")
        look(_key(keys.task, keys.interrogator, "deepbooru"), "tagger", "tagger", tagger,
             lambda: resolve_tagger(tagger, models_dir=models_dir, state_dir=state_dir,
                                    allow_pickle=True, build=False))  # fmt: skip
    return found


def _key(task: str, interrogator: str, kind: str) -> str:
    """The profile key naming the model of interrogator `kind` (as interrogation_model)."""
    if task == "interrogate" and interrogator == kind:
        return "model"
    return "interrogate_model" if kind == "clip" else "tagger_model"
