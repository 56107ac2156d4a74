"""Flux.2 through the real daemon, with the built-in tiny Klein-shaped model: what differs
from the other families: img2img painted by the inpaint pipeline with the whole picture
masked, and the ``edit`` task (the input and its references as the pipeline's conditions).
Determinism, inpaint, a LoRA, videos and the infotext read back are tested with the other
families' in test_families.py.

FLUX.2 [dev] (``builtin:tiny-flux2-dev``: a Mistral3 text encoder, distilled guidance) edits
from references; asked for img2img, its files wait with the reason (diffusers has no Flux.2
[dev] img2img or inpaint pipeline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from daemon.families import Guidance, family_of_class, flux2
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace
from tests.support.painted import Run, logged, painted_with, pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "builtin:tiny-flux2"
DEV = "builtin:tiny-flux2-dev"


def repainted(shape: tuple[int, ...]) -> np.ndarray:
    """Where astronaut.mask.png repaints, at `shape` (widened by 2 px: the engine resizes
    the mask its own way)."""
    with Image.open(DATA / "astronaut.mask.png") as mask:
        small = mask.convert("L").resize(shape[1::-1]).filter(ImageFilter.MaxFilter(5))
    return np.asarray(small) > 0


@pytest.fixture(scope="module")
def flux2_run(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> Iterator[Run]:
    workspace = Workspace(tmp_path_factory.mktemp("flux2"), state_dir).create()
    inbox = workspace.inbox
    common = {"model": MODEL, "steps": 4, "cfg_scale": 4.0}
    workspace.profile("paint", negative_prompt="blurry", denoising_strength=0.6, **common)
    for name in ("a", "b"):
        workspace.drop(DATA / "chelsea.png", f"paint/{name}.png")
    workspace.profile("edit", task="edit", prompt="make it watercolor", **common)
    for name in ("cat", "twin", "with"):
        workspace.drop(DATA / "chelsea.png", f"edit/{name}.png")
        (inbox / f"edit/{name}.prompt.txt").write_text("make it night\n")
    workspace.drop(DATA / "astronaut.png", "edit/with.reference.png")
    for name, seed in (("x", 1), ("y", 2)):
        workspace.drop(DATA / "astronaut.png", f"edit/{name}.png")
        workspace.drop(DATA / "astronaut.mask.png", f"edit/{name}.mask.png")
        (inbox / f"edit/{name}.yaml").write_text(f"seed: {seed}\nmask_blur: 0\n")
    # A clip whose frames follow each other: the previous result warped in (an image step).
    workspace.profile("clip", model=MODEL, temporal=["flow_init"])
    for number, name in enumerate(("astronaut.png", "astronaut.png", "chelsea.png")):
        workspace.drop(DATA / name, f"clip/shot/frame_{number + 1:04d}.png")
    workspace.profile("dev", task="edit", model=DEV, steps=2, distilled_cfg_scale=2.5)
    for name in ("cat", "twin"):
        workspace.drop(DATA / "chelsea.png", f"dev/{name}.png")
    workspace.drop(DATA / "astronaut.png", "dev/twin.reference.png")
    workspace.profile("dev-paint", model=DEV)
    workspace.drop(DATA / "chelsea.png", "dev-paint/cat.png")
    with logged() as log:
        Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    yield Run(workspace, log)


def test_every_input_is_painted_and_archived(flux2_run):
    workspace = flux2_run.workspace
    for profile in ("paint", "edit", "dev"):
        assert not workspace.failed(profile), [p.read_text() for p in workspace.failed(profile)
                                               if p.suffix == ".txt"]  # fmt: skip
    assert len(workspace.done("paint")) == 2


def test_img2img_paints_the_same_pixels_for_the_same_seed_at_the_size_rule(flux2_run):
    outbox = flux2_run.workspace.outbox / "paint"
    a, b = pixels(outbox / "a.png"), pixels(outbox / "b.png")
    assert a.shape[0] % 16 == 0 and a.shape[1] % 16 == 0, a.shape
    assert np.array_equal(a, b)
    assert a.std() > 1  # a picture, not a flat colour
    with Image.open(DATA / "chelsea.png") as original:
        assert not np.array_equal(a, np.asarray(original.convert("RGB").resize(a.shape[1::-1])))
    painted = painted_with(outbox / "a.png").params
    assert float(painted["CFG scale"]) == 4 and "Distilled CFG Scale" not in painted
    assert float(painted["Denoising strength"]) == 0.6  # img2img, though painted as inpaint
    assert "Mask blur" not in painted


def test_an_instruction_beside_the_image_edits_it(flux2_run):
    outbox = flux2_run.workspace.outbox / "edit"
    painted = painted_with(outbox / "cat.png")
    assert painted.prompt == "make it night"
    assert "Denoising strength" not in painted.params  # it starts from noise
    cat, twin = pixels(outbox / "cat.png"), pixels(outbox / "twin.png")
    assert f"{cat.shape[1]}x{cat.shape[0]}" == painted.params["Size"]
    assert np.array_equal(cat, twin)
    assert cat.std() > 1


def test_a_reference_image_is_a_further_condition_of_the_edit(flux2_run):
    workspace = flux2_run.workspace
    alone, together = (
        pixels(workspace.outbox / "edit/cat.png"),
        pixels(workspace.outbox / "edit/with.png"),
    )
    assert alone.shape == together.shape and not np.array_equal(alone, together)
    assert "with.reference.png" in {p.name for p in workspace.done("edit")}


def test_a_mask_restricts_the_edit(flux2_run):
    outbox = flux2_run.workspace.outbox / "edit"
    x, y = pixels(outbox / "x.png"), pixels(outbox / "y.png")
    repaint = repainted(x.shape)
    assert np.array_equal(x[~repaint], y[~repaint])
    assert np.abs(x[repaint] - y[repaint]).mean() > 1


def test_a_clip_is_painted_frame_after_frame_with_flow_init(flux2_run):
    workspace = flux2_run.workspace
    assert not workspace.failed("clip") and len(workspace.done("clip")) == 3
    for number in (1, 2, 3):
        frame = workspace.outbox / f"clip/shot/frame_{number:04d}.png"
        assert painted_with(frame).params["Temporal"] == "flow_init"


def test_dev_edits_from_references_with_distilled_guidance(flux2_run):
    outbox = flux2_run.workspace.outbox / "dev"
    cat, twin = pixels(outbox / "cat.png"), pixels(outbox / "twin.png")
    assert cat.shape == twin.shape and cat.std() > 1
    assert not np.array_equal(cat, twin)  # the reference is a further condition
    painted = painted_with(outbox / "cat.png").params
    assert float(painted["Distilled CFG Scale"]) == 2.5 and float(painted["CFG scale"]) == 1


def test_dev_asked_for_img2img_holds_its_files_and_says_why(flux2_run):
    workspace = flux2_run.workspace
    assert (workspace.inbox / "dev-paint/cat.png").exists()
    assert not workspace.failed("dev-paint") and not workspace.outputs("dev-paint")
    assert any("Flux.2 [dev] has no img2img or inpaint pipeline" in line
               for line in flux2_run.log)  # fmt: skip


def test_the_families_know_klein_and_dev_by_their_classes():
    assert family_of_class("Flux2KleinPipeline") is flux2.KLEIN
    assert family_of_class("Flux2KleinInpaintPipeline") is flux2.KLEIN
    assert family_of_class("Flux2Pipeline") is flux2.DEV
    assert flux2.KLEIN.img2img_as_inpaint and "inpaint" in flux2.KLEIN.pipelines
    assert not flux2.DEV.pipelines  # diffusers 0.42.1: [dev] only edits


def _pipe(*, guidance_embeds: bool, is_distilled: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        transformer=SimpleNamespace(config=SimpleNamespace(guidance_embeds=guidance_embeds)),
        config={"is_distilled": is_distilled},
    )


def test_guidance_klein_real_cfg_unless_step_distilled_dev_distilled():
    def guide(pipe: SimpleNamespace, cfg: float) -> Guidance:
        return flux2.guide(pipe, cfg_scale=cfg, distilled_cfg_scale=2.5, negative_prompt="x")

    base = guide(_pipe(guidance_embeds=False), 4.0)
    assert dict(base.call) == {"guidance_scale": 4.0} and base.negative == "x"
    distilled = guide(_pipe(guidance_embeds=False, is_distilled=True), 4.0)
    assert dict(distilled.call) == {"guidance_scale": 1.0} and distilled.negative is None
    assert dict(distilled.infotext) == {"CFG scale": 1}
    dev = guide(_pipe(guidance_embeds=True), 4.0)
    assert dict(dev.call) == {"guidance_scale": 2.5} and dev.negative is None
    assert dict(dev.infotext)["Distilled CFG Scale"] == 2.5


def test_the_text_layers_are_the_pipelines_own_where_the_encoder_has_them():
    def pipe(layers: int, default: tuple[int, ...]) -> SimpleNamespace:
        def encode_prompt(prompt: str, text_encoder_out_layers: tuple[int, ...] = default) -> None:
            return None

        config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(num_hidden_layers=layers))
        return SimpleNamespace(encode_prompt=encode_prompt,
                               text_encoder=SimpleNamespace(config=config))  # fmt: skip

    assert flux2.text_encoder_out_layers(pipe(36, (9, 18, 27))) == (9, 18, 27)  # Klein
    assert flux2.text_encoder_out_layers(pipe(40, (10, 20, 30))) == (10, 20, 30)  # [dev]
    assert flux2.text_encoder_out_layers(pipe(4, (9, 18, 27))) == (1, 2, 3)  # the tiny one


def test_check_says_dev_paints_only_edits():
    from daemon.config.profiles import Profile
    from daemon.render.family_checks import family_problems

    problems = dict(family_problems(Profile(model="m"), flux2.DEV))
    assert "no img2img or inpaint pipeline" in problems["model"]
    assert family_problems(Profile(model="m", task="edit"), flux2.DEV) == []
    assert family_problems(Profile(model="m"), flux2.KLEIN) == []


def test_check_accepts_flux2_edits_and_refuses_dev_img2img(workspace: Workspace):
    from daemon.cli import check_problems

    workspace.profile("klein", task="edit", model=MODEL)
    workspace.profile("klein-paint", model=MODEL)
    workspace.profile("dev", task="edit", model=DEV)
    workspace.profile("dev-paint", model=DEV)
    workspace.profile("warped", model=MODEL, temporal=["flow_init", "warped_noise"])
    problems = check_problems(workspace.settings())
    assert len(problems) == 2, problems
    assert "dev-paint.yaml" in problems[0] and "use it with task: edit" in problems[0]
    assert "warped.yaml" in problems[1] and "temporal warped_noise" in problems[1]
