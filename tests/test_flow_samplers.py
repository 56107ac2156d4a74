"""A1111 samplers on flow-matching models: the scheduler a choice builds, and where img2img
starts on its schedule. Pure scheduler tests against the research notes' probe table
(families-26.md §1.3): the pipelines' own schedule arithmetic, no pipeline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from daemon.a1111.flow_samplers import flow_plan, is_flow_config
from daemon.a1111.samplers import (
    SAMPLERS,
    SamplerChoice,
    build_scheduler,
    flow_choice,
    flow_infotext_fields,
    flow_sampler_note,
    parse_sampler,
)
from daemon.config.profiles import Profile

# The hub's scheduler_config.json files, as shipped.
SD35: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.31.0.dev0",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}
FLUX_DEV: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
QWEN_IMAGE: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.34.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
FLOW_CONFIGS = {"sd35": SD35, "flux-dev": FLUX_DEV, "qwen-image": QWEN_IMAGE}


def flux_mu(config: dict[str, Any], side: int) -> float:
    """Flux's calculate_shift: μ linear in the image's tokens, (side/16)²."""
    tokens = (side // 16) ** 2
    slope = (config["max_shift"] - config["base_shift"]) / (
        config["max_image_seq_len"] - config["base_image_seq_len"]
    )
    return float(config["base_shift"] + slope * (tokens - config["base_image_seq_len"]))


def img2img_start(
    sched: Any, steps: int, strength: float, *, mu: float | None = None, flux: bool = False
) -> tuple[int, float]:
    """Steps run and the first σ, as the flow img2img pipelines compute them: Flux passes
    linspace(1, 1/N, N) and μ; SD3 passes neither (static shift). Then get_timesteps."""
    if flux:
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    else:
        sched.set_timesteps(steps)
    t_start = int(max(steps - min(steps * strength, steps), 0))
    run = len(sched.timesteps[t_start * sched.order :])
    return run, float(sched.sigmas[t_start * sched.order])


def test_flow_configs_are_told_apart_from_epsilon_ones() -> None:
    import diffusers

    assert all(is_flow_config(config) for config in FLOW_CONFIGS.values())
    assert not is_flow_config({"_class_name": "PNDMScheduler", "beta_start": 0.00085})
    assert not is_flow_config({})
    # A live scheduler's config (what the render cache keeps) names no class.
    for name in ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"):
        live = getattr(diffusers, name)(shift=3.0).config
        assert "_class_name" not in live and is_flow_config(live)
    for name in (
        "EulerDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DPMSolverMultistepScheduler",
    ):
        assert not is_flow_config(getattr(diffusers, name)().config)


@pytest.mark.parametrize("schedule", ["Uniform", "Karras"])
def test_a_live_config_builds_the_same_schedule_as_the_json(schedule: str) -> None:
    import diffusers

    live = diffusers.FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV).config
    starts = []
    for config in (FLUX_DEV, live):
        sched: Any = build_scheduler(parse_sampler("DPM++ 2M", schedule), config)
        assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler"
        starts.append(img2img_start(sched, 20, 0.5, mu=flux_mu(FLUX_DEV, 1024), flux=True))
    assert starts[0] == starts[1]
    if schedule == "Uniform":  # runs as Simple: the model's own schedule
        assert starts[0][1] == pytest.approx(0.7595, abs=1e-4)


@pytest.mark.parametrize("label", list(SAMPLERS))
@pytest.mark.parametrize("config", list(FLOW_CONFIGS.values()), ids=list(FLOW_CONFIGS))
def test_every_sampler_builds_a_flow_scheduler(label: str, config: dict[str, Any]) -> None:
    sched: Any = build_scheduler(parse_sampler(label), config)
    assert type(sched).__name__.startswith("FlowMatch")
    assert (flow_sampler_note(parse_sampler(label)) is None) == (label == "Euler")


def test_sd35_static_shift_matches_the_probe() -> None:
    # families-26.md §1.3: SD3.5 (static shift 3), N=20, s=0.5 → 10 steps from σ 0.731.
    sched: Any = build_scheduler(parse_sampler("Euler", "Automatic"), SD35)
    assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert sched.config.shift == 3.0 and not sched.config.use_dynamic_shifting
    steps, sigma = img2img_start(sched, 20, 0.5)
    assert steps == 10 and sigma == pytest.approx(0.731, abs=1e-3)


@pytest.mark.parametrize(
    ("side", "mu", "sigma"), [(512, 0.630, 0.6525), (1024, 1.150, 0.7595), (1536, 2.017, 0.8825)]
)
def test_flux_dynamic_shift_follows_the_image_size(side: int, mu: float, sigma: float) -> None:
    # §1.3's table, diffusers' column: μ from the image size, N=20, s=0.5.
    assert flux_mu(FLUX_DEV, side) == pytest.approx(mu, abs=1e-3)
    sched: Any = build_scheduler(parse_sampler("Euler", "Simple"), FLUX_DEV)
    assert sched.config.use_dynamic_shifting
    steps, start = img2img_start(sched, 20, 0.5, mu=flux_mu(FLUX_DEV, side), flux=True)
    assert steps == 10 and start == pytest.approx(sigma, abs=1e-4)


@pytest.mark.parametrize("side", [512, 1536])
def test_a_shift_replaces_the_dynamic_one_at_every_size(side: int) -> None:
    sched: Any = build_scheduler(parse_sampler("Euler", shift=3.0), FLUX_DEV)
    assert not sched.config.use_dynamic_shifting and sched.config.shift == 3.0
    # The pipeline still passes μ; a static schedule ignores it: 3·½ / (1 + 2·½) = 0.75.
    steps, start = img2img_start(sched, 20, 0.5, mu=flux_mu(FLUX_DEV, side), flux=True)
    assert steps == 10 and start == pytest.approx(0.75)


def test_a_static_shift_of_e_to_the_mu_is_forges_fixed_mu() -> None:
    # Forge runs Flux-dev at μ = 1.15 whatever the size: the same as static shift e^1.15.
    static: Any = build_scheduler(parse_sampler("Euler", shift=math.exp(1.15)), FLUX_DEV)
    dynamic: Any = build_scheduler(parse_sampler("Euler"), FLUX_DEV)
    sigmas = np.linspace(1.0, 1 / 20, 20)
    static.set_timesteps(sigmas=sigmas, mu=0.63)
    dynamic.set_timesteps(sigmas=sigmas, mu=1.15)
    assert np.allclose(static.sigmas.numpy(), dynamic.sigmas.numpy(), atol=1e-6)


def test_qwen_keeps_its_terminal_stretch() -> None:
    sched: Any = build_scheduler(parse_sampler("DPM++ 2M"), QWEN_IMAGE)
    assert sched.config.shift_terminal == 0.02
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.7)
    assert float(sched.sigmas[-2]) == pytest.approx(0.02, abs=1e-6)  # the last before the final 0


@pytest.mark.parametrize(
    ("schedule", "flag"),
    [("Karras", "use_karras_sigmas"), ("Exponential", "use_exponential_sigmas"),
     ("Beta", "use_beta_sigmas")],
)  # fmt: skip
def test_sigma_schedules_switch_on_their_flag_alone(schedule: str, flag: str) -> None:
    stale = {**FLUX_DEV, "use_karras_sigmas": True}  # a config saved with Karras on
    sched: Any = build_scheduler(parse_sampler("Euler", schedule), stale)
    flags = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
    assert {f: sched.config[f] for f in flags} == {f: f == flag for f in flags}
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 10, 10), mu=1.0)
    assert len(sched.timesteps) == 10 and float(sched.sigmas[0]) <= 1.0


@pytest.mark.parametrize("schedule", ["Automatic", "Uniform", "SGM Uniform", "Simple"])
def test_linear_schedules_keep_the_models_own(schedule: str) -> None:
    stale = {**SD35, "use_karras_sigmas": True}
    sched: Any = build_scheduler(parse_sampler("Euler", schedule), stale)
    assert not sched.config.use_karras_sigmas and sched.config.shift == 3.0
    assert flow_choice(parse_sampler("Euler", schedule)) == SamplerChoice("Euler", "Simple")


def test_other_samplers_run_as_euler_and_say_so() -> None:
    choice = parse_sampler("DPM++ 2M Karras")
    assert flow_sampler_note(choice) == (
        "DPM++ 2M cannot follow a flow-matching schedule; used Euler (Forge's choice for Flux/SD3)"
    )
    assert flow_choice(choice) == SamplerChoice("Euler", "Karras")
    sched: Any = build_scheduler(choice, FLUX_DEV)
    assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert sched.config.use_karras_sigmas


def test_heun_runs_where_the_pipeline_passes_no_sigmas() -> None:
    assert flow_sampler_note(parse_sampler("Heun"), pipeline_passes_sigmas=False) is None
    sched: Any = build_scheduler(parse_sampler("Heun"), SD35, pipeline_passes_sigmas=False)
    assert type(sched).__name__ == "FlowMatchHeunDiscreteScheduler"
    assert sched.config.shift == 3.0
    steps, start = img2img_start(sched, 20, 0.5)
    assert steps == 10 * 2 - 1 and 0.7 < start < 0.8  # two model calls a step but the first
    shifted: Any = build_scheduler(
        parse_sampler("Heun", shift=1.5), SD35, pipeline_passes_sigmas=False
    )
    assert shifted.config.shift == 1.5


def test_heun_cannot_take_a_pipelines_sigmas_or_sigma_flags() -> None:
    heun = parse_sampler("Heun")
    assert flow_plan("Heun", "Simple").class_name == "FlowMatchEulerDiscreteScheduler"
    assert "image-size shift" in (flow_sampler_note(heun) or "")
    assert flow_choice(heun) == SamplerChoice("Euler", "Simple")
    assert type(build_scheduler(heun, FLUX_DEV)).__name__ == "FlowMatchEulerDiscreteScheduler"
    karras = parse_sampler("Heun", "Karras")
    assert flow_sampler_note(karras, pipeline_passes_sigmas=False) == (
        "Heun's flow-matching scheduler has no Karras sigmas; used Euler with Karras"
    )
    assert flow_choice(karras, pipeline_passes_sigmas=False) == SamplerChoice("Euler", "Karras")


def test_the_shift_is_part_of_the_choice_and_the_profile_sets_it() -> None:
    assert parse_sampler("Euler", shift=2.0) != parse_sampler("Euler", shift=3.0)
    cache = {parse_sampler("Euler", shift=2.0): "a", parse_sampler("Euler"): "b"}
    assert len(cache) == 2
    profile = Profile(model="m", sampler_name="Euler", scheduler="Beta", shift=2.5)
    assert profile.sampler == SamplerChoice("Euler", "Beta", 2.5)
    assert Profile(model="m").sampler.shift is None
    assert (Profile(model="m").distilled_cfg_scale, Profile(model="m").shift) == (3.5, None)


@pytest.mark.parametrize("bad", [0, -1, 101])
def test_a_shift_must_be_positive_and_at_most_100(bad: float) -> None:
    with pytest.raises(ValueError, match="shift"):
        Profile(model="m", shift=bad)


def test_sd_models_ignore_the_shift() -> None:
    from tests.test_samplers import BASE_CONFIG

    plain: Any = build_scheduler(parse_sampler("Euler"), BASE_CONFIG)
    shifted: Any = build_scheduler(parse_sampler("Euler", shift=3.0), BASE_CONFIG)
    assert dict(plain.config) == dict(shifted.config)


def test_the_infotext_names_what_ran_and_the_shift_when_set() -> None:
    assert flow_infotext_fields(parse_sampler("DPM++ 2M")) == {
        "Sampler": "Euler",
        "Schedule type": "Karras",
    }
    heun = parse_sampler("Heun", shift=2.0)
    assert flow_infotext_fields(heun, pipeline_passes_sigmas=False) == {
        "Sampler": "Heun",
        "Schedule type": "Simple",
        "Shift": 2.0,
    }
