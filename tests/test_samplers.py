from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from typing import Any

import pytest

from daemon.a1111.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    SamplerChoice,
    build_scheduler,
    infotext_fields,
    parse_sampler,
    scheduler_kwargs,
)

# An SD-1.5 scheduler_config.json, plus a stale Karras flag that "Uniform" must switch off.
BASE_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "timestep_spacing": "leading",
    "use_karras_sigmas": True,
}

CONCRETE = [s for s in SCHEDULE_TYPES if s != "Automatic"]

# Where each class lives, so the tests can reach the real class even when diffusers hands
# out a placeholder for a missing optional backend (LMS without scipy).
MODULES = {
    "LMSDiscreteScheduler": "diffusers.schedulers.scheduling_lms_discrete",
}


def real_class(name: str) -> type[Any]:
    import diffusers

    cls = getattr(diffusers, name)
    if getattr(cls, "_backends", None) is not None and name in MODULES:
        cls = getattr(importlib.import_module(MODULES[name]), name)
    return cls


def accepted(cls: type[Any]) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


def missing_backends(name: str) -> list[str]:
    import diffusers

    backends = getattr(getattr(diffusers, name), "_backends", None) or []
    return [b for b in backends if importlib.util.find_spec(b) is None]


@pytest.mark.parametrize("label", list(SAMPLERS))
def test_declared_schedules_match_the_diffusers_class(label: str) -> None:
    spec = SAMPLERS[label]
    params = accepted(real_class(spec.class_name))
    expected = ["Uniform"] if spec.uniform_spacing is None or "timestep_spacing" in params else []
    if "use_karras_sigmas" in params:
        expected.append("Karras")
    if "use_exponential_sigmas" in params:
        expected.append("Exponential")
    if "timestep_spacing" in params:
        expected += ["SGM Uniform", "Simple"]
    if "use_beta_sigmas" in params:
        expected.append("Beta")
    assert spec.schedules == tuple(expected)
    assert spec.automatic in spec.schedules


def check_scheduler(sched: Any, choice: SamplerChoice) -> None:
    spec = SAMPLERS[choice.sampler]
    assert type(sched).__name__ == spec.class_name
    cfg = sched.config
    for key, value in spec.extra.items():
        assert cfg[key] == value
    # The model's own settings survive.
    assert cfg["beta_schedule"] == "scaled_linear"
    assert cfg["beta_start"] == pytest.approx(0.00085)
    if "steps_offset" in cfg:
        assert cfg["steps_offset"] == 1
    assert cfg.get("use_karras_sigmas", False) is (choice.schedule == "Karras")
    assert cfg.get("use_exponential_sigmas", False) is (choice.schedule == "Exponential")
    assert cfg.get("use_beta_sigmas", False) is (choice.schedule == "Beta")
    if choice.schedule in ("SGM Uniform", "Simple"):
        assert cfg["timestep_spacing"] == "trailing"
    elif choice.schedule == "Uniform" and "timestep_spacing" in cfg:
        assert cfg["timestep_spacing"] == (spec.uniform_spacing or "leading")
    sched.set_timesteps(10)
    assert len(sched.timesteps) >= 10


@pytest.mark.parametrize("schedule", CONCRETE)
@pytest.mark.parametrize("label", list(SAMPLERS))
def test_every_label_and_schedule(label: str, schedule: str) -> None:
    spec = SAMPLERS[label]
    if schedule not in spec.schedules:
        with pytest.raises(ValueError, match=schedule):
            parse_sampler(label, schedule)
        # Even a hand-made choice is refused, naming sampler and schedule.
        with pytest.raises(ValueError, match=f"{re.escape(label)}.*{schedule}"):
            build_scheduler(SamplerChoice(label, schedule), BASE_CONFIG)
        return

    choice = parse_sampler(label, schedule)
    assert choice == SamplerChoice(label, schedule)
    missing = missing_backends(spec.class_name)
    if missing:
        # Fail at build time with an install hint, not at the first denoising step...
        with pytest.raises(ImportError, match=missing[0]):
            build_scheduler(choice, BASE_CONFIG)
        # ...and the config it would use still suits the real class.
        cls = real_class(spec.class_name)
        sched = cls.from_config(BASE_CONFIG, **scheduler_kwargs(choice, accepted(cls)))
    else:
        sched = build_scheduler(choice, BASE_CONFIG)
    check_scheduler(sched, choice)


def test_dpmpp_sde_falls_back_without_torchsde() -> None:
    spec = SAMPLERS["DPM++ SDE"]
    if importlib.util.find_spec("torchsde") is None:
        assert spec.class_name == "DPMSolverSinglestepScheduler"
        assert "torchsde" in spec.note
    else:
        assert spec.class_name == "DPMSolverSDEScheduler"


@pytest.mark.parametrize(
    ("label", "schedule"),
    [
        ("DPM++ 2M", "Karras"),
        ("DPM++ SDE", "Karras"),
        ("DPM2", "Karras"),
        ("DPM2 a", "Karras"),
        ("DPM++ 2M SDE", "Exponential"),
        ("Euler a", "Uniform"),
        ("Euler", "Uniform"),
        ("LMS", "Uniform"),
        ("Heun", "Uniform"),
        ("DDIM", "Uniform"),
        ("PLMS", "Uniform"),
        ("UniPC", "Uniform"),
    ],
)
def test_automatic_resolves(label: str, schedule: str) -> None:
    assert parse_sampler(label) == SamplerChoice(label, schedule)
    assert parse_sampler(label, "Automatic") == SamplerChoice(label, schedule)
    assert parse_sampler(label, "") == SamplerChoice(label, schedule)


