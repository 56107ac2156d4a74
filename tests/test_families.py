"""Today's model families through the real daemon: SD 3.5, Flux.1, Flux.2 Klein and
Qwen-Image, each as a built-in tiny model with random weights, painting img2img and inpaint
from real files.

For each family, in one daemon run: the same input twice paints the same pixels; a LoRA in
the prompt changes them and is hashed in the infotext; inpainting keeps every unmasked pixel
(two seeds differ only under the mask); the infotext, read back by ``use_png_info``, paints
with the same settings again (a second run)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from daemon.models.builtin import ensure_builtin
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from daemon.render.family_checks import family_problems, family_warnings
from tests.conftest import DATA, Workspace
from tests.support.lora import kohya_flux_lora, transformer_lora
from tests.support.media import make_test_clip
from tests.support.painted import Run, painted_with, pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = {
    "flux": "builtin:tiny-flux",
    "sd3": "builtin:tiny-sd3",
    "qwen": "builtin:tiny-qwen-image",
    "flux2": "builtin:tiny-flux2",  # Klein (and its edits: test_flux2.py)
}
GUIDANCE = {"distilled_cfg_scale": 2.5, "shift": 2.0, "cfg_scale": 4.0}


@pytest.fixture(scope="module")
def families_run(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Run]:
    from loguru import logger

    workspace = Workspace(tmp_path_factory.mktemp("families"), state_dir).create()
    loras = workspace.root / "Lora"
    loras.mkdir()
    for family, model in FAMILIES.items():
        folder = ensure_builtin(model.removeprefix("builtin:"), state_dir / "builtin")
        save_file(transformer_lora(folder, seed=7), loras / f"{family}-lora.safetensors")
        workspace.profile(family, model=model, negative_prompt="blurry", **GUIDANCE)
        for name in ("a", "b", "lora"):
            workspace.drop(DATA / "chelsea.png", f"{family}/{name}.png")
        (workspace.inbox / f"{family}/lora.prompt.txt").write_text(f"a test <lora:{family}-lora:1>")
        workspace.profile(f"{family}-inpaint", model=model, mask_blur=0)
        for name, seed in (("x", 1), ("y", 2)):
            workspace.drop(DATA / "astronaut.png", f"{family}-inpaint/{name}.png")
            workspace.drop(DATA / "astronaut.mask.png", f"{family}-inpaint/{name}.mask.png")
            (workspace.inbox / f"{family}-inpaint/{name}.yaml").write_text(f"seed: {seed}\n")
        workspace.profile(f"{family}-reads", model=model, use_png_info=True)
        # Its frames in one pipeline call of two (the video's max_batch).
        workspace.profile(f"{family}-video", model=model, max_batch=2)
        make_test_clip(workspace.inbox / f"{family}-video/v.mp4", frames=2, audio=False)
    # A clip whose frames follow each other: the noise carried along (scale_noise).
    workspace.profile(
        "flux-temporal", model=FAMILIES["flux"], temporal=["flow_init", "warped_noise"]
    )
    for number, name in enumerate(("astronaut.png", "astronaut.png", "chelsea.png")):
        workspace.drop(DATA / name, f"flux-temporal/shot/frame_{number + 1:04d}.png")
    save_file(kohya_flux_lora(seed=3), loras / "kohya-flux.safetensors")
    workspace.drop(DATA / "chelsea.png", "flux/kohya.png")
    (workspace.inbox / "flux/kohya.prompt.txt").write_text("a test <lora:kohya-flux:1>")
    workspace.profile("flux-notes", model=FAMILIES["flux"], prompt="a (red:1.3) cat",
                      inpainting_fill="latent noise")  # fmt: skip
    workspace.drop(DATA / "astronaut.png", "flux-notes/n.png")
    workspace.drop(DATA / "astronaut.mask.png", "flux-notes/n.mask.png")
    log: list[str] = []
    handler = logger.add(lambda message: log.append(str(message).rstrip()), level="INFO")
    settings = workspace.settings(lora_dirs=[loras])
    # Its own cache, for its LoRA folder (the built models are the session's).
    models = ModelCache(models_dir=None, state_dir=state_dir, device="cpu", lora_dirs=[loras])
    try:
        Daemon(settings, models=models, watch=False).run_once(tick=0.01)
        for family in FAMILIES:  # its own output, infotext and all, painted again
            shutil.copyfile(workspace.outbox / f"{family}/a.png",
                            workspace.inbox / f"{family}-reads/again.png")  # fmt: skip
        Daemon(settings, models=models, watch=False).run_once(tick=0.01)
    finally:
        logger.remove(handler)
    yield Run(workspace, log)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_input_is_painted_and_archived(families_run, family):
    workspace = families_run.workspace
    for profile in (family, f"{family}-inpaint", f"{family}-reads"):
        assert not workspace.failed(profile), [p.read_text() for p in workspace.failed(profile)
                                               if p.suffix == ".txt"]  # fmt: skip
    # three images and their prompt file (Flux: and a kohya LoRA's image and prompt)
    assert len(workspace.done(family)) == (6 if family == "flux" else 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_same_input_and_seed_paint_the_same_pixels(families_run, family):
    outbox = families_run.workspace.outbox / family
    a, b = pixels(outbox / "a.png"), pixels(outbox / "b.png")
    assert a.shape[0] % 16 == 0 and a.shape[1] % 16 == 0, a.shape  # the family's size rule
    assert np.array_equal(a, b)
    assert a.std() > 1  # a picture, not a flat colour


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_in_the_prompt_changes_the_picture_and_is_hashed(families_run, family):
    outbox = families_run.workspace.outbox / family
    changed = np.abs(pixels(outbox / "lora.png") - pixels(outbox / "a.png")).max(axis=-1) > 0
    assert changed.mean() > 0.05  # (a random LoRA on random weights: small, but everywhere)
    painted = painted_with(outbox / "lora.png")
    assert painted.params["Lora hashes"].startswith(f"{family}-lora: ")
    assert "Lora hashes" not in painted_with(outbox / "a.png").params


def test_a_kohya_flux_lora_from_civitai_applies(families_run):
    outbox = families_run.workspace.outbox / "flux"
    changed = np.abs(pixels(outbox / "kohya.png") - pixels(outbox / "a.png")).max(axis=-1) > 0
    assert changed.mean() > 0.05
    assert painted_with(outbox / "kohya.png").params["Lora hashes"].startswith("kohya-flux: ")


@pytest.mark.parametrize("family", FAMILIES)
def test_inpainting_keeps_every_unmasked_pixel(families_run, family):
    outbox = families_run.workspace.outbox / f"{family}-inpaint"
    x, y = pixels(outbox / "x.png"), pixels(outbox / "y.png")
    with Image.open(DATA / "astronaut.mask.png") as mask:
        # (widened by 2 px: the engine resizes the mask its own way)
        small = mask.convert("L").resize(x.shape[1::-1]).filter(ImageFilter.MaxFilter(5))
        repaint = np.asarray(small) > 0
    assert np.array_equal(x[~repaint], y[~repaint])
    assert np.abs(x[repaint] - y[repaint]).mean() > 1  # the seeds differ where it repaints


@pytest.mark.parametrize("family", FAMILIES)
def test_a_video_is_painted_frame_by_frame_two_frames_a_call(families_run, family):
    import av

    outbox = families_run.workspace.outbox / f"{family}-video"
    with av.open(str(outbox / "v.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape[:2] == (48, 64)
    assert "\nFrames: 2, " in (outbox / "v.txt").read_text()
    assert frames[0].std() > 1  # painted, not blank


def test_a_flux_clip_carries_its_noise_and_its_picture_from_frame_to_frame(families_run):
    workspace = families_run.workspace
    assert not workspace.failed("flux-temporal") and len(workspace.done("flux-temporal")) == 3
    shot = workspace.outbox / "flux-temporal/shot"
    for number in (1, 2, 3):
        params = painted_with(shot / f"frame_{number:04d}.png").params
        assert params["Temporal"] == "flow_init+warped_noise"


def test_the_infotext_says_what_each_family_was_guided_by(families_run):
    outbox = families_run.workspace.outbox
    flux = painted_with(outbox / "flux/a.png").params
    assert float(flux["CFG scale"]) == 4 and float(flux["Distilled CFG Scale"]) == 2.5
    assert float(flux["Shift"]) == 2 and flux["Sampler"] == "Euler"
    sd3 = painted_with(outbox / "sd3/a.png").params
    assert float(sd3["CFG scale"]) == 4 and "Distilled CFG Scale" not in sd3
    qwen = painted_with(outbox / "qwen/a.png").params
    assert float(qwen["CFG scale"]) == 4 and "Distilled CFG Scale" not in qwen


@pytest.mark.parametrize("family", FAMILIES)
def test_use_png_info_reads_its_own_infotext_back(families_run, family):
    outbox = families_run.workspace.outbox
    first = painted_with(outbox / f"{family}/a.png").params
    again = painted_with(outbox / f"{family}-reads/again.png").params
    keys = ("Steps", "Sampler", "CFG scale", "Distilled CFG Scale", "Shift", "Seed")
    assert {k: first.get(k) for k in keys} == {k: again.get(k) for k in keys}
    assert painted_with(outbox / f"{family}-reads/again.png").negative_prompt == "blurry"


def test_settings_a_family_cannot_follow_are_replaced_with_a_note(families_run):
    log = "\n".join(families_run.log)
    assert "Flux.1 does not take A1111's emphasis: weights like (word:1.2) were ignored" in log
    assert "masked content 'latent noise' works on SD latents only; Flux.1 used 'original'" in log
    assert not families_run.workspace.failed("flux-notes")
    assert (families_run.workspace.outbox / "flux-notes/n.png").is_file()


def test_check_warns_of_what_a_family_ignores_and_refuses_what_no_file_gets_past():
    from daemon.config.profiles import Profile
    from daemon.families import flux, sd, sd3

    profile = Profile(model="m", prompt="a (red:1.3) cat", clip_skip=2, shift=2.0,
                      inpainting_fill="latent nothing")  # fmt: skip
    assert [key for key, _ in family_warnings(profile, flux.FAMILY)] == [
        "clip_skip", "prompt", "inpainting_fill", "sampler_name",
    ]  # fmt: skip
    assert [key for key, _ in family_warnings(profile, sd3.FAMILY)] == [
        "prompt", "inpainting_fill", "sampler_name",
    ]  # fmt: skip
    note = dict(family_warnings(profile, flux.FAMILY))["sampler_name"]
    assert note.startswith("DPM++ 2M cannot follow a flow-matching schedule; used Euler")
    assert "sampler_name" not in dict(family_warnings(profile.model_copy(
        update={"sampler_name": "Euler"}), flux.FAMILY))  # fmt: skip
    assert [key for key, _ in family_warnings(profile, sd.FAMILY)] == ["shift"]
    unit = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet"}
    editing = Profile(model="m", prompt="a [cat:dog:0.5]", controlnet=[unit])
    problems = dict(family_problems(editing, flux.FAMILY))
    assert "ControlNet" in problems["model"] and "its files would wait" in problems["model"]
    assert "every file would fail" in problems["prompt"]
    assert family_problems(editing, sd.FAMILY) == []
