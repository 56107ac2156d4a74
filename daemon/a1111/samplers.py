"""A1111 sampler labels and schedule types, mapped onto diffusers schedulers.

Pure data plus one builder. diffusers (and with it torch) is imported only inside
:func:`build_scheduler`, so configuration checks can validate sampler names cheaply. A model
whose scheduler is a flow-matching one gets a flow scheduler instead (:mod:`.flow_samplers`).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daemon.a1111.flow_samplers import (
    build_flow_scheduler,
    flow_plan,
    is_flow_config,
    require_scipy_for,
)

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

SCHEDULE_TYPES: tuple[str, ...] = (
    "Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "Beta",
)  # fmt: skip

# The diffusers config flags that pick a sigma schedule; at most one may be on at a time.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_SCHEDULE_FLAG = {
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}
# Forge's "Simple" takes every (1000/N)-th training timestep from the last one down: 999, 949…
# for N = 20, which is diffusers' "trailing" spacing (as SGM Uniform is).
_SPACING = {"SGM Uniform": "trailing", "Simple": "trailing"}

_ALL_SCHEDULES = ("Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "Beta")
_NO_SIGMA_FLAGS = ("Uniform", "SGM Uniform", "Simple")


@dataclass(frozen=True)
class SamplerSpec:
    """How one A1111 sampler is built in diffusers.

    ``schedules`` lists the concrete schedule types the class can do (checked against the
    class's ``__init__`` by the tests). ``uniform_spacing`` is the ``timestep_spacing`` that
    reproduces A1111's "Uniform" schedule, or None to keep the base config's spacing.
    ``second_order`` is A1111's flag: the sampler calls the model twice a step, so prompt
    editing counts its steps twice (whatever the diffusers stand-in does).
    """

    class_name: str
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    automatic: str = "Uniform"
    schedules: tuple[str, ...] = _ALL_SCHEDULES
    uniform_spacing: str | None = "linspace"
    aliases: tuple[str, ...] = ()
    note: str = ""
    second_order: bool = False


def _frozen(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(kwargs))


# k-diffusion's "Uniform" (A1111's default for most samplers) is t = linspace(999, 0, n),
# which is diffusers' "linspace" spacing, not the "leading" that SD checkpoints ship with.
# DDIM and PLMS in A1111 use range(0, 1000, 1000 // steps) + 1, which *is* "leading" with
# steps_offset 1, so they keep the checkpoint's spacing.
_HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None

_DPMPP_SDE = (
    SamplerSpec(
        "DPMSolverSDEScheduler",
        automatic="Karras",
        aliases=("k_dpmpp_sde",),
        note="torchsde installed: stochastic DPM++ SDE with a Brownian tree, as A1111",
        second_order=True,
    )
    if _HAS_TORCHSDE
    else SamplerSpec(
        "DPMSolverSinglestepScheduler",
        _frozen(algorithm_type="dpmsolver++", solver_order=2),
        automatic="Karras",
        # The single-step solver has no timestep_spacing, so neither SGM Uniform, Simple
        # nor the linspace override applies.
        schedules=("Uniform", "Karras", "Exponential", "Beta"),
        uniform_spacing=None,
        aliases=("k_dpmpp_sde",),
        note="torchsde missing: deterministic DPM++ 2S stand-in, not A1111's stochastic sampler",
        second_order=True,
    )
)

SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec(
        "EulerAncestralDiscreteScheduler",
        schedules=_NO_SIGMA_FLAGS,  # diffusers' Euler a has no Karras/Exponential sigmas
        aliases=("k_euler_a", "k_euler_ancestral"),
    ),
    # "… FlowMatch" are SD.Next's labels for the flow-matching schedulers.
    "Euler": SamplerSpec("EulerDiscreteScheduler", aliases=("k_euler", "Euler FlowMatch")),
    "LMS": SamplerSpec("LMSDiscreteScheduler", aliases=("k_lms",), note="needs scipy"),
    "Heun": SamplerSpec(
        "HeunDiscreteScheduler", aliases=("k_heun", "Heun FlowMatch"), second_order=True
    ),
    "DPM2": SamplerSpec(
        "KDPM2DiscreteScheduler", automatic="Karras", aliases=("k_dpm_2",), second_order=True
    ),
    "DPM2 a": SamplerSpec(
        "KDPM2AncestralDiscreteScheduler",
        automatic="Karras",
        aliases=("k_dpm_2_a",),
        second_order=True,
    ),
    "DPM++ 2M": SamplerSpec(
        "DPMSolverMultistepScheduler",
        _frozen(algorithm_type="dpmsolver++", solver_order=2),
        automatic="Karras",
        aliases=("k_dpmpp_2m",),
    ),
    "DPM++ SDE": _DPMPP_SDE,
    "DPM++ 2M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler",
        _frozen(algorithm_type="sde-dpmsolver++", solver_order=2),
        automatic="Exponential",
        aliases=("k_dpmpp_2m_sde",),
    ),
    "DDIM": SamplerSpec(
        "DDIMScheduler", schedules=_NO_SIGMA_FLAGS, uniform_spacing=None, aliases=("ddim",)
    ),
    "PLMS": SamplerSpec(
        "PNDMScheduler",
        _frozen(skip_prk_steps=True),
        schedules=_NO_SIGMA_FLAGS,
        uniform_spacing=None,
        aliases=("plms",),
    ),
    # A1111's UniPC defaults are variant bh1, order 3, lower order final. diffusers' bh1
    # produces NaN (black images) when img2img starts part-way into the schedule, so the
    # variant is bh2, diffusers' default; order and final step follow A1111. Its time_uniform
    # skip type is closest to diffusers' "linspace".
    "UniPC": SamplerSpec(
        "UniPCMultistepScheduler",
        _frozen(solver_type="bh2", solver_order=3, lower_order_final=True, predict_x0=True),
        aliases=("unipc",),
    ),
}


@dataclass(frozen=True)
class SamplerChoice:
    """A canonical A1111 sampler label and a concrete (never "Automatic") schedule type.

    ``shift`` is a flow model's static schedule shift (Forge's/SD.Next's "Shift"); None keeps
    the model's own (static, or dynamic from the image size). SD models ignore it. It is part
    of the value, so schedulers cached per choice differ per shift.
    """

    sampler: str
    schedule: str
    shift: float | None = None


def _norm(text: str) -> str:
    """Case- and whitespace-insensitive lookup key."""
    return re.sub(r"\s+", " ", text).strip().casefold()


_SAMPLER_KEYS: dict[str, str] = {}
for _label, _spec in SAMPLERS.items():
    _SAMPLER_KEYS[_norm(_label)] = _label
    for _alias in _spec.aliases:
        _SAMPLER_KEYS[_norm(_alias)] = _label

_SCHEDULE_KEYS: dict[str, str] = {_norm(s): s for s in SCHEDULE_TYPES}
_SCHEDULE_KEYS.update({"sgmuniform": "SGM Uniform", "sgm_uniform": "SGM Uniform"})
# Longest first so "... SGM Uniform" is not read as "... SGM" + "Uniform".
_SUFFIXES = sorted(
    ((_norm(s), s) for s in SCHEDULE_TYPES if s != "Automatic"), key=lambda p: -len(p[0])
)


def _valid_samplers() -> str:
    return ", ".join(SAMPLERS)


def _parse_schedule(scheduler: str) -> str:
    key = _norm(scheduler).replace("_", " ")
    found = _SCHEDULE_KEYS.get(key) or _SCHEDULE_KEYS.get(key.replace(" ", ""))
    if found is None:
        raise ValueError(f"unknown schedule type {scheduler!r}; valid: {', '.join(SCHEDULE_TYPES)}")
    return found


def _split_label(sampler_name: str) -> tuple[str, str | None]:
    """Canonical label plus the schedule an old combined label carries, if any."""
    key = _norm(sampler_name)
    if key in _SAMPLER_KEYS:
        return _SAMPLER_KEYS[key], None
    # Old A1111 aliases: "k_dpmpp_2m_ka" = DPM++ 2M Karras.
    if key.endswith("_ka") and key[:-3] in _SAMPLER_KEYS:
        return _SAMPLER_KEYS[key[:-3]], "Karras"
    for suffix, schedule in _SUFFIXES:
        base = key.removesuffix(" " + suffix)
        if base != key and base in _SAMPLER_KEYS:
            return _SAMPLER_KEYS[base], schedule
    raise ValueError(f"unknown sampler {sampler_name!r}; valid: {_valid_samplers()}")


def parse_sampler(
    sampler_name: str, scheduler: str = "Automatic", *, shift: float | None = None
) -> SamplerChoice:
    """Read an A1111 sampler (new or old combined label) and schedule into a concrete choice.

    As in A1111, a schedule carried in the label ("DPM++ 2M Karras") wins over the separate
    scheduler argument. A schedule the sampler cannot do in diffusers is a ValueError.
    """
    label, from_label = _split_label(sampler_name)
    spec = SAMPLERS[label]
    # An empty scheduler is A1111's "Automatic" too (its API sends None or "").
    schedule = from_label or _parse_schedule(scheduler or "Automatic")
    if schedule == "Automatic":
        schedule = spec.automatic
    if schedule not in spec.schedules:
        raise ValueError(
            f"sampler {label!r} cannot use schedule type {schedule!r}; "
            f"it supports: Automatic, {', '.join(spec.schedules)}"
        )
    return SamplerChoice(label, schedule, shift)


def second_order(choice: SamplerChoice) -> bool:
    """Whether A1111 counts two model calls a step for this sampler (prompt editing)."""
    return SAMPLERS[choice.sampler].second_order


def infotext_fields(choice: SamplerChoice) -> dict[str, str]:
    """The infotext entries A1111 writes for a sampler choice."""
    return {"Sampler": choice.sampler, "Schedule type": choice.schedule}


def flow_infotext_fields(
    choice: SamplerChoice, *, pipeline_passes_sigmas: bool = True
) -> dict[str, object]:
    """The infotext entries for what really ran on a flow model, as Forge writes them, plus
    ``Shift`` when the profile set one (Forge has no such key; SD.Next's is "Sampler shift")."""
    ran = flow_choice(choice, pipeline_passes_sigmas=pipeline_passes_sigmas)
    fields: dict[str, object] = dict(infotext_fields(ran))
    if choice.shift is not None:
        fields["Shift"] = choice.shift
    return fields


def scheduler_kwargs(choice: SamplerChoice, accepted: frozenset[str] | set[str]) -> dict[str, Any]:
    """The from_config overrides for ``choice``, given the parameters the class accepts.

    Every sigma flag the class knows is set explicitly, so a base config saved with
    Karras on cannot leak into a "Uniform" run.
    """
    spec = SAMPLERS[choice.sampler]
    if choice.schedule not in spec.schedules:
        raise ValueError(f"sampler {choice.sampler!r} cannot use schedule type {choice.schedule!r}")
    kwargs: dict[str, Any] = dict(spec.extra)
    wanted = _SCHEDULE_FLAG.get(choice.schedule)
    if wanted is not None and wanted not in accepted:
        raise ValueError(
            f"sampler {choice.sampler!r} ({spec.class_name}) cannot do schedule type "
            f"{choice.schedule!r}: no {wanted}"
        )
    for flag in _SIGMA_FLAGS:
        if flag in accepted:
            kwargs[flag] = flag == wanted
    spacing = {**_SPACING, "Uniform": spec.uniform_spacing}.get(choice.schedule)
    if spacing is not None:
        if "timestep_spacing" not in accepted:
            raise ValueError(
                f"sampler {choice.sampler!r} ({spec.class_name}) cannot do schedule type "
                f"{choice.schedule!r}: no timestep_spacing"
            )
        kwargs["timestep_spacing"] = spacing
    return kwargs


def _scheduler_class(spec: SamplerSpec) -> type[SchedulerMixin]:
    import diffusers

    cls: type[SchedulerMixin] = getattr(diffusers, spec.class_name)
    # diffusers hands out a placeholder when an optional backend (scipy for LMS, torchsde
    # for DPM++ SDE) is missing; fail here, not on the first denoising step.
    backends = getattr(cls, "_backends", None)
    if backends is not None:
        missing = [b for b in backends if importlib.util.find_spec(b) is None]
        raise ImportError(
            f"{spec.class_name} needs the Python package(s) {', '.join(missing or backends)}; "
            f"install with: pip install {' '.join(missing or backends)}"
        )
    return cls


def flow_sampler_note(choice: SamplerChoice, *, pipeline_passes_sigmas: bool = True) -> str | None:
    """On a flow-matching model: one sentence saying which sampler ran instead of ``choice``
    and why, or None when it runs as asked. ``pipeline_passes_sigmas``: see
    :func:`~daemon.a1111.flow_samplers.flow_plan` (False only for SD 3.5)."""
    return flow_plan(
        choice.sampler, choice.schedule, pipeline_passes_sigmas=pipeline_passes_sigmas
    ).note


def flow_choice(choice: SamplerChoice, *, pipeline_passes_sigmas: bool = True) -> SamplerChoice:
    """The choice that really runs on a flow-matching model, for the infotext: Euler or Heun,
    and "Simple" for the schedules that are all one straight line in t there."""
    plan = flow_plan(choice.sampler, choice.schedule, pipeline_passes_sigmas=pipeline_passes_sigmas)
    return SamplerChoice(plan.sampler, plan.schedule, choice.shift)


def build_scheduler(
    choice: SamplerChoice, base_config: Mapping[str, Any], *, pipeline_passes_sigmas: bool = True
) -> SchedulerMixin:
    """A fresh diffusers scheduler for ``choice``, keeping the model's own config
    (betas, prediction type, steps_offset...) from ``base_config``.

    A flow-matching config (SD 3.5, Flux, Qwen-Image) gets a flow scheduler, never an
    epsilon one: :func:`flow_sampler_note` says what runs instead of other samplers, and
    ``pipeline_passes_sigmas`` (False only for SD 3.5) whether Heun can. SD models ignore it."""
    if is_flow_config(base_config):
        plan = flow_plan(
            choice.sampler, choice.schedule, pipeline_passes_sigmas=pipeline_passes_sigmas
        )
        return build_flow_scheduler(plan, choice.shift, base_config)
    require_scipy_for(choice.schedule)
    spec = SAMPLERS[choice.sampler]
    cls = _scheduler_class(spec)
    accepted = frozenset(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = scheduler_kwargs(choice, accepted)
    # A sigma flag the class lacks would be carried along in its config unused, and then
    # wrongly switch that schedule on for whoever builds another scheduler from it.
    config = {k: v for k, v in base_config.items() if k not in _SIGMA_FLAGS or k in accepted}
    scheduler: SchedulerMixin = cls.from_config(config, **kwargs)
    return scheduler
