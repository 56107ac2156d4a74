"""A1111's batch "PNG info": generation settings taken from an input's own parameters.

With ``use_png_info: true`` a profile takes prompt, negative prompt, seed, CFG scale,
sampler (with its schedule type), steps, denoising strength, and for flow models Forge's
"Distilled CFG Scale" and the schedule shift, from the infotext of the
input: the PNG's ``parameters`` chunk (EXIF UserComment for JPEG/WebP), or a ``<stem>.txt``
beside it (the sidecar of an earlier output, or any text in A1111's layout). A text with no
parameter line is a prompt alone, so caption files written by interrogation work as prompts.
Forge's and SD.Next's own keys for Flux, SD 3.5 and Qwen-Image read as they mean there.
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
    "Distilled CFG Scale": ("distilled_cfg_scale", float),  # Forge
    "Sampler shift": ("shift", float),  # SD.Next
    "Shift": ("shift", float),  # ours; after SD.Next's, so it wins when both are there
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
    params, true_cfg_note = _sdnext_true_cfg(_civitai_sampler(info.params))
    notes = [true_cfg_note] if true_cfg_note else []
    for key, (name, convert) in _FIELDS.items():
        if key not in params:
            continue
        try:
            overrides[name] = convert(params[key])
        except ValueError:
            notes.append(f"ignored {key}: {params[key]!r} is not a valid value")
    if "Sampler" in params and "Schedule type" not in params:
        overrides["scheduler"] = "Automatic"  # an old label may carry its schedule itself
    return PngInfoSettings(overrides, params.get("Model hash"), tuple(notes))


def _civitai_sampler(params: dict[str, str]) -> dict[str, str]:
    """civitai writes "Sampler: Undefined" for Flux; Forge reads it as Euler with the Simple
    schedule (modules/infotext_utils.py). No sampler is called Undefined, so this is safe for
    every line. (Forge also moves civitai's CFG scale to Distilled CFG Scale; that is left
    alone here: the same line from a model with real CFG would be misread.)"""
    if params.get("Sampler", "").strip().casefold() != "undefined":
        return params
    return {**params, "Sampler": "Euler", "Schedule type": params.get("Schedule type", "Simple")}


# SD.Next's "CFG true" is diffusers' true_cfg_scale only in these pipelines (elsewhere, in
# older versions, the PAG scale); its "CFG scale" is then guidance_scale, which Flux-dev
# follows as distilled guidance.
_TRUE_CFG_PIPELINES = ("Flux", "QwenImage")


def _sdnext_true_cfg(params: dict[str, str]) -> tuple[dict[str, str], str | None]:
    true_cfg = params.get("CFG true")
    if true_cfg is None:
        return params, None
    pipeline = params.get("Pipeline", "")
    if not pipeline.startswith(_TRUE_CFG_PIPELINES):
        return params, (
            f"ignored CFG true: SD.Next's true CFG is read for Flux and Qwen-Image pipelines, "
            f"this line names {pipeline or 'none'}"
        )
    fixed = {**params, "CFG scale": true_cfg}
    if pipeline.startswith("Flux") and "CFG scale" in params:
        fixed.setdefault("Distilled CFG Scale", params["CFG scale"])
    return fixed, None


def model_note(found: str | None, expected: str | None, name: str) -> str | None:
    """Say when the parameters were made with another model than the profile's."""
    if found and expected and found.lower() != expected.lower():
        return (
            f"the input's parameters were made with model hash {found}, but {name} has "
            f"{expected}: the result will differ from the original"
        )
    return None
