"""Turn pydantic's validation errors into lines a user can act on.

Every line names the file and, when known, the line (``profiles/x.yaml:3:``, as compilers
do, so that editors jump there), the key, what is wrong and the value that was given, so that
``img2imgd check`` can print all problems of all files at once. A misspelt key gets the
nearest valid one: "did you mean 'steps'?".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import ValidationError

from daemon.paths import shown

Where = Mapping[str, tuple[Path | str, int]]
"""Each top-level key → the file that sets it and its line there."""


def describe(
    error: ValidationError,
    source: Path | str,
    *,
    known: Iterable[str] = (),
    where: Where | None = None,
) -> list[str]:
    """One line per problem. `known`: the valid keys, for suggestions; `where`: where each
    key was written (a profile's key may come from a profile it extends)."""
    known = tuple(known)
    lines = []
    for item in error.errors(include_url=False):
        parts = [str(part) for part in item["loc"] if not str(part).startswith("function-")]
        key = ".".join(parts)
        at = located(parts[0] if parts else None, source, where)
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            lines.append(f"{at}: unknown key '{key}'{_suggestion(key, known)}")
            continue
        given = item.get("input")
        suffix = "" if item["type"] == "missing" or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{at}: {key + ': ' if key else ''}{message}{suffix}")
    return lines


def located(key: str | None, source: Path | str, where: Where | None) -> str:
    """``file:line`` where `key` was written, or the file alone when the line is not known."""
    file, line = (where or {}).get(key, (source, 0)) if key is not None else (source, 0)
    return f"{shown(file)}:{line}" if line else shown(file)


def not_used(key: str, task: str, source: Path | str, where: Where | None) -> str:
    """A key that another task uses but the profile's task does not."""
    return f"{located(key, source, where)}: `{key}` is not used by task `{task}`"


def _suggestion(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return " (check the spelling; the README lists every key)"
