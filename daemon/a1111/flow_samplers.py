"""A1111 sampler choices on flow-matching models (SD 3.5, Flux, Qwen-Image).

A flow model's scheduler config names a FlowMatch class. Only FlowMatchEuler (and, for
SD3-style static schedules, FlowMatchHeun) can follow such a schedule in diffusers; the
epsilon schedulers the SD table maps to (DPM++ 2M, UniPC…) cannot. So every other sampler
runs as Euler, as Forge does for Flux and SD3, and :func:`flow_plan` says so in a note.

Pure data and functions on primitives (the sampler label, schedule type and shift), so that
:mod:`daemon.a1111.samplers` can use them without an import cycle; diffusers is imported only
inside :func:`build_flow_scheduler`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})
EULER = "FlowMatchEulerDiscreteScheduler"
HEUN = "FlowMatchHeunDiscreteScheduler"

# On a flow model t runs linearly from 1 to 1/N before the shift whatever these say: Forge's
# "Simple" picks exactly diffusers' linspace(1, 1/N, N), and "Uniform"/"SGM Uniform" are the
# same line in t. So they all keep the model's own schedule and are written back as "Simple".
_LINEAR = frozenset({"Automatic", "Uniform", "SGM Uniform", "Simple"})
SIGMA_FLAGS: Mapping[str, str] = {
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}
# Flux, Qwen-Image and Flux.2 compute a shift (μ) from the image size and pass it, with their
# own sigmas, to set_timesteps on every call; their configs carry these keys. FlowMatchHeun's
# set_timesteps takes neither, so Heun can only run where the pipeline passes none (SD3).
_SIZE_SHIFT_KEYS = ("use_dynamic_shifting", "base_image_seq_len", "max_image_seq_len")


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Whether a model's scheduler config is a flow-matching one."""
    return config.get("_class_name") in FLOW_SCHEDULERS


def _heun_fits(config: Mapping[str, Any]) -> bool:
    return not any(config.get(key) for key in _SIZE_SHIFT_KEYS)


@dataclass(frozen=True)
class FlowPlan:
    """What runs for an A1111 choice on a flow model, and why, when it is not what was asked."""

    class_name: str
    sampler: str  # the A1111 label written to the infotext: "Euler" or "Heun"
    schedule: str  # "Simple", "Karras", "Exponential" or "Beta"
    note: str | None = None


def flow_plan(sampler: str, schedule: str, config: Mapping[str, Any] | None = None) -> FlowPlan:
    """The flow scheduler for ``sampler``/``schedule``; ``config`` (the model's scheduler
    config) decides whether Heun can run; without it Heun is assumed to fit."""
    flat = "Simple" if schedule in _LINEAR else schedule
    if sampler == "Heun":
        if flat != "Simple":
            return FlowPlan(
                EULER, "Euler", flat,
                f"Heun's flow-matching scheduler has no {flat} sigmas; used Euler with {flat}",
            )  # fmt: skip
        if config is not None and not _heun_fits(config):
            return FlowPlan(
                EULER, "Euler", flat,
                "Heun's flow-matching scheduler cannot take the image-size shift this model's "
                "pipeline sets on every step; used Euler",
            )  # fmt: skip
        return FlowPlan(HEUN, "Heun", flat)
    if sampler == "Euler":
        return FlowPlan(EULER, "Euler", flat)
    return FlowPlan(
        EULER, "Euler", flat,
        f"{sampler} cannot follow a flow-matching schedule; used Euler (Forge's choice for "
        "Flux/SD3)",
    )  # fmt: skip


def flow_scheduler_kwargs(plan: FlowPlan, shift: float | None) -> dict[str, Any]:
    """The from_config overrides for ``plan``: every sigma flag set explicitly (so a config
    saved with Karras on cannot leak into a Simple run), and a given shift as a static one."""
    kwargs: dict[str, Any] = {}
    if plan.class_name == EULER:
        wanted = SIGMA_FLAGS.get(plan.schedule)
        kwargs.update({flag: flag == wanted for flag in SIGMA_FLAGS.values()})
    if shift is not None:
        # A number replaces the model's own schedule, dynamic (μ from the image size) or not.
        kwargs["shift"] = shift
        if plan.class_name == EULER:
            kwargs["use_dynamic_shifting"] = False
    return kwargs


def require_scipy_for(schedule: str) -> None:
    """diffusers' beta sigmas call scipy; say so before any model work, not mid-schedule."""
    if schedule == "Beta" and importlib.util.find_spec("scipy") is None:
        raise ImportError(
            "schedule type Beta needs the Python package scipy; install with: pip install scipy"
        )


def build_flow_scheduler(
    sampler: str, schedule: str, shift: float | None, config: Mapping[str, Any]
) -> SchedulerMixin:
    """A fresh flow scheduler for an A1111 choice, keeping the model's own schedule
    (shift, dynamic shifting, terminal stretch…) from ``config`` unless ``shift`` is given."""
    import diffusers

    plan = flow_plan(sampler, schedule, config)
    require_scipy_for(plan.schedule)
    cls = getattr(diffusers, plan.class_name)
    if plan.class_name == HEUN:
        # FlowMatchHeun knows only these two; the Euler config's other keys would be carried
        # in its config unused.
        base = {
            "num_train_timesteps": config.get("num_train_timesteps", 1000),
            "shift": config.get("shift", 1.0),
        }
    else:
        base = dict(config)
    base.pop("_class_name", None)
    scheduler: SchedulerMixin = cls.from_config(base, **flow_scheduler_kwargs(plan, shift))
    return scheduler
