"""``temporal:`` through the real daemon: clip folders and videos painted with key-frame
attention, flow-warped init, warped noise and a ControlNet loopback unit (tiny pipeline,
real folders, real clip state, real optical flow).

Every method must leave the clip's first frame as it is without it, change the frames after
it, paint the same frames twice, survive a kill -9 with identical frames, and blend nothing
at a cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.config.profiles import check_all
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from daemon.temporal.known_motion import cut_clip, known_motion_clip
from tests.conftest import DATA, Workspace
from tests.support.media import make_test_clip
from tests.support.workspace import wait_for
from tests.test_crash import finish_once, kill_9_when, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXED = {"width": 64, "height": 64, "denoising_strength": 0.6, "steps": 6, "seed": 7,
         "color_correction": False}  # fmt: skip
LOOPBACK = {"enabled": True, "module": "none", "model": "builtin:tiny-controlnet",
            "loopback": True}  # fmt: skip
METHODS = {
    "off": {},
    "attention": {"temporal": ["key_frame_attention"]},
    "flow": {"temporal": ["flow_init"], "temporal_blend": 0.8},
    "noise": {"temporal": ["warped_noise"]},
    "loopback": {"controlnet": [LOOPBACK]},
}
FRAMES = 4
PAN = (
    48.0,
    16.0,
)  # px/frame at 512 px: 6 px at 64, so that the noise moves by most of a latent pixel


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def outputs(workspace: Workspace, profile: str, clip: str = "shot") -> list[np.ndarray]:
    found = sorted((workspace.outbox / profile / clip).glob("frame_*.png"))
    assert len(found) == FRAMES, found
    return [read(path) for path in found]


def drop_clip(workspace: Workspace, profile: str, frames: tuple[Image.Image, ...], clip: str):
    folder = workspace.inbox / profile / clip
    folder.mkdir(parents=True, exist_ok=True)
    for number, frame in enumerate(frames, start=1):
        frame.save(folder / f"frame_{number:04d}.png")


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory, models: ModelCache) -> Workspace:
    """The same moving clip painted by every method, twice each (``<name>`` and
    ``<name>-again``), and a clip with a cut, by one daemon run."""
    workspace = Workspace(tmp_path_factory.mktemp("temporal"), models.state_dir).create()
    with Image.open(DATA / "astronaut.png") as photo:
        moving = known_motion_clip(photo.convert("RGB"), size=(64, 64), frames=FRAMES,
                                   entering=0, pan_at_512=PAN).frames  # fmt: skip
    with Image.open(DATA / "astronaut.png") as one, Image.open(DATA / "chelsea.png") as two:
        cut = cut_clip(one.convert("RGB"), two.convert("RGB"), size=(64, 64), frames=FRAMES,
                       cut_at=2, pan_at_512=PAN)  # fmt: skip
    for name, keys in METHODS.items():
        for copy in (name, f"{name}-again"):
            workspace.profile(copy, **FIXED, **keys)
            drop_clip(workspace, copy, moving, "shot")
    for name in ("off", "flow"):
        drop_clip(workspace, name, cut, "cut")
    every = {"temporal": ["key_frame_attention", "flow_init", "warped_noise"]}
    workspace.profile("inpaint", task="inpaint", **FIXED, **every, mask_blur=0)
    drop_clip(workspace, "inpaint", moving, "shot")
    (workspace.inbox / "inpaint/shot/masks").mkdir()
    left_half = Image.new("L", (64, 64))
    left_half.paste(255, (0, 0, 32, 64))
    left_half.save(workspace.inbox / "inpaint/shot/masks/mask.png")
    every_two = {"temporal": ["key_frame_attention"], "key_frame_attention": {"interval": 2}}
    workspace.profile("interval", **FIXED, **every_two)
    drop_clip(workspace, "interval", moving, "shot")
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    return workspace


@pytest.mark.parametrize("method", [m for m in METHODS if m != "off"])
def test_the_key_frame_is_painted_as_without_the_method(clip_run: Workspace, method: str):
    assert np.array_equal(outputs(clip_run, method)[0], outputs(clip_run, "off")[0])


@pytest.mark.parametrize("method", [m for m in METHODS if m != "off"])
def test_the_frames_after_it_differ_from_off(clip_run: Workspace, method: str):
    later = zip(outputs(clip_run, method)[1:], outputs(clip_run, "off")[1:], strict=True)
    assert all(not np.array_equal(mine, off) for mine, off in later)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_paints_the_same_frames_twice(clip_run: Workspace, method: str):
    again = outputs(clip_run, f"{method}-again")
    assert all(np.array_equal(a, b) for a, b in zip(outputs(clip_run, method), again, strict=True))


def test_a_key_frame_interval_makes_a_later_frame_the_key(clip_run: Workspace):
    """interval 2: frame 3 still attends to frame 1 and 2, then becomes the key frame, so
    frame 4 attends to frame 3 alone where it attended to 1 and 3."""
    every_two, first_only = outputs(clip_run, "interval"), outputs(clip_run, "attention")
    assert all(np.array_equal(a, b) for a, b in zip(every_two[:3], first_only[:3], strict=True))
    assert not np.array_equal(every_two[3], first_only[3])


def test_an_inpainted_clip_keeps_each_frames_own_unmasked_pixels(clip_run: Workspace):
    """flow_init sits out (a blended init would show outside the mask); the unmasked half
    of every frame is its own source, exactly."""
    painted = outputs(clip_run, "inpaint")
    sources = sorted((clip_run.inbox / "_done/inpaint/shot").glob("frame_*.png"))
    for output, source in zip(painted, sources, strict=True):
        assert np.array_equal(output[:, 40:], read(source)[:, 40:])


def test_every_input_is_archived_and_none_failed(clip_run: Workspace):
    for name in METHODS:
        assert len(clip_run.done(name)) == FRAMES * (2 if name in ("off", "flow") else 1)
        assert not clip_run.failed(name)


def test_the_infotext_names_the_methods_and_use_png_info_reads_them_back(
    clip_run: Workspace, models: ModelCache, tmp_path: Path
):
    with Image.open(clip_run.outbox / "flow/shot/frame_0002.png") as painted:
        params = parse_infotext(painted.info["parameters"]).params
    assert params["Temporal"] == "flow_init" and params["Temporal blend"] == "0.8"
    with Image.open(clip_run.outbox / "loopback/shot/frame_0002.png") as painted:
        assert parse_infotext(painted.info["parameters"]).params["Temporal loopback"] == "0"
    # Read back: frames dropped into a profile without temporal: paint with it again.
    workspace = Workspace(tmp_path, models.state_dir).create()
    workspace.profile("reuse", use_png_info=True, **FIXED)
    for number in (1, 2):
        workspace.drop(clip_run.outbox / f"flow/shot/frame_{number:04d}.png",
                       f"reuse/shot/frame_{number:04d}.png")  # fmt: skip
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    with Image.open(workspace.outbox / "reuse/shot/frame_0002.png") as repainted:
        again = parse_infotext(repainted.info["parameters"]).params
    assert again["Temporal"] == "flow_init" and again["Temporal blend"] == "0.8"


def test_a_cut_blends_nothing_and_says_so(clip_run: Workspace):
    """flow_init at a cut: the init is the frame itself, so the frame paints as off's."""
    flow, off = outputs(clip_run, "flow", "cut"), outputs(clip_run, "off", "cut")
    assert np.array_equal(flow[2], off[2]), "the cut frame blends nothing"
    assert not np.array_equal(flow[1], off[1]), "the frame before the cut did blend"
    assert not np.array_equal(flow[3], off[3]), "the frame after the cut blends again"


