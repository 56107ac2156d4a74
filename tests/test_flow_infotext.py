"""Forge's and SD.Next's infotext for flow models (Flux, SD 3.5, Qwen-Image), read back with
``use_png_info`` and written in Forge's order. The lines are laid out as the two UIs write
them (families-26.md §4: Forge ``modules/processing.py`` create_infotext, SD.Next
``modules/processing_info.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from sd_parsers import ParserManager

from daemon.a1111.infotext import format_infotext, format_parameters, parse_infotext, pnginfo_chunk
from daemon.a1111.pnginfo import settings_from_infotext
from daemon.a1111.samplers import SamplerChoice
from daemon.config.profiles import Profile
from tests.conftest import DATA, Workspace, wait_for

FORGE_FLUX_PARAMS = (
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, "
    "Seed: 1234567890, Size: 1024x1024, Model hash: 0a1b2c3d4e, Model: flux1-dev-bnb-nf4-v2, "
    "Denoising strength: 0.6, Version: f2.0.1v1.10.1-previous-669-gdfdcbab6"
)
FORGE_FLUX = (
    "a cat in a spacesuit, studio photo\n"
    + FORGE_FLUX_PARAMS
    + ", Diffusion in Low Bits: bnb-nf4 (fp16 LoRA), Module 1: ae, Module 2: clip_l, "
    "Module 3: t5xxl_fp16"
)
FORGE_SD35 = (
    "a lighthouse on a cliff, oil painting\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: Euler, Schedule type: Beta, CFG scale: 4.5, Seed: 42, Size: 1024x1024, "
    "Model hash: 9a8b7c6d5e, Model: sd3.5_large, Denoising strength: 0.55, "
    "Version: f2.0.1v1.10.1-previous-669-gdfdcbab6, Module 1: clip_g, Module 2: clip_l, "
    "Module 3: t5xxl_fp8_e4m3fn"
)
SDNEXT_FLUX = (
    "a red fox in the snow\n"
    "Negative prompt: blurry\n"
    "Steps: 24, Size: 1024x1024, Sampler: Euler FlowMatch, Seed: 3312, CFG scale: 3.5, "
    "CFG true: 4, App: SD.Next, Version: 058a7f0, Pipeline: FluxImg2ImgPipeline, "
    "Operations: img2img, Model: FLUX.1-dev, Model hash: 5b9ba0e2a1, "
    "Init image size: 1024x1024, Init image hash: 9f2c41d0, Image CFG scale: 6, "
    "Denoising strength: 0.5, Sampler shift: 2.5"
)
SDNEXT_SDXL_PAG = (
    "a red fox\n"
    "Steps: 20, Size: 1024x1024, Sampler: Euler a, Seed: 5, CFG scale: 6, CFG true: 3, "
    "App: SD.Next, Version: 058a7f0, Pipeline: StableDiffusionXLPAGImg2ImgPipeline, "
    "Operations: img2img, Model: sdxl_base, Denoising strength: 0.4"
)
CIVITAI_FLUX = (
    "a castle at night\n"
    "Steps: 25, Sampler: Undefined, CFG scale: 3.5, Seed: 7, Size: 832x1216, Clip skip: 2, "
    "Created Date: 2024-09-01T12:00:00.000Z, Model: FLUX, Civitai resources: none"
)


def profile_from(text: str) -> Profile:
    """The settings a profile gets from the text: the PNG info over a default profile."""
    found = settings_from_infotext(text)
    return Profile(model="m", **found.overrides)


def test_forge_flux_line() -> None:
    found = settings_from_infotext(FORGE_FLUX)
    assert found.model_hash == "0a1b2c3d4e" and found.notes == ()
    settings = Profile(model="m", **found.overrides)
    assert (settings.prompt, settings.negative_prompt) == ("a cat in a spacesuit, studio photo", "")
    assert settings.sampler == SamplerChoice("Euler", "Simple")
    assert (settings.cfg_scale, settings.distilled_cfg_scale) == (1.0, 3.5)
    assert (settings.steps, settings.seed, settings.denoising_strength) == (20, 1234567890, 0.6)


def test_forge_sd35_line_with_the_beta_schedule() -> None:
    settings = profile_from(FORGE_SD35)
    assert settings.sampler == SamplerChoice("Euler", "Beta")
    assert (settings.cfg_scale, settings.distilled_cfg_scale) == (4.5, 3.5)  # no distilled key
    assert (settings.steps, settings.denoising_strength, settings.shift) == (28, 0.55, None)


def test_sdnext_flux_line() -> None:
    found = settings_from_infotext(SDNEXT_FLUX)
    settings = profile_from(SDNEXT_FLUX)
    # "CFG true" is true_cfg_scale, so CFG scale (guidance_scale) is Flux's distilled one.
    assert (settings.cfg_scale, settings.distilled_cfg_scale) == (4.0, 3.5)
    # No Schedule type: Automatic, Euler's Uniform (on a flow model the same line as Simple).
    assert settings.sampler == SamplerChoice("Euler", "Uniform", 2.5)
    assert settings.negative_prompt == "blurry" and settings.seed == 3312
    assert found.notes == ()


def test_sdnext_cfg_true_of_an_sd_pipeline_is_its_pag_scale_and_left_alone() -> None:
    found = settings_from_infotext(SDNEXT_SDXL_PAG)
    assert found.overrides["cfg_scale"] == 6.0 and "distilled_cfg_scale" not in found.overrides
    (note,) = found.notes
    assert "ignored CFG true" in note and "StableDiffusionXLPAGImg2ImgPipeline" in note


def test_our_shift_wins_over_sdnexts_sampler_shift() -> None:
    found = settings_from_infotext("x\nSteps: 4, Sampler: Euler, Sampler shift: 2, Shift: 3.5")
    assert found.overrides["shift"] == 3.5


def test_civitai_undefined_sampler_is_forges_euler_simple() -> None:
    settings = profile_from(CIVITAI_FLUX)
    assert settings.sampler == SamplerChoice("Euler", "Simple")
    # Forge would move CFG scale to Distilled CFG Scale; the same line from a model with
    # real CFG would then be misread, so it stays.
    assert (settings.cfg_scale, settings.distilled_cfg_scale) == (3.5, 3.5)


def test_forge_order_is_written_back() -> None:
    params = parse_infotext(FORGE_FLUX_PARAMS).params
    shuffled = dict(reversed(list(params.items())))
    assert format_parameters(shuffled) == FORGE_FLUX_PARAMS


def test_distilled_cfg_and_shift_round_trip_and_sd_parsers_still_reads_the_line(
    tmp_path: Path,
) -> None:
    params = {
        "Seed": 99, "Shift": 3.0, "Distilled CFG Scale": 2.5, "CFG scale": 1.0, "Steps": 8,
        "Schedule type": "Beta", "Sampler": "Euler", "Size": "64x64", "Model": "flux1-dev",
        "Denoising strength": 0.5, "Version": "img2imgd v0",
    }  # fmt: skip
    text = format_infotext("a fox", "blurry", params)
    assert text.endswith(
        "Steps: 8, Sampler: Euler, Schedule type: Beta, CFG scale: 1, Distilled CFG Scale: 2.5, "
        "Shift: 3, Seed: 99, Size: 64x64, Model: flux1-dev, Denoising strength: 0.5, "
        "Version: img2imgd v0"
    )
    settings = profile_from(text)
    assert (settings.distilled_cfg_scale, settings.shift, settings.cfg_scale) == (2.5, 3.0, 1.0)
    assert settings.sampler == SamplerChoice("Euler", "Beta", 3.0)

    path = tmp_path / "flux.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=pnginfo_chunk(text))
    with Image.open(path) as image:
        result = ParserManager().parse(image)
    assert result is not None and result.full_prompt == "a fox"
    sampler = result.samplers[0]
    assert sampler.name == "Euler"
    assert sampler.parameters["cfg_scale"] == "1" and sampler.parameters["seed"] == "99"
    assert sampler.parameters["scheduler"] == "Beta"


def test_a_forge_sd_line_with_simple_paints_on_an_sd_model(workspace: Workspace, running) -> None:
    # An SD model follows Forge's Simple as diffusers' trailing spacing, and takes the flow
    # keys without using them.
    workspace.profile("again", use_png_info=True, prompt="profile prompt", steps=20)
    running()
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text(
        "parameters",
        "from forge\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Simple, CFG scale: 4, "
        "Distilled CFG Scale: 3.5, Shift: 3, Seed: 99, Size: 64x64, Model: v1-5, "
        "Denoising strength: 0.6, Version: f2.0.1v1.10.1-previous-669-gdfdcbab6",
    )
    Image.open(DATA / "chelsea.png").save(workspace.inbox / "again/in.png", pnginfo=chunk)
    wait_for(lambda: workspace.done("again"))
    info = parse_infotext((workspace.outbox / "again/in.txt").read_text())
    assert info.prompt == "from forge"
    assert (info.params["Sampler"], info.params["Schedule type"]) == ("DPM++ 2M", "Simple")
    assert info.params["Seed"] == "99" and info.params["Steps"] == "3"


def test_a_value_that_does_not_convert_is_left_out_and_said() -> None:
    found = settings_from_infotext("x\nSteps: 4, Sampler: Euler, Distilled CFG Scale: lots")
    assert "distilled_cfg_scale" not in found.overrides
    assert any("Distilled CFG Scale" in note for note in found.notes)


def test_a_shift_out_of_range_is_the_inputs_problem() -> None:
    found = settings_from_infotext("x\nSteps: 4, Sampler: Euler, Sampler shift: -1")
    with pytest.raises(ValueError, match="shift"):
        Profile(model="m", **found.overrides)
