"""ControlNet with inpainting: "only masked" crops each unit's control image to the painted
region, and the inpaint preprocessors mark the mask in the input (−1 for the net).

The pure parts are checked on arrays; the rest through the real daemon (real folders,
watcher, pairing, the tiny pipeline and the built-in tiny ControlNet), one run for all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.controlnet.images import color_count
from daemon.controlnet.masked import fit_hint, net_input, preview
from daemon.controlnet.modules import module_named
from daemon.controlnet.units import ControlNetUnit, ControlResize
from daemon.engines.call_steps import removed_after
from daemon.engines.controlnet_step import ControlNetStep, control_map, ready_units
from daemon.engines.diffusion import Canvas, DiffusionEngine
from daemon.errors import Fault, InputError, classify
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "builtin:tiny-controlnet"
AS_IS = {"enabled": True, "module": "none", "model": TINY, "resize_mode": "Just Resize"}
INPAINT_ONLY = {"enabled": True, "module": "inpaint_only", "model": TINY}
CORNER = (0, 0, 20, 20)  # the mask: a white square in chelsea's top-left corner
PADDING = 10  # so the painted region is (0, 0, 30, 30): square, as the 64x64 painting
ONLY_MASKED = {
    "task": "inpaint", "width": 64, "height": 64, "save_control": True, "mask_blur": 0,
    "inpaint_full_res": True, "inpaint_full_res_padding": PADDING, "denoising_strength": 1.0,
}  # fmt: skip
CASES: dict[str, dict[str, Any]] = {
    "cropped": {"controlnet": [AS_IS]},
    "uncropped": {"controlnet": [{**AS_IS, "inpaint_crop_input_image": False}]},
    "marked": {"controlnet": [INPAINT_ONLY], "inpaint_full_res": False},
    "marked_cropped": {"controlnet": [INPAINT_ONLY]},
    "unmasked": {"controlnet": [INPAINT_ONLY], "task": "img2img"},  # and no mask dropped
}


def corner_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size)
    mask.paste(255, CORNER)
    return mask


@pytest.fixture(scope="module")
def inbox_run(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> Workspace:
    workspace = Workspace(tmp_path_factory.mktemp("control-inpaint"), state_dir).create()
    size = Image.open(DATA / "chelsea.png").size
    for name, keys in CASES.items():
        workspace.profile(name, **{**ONLY_MASKED, **keys})
        if name != "unmasked":
            corner_mask(size).save(workspace.inbox / name / "cat.mask.png")
        workspace.drop(DATA / "chelsea.png", f"{name}/cat.png")
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    return workspace


def saved(workspace: Workspace, profile: str, name: str, mode: str = "RGB") -> np.ndarray:
    with Image.open(workspace.outbox / profile / name) as image:
        return np.asarray(image.convert(mode))


def test_only_masked_crops_the_control_image_to_the_painted_region(inbox_run):
    # Worked out by hand: the corner square plus the padding is square already, as the
    # painting, so the region is (0, 0, 30, 30), resized (and filled: nothing) to 64x64.
    chelsea = Image.open(DATA / "chelsea.png").convert("RGB")
    region = (0, 0, CORNER[2] + PADDING, CORNER[3] + PADDING)
    expected = np.asarray(chelsea.crop(region).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(saved(inbox_run, "cropped", "cat.control.png"), expected)
    whole = saved(inbox_run, "uncropped", "cat.control.png")
    assert whole.shape == (64, 64, 3) and not np.array_equal(whole, expected)
    # The net saw another picture, so the painted corner differs.
    assert not np.array_equal(
        saved(inbox_run, "cropped", "cat.png"), saved(inbox_run, "uncropped", "cat.png")
    )


def test_inpaint_only_paints_with_the_mask_marked_and_names_its_module(inbox_run):
    for name in ("marked", "marked_cropped"):
        assert (inbox_run.outbox / name / "cat.png").exists(), name
        infotext = (inbox_run.outbox / name / "cat.txt").read_text()
        assert "Module: inpaint_only" in parse_infotext(infotext).params["ControlNet 0"], infotext
    # The preview: the input, with the masked pixels half transparent, as the extension's.
    shown = saved(inbox_run, "marked", "cat.control.png", "RGBA")
    assert shown.shape == (64, 64, 4)
    assert set(np.unique(shown[:, :, 3])) == {128, 255}
    assert shown[0, 0, 3] == 128 and shown[-1, -1, 3] == 255
    # Cropped to the corner, the square covers two thirds of each side.
    cropped = saved(inbox_run, "marked_cropped", "cat.control.png", "RGBA")[:, :, 3]
    assert cropped[40, 40] == 128 and cropped[50, 50] == 255


def test_an_input_without_its_mask_fails_an_inpaint_unit_with_a_report(inbox_run):
    report = (inbox_run.inbox / "_failed/unmasked/cat.error.txt").read_text()
    assert "no mask for this input: ControlNet unit 0 (inpaint_only)" in report, report
    assert not inbox_run.outputs("unmasked")


def test_the_masked_pixels_reach_the_net_as_minus_one():
    color = np.full((4, 4, 3), 51, dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2] = 255
    values = net_input(np.dstack([color, mask]))
    assert values.dtype == np.float32 and values.shape == (4, 4, 3)
    assert (values[:2] == -1.0).all() and np.allclose(values[2:], 0.2)
    # Any other map: its colours in 0..1, exactly as before.
    assert np.array_equal(net_input(color), color.astype(np.float32) / 255.0)
    assert preview(color) is color


def test_the_net_itself_gets_minus_one_where_the_inpainting_is_masked(models):
    settings = Profile(model="builtin:tiny-sd", task="inpaint", steps=2, mask_blur=0,
                       sampler_name="Euler", controlnet=[INPAINT_ONLY])  # fmt: skip
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    mask = corner_mask(image.size)
    units = ready_units(settings, image, (64, 64), models.controlnets, unet_width=32, mask=mask)
    seen: list[Any] = []

    def spy(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["controlnet_cond"])

    with removed_after(units[0].net.register_forward_pre_hook(spy, with_kwargs=True)):
        DiffusionEngine(models, steps=[ControlNetStep(units)]).paint(
            Canvas(image, mask), settings, width=64, height=64, seed=1, prompt="a cat",
            negative_prompt="",
        )  # fmt: skip
    assert seen, "the net ran"
    masked = units[0].control[:, :, 3] == 255
    cond = seen[0][0].permute(1, 2, 0).numpy()
    assert masked.any() and (cond[masked] == -1.0).all() and (cond[~masked] >= 0).all()


def test_an_inpaint_hint_is_fitted_with_its_mask_and_the_fill_counts_as_masked():
    hint = np.dstack([np.full((10, 20, 3), 90, np.uint8), np.zeros((10, 20), np.uint8)])
    fitted = fit_hint(hint, ControlResize.OUTER_FIT, (20, 20))
    assert fitted.shape == (20, 20, 4)
    assert (fitted[:5, :, 3] == 255).all() and (fitted[5:15, :, 3] == 0).all()


def test_the_inpaint_unit_lays_the_prepared_mask_on_the_input():
    image = Image.open(DATA / "chelsea.png").convert("RGB").resize((64, 64))
    mask = np.zeros((64, 64), np.uint8)
    mask[:16, :16] = 255
    unit = ControlNetUnit(**INPAINT_ONLY)
    control = control_map(unit, image, (64, 64), ResizeMode.JUST_RESIZE, mask=mask)
    assert np.array_equal(control[:, :, :3], np.asarray(image))
    assert np.array_equal(control[:, :, 3], mask)


def test_the_inpaint_modules_are_named_as_the_extension_and_lama_is_refused():
    assert module_named("inpaint_global_harmonious").name == "inpaint"
    assert module_named("inpaint_only").label == "inpaint_only"
    with pytest.raises(ValueError, match=r"inpaint_only\+lama is not supported: .*LaMa"):
        module_named("inpaint_only+lama")


def test_an_input_without_a_mask_fails_an_inpaint_unit_with_a_reason(models):
    settings = Profile(model="builtin:tiny-sd", controlnet=[INPAINT_ONLY])
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    with pytest.raises(InputError, match=r"no mask for this input: .*\.mask\.png") as caught:
        ready_units(settings, image, (64, 64), models.controlnets, unet_width=32)
    assert classify(caught.value).fault is Fault.INPUT


@pytest.mark.parametrize(("levels", "channels"), [(256, 3), (7, 3), (3, 4), (256, 1)])
def test_the_colour_count_that_picks_the_resize_filter_is_exact(levels, channels):
    rng = np.random.default_rng(levels)
    image = rng.integers(0, levels, (40, 30, channels), dtype=np.uint8)
    expected = len(np.unique(image.reshape(-1, channels), axis=0))
    assert color_count(image) == expected
