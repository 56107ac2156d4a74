"""Safe, bounded YAML reading for profiles, the config and per-image settings.

``yaml.safe_load`` already refuses Python objects, but PyYAML keeps aliases as shared
references: a "billion laughs" file stays small until something walks or writes it out.
Aliases are never needed in a settings file, so they are refused outright, and the file size
is capped before parsing. Nesting is capped too: PyYAML composes nodes recursively, so a few
kilobytes of ``[[[[…`` would reach Python's recursion limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from daemon.paths import shown

MAX_SETTINGS_BYTES = 256 * 1024  # a profile is a few hundred bytes; this is generous
MAX_NESTING = 32  # levels of lists and mappings; a settings file needs three or four


class _NestedTooDeep(yaml.YAMLError):
    def __init__(self, line: int) -> None:
        super().__init__(f"nested more than {MAX_NESTING} levels deep")
        self.line = line


class _NoAliasLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in settings files",
                event.start_mark,
            )
        if self._depth >= MAX_NESTING:
            raise _NestedTooDeep(event.start_mark.line + 1)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class YamlProblem(ValueError):
    """A settings file is unreadable, too large, not YAML or not a mapping."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line  # from 1; 0 when the problem is the whole file

    def at(self, path: Path | str) -> str:
        """``path:line: problem``, the way the other configuration problems are said."""
        return f"{shown(path)}:{self.line}: {self}" if self.line else f"{shown(path)}: {self}"


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
    except _NestedTooDeep as exc:
        raise YamlProblem(
            f"it is nested more than {MAX_NESTING} levels deep, which no settings file needs",
            exc.line,
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise YamlProblem(f"it is not valid YAML: {_one_line(exc)}", line) from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise YamlProblem(f"it must be a mapping of key: value lines, not a {type(value).__name__}")
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise YamlProblem(f"keys must be names, not {bad_keys[0]!r}")
    return value


def key_lines(path: Path) -> dict[str, int]:
    """The line (from 1) of each top-level key of a settings file, for messages that point at
    it; empty when the file cannot be read (its problem is reported on its own)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SETTINGS_BYTES + 1)
        node = yaml.compose(data, Loader=_NoAliasLoader)
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(key.value): key.start_mark.line + 1
        for key, _ in node.value
        if isinstance(key, yaml.ScalarNode)
    }


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
