"""Label lists for the CLIP interrogator: plain text files, one term per line.

The project ships its own lists in ``daemon/data/labels/`` (mediums, artists, movements,
flavors, and negative terms for the negative mode). A file's name is its category; a
``.topN`` before ``.txt`` (``flavors.top3.txt``) says how many of its best terms the classic
mode keeps, as in A1111. A user's ``labels_dir`` replaces a list by using the same category
name and adds a category with a new one. Blank lines and lines starting with ``#`` are
skipped; repeated terms are kept once.

Pure file reading: the embeddings of the terms are the CLIP engine's business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import ConfigError

DEFAULT_LABELS_DIR = Path(__file__).parent.parent / "data" / "labels"
CLASSIC_ORDER = ("mediums", "artists", "movements", "flavors")
"""A1111's output order: ``caption, medium, artist, movement, flavor``; other lists follow."""
NEGATIVE = "negative"
"""Only the negative mode reads this list."""
MAX_TERM_CHARS = 200
MAX_LIST_BYTES = 16 * 1024 * 1024
_FILE_NAME = re.compile(r"^(?P<name>[^.]+)(?:\.top(?P<top>\d+))?\.txt$", re.IGNORECASE)


@dataclass(frozen=True)
class LabelList:
    """One category of terms that CLIP ranks against an image (mediums, artists, …).

    `top_n`: how many of its best terms the classic mode keeps (A1111's ``.topN`` file suffix).
    """

    name: str
    terms: tuple[str, ...]
    top_n: int = 1


def read_label_file(path: Path, *, limit: int = 0) -> LabelList:
    """One list; `limit` keeps its first N terms (0: all), as A1111's "dict limit"."""
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise ConfigError(
            f"{path}: a label list must be named <category>.txt or <category>.topN.txt"
        )
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_LIST_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the label list: {exc.strerror or exc}") from exc
    terms = tuple(_terms(text.splitlines()))
    if not terms:
        raise ConfigError(f"{path}: the label list has no terms")
    if limit > 0:
        terms = terms[:limit]
    top_n = max(1, int(match["top"])) if match["top"] else 1
    return LabelList(match["name"].lower(), terms, top_n)


def _terms(lines: Iterable[str]) -> Iterable[str]:
    seen: set[str] = set()
    for line in lines:
        term = " ".join(line.split())[:MAX_TERM_CHARS]  # one line, single spaces
        if term and not term.startswith("#") and term not in seen:
            seen.add(term)
            yield term


def load_label_lists(
    labels_dir: Path | None = None,
    *,
    dict_limit: int = 0,
    skip_categories: Sequence[str] = (),
    defaults_dir: Path = DEFAULT_LABELS_DIR,
) -> tuple[LabelList, ...]:
    """The lists to rank, in output order: ours, replaced or extended by `labels_dir`'s.

    ``skip_categories`` drops lists by name (an unknown name is a ConfigError listing the
    known ones, since a typo would silently keep the list).
    """
    files = {_category(p): p for p in _list_files(defaults_dir)}
    if labels_dir is not None:
        if not labels_dir.is_dir():
            raise ConfigError(f"labels_dir {labels_dir} is not a folder")
        files.update({_category(p): p for p in _list_files(labels_dir)})
    skip = {name.strip().lower() for name in skip_categories}
    unknown = skip - set(files)
    if unknown:
        raise ConfigError(
            f"skip_categories: no list named {', '.join(sorted(unknown))}; "
            f"the lists are {', '.join(sorted(files))}"
        )
    order = sorted(files, key=lambda n: (n == NEGATIVE, _rank(n), n))
    return tuple(read_label_file(files[n], limit=dict_limit) for n in order if n not in skip)


def _list_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    except OSError as exc:
        raise ConfigError(f"cannot read the label folder {folder}: {exc.strerror}") from exc


def _category(path: Path) -> str:
    return path.name.split(".", 1)[0].lower()


def _rank(name: str) -> int:
    return CLASSIC_ORDER.index(name) if name in CLASSIC_ORDER else len(CLASSIC_ORDER)
