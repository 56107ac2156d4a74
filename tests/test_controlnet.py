"""ControlNet through the real daemon: profiles with ``controlnet:`` units paint the real
tiny pipeline with the built-in tiny ControlNet (random weights, its zero convolutions
included), the input being the control image.

All cases are painted by one daemon run (one inbox folder per profile, the same picture in
each, the same seed), so that each test compares outputs pixel for pixel."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.cli import check_problems
from daemon.config.profiles import Profile, load_profile
from daemon.controlnet.infotext import units_from_params
from daemon.engines.call_steps import removed_after
from daemon.engines.controlnet_models import legacy_hash
from daemon.engines.controlnet_step import ControlNetStep, ready_units
from daemon.engines.diffusion import Canvas, DiffusionEngine
from daemon.errors import ConfigError, Fault, InputError, classify
from daemon.models.builtin import ensure_builtin
from daemon.models.resolve import Search, resolve_controlnet, resolve_model
from daemon.ops.service import Daemon
from daemon.paths import shown
from daemon.render.cache import ModelCache
from daemon.render.render import render
from daemon.render.values import RenderRequest
from tests.conftest import DATA, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CANNY = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet"}
LINES = {"enabled": True, "module": "lineart_standard", "model": "builtin:tiny-controlnet"}
CASES: dict[str, list[dict[str, Any]]] = {
    "plain": [],
    "canny": [CANNY],
    "lines": [LINES],
    "both": [CANNY, LINES],
    "weight0": [{**CANNY, "weight": 0}],
    "ends_first": [{**CANNY, "guidance_end": 0.0}],
    "starts_late": [{**CANNY, "guidance_start": 0.5}],
    "disabled": [{**CANNY, "enabled": False}],
    "prompt_mode": [{**CANNY, "control_mode": "My prompt is more important"}],
    "control_mode": [{**CANNY, "control_mode": "ControlNet is more important"}],
    "pixel_perfect": [{**CANNY, "pixel_perfect": True}],
    "saved": [CANNY, LINES],
    "inpaint_plain": [],
    "inpaint": [{**CANNY, "control_mode": "ControlNet is more important"}],
    "and_plain": [],
    "and": [CANNY],
}
"""Profile name → its units. 4 steps at strength 1.0: 4 model calls each run."""
OWN_KEYS: dict[str, dict[str, Any]] = {
    "inpaint": {"task": "inpaint"},  # the mask is astronaut's (another size: resized)
    "and": {"prompt": "a cat AND a dog:0.5"},  # three rows a call: uncond, cat, dog
}
"""Keys of the cases that are not plain img2img (``<name>_plain``: the same, no unit)."""


@pytest.fixture(scope="module")
def painted(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> dict[str, tuple[np.ndarray, str]]:
    """Each case's result: its pixels and its parameters text."""
    workspace = Workspace(tmp_path_factory.mktemp("controlnet"), state_dir).create()
    for name, units in CASES.items():
        keys = {**OWN_KEYS.get(name.removesuffix("_plain"), {}), "save_control": name == "saved"}
        workspace.profile(name, controlnet=units, denoising_strength=1.0, **keys)
        workspace.drop(DATA / "chelsea.png", f"{name}/cat.png")
        if keys.get("task") == "inpaint":
            workspace.drop(DATA / "astronaut.mask.png", f"{name}/cat.mask.png")
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    results = {}
    for name in CASES:
        for output in workspace.outputs(name):
            if output.suffix == ".png":
                with Image.open(output) as image:
                    text = image.info.get("parameters", "")
                    results[output.name.replace("cat", name)] = (np.asarray(image), text)
    return results


def pixels(painted: dict[str, tuple[np.ndarray, str]], name: str) -> np.ndarray:
    return painted[f"{name}.png"][0]


def test_a_control_image_changes_the_pixels(painted):
    assert not np.array_equal(pixels(painted, "canny"), pixels(painted, "plain"))
    assert not np.array_equal(pixels(painted, "lines"), pixels(painted, "plain"))


@pytest.mark.parametrize("name", ["weight0", "ends_first", "disabled"])
def test_a_unit_that_never_acts_is_pixel_identical_to_none(painted, name):
    assert np.array_equal(pixels(painted, name), pixels(painted, "plain"))


def test_a_unit_that_starts_halfway_acts_on_the_last_calls_only(painted):
    late = pixels(painted, "starts_late")
    assert not np.array_equal(late, pixels(painted, "plain"))
    assert not np.array_equal(late, pixels(painted, "canny"))


