"""ControlNet units that come with an input: its per-image YAML, or its PNG info.

Such units replace the profile's (as pasting an infotext replaces the extension's units).
The inbox is writable by anyone who can drop a file, and a per-image file may tune the
generation but never choose which files are loaded: so a unit from an input names its
ControlNet as the extension's infotext does, by name (a built-in, or a name looked up in
the model folders), never by a path, unless the profile's own units name that same model.
A ControlNet's ``.bin`` weights are pickles: a path from the inbox could run code.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

from daemon.a1111.infotext import parse_infotext
from daemon.controlnet.infotext import numbered_entries, parse
from daemon.controlnet.units import ControlNetUnit

_BUILTIN = "builtin:"
_LABEL_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,}\]$")


def is_model_name(ref: str) -> bool:
    """A built-in or a bare name (no folder, no drive, not hidden, not ``~``)."""
    name = ref.strip()
    if name.startswith(_BUILTIN):
        name = name[len(_BUILTIN) :]
    return bool(name) and not any(c in name for c in "/\\:") and not name.startswith((".", "~"))


def unit_from_input_problem(
    units: Iterable[ControlNetUnit], profile_models: Collection[str]
) -> str | None:
    """Why the units an input brings may not be used (a model named by a path the profile
    does not use itself), or None."""
    for index, unit in enumerate(units):
        if not unit.enabled or unit.model.strip() in profile_models:
            continue
        if not is_model_name(unit.model):
            return (
                f"controlnet.{index}.model: '{unit.model}' is a path; a unit that comes with an "
                "input names its ControlNet by name (builtin:…, or a name in the model folders)"
                " or uses one of the profile's own"
            )
    return None


def model_ref(label: str, builtins: Collection[str]) -> str:
    """The model an infotext's ``Model: name [hash]`` names: the name without its hash; a
    built-in's name (written without ``builtin:``, whose ``:`` the entry cannot hold) gets
    its prefix back."""
    name = _LABEL_HASH.sub("", label.strip())
    return f"{_BUILTIN}{name}" if name in builtins else name


def units_from_infotext(
    text: str, builtins: Collection[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The units an input's infotext names (its ``ControlNet N`` entries, in N's order), as
    ``controlnet:`` keys, and notes for the entries that cannot be read (left out, as the
    extension leaves them)."""
    units: list[dict[str, Any]] = []
    notes: list[str] = []
    for key, entry in numbered_entries(parse_infotext(text).params):
        try:
            fields = parse(entry)
        except ValueError as exc:
            notes.append(f"ignored {key}: {exc}")
            continue
        if str(fields.get("module", "")).startswith("ip-adapter"):
            # The extension's IP-Adapter unit: img2imgd's `ip_adapter:` is a profile key.
            notes.append(f"ignored {key}: an IP-Adapter is set by the profile's ip_adapter:")
            continue
        if "model" in fields:  # (a name of digits parses as a number)
            fields["model"] = model_ref(str(fields["model"]), builtins)
        units.append(fields)
    return units, notes
