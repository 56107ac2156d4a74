"""ControlNet Union's control types: which kind of control image a union net is given.

A union net (xinsir's ControlNet Union / ProMax for SDXL) is one net for many kinds of
control image, told the kind by an index. The extension's ``ControlNetUnionControlType``
numbers them in this order (xinsir's): OpenPose 0, Depth 1, Soft Edge 2, Hard Edge 3,
Normal Map 4, Segmentation 5, Tile 6, Inpaint 7 (ProMax has all eight, the first Union the
first six). Its UI sets a unit's type from the control-type tab the user picked; a unit here
has no tab, so its ``union_control_type`` is taken from its preprocessor when not given, the
way the extension files its preprocessors under those tabs (``canny`` → Hard Edge,
``tile_resample`` / ``blur_gaussian`` → Tile, ``depth_*`` → Depth …). A preprocessor that
says no kind (``none``, ``invert``, ``threshold``) needs the type set on the unit.
"""

from __future__ import annotations

from enum import Enum


class UnionControlType(str, Enum):
    """The extension's values; the order is the index the net is given."""

    OPENPOSE = "OpenPose"
    DEPTH = "Depth"
    SOFT_EDGE = "Soft Edge"  # hed, pidinet, scribble, TEED
    HARD_EDGE = "Hard Edge"  # canny, lineart, anime lineart, mlsd
    NORMAL_MAP = "Normal Map"
    SEGMENTATION = "Segmentation"
    TILE = "Tile"  # tile, blur
    INPAINT = "Inpaint"
    UNKNOWN = "Unknown"  # not given: from the preprocessor

    @property
    def position(self) -> int:
        """The net's index for this type (never asked of UNKNOWN)."""
        return list(UnionControlType).index(self)


_BY_MODULE: tuple[tuple[tuple[str, ...], UnionControlType], ...] = (
    (("openpose", "dw_openpose", "animal_openpose"), UnionControlType.OPENPOSE),
    (("depth",), UnionControlType.DEPTH),
    (("softedge", "scribble"), UnionControlType.SOFT_EDGE),
    (("canny", "lineart", "mlsd"), UnionControlType.HARD_EDGE),
    (("normal",), UnionControlType.NORMAL_MAP),
    (("seg",), UnionControlType.SEGMENTATION),
    (("tile", "blur"), UnionControlType.TILE),
    (("inpaint",), UnionControlType.INPAINT),
)
"""Preprocessor names by their first word, as the extension's tabs group them."""


def union_control_type(given: UnionControlType, module: str) -> UnionControlType:
    """The unit's type: `given`, else the one its preprocessor `module` says (UNKNOWN if
    none)."""
    if given is not UnionControlType.UNKNOWN:
        return given
    name = module.strip().lower()
    for prefixes, kind in _BY_MODULE:
        if name.startswith(prefixes):
            return kind
    return UnionControlType.UNKNOWN


def parse_union_control_type(value: object) -> UnionControlType:
    """The extension's value (any case, ``_`` for a space) or its index 0..7."""
    if isinstance(value, UnionControlType):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        members = list(UnionControlType)[:-1]
        if 0 <= value < len(members):
            return members[value]
    if isinstance(value, str):
        words = " ".join(value.replace("_", " ").split()).casefold()
        for member in UnionControlType:
            if member.value.casefold() == words:
                return member
    valid = ", ".join(repr(m.value) for m in UnionControlType)
    raise ValueError(f"unknown union_control_type {value!r}; valid values are {valid}")
