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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.controlnet.annotators import annotator_of
from daemon.controlnet.images import Pixels, fit_control, pixel_perfect_resolution
from daemon.controlnet.infotext import infotext_entries
from daemon.controlnet.modules import module_named
from daemon.controlnet.preprocessors import preprocess
from daemon.controlnet.schedule import conditional_only, control_scales, is_active
from daemon.controlnet.units import NO_MODEL, ControlNetUnit, ControlResize
from daemon.engines.annotator_models import Annotators
from daemon.engines.call_steps import CallContext, removed_after
from daemon.engines.controlnet_models import ControlNets
from daemon.engines.controlnet_union import UnionInput, union_input
from daemon.errors import ConfigError

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
    control: Pixels  # uint8 (height, width, 3): what ``save_control`` shows
    label: str  # the model as the infotext names it
    union: UnionInput | None = None  # a union net's control type


def control_map(
    unit: ControlNetUnit,
    image: Image.Image,
    size: tuple[int, int],
    input_mode: ResizeMode,
    *,
    own: bool = False,
    annotators: Annotators | None = None,
) -> Pixels:
    """The unit's control image for a painting of `size` (width, height): preprocessed at
    the unit's resolution (pixel perfect: the one that maps it one to one), then fitted by
    the unit's resize mode when `image` is the unit's `own`, else as the input is fitted.
    A preprocessor with annotator weights runs on `annotators` (the warm ones)."""
    raw = np.asarray(image.convert("RGB"))
    mode = unit.resize_mode if own else _INPUT_RESIZE[input_mode]
    resolution = unit.processor_res
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution(image.size, size, mode)
    module = module_named(unit.module).name
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
) -> list[ReadyUnit]:
    """The profile's enabled units, each with its net (loaded once; none for a unit that
    needs none) and control image: its own from `controls` (by position in ``controlnet:``), else
    the input `image`.
    A net made for another architecture than the model's (`unet_width`: its UNet's
    cross-attention width) is a configuration error that names both."""
    ready = []
    for position, unit in enumerate(settings.controlnet):
        if not unit.enabled:
            continue
        own = controls[position] if position < len(controls) else None
        control = control_map(
            unit, image if own is None else own, size, settings.resize_mode,
            own=own is not None, annotators=annotators,
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


def infotext_params(units: Sequence[ReadyUnit]) -> dict[str, str]:
    """``ControlNet N`` entries, one per enabled unit, as the extension writes them."""
    return infotext_entries(tuple(r.unit for r in units), tuple(r.label for r in units))


class ControlNetStep:
    """The units' residuals added to every UNet call of a pipeline call on which they act."""

    def __init__(self, units: Sequence[ReadyUnit]) -> None:
        self.units = tuple(
            ready for ready in units if ready.unit.weight > 0 and ready.net is not None
        )

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        return self._hooked(pipe, context)

    @contextmanager
    def _hooked(self, pipe: Any, context: CallContext) -> Iterator[None]:
        import torch

        unet = pipe.unet
        controls = [
            torch.from_numpy(ready.control.astype(np.float32) / 255.0)
            .permute(2, 0, 1)[None]
            .to(device=unet.device, dtype=unet.dtype)
            for ready in self.units
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
                cond = control.expand(rows, -1, -1, -1)
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
