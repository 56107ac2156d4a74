"""The one search every kind of model goes through (:func:`find`), and its two strategies.

* **By name or path** (checkpoints, VAEs, interrogators, taggers): the reference as given
  (absolute, or relative to the working directory), then in each of the kind's folders under
  ``models_dir``; a name without a weight suffix is also tried with each of the kind's
  suffixes (``dream`` → ``dream.safetensors``, ``dream.ckpt``). The first that the kind
  accepts wins.
* **By file stem, recursively** (LoRAs, embeddings, as A1111 finds them): every weight file
  under the kind's folders and their sub-folders; the exact-case stem first, else any case;
  a ``.safetensors`` file before a pickle of the same name.

Then, for kinds that allow one, a hub id (``org/name[@revision]``) from the local Hugging Face
cache. What is found obeys the one pickle rule; nothing found is a :class:`ModelNotFound`.

Where a lookup looks and what it may take is one value, a :class:`Search`, made once from the
configuration and handed to every lookup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.models.checkpoints import is_pickle
from daemon.models.hub import locate
from daemon.models.hub_cache import is_hub_id
from daemon.models.resolve.failures import check_pickle, not_found
from daemon.models.resolve.kinds import KINDS, WEIGHT_SUFFIXES, home_of, kind_folders

if TYPE_CHECKING:
    from daemon.config.settings import Settings


@dataclass(frozen=True)
class Search:
    """The places and rules of a model lookup, as the configuration sets them.

    ``models_dir``: where names are looked up (None: paths only, and the hub); ``state_dir``:
    where built-in models are generated (None: a lookup that names none, such as a LoRA in
    its own folders); ``allow_pickle``: pickled weights may be used; ``download``
    (``download_models``): a hub id missing from the local cache is fetched."""

    models_dir: Path | None
    state_dir: Path | None = None
    _: KW_ONLY
    allow_pickle: bool = False
    download: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Search:
        """The lookup the daemon's configuration describes."""
        return cls(
            settings.models_dir,
            settings.state_dir,
            allow_pickle=settings.allow_pickle,
            download=settings.download_models,
        )


def find(
    kind: str,
    ref: str,
    search: Search,
    *,
    dirs: Sequence[Path] | None = None,
    files: Sequence[Path] | None = None,
    build: bool = True,
) -> Path:
    """The file or folder `ref` names as a model of `kind` (a key of :data:`KINDS`), or the
    hub id's folder in the local cache (``build=False``: the id itself, its shape checked).

    Recursive kinds search `dirs` when given (``lora_dirs`` in the config), else their A1111
    folders; `files` is those folders already walked (:func:`walk_weight_files`), so a job
    naming several LoRAs walks them once. Raises ModelNotFound, saying where it looked, or
    PickleRefused.
    """
    row = KINDS[kind]
    models_dir = search.models_dir
    ref = ref.strip()
    if row.recursive:
        searched = list(dirs) if dirs is not None else kind_folders(kind, models_dir)
        if files is None:
            files = list(walk_weight_files(searched, row.suffixes))
        found = _by_stem(ref, files)
        tried = [ref + suffix for suffix in row.suffixes]
    else:
        tried_paths = candidates(ref, models_dir, kind)
        found = next((path for path in tried_paths if row.accepts(path)), None)
        searched = [path.parent for path in tried_paths]
        tried = [path.name for path in tried_paths]
    if found is not None:
        check_pickle(kind, ref, found, allowed=search.allow_pickle)
        return found
    if row.hub is not None and looks_like_repo_id(ref):
        return locate(ref, row.hub, what=row.name, download=search.download) if build else Path(ref)
    home = home_of(searched if row.recursive else kind_folders(kind, models_dir), models_dir)
    raise not_found(kind, ref, tried, searched, models_dir=models_dir, home=home)


def candidates(ref: str, models_dir: Path | None, kind: str) -> list[Path]:
    """Where a reference to a model of `kind` may be, in order: as given (absolute, or
    relative to the working directory), then in each of the kind's folders under
    `models_dir`. A name without one of the kind's suffixes is also tried with each."""
    given = Path(ref).expanduser()
    roots = [Path("/")] if given.is_absolute() else [Path.cwd()]
    if not given.is_absolute():
        roots += kind_folders(kind, models_dir)
    suffixes = KINDS[kind].suffixes
    found = []
    for root in roots:
        base = root / given
        found.append(base)
        if base.suffix.lower() not in suffixes:
            found += [base.with_name(base.name + suffix) for suffix in suffixes]
    return found


def looks_like_repo_id(ref: str) -> bool:
    """``org/name`` on the hub; never something that is plainly a file name or a path."""
    is_file_name = Path(ref).suffix.lower() in WEIGHT_SUFFIXES
    return is_hub_id(ref) and not is_file_name and not ref.startswith((".", "~"))


def walk_weight_files(
    dirs: Iterable[Path], suffixes: Sequence[str] = WEIGHT_SUFFIXES
) -> Iterator[Path]:
    """Every file with one of `suffixes` under `dirs`, recursively, in a stable order.

    Symlinked folders are followed (users link their A1111 folders), each real folder once.
    Hidden files (partial downloads, macOS ``._`` files) and empty files are skipped.
    """
    wanted = tuple(suffixes)
    seen: set[str] = set()
    for root in dirs:
        if not Path(root).is_dir():
            continue
        for folder, subdirs, names in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subdirs[:] = []
                continue
            seen.add(real)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith(".") or not name.lower().endswith(wanted):
                    continue
                path = Path(folder) / name
                try:
                    if path.stat().st_size > 0:
                        yield path
                except OSError:
                    continue  # a broken link, or removed meanwhile


def files_by_stem(kind: str, dirs: Sequence[Path]) -> dict[str, Path]:
    """Every file of a recursive `kind` under `dirs`, by stem, each stem's preferred file
    (``.safetensors`` before a pickle; pickles are included: the rule applies on use)."""
    by_stem: dict[str, Path] = {}
    for path in walk_weight_files(dirs, KINDS[kind].suffixes):
        known = by_stem.get(path.stem)
        if known is None or is_pickle(known) > is_pickle(path):
            by_stem[path.stem] = path
    return by_stem


def _by_stem(name: str, files: Sequence[Path]) -> Path | None:
    """The file named `name`: exact-case stems if any, else any case; a ``.safetensors``
    file before a pickle, else the first in walk order."""
    found = [p for p in files if p.stem == name]
    if not found:
        folded = name.casefold()
        found = [p for p in files if p.stem.casefold() == folded]
    return min(found, key=is_pickle, default=None)  # min keeps the first of equals
