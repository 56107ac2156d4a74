"""A1111's batch "PNG info": generation settings taken from an input's own parameters.

With ``use_png_info: true`` a profile takes prompt, negative prompt, seed, CFG scale,
sampler (with its schedule type), steps and denoising strength from the infotext of the
input: the PNG's ``parameters`` chunk (EXIF UserComment for JPEG/WebP), or a ``<stem>.txt``
beside it (the sidecar of an earlier output, or any text in A1111's layout). A text with no
parameter line is a prompt alone, so caption files written by interrogation work as prompts.
Pure functions on text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.a1111.infotext import parse_infotext

# infotext key -> (profile key, converter)
_FIELDS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Denoising strength": ("denoising_strength", float),
}


@dataclass(frozen=True)
class PngInfoSettings:
    overrides: dict[str, Any]
    model_hash: str | None = None  # for the "made with another model" note
    notes: tuple[str, ...] = field(default=())


def settings_from_infotext(text: str) -> PngInfoSettings:
    """The profile keys an infotext sets; values that do not convert are left out and said."""
    info = parse_infotext(text)
    overrides: dict[str, Any] = {"prompt": info.prompt}
    if not info.params:
        return PngInfoSettings(overrides)
    overrides["negative_prompt"] = info.negative_prompt
    notes = []
    for key, (name, convert) in _FIELDS.items():
        if key not in info.params:
            continue
        try:
            overrides[name] = convert(info.params[key])
        except ValueError:
            notes.append(f"ignored {key}: {info.params[key]!r} is not a valid value")
    if "Sampler" in info.params and "Schedule type" not in info.params:
        overrides["scheduler"] = "Automatic"  # an old label may carry its schedule itself
    return PngInfoSettings(overrides, info.params.get("Model hash"), tuple(notes))


def model_note(found: str | None, expected: str | None, name: str) -> str | None:
    """Say when the parameters were made with another model than the profile's."""
    if found and expected and found.lower() != expected.lower():
        return (
            f"the input's parameters were made with model hash {found}, but {name} has "
            f"{expected}: the result will differ from the original"
        )
    return None
