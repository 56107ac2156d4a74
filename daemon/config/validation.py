"""Turn pydantic's validation errors into lines a user can act on.

Every line names the file, the key, what is wrong and the value that was given, so that
``img2imgd check`` can print all problems of all files at once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


def describe(error: ValidationError, source: Path | str) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        key = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}' (check the spelling; see the README)")
            continue
        given = item.get("input")
        suffix = "" if item["type"] == "missing" or isinstance(given, dict) else f" (got {given!r})"
        where = f"{key}: " if key else ""
        lines.append(f"{source}: {where}{message}{suffix}")
    return lines