@pytest.mark.parametrize("name", ["inpaint", "and"])
def test_inpainting_and_composable_prompts_are_steered_too(painted, name, models):
    assert not np.array_equal(pixels(painted, name), pixels(painted, f"{name}_plain"))
    assert "ControlNet 0" in painted[f"{name}.png"][1]
    unet = models.pipeline("builtin:tiny-sd", "img2img").unet
    assert not unet._forward_pre_hooks and not unet._forward_hooks  # all removed after use


def test_two_units_combine(painted):
    both = pixels(painted, "both")
    for single in ("canny", "lines", "plain"):
        assert not np.array_equal(both, pixels(painted, single)), single


def test_each_control_mode_paints_its_own_way(painted):
    modes = [pixels(painted, name) for name in ("canny", "prompt_mode", "control_mode")]
    assert not np.array_equal(modes[0], modes[1])
    assert not np.array_equal(modes[0], modes[2])
    assert not np.array_equal(modes[1], modes[2])


def test_the_infotext_has_one_entry_per_enabled_unit_as_the_extension_writes_it(painted, state_dir):
    params = parse_infotext(painted["both.png"][1]).params
    weights = ensure_builtin("tiny-controlnet", state_dir / "builtin")
    digest = legacy_hash(weights / "diffusion_pytorch_model.safetensors")
    assert params["ControlNet 0"] == (
        f"Module: canny, Model: tiny-controlnet [{digest}], Weight: 1.0, "
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, "
        "Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        "Control Mode: Balanced"
    )
    assert params["ControlNet 1"].startswith("Module: lineart_standard, ")
    assert [unit["module"] for unit in units_from_params(params)] == ["canny", "lineart_standard"]
    assert 'ControlNet 0: "Module: canny, ' in painted["both.png"][1]
    for name in ("plain", "disabled"):
        assert "ControlNet" not in painted[f"{name}.png"][1]


def test_save_control_writes_each_units_control_image_beside_the_result(painted):
    assert np.array_equal(pixels(painted, "saved"), pixels(painted, "both"))
    assert "saved.control.png" in painted and "saved.control-1.png" in painted
    assert not [name for name in painted if ".control" in name and not name.startswith("saved")]
    size = pixels(painted, "saved").shape  # the painting's: the control image is fitted to it
    edges, text = painted["saved.control.png"]
    assert edges.shape == size and set(np.unique(edges)) <= {0, 255} and not text
    lines = painted["saved.control-1.png"][0]
    assert lines.shape == size and not np.array_equal(lines, edges)


