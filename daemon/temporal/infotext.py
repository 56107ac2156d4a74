"""The temporal settings in a frame's infotext, written and read back (``use_png_info``).

A frame painted with ``temporal:`` carries, after A1111's own entries::

    Temporal: key_frame_attention+flow_init, Temporal blend: 0.5,
    Key frame attention: blocks up interval 0 strength 1, Temporal loopback: 0

``Temporal loopback`` numbers the ControlNet units as their ``ControlNet N`` entries do (the
enabled units, from 0). Every value is free of ``,`` and ``:``, so A1111's PNG Info reads each
entry whole, as it does the extension's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from daemon.controlnet.units import ControlNetUnit
from daemon.temporal.keys import KeyFrameAttention, TemporalKeys


def temporal_params(settings: TemporalKeys, units: Sequence[ControlNetUnit]) -> dict[str, object]:
    """The infotext entries of a frame painted with `settings` and the enabled `units`."""
    params: dict[str, object] = {}
    if settings.temporal:
        params["Temporal"] = "+".join(settings.temporal)
    if settings.uses("flow_init"):
        params["Temporal blend"] = settings.temporal_blend
    if settings.uses("key_frame_attention"):
        params["Key frame attention"] = settings.key_frame_attention.text()
    loopback = [n for n, unit in enumerate(units) if unit.loopback]
    if loopback:
        params["Temporal loopback"] = "+".join(str(n) for n in loopback)
    return params


def temporal_from_infotext(
    params: Mapping[str, str], units: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """The profile keys an infotext's temporal entries set (`units`, the ``ControlNet N``
    units read from it, get ``loopback`` where it says), and notes for what is unreadable."""
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    readers = {
        "Temporal": ("temporal", lambda text: text),
        "Temporal blend": ("temporal_blend", float),
        "Key frame attention": ("key_frame_attention", _attention),
    }
    for entry, (key, read) in readers.items():
        if entry not in params:
            continue
        try:
            value = read(params[entry])
            TemporalKeys.model_validate({key: value})
        except (ValueError, ValidationError):
            notes.append(f"ignored {entry}: {params[entry]!r} is not a valid value")
            continue
        overrides[key] = value
    for text in params.get("Temporal loopback", "").split("+"):
        if text.strip().isdigit() and int(text) < len(units):
            units[int(text)]["loopback"] = True
        elif text.strip():
            notes.append(f"ignored Temporal loopback {text!r}: no ControlNet {text} entry")
    return overrides, notes


def _attention(text: str) -> dict[str, Any]:
    return KeyFrameAttention.from_text(text).model_dump()