def test_a_killed_video_resumes_with_identical_frames(workspace: Workspace):
    """kill -9 mid-video: the resumed frames take their predecessors from the files kept on
    disk, so they are the frames an uninterrupted run paints."""
    every = {"temporal": ["key_frame_attention", "flow_init", "warped_noise"]}
    for name in ("killed", "whole"):
        workspace.profile(name, keep_frames=True, **{**FIXED, "steps": 12}, **every)
    make_test_clip(workspace.root / "v.mp4", frames=8, size=(64, 64))
    workspace.drop(workspace.root / "v.mp4", "killed/v.mp4")
    config = write_config(workspace)
    frames = workspace.outbox / "killed/v"
    kill_9_when(config, lambda: 2 <= len(list(frames.glob("*.png"))) < 8)
    assert 2 <= len(list(frames.glob("*.png"))) < 8
    assert "resumed:" in finish_once(config)
    workspace.drop(workspace.root / "v.mp4", "whole/v.mp4")
    finish_once(config)  # the same video, uninterrupted
    killed = [read(p) for p in sorted(frames.glob("*.png"))]
    whole = [read(p) for p in sorted((workspace.outbox / "whole/v").glob("*.png"))]
    assert len(killed) == len(whole) == 8
    assert all(np.array_equal(a, b) for a, b in zip(killed, whole, strict=True))


def test_a_single_image_is_painted_without_temporal_with_a_note(
    workspace: Workspace, running, logs
):
    workspace.profile("flow", **FIXED, **METHODS["flow"])
    workspace.profile("off", **FIXED)
    running()
    workspace.drop(DATA / "chelsea.png", "flow/single.png")
    workspace.drop(DATA / "chelsea.png", "off/single.png")
    wait_for(lambda: workspace.done("flow") and workspace.done("off"))
    assert np.array_equal(read(workspace.outbox / "flow/single.png"),
                          read(workspace.outbox / "off/single.png"))  # fmt: skip
    assert any("this single image is painted without them" in line for line in logs)


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ({"temporal": ["flow_warp"]}, "flow_warp"),
        ({"temporal": ["key_frame_attention"], "key_frame_attention": {"blocks": "side"}},
         "blocks"),
        ({"temporal_blend": 1.5}, "temporal_blend"),
        ({"temporal": ["flow_init"], "live": True}, "a live profile paints each export"),
        ({"controlnet": [LOOPBACK], "live": True}, "a live profile paints each export"),
        ({"temporal": ["flow_init"], "batch_size": 2}, "set batch_size and n_iter to 1"),
        ({"temporal": ["key_frame_attention"],
          "controlnet": [{"enabled": True, "module": "reference_only"}]}, "remove one of them"),
        ({"task": "interrogate", "model": "builtin:tiny-tagger", "temporal": ["flow_init"]},
         "temporal"),
    ],
)  # fmt: skip
def test_check_refuses_bad_temporal_keys(workspace: Workspace, keys: dict, said: str):
    workspace.profile("bad", **keys)
    _, problems = check_all(workspace.profiles)
    assert any(said in problem for problem in problems), problems


def test_temporal_frames_never_share_a_pipeline_call():
    """Each takes the result of the one before it: painted one at a time, in order."""
    from daemon.config.profiles import Profile
    from daemon.render.render import share_a_call
    from daemon.render.values import RenderRequest, TemporalInputs

    settings = Profile.model_validate({"model": "builtin:tiny-sd", **METHODS["flow"]})
    image = Image.new("RGB", (64, 64))
    plain = RenderRequest("a", settings, image, size=(64, 64))
    frame = RenderRequest("b", settings, image, size=(64, 64),
                          temporal=TemporalInputs(index=2, source=image))  # fmt: skip
    assert share_a_call(plain, plain)
    assert not share_a_call(frame, frame) and not share_a_call(plain, frame)
