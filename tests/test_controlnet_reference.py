"""``reference_only`` through the real daemon: a unit with no ControlNet whose reference image
(its own ``<stem>.control.png``, else the input) steers the tiny pipeline's self-attention.

All cases are painted by one daemon run (one inbox folder per profile, the same picture in
each, the same seed), so that each test compares outputs pixel for pixel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.engines.attention_bank import BankedSelfAttention
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from daemon.render.render import render
from tests.conftest import DATA, Workspace
from tests.test_controlnet import request

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REF = {"enabled": True, "module": "reference_only"}
CANNY = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet"}
CASES: dict[str, list[dict[str, Any]]] = {
    "plain": [],
    "reference": [REF],
    "again": [REF],
    "own": [REF],  # with astronaut as cat.control.png
    "weight0": [{**REF, "weight": 0}],
    "ends_first": [{**REF, "guidance_end": 0.0}],
    "starts_late": [{**REF, "guidance_start": 0.5}],
    "half": [{**REF, "weight": 0.5}],
    "fidelity1": [{**REF, "threshold_a": 1.0}],
    "prompt_mode": [{**REF, "control_mode": "My prompt is more important"}],
    "control_mode": [{**REF, "control_mode": "ControlNet is more important"}],
    "canny": [CANNY],
    "with_canny": [REF, CANNY],
    "inpaint_plain": [],
    "inpaint": [REF],
    "and_plain": [],
    "and": [REF],
}
"""Profile name → its units. 4 steps at strength 1.0: 4 model calls each run."""
OWN_KEYS: dict[str, dict[str, Any]] = {
    "inpaint": {"task": "inpaint"},
    "and": {"prompt": "a cat AND a dog:0.5"},  # three rows a call: uncond, cat, dog
}


def lay_out(workspace: Workspace) -> None:
    """One inbox folder per case, chelsea in each (astronaut's mask, astronaut as ``own``'s
    reference)."""
    for name, units in CASES.items():
        keys = OWN_KEYS.get(name.removesuffix("_plain"), {})
        workspace.profile(name, controlnet=units, denoising_strength=1.0, **keys)
        workspace.drop(DATA / "chelsea.png", f"{name}/cat.png")
    workspace.drop(DATA / "astronaut.mask.png", "inpaint/cat.mask.png")
    workspace.drop(DATA / "astronaut.mask.png", "inpaint_plain/cat.mask.png")
    workspace.drop(DATA / "astronaut.png", "own/cat.control.png")


def painting(path: Path) -> tuple[np.ndarray, str]:
    """A result's pixels and its parameters text."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")), image.info.get("parameters", "")


@pytest.fixture(scope="module")
def painted(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> dict[str, tuple[np.ndarray, str]]:
    """Each case's result, all painted by one daemon run."""
    workspace = Workspace(tmp_path_factory.mktemp("reference"), state_dir).create()
    lay_out(workspace)
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    return {name: painting(workspace.outbox / name / "cat.png") for name in CASES}


def pixels(painted: dict[str, tuple[np.ndarray, str]], name: str) -> np.ndarray:
    return painted[name][0]


def test_a_reference_changes_the_pixels_and_is_written_as_a_unit_without_model(painted):
    assert not np.array_equal(pixels(painted, "reference"), pixels(painted, "plain"))
    assert (
        'ControlNet 0: "Module: reference_only, Model: None, Weight: 1.0'
        in (painted["reference"][1])
    )
    assert "Threshold A: 0.5" in painted["reference"][1]  # the style fidelity's default


def test_the_same_seed_paints_the_same_picture(painted):
    assert np.array_equal(pixels(painted, "again"), pixels(painted, "reference"))


def test_a_dropped_reference_image_steers_instead_of_the_input(painted):
    assert not np.array_equal(pixels(painted, "own"), pixels(painted, "reference"))
    assert not np.array_equal(pixels(painted, "own"), pixels(painted, "plain"))


@pytest.mark.parametrize("name", ["weight0", "ends_first"])
def test_a_reference_that_never_acts_is_pixel_identical_to_none(painted, name):
    assert np.array_equal(pixels(painted, name), pixels(painted, "plain"))


@pytest.mark.parametrize(
    "name", ["starts_late", "half", "fidelity1", "prompt_mode", "control_mode"]
)
def test_weight_schedule_fidelity_and_mode_each_paint_their_own_way(painted, name):
    assert not np.array_equal(pixels(painted, name), pixels(painted, "reference"))
    assert not np.array_equal(pixels(painted, name), pixels(painted, "plain"))


def test_a_reference_and_a_controlnet_unit_paint_together(painted):
    both = pixels(painted, "with_canny")
    for single in ("canny", "reference", "plain"):
        assert not np.array_equal(both, pixels(painted, single)), single
    text = painted["with_canny"][1]
    assert 'ControlNet 0: "Module: reference_only, Model: None' in text
    assert 'ControlNet 1: "Module: canny, Model: tiny-controlnet [' in text


@pytest.mark.parametrize("name", ["inpaint", "and"])
def test_inpainting_and_composable_prompts_take_the_reference_too(painted, name, models):
    assert not np.array_equal(pixels(painted, name), pixels(painted, f"{name}_plain"))
    unet = models.pipeline("builtin:tiny-sd", "img2img").unet
    assert not unet._forward_pre_hooks and not unet._forward_hooks  # all removed after use
    processors = unet.attn_processors.values()
    assert not any(isinstance(p, BankedSelfAttention) for p in processors)


def test_the_sdxl_model_takes_a_reference(models):
    def painted(units: list[dict[str, Any]]) -> np.ndarray:
        return np.asarray(render(request("builtin:tiny-sdxl", units), models).images[0])

    plain = painted([])
    assert not np.array_equal(painted([REF]), plain)
    assert np.array_equal(painted([{**REF, "weight": 0}]), plain)