def write(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_profile(folder, "p")
    return list(caught.value.problems)


def test_a_mistake_in_a_unit_names_the_file_the_line_and_the_unit(tmp_path):
    unit = {**CANNY, "module": "cany", "guidance_start": 0.9, "guidance_end": 0.1}
    path = write(tmp_path, {"model": "builtin:tiny-sd", "steps": 4, "controlnet": [unit]})
    found = problems(tmp_path)
    assert any(
        line.startswith(f"{path}:3: controlnet.0.module: unknown ControlNet preprocessor 'cany'")
        for line in found
    ), found


def test_an_interrogation_task_refuses_controlnet_units(tmp_path):
    path = write(tmp_path, {"task": "interrogate", "model": "builtin:tiny-interrogator",
                            "controlnet": [CANNY]})  # fmt: skip
    assert problems(tmp_path) == [f"{path}:3: `controlnet` is not used by task `interrogate`"]


def test_a_controlnet_is_not_a_checkpoint_and_a_checkpoint_not_a_controlnet(tmp_path, state_dir):
    search = Search(None, state_dir)
    with pytest.raises(ConfigError, match="is a ControlNet: use it as a `controlnet:` unit"):
        resolve_model("builtin:tiny-controlnet", search)
    with pytest.raises(ConfigError, match="the built-in model for this is builtin:tiny-controlnet"):
        resolve_controlnet("builtin:tiny-sd", search)
    with pytest.raises(ConfigError, match="no ControlNet file or diffusers ControlNet folder"):
        resolve_controlnet(str(tmp_path), search)


def request(model: str, units: list[dict[str, Any]]) -> RenderRequest:
    settings = Profile(model=model, steps=4, denoising_strength=1.0, sampler_name="Euler",
                       prompt="a cat", controlnet=units)  # fmt: skip
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    return RenderRequest("cat.png", settings, image, size=(64, 64), seed=7)


def test_a_controlnet_for_another_architecture_is_a_configuration_error(models):
    sdxl_net = {**CANNY, "model": "builtin:tiny-controlnet-sdxl"}
    with pytest.raises(ConfigError) as caught:
        render(request("builtin:tiny-sd", [sdxl_net]), models)
    assert str(caught.value) == (
        "ControlNet builtin:tiny-controlnet-sdxl is for cross-attention width 96, but model "
        "builtin:tiny-sd is cross-attention width 32: use a ControlNet made for it"
    )
    assert classify(caught.value).fault is Fault.CONFIG  # the input waits; it is not failed


def test_the_sdxl_variant_steers_the_sdxl_model(models):
    plain = render(request("builtin:tiny-sdxl", []), models).images[0]
    unit = {**CANNY, "model": "builtin:tiny-controlnet-sdxl", "control_mode": 1}
    steered = render(request("builtin:tiny-sdxl", [unit]), models)
    assert not np.array_equal(np.asarray(plain), np.asarray(steered.images[0]))
    assert "Model: tiny-controlnet-sdxl [" in steered.infotexts[0]


def test_a_per_image_yaml_may_not_choose_a_controlnet_by_path(tmp_path):
    write(tmp_path, {"model": "builtin:tiny-sd", "controlnet": [CANNY]})
    loaded = load_profile(tmp_path, "p")
    with pytest.raises(InputError, match=r"cat\.yaml: controlnet\.0\.model: '/elsewhere' is a"):
        loaded.with_overrides({"controlnet": [{**CANNY, "model": "/elsewhere"}]}, Path("cat.yaml"))


def test_check_names_a_controlnet_that_is_not_there(tmp_path, state_dir):
    workspace = Workspace(tmp_path, state_dir).create()
    missing = tmp_path / "no-such-controlnet"
    workspace.profile("p", controlnet=[CANNY, {**CANNY, "model": str(missing)}])
    settings = workspace.settings()
    [problem] = check_problems(settings)
    assert problem == (
        f"{shown(workspace.profiles / 'p.yaml')}: ControlNet '{missing}': no ControlNet file "
        f"or diffusers ControlNet folder (config.json) at {missing}"
    )


def test_pixel_perfect_preprocesses_at_the_paintings_own_resolution(painted):
    assert not np.array_equal(pixels(painted, "pixel_perfect"), pixels(painted, "canny"))


class ResidualSpy:
    """A call step after the ControlNet step: which UNet calls got residuals, and how
    many rows had any."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.rows_steered: list[int] = []

    def prepare(self, call: dict[str, Any], context: Any) -> dict[str, Any]:
        return call

    @contextmanager
    def hooked(self, pipe: Any, context: Any) -> Iterator[None]:
        def spy(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            mid = kwargs.get("mid_block_additional_residual")
            self.calls.append(mid is not None)
            if mid is not None:
                self.rows_steered.append(int((mid.flatten(1).abs().sum(1) > 0).sum()))

        with removed_after(pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)):
            yield


@pytest.mark.parametrize(
    ("strength", "start", "end", "expected"),
    [
        (0.5, 0.0, 1.0, [True, True]),  # 2 of 4 steps run: both controlled
        (0.5, 0.5, 1.0, [False, True]),  # halfway through the calls that run
        (0.5, 0.0, 0.5, [True, False]),
        (1.0, 0.0, 0.5, [True, True, False, False]),
        (0.5, 0.0, 0.0, [False, False]),  # ends before the first call that runs
    ],
)
def test_guidance_start_and_end_count_over_the_calls_that_run(
    models, strength, start, end, expected
):
    settings = request("builtin:tiny-sd", [{**CANNY, "guidance_start": start,
                                           "guidance_end": end}]).settings  # fmt: skip
    settings = settings.model_copy(update={"denoising_strength": strength})
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    units = ready_units(settings, image, (64, 64), models.controlnets, unet_width=32)
    spy = ResidualSpy()
    engine = DiffusionEngine(models, steps=[ControlNetStep(units), spy])
    engine.paint(Canvas(image, None), settings, width=64, height=64, seed=1, prompt="a cat",
                 negative_prompt="")  # fmt: skip
    assert spy.calls == expected


def test_controlnet_is_more_important_leaves_the_unconditional_rows_alone(models):
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    rows = {}
    for mode in ("Balanced", "ControlNet is more important"):
        settings = request("builtin:tiny-sd", [{**CANNY, "control_mode": mode}]).settings
        units = ready_units(settings, image, (64, 64), models.controlnets, unet_width=32)
        spy = ResidualSpy()
        DiffusionEngine(models, steps=[ControlNetStep(units), spy]).paint(
            Canvas(image, None), settings, width=64, height=64, seed=1, prompt="a cat",
            negative_prompt="",
        )  # fmt: skip
        rows[mode] = set(spy.rows_steered)
    assert rows == {"Balanced": {2}, "ControlNet is more important": {1}}  # of [uncond, cond]
