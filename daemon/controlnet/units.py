"""A ControlNet unit as a profile key, with the extension's API names, enums and defaults.

``controlnet:`` is a list of units (several units combine); each unit takes the fields of
the extension's ``ControlNetUnit`` (``internal_controlnet/args.py``) that img2imgd uses. As
in the extension, an enabled unit's ``processor_res`` / ``threshold_a`` / ``threshold_b``
outside its preprocessor's slider take the slider's default, so the values a profile shows
(and the infotext writes) are the ones used. Unlike the extension, an unknown key is an
error, as everywhere in a profile.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.controlnet.modules import module_named
from daemon.controlnet.union import UnionControlType, parse_union_control_type

_E = TypeVar("_E", bound=Enum)


def _words(value: str) -> str:
    return " ".join(value.strip().lower().replace("_", " ").split())


class ControlMode(str, Enum):
    """How a unit weighs against the prompt (the extension's labels are the values)."""

    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"  # soft scales on every row
    CONTROL = "ControlNet is more important"  # soft scales, conditional rows only


class ControlResize(str, Enum):
    """How a control image of another size is fitted (the extension's ``ResizeMode``)."""

    RESIZE = "Just Resize"  # stretched
    INNER_FIT = "Crop and Resize"  # scaled to cover, the middle kept
    OUTER_FIT = "Resize and Fill"  # scaled to fit, the rest filled


def parse_control_mode(value: Any) -> ControlMode:
    """A label (any case), or the API's integer 0..2."""
    return _parse_enum(ControlMode, value, {})


def parse_control_resize(value: Any) -> ControlResize:
    """A label, one of the extension's old labels, or the API's integer 0..2 (3, A1111's
    latent upscale, is Just Resize)."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 3:
        return ControlResize.RESIZE
    return _parse_enum(ControlResize, value, _RESIZE_ALIASES)


_RESIZE_ALIASES = {
    "inner fit (scale to fit)": ControlResize.INNER_FIT,
    "scale to fit (inner fit)": ControlResize.INNER_FIT,
    "outer fit (shrink to fit)": ControlResize.OUTER_FIT,
    "envelope (outer fit)": ControlResize.OUTER_FIT,
}


def _parse_enum(kind: type[_E], value: Any, aliases: dict[str, _E]) -> _E:
    if isinstance(value, kind):
        return value
    members = list(kind)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(members):
        return members[value]
    if isinstance(value, str):
        text = _words(value)
        if text.isdigit() and int(text) < len(members):
            return members[int(text)]
        for member in members:
            if text == _words(str(member.value)):
                return member
        if text in aliases:
            return aliases[text]
    valid = ", ".join(f"{i} or {m.value!r}" for i, m in enumerate(members))
    raise ValueError(f"unknown value {value!r}; valid values are {valid}")


NO_MODEL = "None"
"""The extension's ``model`` default: no model chosen."""


class ControlNetUnit(BaseModel):
    """One unit. A disabled unit is kept (so a base profile can hold one that a child
    enables) but does nothing and is not written to the infotext."""

    # Defaults validated too: the sliders' -1 becomes the preprocessor's default.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    enabled: bool = False
    module: str = "none"  # the preprocessor: its name or its label
    model: str = NO_MODEL  # a ControlNet: builtin:tiny-controlnet, or a diffusers folder
    # (none for reference_only, which needs no ControlNet)
    weight: float = Field(1.0, ge=0.0, le=2.0)
    resize_mode: Annotated[ControlResize, BeforeValidator(parse_control_resize)] = (
        ControlResize.INNER_FIT
    )
    processor_res: int | float = -1  # float only where the slider is hidden (0.5)
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: Annotated[ControlMode, BeforeValidator(parse_control_mode)] = ControlMode.BALANCED
    # "Only masked" inpainting crops the control image to the painted region (not reference*).
    inpaint_crop_input_image: bool = True
    # img2imgd's own: the unit paints only with its own control image (<stem>.control.png,
    # control/<frame>), so an input waits up to pairing_window for it and fails without one.
    own_image: bool = False
    # The extension's "[Batch Loopback]": in a clip folder or a video, the unit's image is the
    # previous frame's result (TemporalNet's way); on the clip's first frame it sits out.
    loopback: bool = False
    # A ControlNet Union's kind of control image; Unknown: the one the module says
    # (daemon.controlnet.union). Not in the infotext, as in the extension.
    union_control_type: Annotated[UnionControlType, BeforeValidator(parse_union_control_type)] = (
        UnionControlType.UNKNOWN
    )

    @field_validator("module")
    @classmethod
    def _known_module(cls, value: str) -> str:
        module_named(value)  # raises, listing the known names
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ControlNetUnit:
        start, end = self.guidance_start, self.guidance_end
        if start > end:
            raise ValueError(f"guidance_start ({start}) is after guidance_end ({end})")
        no_model = self.model.strip() in ("", NO_MODEL)
        if self.enabled and no_model and self.needs_model:
            raise ValueError("an enabled unit needs a `model` (e.g. builtin:tiny-controlnet)")
        if not (no_model or self.needs_model):
            raise ValueError(f"{self.module} uses no ControlNet: remove the unit's `model`")
        return self

    @property
    def needs_model(self) -> bool:
        """Whether the unit acts through a ControlNet (``reference_only`` does not)."""
        return module_named(self.module).uses_controlnet

    @field_validator("processor_res", "threshold_a", "threshold_b")
    @classmethod
    def _slider_bounded(cls, value: float, info: ValidationInfo) -> int | float:
        """The extension's bounds check, for an enabled unit: a value outside its
        preprocessor's slider (``-1`` by default) becomes the slider's default. The
        resolution stays an integer where its slider shows."""
        if not info.data.get("enabled") or "module" not in info.data:
            return value
        module = module_named(info.data["module"])
        if info.field_name == "processor_res":
            res = module.resolution.bounded(value)
            return int(res) if float(res).is_integer() and res >= 1 else res
        slider = module.slider_1 if info.field_name == "threshold_a" else module.slider_2
        return float(slider.bounded(value))


class ControlNetKeys(BaseModel):
    """The ``controlnet:`` units of a painting task, and whether their control images are
    saved beside the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controlnet: tuple[ControlNetUnit, ...] = ()
    save_control: bool = False  # the preprocessed control image beside the result

    @property
    def enabled_units(self) -> tuple[ControlNetUnit, ...]:
        return tuple(unit for unit in self.controlnet if unit.enabled)

    @property
    def loopback_units(self) -> tuple[int, ...]:
        """The enabled units (positions in ``controlnet:``) that take the previous frame."""
        return tuple(n for n, unit in enumerate(self.controlnet) if unit.enabled and unit.loopback)

    @property
    def awaited_controls(self) -> tuple[int, ...]:
        """The units (positions in ``controlnet:``) that an input waits for the control
        image of: the enabled ones with ``own_image``."""
        return tuple(n for n, unit in enumerate(self.controlnet) if unit.enabled and unit.own_image)
