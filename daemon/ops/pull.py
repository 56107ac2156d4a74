"""``img2imgd pull``: hub models into the local cache, ahead of the jobs that need them.

As ``docker pull`` or ``ollama pull``: the ids given, or with none every hub id the profiles
name (what a newcomer's profiles need, in one command), each with a progress bar on a
terminal and a line every few seconds in a log. A model already there is checked against the
hub and only missing files are fetched.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from loguru import logger
from tqdm import tqdm

from daemon.config.profiles import check_all
from daemon.config.settings import Settings
from daemon.models.hub import LogProgress, Progress, PullError, pull
from daemon.models.hub_cache import HubRef, has_markers, wrong_kind
from daemon.models.resolve import looks_like_repo_id
from daemon.render.hub_refs import NamedHubModel, hub_models

GIVEN = "the command line"  # where an id given to `pull` was named


def pull_models(settings: Settings, refs: Sequence[str], *, revision: str | None = None) -> int:
    """Pull `refs` (``--revision``: at that revision), or every hub id the profiles name;
    returns how many could not be pulled."""
    wanted = _given(refs, revision) if refs else _named_by_profiles(settings)
    if not wanted:
        logger.info("no profile names a hub model: nothing to pull (img2imgd pull ORG/NAME)")
        return 0
    failed = sum(not _pull_one(named) for named in wanted)
    if failed:
        logger.error("{} of {} model(s) could not be pulled", failed, len(wanted))
    return failed


def _given(refs: Sequence[str], revision: str | None) -> list[NamedHubModel]:
    if revision is not None:
        refs = [f"{HubRef.parse(ref).repo}@{revision}" for ref in refs]
    return [NamedHubModel(ref.strip(), "model", "model", GIVEN) for ref in refs]


def _named_by_profiles(settings: Settings) -> list[NamedHubModel]:
    """Each hub id the valid profiles name, once (an invalid profile is ``check``'s to say)."""
    loaded, _ = check_all(settings.profiles)
    first: dict[str, NamedHubModel] = {}
    for named in hub_models(loaded.values(), settings):
        first.setdefault(named.ref, named)
    return list(first.values())


def _pull_one(named: NamedHubModel) -> bool:
    ref = named.ref
    if not looks_like_repo_id(ref):
        logger.error("{}: not a hub id (ORG/NAME, or ORG/NAME@REVISION)", ref)
        return False
    bar = tqdm(total=0, unit="B", unit_scale=True, desc=ref, file=sys.stderr,
               dynamic_ncols=True, disable=not sys.stderr.isatty())  # fmt: skip
    try:
        pulled = pull(ref, on_progress=LogProgress(ref) if bar.disable else _on_bar(bar))
    except PullError as exc:
        logger.error("{}: {}", ref, exc)
        return False
    finally:
        bar.close()
    # An id a profile names must be what the profile uses it as (`model:` a pipeline, ...).
    if named.where != GIVEN and not has_markers(pulled.folder, named.role):
        logger.error("{}: {}", named.where, wrong_kind(named.what, ref, named.role, pulled.folder))
        return False
    return True


def _on_bar(bar: tqdm) -> Progress:
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update
