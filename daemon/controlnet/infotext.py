"""The extension's ``ControlNet N`` infotext entries: written per enabled unit, read back.

Writing follows ``ControlNetUnit.serialize()`` (``internal_controlnet/args.py``): the fields
in a fixed order as ``Key: value`` joined with ``", "``; enums as their label, other values as
Python's ``str`` (``1.0``, ``512``, ``False``). A value holding ``,`` or ``:`` cannot be read
back, so the extension writes nothing for that unit, and neither do we. ``N`` counts the
enabled units from 0. Reading is ``ControlNetUnit.parse``: split on ``,`` then ``": "``, each
value ``True``/``False``, else an int, else a float, else the text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import Any

from daemon.controlnet.units import ControlNetUnit

FIELDS = (
    "module",
    "model",
    "weight",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "guidance_start",
    "guidance_end",
    "pixel_perfect",
    "control_mode",
)
"""``ControlNetUnit.infotext_fields()``, in its order."""

_KEY = re.compile(r"ControlNet (\d+)")


def display_text(field: str) -> str:
    """``resize_mode`` → ``Resize Mode`` (the extension's ``field_to_displaytext``)."""
    return " ".join(word.capitalize() for word in field.split("_"))


def field_name(text: str) -> str:
    """``Resize Mode`` → ``resize_mode``."""
    return "_".join(text.strip().lower().split())


def _value_text(value: Any) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def serialize(unit: ControlNetUnit, model_label: str) -> str:
    """One unit's entry (without the quotes A1111 adds); ``""`` when a value holds ``,`` or
    ``:``. `model_label` is how the model is shown: ``name [hash]`` as the extension."""
    values = {field: getattr(unit, field) for field in FIELDS} | {"model": model_label}
    texts = {field: _value_text(value) for field, value in values.items()}
    if any("," in text or ":" in text for text in texts.values()):
        return ""
    return ", ".join(f"{display_text(field)}: {text}" for field, text in texts.items())


def infotext_entries(units: tuple[ControlNetUnit, ...], labels: tuple[str, ...]) -> dict[str, str]:
    """``{"ControlNet 0": "...", …}`` for the enabled units (each with its model's label);
    an entry that cannot be written is left out, as the extension leaves it."""
    enabled = [unit for unit in units if unit.enabled]
    entries = {
        f"ControlNet {index}": serialize(unit, label)
        for index, (unit, label) in enumerate(zip(enabled, labels, strict=True))
    }
    return {key: text for key, text in entries.items() if text}


def parse_value(text: str) -> bool | int | float | str:
    """The extension's ``parse_value``."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse(text: str) -> dict[str, Any]:
    """One entry's fields, enabled (a written unit is an enabled one). ValueError when an
    item is not ``Key: value`` (the extension's pre-1.1 format, among others)."""
    fields: dict[str, Any] = {"enabled": True}
    for item in text.split(","):
        key, separator, value = item.strip().partition(": ")
        if not separator or not key:
            raise ValueError(f"not a ControlNet entry ('Key: value, …'): {text!r}")
        fields[field_name(key)] = parse_value(value)
    return fields


def numbered_entries(params: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``ControlNet N`` entries of a parsed parameter line, ``(key, text)`` in N's order."""
    numbered = sorted(
        (int(found.group(1)), key, value)
        for key, value in params.items()
        if (found := _KEY.fullmatch(key.strip()))
    )
    return [(key, value) for _, key, value in numbered]


def units_from_params(params: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``ControlNet N`` entries of a parsed parameter line, in N's order, as unit keys."""
    return [parse(value) for _, value in numbered_entries(params)]
