"""A1111 sampler choices on flow-matching models (SD 3.5, Flux, Qwen-Image).

A flow model's scheduler is a FlowMatch class. Only FlowMatchEuler (and, in pipelines that
let the scheduler make its own sigmas, FlowMatchHeun) can follow such a schedule; the
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


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Whether a model's scheduler config is a flow-matching one.

    A ``scheduler_config.json`` names its class; a live ``scheduler.config`` (what the
    render cache keeps) does not, so a config with a ``shift`` and no betas counts too:
    every epsilon scheduler has ``beta_start``, and neither FlowMatch class has."""
    if "_class_name" in config:
        return config["_class_name"] in FLOW_SCHEDULERS
    return "shift" in config and "beta_start" not in config


@dataclass(frozen=True)
class FlowPlan:
    """What runs for an A1111 choice on a flow model, and why, when it is not what was asked."""

    class_name: str
    sampler: str  # the A1111 label written to the infotext: "Euler" or "Heun"
    schedule: str  # "Simple", "Karras", "Exponential" or "Beta"
    note: str | None = None


def flow_plan(sampler: str, schedule: str, *, pipeline_passes_sigmas: bool = True) -> FlowPlan:
    """The flow scheduler for ``sampler``/``schedule``.

    Flux, Qwen-Image and Flux.2 pipelines pass their own sigmas and a shift μ from the image
    size to ``set_timesteps`` on every call (``pipeline_passes_sigmas``); FlowMatchHeun's
    takes neither and would fail there, so Heun runs only where the pipeline passes none
    (SD 3.5: ``pipeline_passes_sigmas=False``). The default is the safe one."""
    flat = "Simple" if schedule in _LINEAR else schedule
    if sampler == "Heun":
        if flat != "Simple":
            return FlowPlan(
                EULER, "Euler", flat,
                f"Heun's flow-matching scheduler has no {flat} sigmas; used Euler with {flat}",
            )  # fmt: skip
        if pipeline_passes_sigmas:
            return FlowPlan(
                EULER, "Euler", flat,
                "Heun's flow-matching scheduler cannot take the sigmas and image-size shift this "
                "model's pipeline sets (only SD 3.5's does not); used Euler",
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
    plan: FlowPlan, shift: float | None, config: Mapping[str, Any]
) -> SchedulerMixin:
    """A fresh flow scheduler for ``plan``, keeping the model's own schedule (shift, dynamic
    shifting, terminal stretch…) from ``config`` unless ``shift`` is given."""
    import diffusers

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
