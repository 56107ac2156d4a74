"""The hub models the profiles name, and whether each is in the local cache: what ``check``
reports and what ``img2imgd pull`` (with no id) downloads.

Which reference is a hub id is the resolver's decision (a folder or file of that name wins,
see :mod:`daemon.models.resolve`): each model a profile names
(:mod:`daemon.render.profile_models`) is resolved as ``check`` resolves it (``build=False``),
and a hub id is what comes back as itself — every local match comes back as an absolute path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config.profiles import LoadedProfile
from daemon.config.settings import Settings
from daemon.errors import ConfigError
from daemon.models.hub_cache import (
    HubRole,
    cached_folder,
    cached_line,
    has_markers,
    not_cached,
    wrong_kind,
)
from daemon.render.profile_models import named_models


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


def hub_models(profiles: Iterable[LoadedProfile], settings: Settings) -> list[NamedHubModel]:
    """Every hub id the profiles use, in profile order (an id named twice, twice)."""
    found = []
    for profile in profiles:
        found += _named_by(profile, settings)
    return found


def hub_report(profiles: Iterable[LoadedProfile], settings: Settings) -> HubReport:
    """Whether each hub id the profiles use is in the local cache (files only: no network).
    One not there is a problem, as any missing model is for ``check``."""
    report = HubReport()
    by_ref: dict[tuple[str, HubRole], list[NamedHubModel]] = {}
    for named in hub_models(profiles, settings):
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


def _named_by(profile: LoadedProfile, settings: Settings) -> list[NamedHubModel]:
    """The hub ids one profile uses: each model it names, resolved as ``check`` resolves it,
    whose reference comes back as itself rather than as a local path."""
    # Pickled checkpoints are allowed here: a local .ckpt is a local file, not a hub id,
    # whatever allow_pickle says (the preflight reports a refused one).
    lookup = settings.model_copy(update={"allow_pickle": True})
    found: list[NamedHubModel] = []
    for named in named_models(profile.settings, lookup):
        if named.role is None:
            continue  # LoRAs and label lists are never hub ids
        try:
            resolved = named.find()
        except ConfigError:
            continue  # found nowhere, and not a hub id: the preflight reports it
        results = resolved if isinstance(resolved, tuple) else (resolved,)
        sides = named.ref.split(" + ") if len(results) > 1 else [named.ref]
        for side, result in zip(sides, results, strict=False):
            if not Path(str(result)).is_absolute():  # came back as itself: a hub id
                found.append(
                    NamedHubModel(side.strip(), named.role, named.what, profile.where(named.key))
                )
    return found
