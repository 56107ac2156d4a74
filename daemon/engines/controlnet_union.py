"""What a ControlNet Union net is given beside its control image: the kind of image it is.

diffusers' ``ControlNetUnionModel`` takes its images as a list, with, per image, the index
of its control type (``control_type_idx``) and a one-hot row of all the types it is given
(``control_type``, one row per UNet row), as its union pipelines build them. One unit is one
image of one type; several units on one union net are several units, summed as any units
are (the extension's way, not diffusers' multi-image call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.controlnet.union import UnionControlType, union_control_type
from daemon.controlnet.units import ControlNetUnit
from daemon.errors import ConfigError


@dataclass(frozen=True)
class UnionInput:
    """A unit's control type, for a union net of `types` control types."""

    index: int
    types: int

    def call(self, cond: Any) -> dict[str, Any]:
        """The net's keyword arguments for control image batch `cond` (rows, 3, h, w)."""
        import torch

        one_hot = torch.zeros(cond.shape[0], self.types, dtype=cond.dtype, device=cond.device)
        one_hot[:, self.index] = 1
        return {
            "controlnet_cond": [cond],
            "control_type": one_hot,
            "control_type_idx": [self.index],
        }


def union_input(unit: ControlNetUnit, types: int | None) -> UnionInput | None:
    """The control type of `unit` for its net (None: a plain ControlNet, `types` None).
    A union net with no type for the unit, or one it was not trained with, is a
    configuration error that says how to set one."""
    if types is None:
        return None
    kind = union_control_type(unit.union_control_type, unit.module)
    if kind is UnionControlType.UNKNOWN:
        raise ConfigError(
            f"ControlNet {unit.model} is a ControlNet Union: set the unit's "
            f"union_control_type (one of {_names(types)}); module {unit.module!r} does not "
            "say which kind of control image it makes"
        )
    if kind.position >= types:
        raise ConfigError(
            f"ControlNet {unit.model} knows {types} control types ({_names(types)}), not "
            f"{kind.value!r}: use ControlNet Union ProMax for it, or another type"
        )
    return UnionInput(kind.position, types)


def _names(types: int) -> str:
    return ", ".join(repr(kind.value) for kind in list(UnionControlType)[:types])
