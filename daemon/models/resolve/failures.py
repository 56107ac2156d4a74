"""What the resolver says when it cannot give a model: one error for "not found", one pickle
rule, worded the same for every kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon.errors import ConfigError
from daemon.models.checkpoints import is_pickle
from daemon.models.resolve.kinds import KINDS, folder_roles
from daemon.paths import shown

ALLOW_PICKLE_SETTING = "allow_pickle"
"""The configuration key named in the pickle refusal."""


class ModelNotFound(ConfigError):
    """A reference that names nothing on disk, for any kind of model, with where it was
    looked for: what a newcomer needs to put the file in the right place (or to set
    ``models_dir``).

    ``what`` is the kind's name and ``ref`` the reference as written; ``by_name`` says it is
    a name to look up (so models_dir matters), not a path; ``home`` is where a file of this
    kind belongs (None when no folder for it is configured)."""

    def __init__(
        self,
        message: str,
        *,
        what: str = "model",
        ref: str = "",
        by_name: bool = True,
        models_dir: Path | None = None,
        home: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.what = what
        self.ref = ref
        self.by_name = by_name
        self.models_dir = models_dir
        self.home = home

    def noted(self, note: str) -> ModelNotFound:
        """The same error with where the name came from: "LoRA 'x' (`note`) not found…"."""
        named = f"{self.what} '{self.ref}'"
        return ModelNotFound(
            str(self).replace(named, f"{named} ({note})", 1),
            what=self.what,
            ref=self.ref,
            by_name=self.by_name,
            models_dir=self.models_dir,
            home=self.home,
        )


class PickleRefused(ConfigError):
    """The file a reference names is a pickle, and the configuration does not allow them."""


def check_pickle(kind: str, ref: str, path: Path, *, allowed: bool) -> None:
    """The one pickle rule: a pickled file (``.ckpt`` ``.pt`` ``.pth`` ``.bin``) can run code
    when loaded, so it is refused unless the configuration sets ``allow_pickle: true``."""
    if allowed or not path.is_file() or not is_pickle(path):
        return
    raise PickleRefused(
        f"{KINDS[kind].name} '{ref}' is a pickled file ({shown(path)}): loading a pickle can "
        f"run arbitrary code. Convert it to .safetensors, or set `{ALLOW_PICKLE_SETTING}: "
        "true` in the daemon's configuration if you trust the file"
    )


def not_found(
    kind: str,
    ref: str,
    tried: Sequence[str],
    searched: Sequence[Path],
    *,
    models_dir: Path | None,
    home: Path | None,
) -> ModelNotFound:
    """ "<kind> '<ref>' not found: looked for <what it looks like> named <the names tried> in
    <each folder searched, said for what it is>", and what is missing among them."""
    row = KINDS[kind]
    by_name = row.recursive or not Path(ref).expanduser().is_absolute()
    message = f"{row.name} '{ref}' not found: looked for {row.expected} named {_tried(tried)}"
    if row.recursive:
        message += " (any case)"
    message += f" in {_searched(kind, searched, models_dir)}"
    return ModelNotFound(
        message,
        what=row.name,
        ref=ref,
        by_name=by_name,
        models_dir=models_dir,
        home=home if by_name else None,
    )


def _tried(names: Sequence[str]) -> str:
    """The names tried, once each: ``dream, dream.safetensors, .ckpt, .pt, .pth or .bin``."""
    unique = list(dict.fromkeys(names))
    if not unique:
        return "nothing"
    said = []
    for before, name in zip(["", *unique], unique, strict=False):
        same_stem = Path(before).suffix and Path(name).stem == Path(before).stem
        said.append(Path(name).suffix if same_stem else name)
    return said[0] if len(said) == 1 else ", ".join(said[:-1]) + " or " + said[-1]


def _searched(kind: str, searched: Sequence[Path], models_dir: Path | None) -> str:
    """The folders searched, each said for what it is (the working folder, models_dir, one
    of its A1111 sub-folders), then those that do not exist."""
    roles = folder_roles(kind, models_dir)
    places = []
    for folder in dict.fromkeys(searched):
        role = roles.get(folder)
        where = str(folder) if folder == Path.cwd() else shown(folder)
        places.append(f"{where} ({role})" if role else where)
    if not places:
        return "nowhere (no folder configured)"
    said = ", ".join(places)
    if KINDS[kind].recursive:
        said += ", with their sub-folders"
    absent = [shown(f) for f in dict.fromkeys(searched) if not f.is_dir()]
    if absent:
        said += f"; {_and(absent)} {'does' if len(absent) == 1 else 'do'} not exist"
    if models_dir is None and Path.cwd() in searched:
        said += "; no models_dir is set, so no models folder was searched"
    return said


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