@pytest.mark.parametrize(
    ("old", "label", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("Euler a", "Euler a", "Uniform"),
        ("LMS Karras", "LMS", "Karras"),
        ("DPM2 Karras", "DPM2", "Karras"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("DPM++ 2M SGM Uniform", "DPM++ 2M", "SGM Uniform"),
        ("Euler Uniform", "Euler", "Uniform"),
    ],
)
def test_old_combined_labels(old: str, label: str, schedule: str) -> None:
    assert parse_sampler(old) == parse_sampler(label, schedule)
    assert parse_sampler(old) == SamplerChoice(label, schedule)


def test_combined_label_schedule_wins() -> None:
    assert parse_sampler("DPM++ 2M Karras", "Automatic").schedule == "Karras"
    # A1111 lets the label's suffix override an explicit scheduler too.
    assert parse_sampler("DPM++ 2M Karras", "Exponential").schedule == "Karras"


@pytest.mark.parametrize(
    ("text", "scheduler", "expected"),
    [
        ("  dpm++   2m  KARRAS ", "Automatic", SamplerChoice("DPM++ 2M", "Karras")),
        ("euler A", "automatic", SamplerChoice("Euler a", "Uniform")),
        ("DPM++ 2M", "karras", SamplerChoice("DPM++ 2M", "Karras")),
        ("Euler", "sgm_uniform", SamplerChoice("Euler", "SGM Uniform")),
        ("Euler", "SGMUniform", SamplerChoice("Euler", "SGM Uniform")),
        ("k_euler_a", "Automatic", SamplerChoice("Euler a", "Uniform")),
        ("k_euler_ancestral", "Automatic", SamplerChoice("Euler a", "Uniform")),
        ("k_dpmpp_2m", "Automatic", SamplerChoice("DPM++ 2M", "Karras")),
        ("k_dpmpp_2m", "Uniform", SamplerChoice("DPM++ 2M", "Uniform")),
        ("k_lms_ka", "Automatic", SamplerChoice("LMS", "Karras")),
        ("k_dpmpp_2m_sde_ka", "Automatic", SamplerChoice("DPM++ 2M SDE", "Karras")),
        ("ddim", "Automatic", SamplerChoice("DDIM", "Uniform")),
        ("Euler", "simple", SamplerChoice("Euler", "Simple")),
        ("Euler FlowMatch", "BETA", SamplerChoice("Euler", "Beta")),
        ("heun flowmatch", "Automatic", SamplerChoice("Heun", "Uniform")),
    ],
)
def test_case_whitespace_and_aliases(text: str, scheduler: str, expected: SamplerChoice) -> None:
    assert parse_sampler(text, scheduler) == expected


@pytest.mark.parametrize("name", ["Euler b", "DPM++ 3M", "", "Karras"])
def test_unknown_sampler_lists_valid_labels(name: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_sampler(name)
    message = str(info.value)
    for label in SAMPLERS:
        assert label in message


def test_unknown_schedule_lists_schedule_types() -> None:
    with pytest.raises(ValueError) as info:
        parse_sampler("Euler", "Cosine")
    for schedule in SCHEDULE_TYPES:
        assert schedule in str(info.value)


def test_unsupported_combination_is_refused_at_parse() -> None:
    with pytest.raises(ValueError, match=r"Euler a.*Karras"):
        parse_sampler("Euler a Karras")
    with pytest.raises(ValueError, match=r"PLMS.*Exponential"):
        parse_sampler("PLMS", "Exponential")


def test_infotext_fields() -> None:
    fields = infotext_fields(parse_sampler("DPM++ 2M Karras"))
    assert fields == {"Sampler": "DPM++ 2M", "Schedule type": "Karras"}
    assert infotext_fields(parse_sampler("Euler a")) == {
        "Sampler": "Euler a",
        "Schedule type": "Uniform",
    }


def test_uniform_is_k_diffusion_linspace() -> None:
    # k-diffusion's uniform schedule starts at the last training timestep (sigma max),
    # unlike the checkpoint's "leading" spacing, which starts at 901 for 10 steps.
    sched: Any = build_scheduler(parse_sampler("Euler"), BASE_CONFIG)
    sched.set_timesteps(10)
    assert float(sched.timesteps[0]) == pytest.approx(999)
    assert float(sched.timesteps[-1]) == pytest.approx(0)


def test_ddim_keeps_a1111_leading_timesteps() -> None:
    # A1111's DDIM: range(0, 1000, 1000 // steps) + 1, walked backwards.
    sched: Any = build_scheduler(parse_sampler("DDIM"), BASE_CONFIG)
    sched.set_timesteps(10)
    assert [int(t) for t in sched.timesteps] == list(range(901, 0, -100))


def test_base_config_is_not_mutated() -> None:
    before = dict(BASE_CONFIG)
    build_scheduler(parse_sampler("DPM++ 2M SDE"), BASE_CONFIG)
    assert before == BASE_CONFIG


def test_simple_is_forges_every_nth_timestep_from_the_last() -> None:
    # Forge's "Simple" on an SD model: sigmas[-(1 + int(x * 1000 / n))], i.e. timesteps
    # 999 - int(x * 100) for n = 10: diffusers' trailing spacing.
    sched: Any = build_scheduler(parse_sampler("Euler", "Simple"), BASE_CONFIG)
    sched.set_timesteps(10)
    assert [round(float(t)) for t in sched.timesteps] == [999 - x * 100 for x in range(10)]


@pytest.mark.parametrize("config_class", ["PNDMScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_beta_needs_scipy_and_says_so(monkeypatch: pytest.MonkeyPatch, config_class: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    config = {**BASE_CONFIG, "_class_name": config_class}
    with pytest.raises(ImportError, match="pip install scipy"):
        build_scheduler(parse_sampler("Euler", "Beta"), config)
