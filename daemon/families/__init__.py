"""Model families: one module each (sd, sdxl, sd3, flux, flux2, qwen_image), one table here.

Who asks: the model cache (which pipeline class runs a task), the engine (prompt encoding,
guidance, size rule, schedule), ``check`` (what a family cannot follow), the infotext."""

from __future__ import annotations

from daemon.families import flux, flux2, qwen_image, sd, sd3, sdxl
from daemon.families.family import Family, Guidance

FAMILIES: tuple[Family, ...] = (
    sd.FAMILY, sdxl.FAMILY, sd3.FAMILY, flux.FAMILY, flux2.KLEIN, flux2.DEV, qwen_image.FAMILY,
)  # fmt: skip

_BY_CLASS = {name: family for family in FAMILIES for name in family.classes}


def family_of_class(class_name: str) -> Family | None:
    """The family a diffusers pipeline class belongs to (None: not one the daemon paints with)."""
    return _BY_CLASS.get(class_name)


def family_of(pipe: object) -> Family:
    """The family of a loaded pipeline; an unknown class is painted as SD is (AutoPipeline
    found it an img2img class, and the SD path is the one that asks least of a pipeline)."""
    return family_of_class(type(pipe).__name__) or sd.FAMILY


__all__ = ["FAMILIES", "Family", "Guidance", "family_of", "family_of_class"]
