"""ControlNet units as a per-call step: a UNet pre-hook that adds each unit's residuals.

The pipelines stay the plain img2img / inpaint ones (no ControlNet pipeline): the step runs
each active unit's net on the UNet's own input, rows as the UNet gets them (after the
prompts' step has laid out its unconditional and conditional rows, ``AND`` included), scales
the residuals by the unit's control mode (:mod:`daemon.controlnet.schedule`), adds the units
together and hands the sum to the UNet as ``down_block_additional_residuals`` and
``mid_block_additional_residual``. A call on which no unit is active (weight 0, outside its
guidance start and end) gets no residuals at all: it is exactly the call without ControlNet.

A unit with an image of its own (``<stem>.control.png``, ``control/<frame>``) has it
preprocessed and fitted to the painting by the unit's ``resize_mode``; a unit without uses
the input, fitted as the input is (the img2img resize mode), as the extension does.
With "only masked" inpainting both are cropped to the painting's region first, and the
inpaint preprocessors mark the mask in the input (:mod:`daemon.controlnet.masked`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from daemon.a1111.masks import Region, only_masked_region, prepare_mask
from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.controlnet.annotators import annotator_of
from daemon.controlnet.images import Pixels, fit_control, pixel_perfect_resolution
from daemon.controlnet.infotext import infotext_entries
from daemon.controlnet.masked import (
    crop_to_region,
    fit_hint,
    inpaint_hint,
    is_cropped,
    marks_mask,
    net_input,
    preview,
)
from daemon.controlnet.modules import module_named
from daemon.controlnet.preprocessors import preprocess
from daemon.controlnet.schedule import conditional_only, control_scales, is_active
from daemon.controlnet.units import NO_MODEL, ControlNetUnit, ControlResize
from daemon.engines.annotator_models import Annotators
from daemon.engines.call_steps import CallContext, removed_after
from daemon.engines.controlnet_models import ControlNets
from daemon.engines.controlnet_union import UnionInput, union_input
from daemon.errors import ConfigError, InputError

_INPUT_RESIZE = {
    ResizeMode.JUST_RESIZE: ControlResize.RESIZE,
    ResizeMode.CROP_AND_RESIZE: ControlResize.INNER_FIT,
    ResizeMode.RESIZE_AND_FILL: ControlResize.OUTER_FIT,
    ResizeMode.LATENT_UPSCALE: ControlResize.RESIZE,
}
"""The img2img resize mode as a control resize mode (the extension's
``resize_mode_from_value``: latent upscale is Just Resize)."""


@dataclass(frozen=True)
class ReadyUnit:
    """An enabled unit with its net and its control image, fitted to the painting."""

    unit: ControlNetUnit
    net: Any  # diffusers' ControlNetModel or ControlNetUnionModel; None for reference_only
    control: Pixels  # uint8 (height, width, 3); 4 channels for an inpaint hint (the mask)
    label: str  # the model as the infotext names it
    union: UnionInput | None = None  # a union net's control type

    @property
    def picture(self) -> Pixels:
        """What ``save_control`` shows: the map (an inpaint hint's mask half transparent)."""
        return preview(self.control)


def control_map(
    unit: ControlNetUnit,
    image: Image.Image,
    size: tuple[int, int],
    input_mode: ResizeMode,
    *,
    own: bool = False,
    annotators: Annotators | None = None,
    mask: Pixels | None = None,
    region: Region | None = None,
    input_size: tuple[int, int] | None = None,
) -> Pixels:
    """The unit's control image for a painting of `size` (width, height): preprocessed at
    the unit's resolution (pixel perfect: the one that maps it one to one), then fitted by
    the unit's resize mode when `image` is the unit's `own`, else as the input is fitted.
    A preprocessor with annotator weights runs on `annotators` (the warm ones).

    Inpainting: `mask` is the prepared mask (the input's size, 255 = repaint), which the
    inpaint preprocessors lay on the input; `region` the "only masked" crop, which every
    unit but ``reference*`` takes of its image fitted to `input_size` (the input's), unless
    its ``inpaint_crop_input_image`` is off."""
    raw = np.asarray(image.convert("RGB"))
    mode = unit.resize_mode if own else _INPUT_RESIZE[input_mode]
    module = module_named(unit.module).name
    if marks_mask(module):
        if mask is None:
            raise ValueError(f"preprocessor {module} needs the inpaint mask")
        raw = inpaint_hint(raw, mask)
    if region is not None and unit.inpaint_crop_input_image and is_cropped(module):
        raw = crop_to_region(raw, region, mode, input_size or image.size, size)
    if marks_mask(module):
        return fit_hint(raw, mode, size)
    resolution = unit.processor_res
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution((raw.shape[1], raw.shape[0]), size, mode)
    if annotator_of(module) is not None:
        if annotators is None:
            raise ValueError(f"preprocessor {module} needs the annotators' cache")
        detected = annotators.detect(
            module, raw, int(resolution), unit.threshold_a, unit.threshold_b
        )
    else:
        detected = preprocess(module, raw, resolution, unit.threshold_a, unit.threshold_b)
    return fit_control(detected, mode, size)


ARCHITECTURES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
"""Cross-attention widths of the real architectures, for messages."""


def architecture(width: int) -> str:
    return ARCHITECTURES.get(width, f"cross-attention width {width}")


def ready_units(
    settings: Profile,
    image: Image.Image,
    size: tuple[int, int],
    nets: ControlNets,
    *,
    unet_width: int,
    controls: Sequence[Image.Image | None] = (),
    annotators: Annotators | None = None,
    mask: Image.Image | None = None,
) -> list[ReadyUnit]:
    """The profile's enabled units, each with its net (loaded once; none for a unit that
    needs none) and control image: its own from `controls` (by position in ``controlnet:``),
    else the input `image`; with an inpainting's raw `mask`, cropped as the painting is and
    marked by inpaint units.
    A net made for another architecture than the model's (`unet_width`: its UNet's
    cross-attention width) is a configuration error that names both."""
    prepared, region = _masked_area(settings, mask, size)
    ready = []
    for position, unit in enumerate(settings.controlnet):
        if not unit.enabled:
            continue
        own = controls[position] if position < len(controls) else None
        if marks_mask(unit.module):
            _check_inpaint_unit(position, unit, has_own=own is not None, mask=mask)
        control = control_map(
            unit, image if own is None else own, size, settings.resize_mode,
            own=own is not None, annotators=annotators, mask=prepared, region=region,
            input_size=image.size,
        )  # fmt: skip
        if not unit.needs_model:  # reference_only: no net (daemon.engines.reference_step)
            ready.append(ReadyUnit(unit, None, control, NO_MODEL))
            continue
        width = nets.width(unit.model)  # before loading: a wrong net's weights stay unread
        if width != unet_width:
            raise ConfigError(
                f"ControlNet {unit.model} is for {architecture(width)}, but model "
                f"{settings.model} is {architecture(unet_width)}: use a ControlNet made for it"
            )
        loaded = nets.get(unit.model)
        union = union_input(unit, loaded.control_types)
        ready.append(ReadyUnit(unit, loaded.net, control, loaded.label, union))
    return ready


def _masked_area(
    settings: Profile, mask: Image.Image | None, size: tuple[int, int]
) -> tuple[Pixels | None, Region | None]:
    """The mask as the painting uses it (inverted, blurred), and the "only masked" region
    (None: the whole picture), by the rule the engine crops the painting with."""
    if mask is None:
        return None, None
    prepared = prepare_mask(mask, invert=settings.inpainting_mask_invert, blur=settings.mask_blur)
    region = None
    if settings.inpaint_full_res:
        region = only_masked_region(prepared, settings.inpaint_full_res_padding, *size)
    return np.asarray(prepared), region


def _check_inpaint_unit(
    position: int,
    unit: ControlNetUnit,
    *,
    has_own: bool,
    mask: Image.Image | None,
) -> None:
    """An inpaint preprocessor marks the input's mask on it. Any painting task takes a mask
    when one comes with the input, so an input without one is at fault (an inpaint profile
    waits for its mask); so is a control image of its own (it would go unused)."""
    name = f"ControlNet unit {position} ({unit.module})"
    if mask is None:
        raise InputError(
            f"no mask for this input: {name} marks the inpaint mask on it; drop "
            "<stem>.mask.png beside it (an inpaint profile waits for it), or give the unit "
            "another module"
        )
    if has_own:
        raise InputError(
            f"{name} reads the input and its mask, not a control image of its own: remove "
            "the unit's control image, or give it another module"
        )


def infotext_params(units: Sequence[ReadyUnit]) -> dict[str, str]:
    """``ControlNet N`` entries, one per enabled unit, as the extension writes them."""
    return infotext_entries(tuple(r.unit for r in units), tuple(r.label for r in units))


class ControlNetStep:
    """The units' residuals added to every UNet call of a pipeline call on which they act."""

    def __init__(self, units: Sequence[ReadyUnit]) -> None:
        self.units = tuple(
            ready for ready in units if ready.unit.weight > 0 and ready.net is not None
        )
        # Per unit, one control image per image of the call (several in a batch).
        self.maps: tuple[tuple[Pixels, ...], ...] = tuple((r.control,) for r in self.units)

    @classmethod
    def batched(cls, per_image: Sequence[Sequence[ReadyUnit]]) -> ControlNetStep:
        """One step for a call that paints several images with the same units (their
        settings are equal), each image with its own control images: stacked in the order
        of the call's images, one row each."""
        step = cls(per_image[0])
        kept = [i for i, r in enumerate(per_image[0]) if r.unit.weight > 0 and r.net is not None]
        step.maps = tuple(tuple(units[i].control for units in per_image) for i in kept)
        return step

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        return self._hooked(pipe, context)

    @contextmanager
    def _hooked(self, pipe: Any, context: CallContext) -> Iterator[None]:
        import torch

        unet = pipe.unet
        controls = [  # per unit: (images, 3, height, width), in the call's image order
            torch.from_numpy(np.stack([net_input(control) for control in maps]))
            .permute(0, 3, 1, 2)
            .to(device=unet.device, dtype=unet.dtype)
            for maps in self.maps
        ]
        calls = 0

        def add_residuals(
            _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            nonlocal calls
            call, calls = calls, calls + 1
            total = model_calls(pipe.scheduler)
            active = [
                (ready, control)
                for ready, control in zip(self.units, controls, strict=True)
                if is_active(call, total, ready.unit.guidance_start, ready.unit.guidance_end)
            ]
            if not active:
                return None
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            rows = sample.shape[0]
            # The first `images` rows are the unconditional ones when the call is guided.
            conditional = torch.ones(rows, 1, 1, 1, dtype=sample.dtype, device=sample.device)
            if rows > context.images:
                conditional[: context.images] = 0
            summed: list[Any] | None = None
            for ready, control in active:
                net = ready.net
                cond = _per_row(control, rows)
                down, mid = net(
                    sample[:, : net.config.in_channels],
                    timestep,
                    encoder_hidden_states=kwargs["encoder_hidden_states"],
                    added_cond_kwargs=kwargs.get("added_cond_kwargs"),
                    return_dict=False,
                    **(ready.union.call(cond) if ready.union else {"controlnet_cond": cond}),
                )
                residuals = [*down, mid]
                scales = control_scales(ready.unit.control_mode, ready.unit.weight, len(residuals))
                mask = conditional if conditional_only(ready.unit.control_mode) else None
                scaled = [
                    r * s if mask is None else r * s * mask
                    for r, s in zip(residuals, scales, strict=True)
                ]
                summed = (
                    scaled
                    if summed is None
                    else [a + b for a, b in zip(summed, scaled, strict=True)]
                )
            assert summed is not None
            kwargs = {
                **kwargs,
                "down_block_additional_residuals": tuple(summed[:-1]),
                "mid_block_additional_residual": summed[-1],
            }
            return args, kwargs

        if not self.units:
            yield
            return
        handle = unet.register_forward_pre_hook(add_residuals, with_kwargs=True)
        with removed_after(handle):
            yield


def model_calls(scheduler: Any) -> int:
    """UNet calls in this pipeline call: the schedule less the steps img2img skips."""
    return len(scheduler.timesteps) - (getattr(scheduler, "begin_index", None) or 0)


def _per_row(control: Any, rows: int) -> Any:
    """The control images for each UNet row. The rows come in blocks of one row per image
    (unconditional block, then one per prompt: ``AND`` adds blocks), so the images repeat
    once per block."""
    images = control.shape[0]
    if rows % images:
        raise AssertionError(f"{rows} UNet rows are not blocks of {images} images")
    return control.repeat(rows // images, 1, 1, 1)
