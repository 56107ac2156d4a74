"""Safe, bounded YAML reading for profiles, the config and per-image settings.

``yaml.safe_load`` already refuses Python objects, but PyYAML keeps aliases as shared
references: a "billion laughs" file stays small until something walks or writes it out.
Aliases are never needed in a settings file, so they are refused outright, and the file size
is capped before parsing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_SETTINGS_BYTES = 256 * 1024  # a profile is a few hundred bytes; this is generous


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in settings files",
                event.start_mark,
            )
        return super().compose_node(parent, index)


class YamlProblem(ValueError):
    """A settings file is unreadable, too large, not YAML or not a mapping."""


def read_mapping(path: Path, *, max_bytes: int = MAX_SETTINGS_BYTES) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise YamlProblem(f"cannot read it ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise YamlProblem(
            f"it is larger than {max_bytes // 1024} KiB, which no settings file needs"
        )
    return parse_mapping(data)


def parse_mapping(data: bytes | str) -> dict[str, Any]:
    try:
        value = yaml.load(data, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        raise YamlProblem(f"it is not valid YAML: {_one_line(exc)}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise YamlProblem(f"it must be a mapping of key: value lines, not a {type(value).__name__}")
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise YamlProblem(f"keys must be names, not {bad_keys[0]!r}")
    return value


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
