"""``ip_adapter: {reference: key_frame}`` through the real daemon: a clip's key frame, as
painted, is the IP-Adapter reference of every frame after it (tiny pipeline, built-in tiny
IP-Adapter, real folders and clip state).

Colour correction is off in these profiles, so that only the key-frame reference makes the
frames after the key frame wait for it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from daemon.clips.state import REFERENCE_NAME, ClipStore
from daemon.config.profiles import Profile
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace
from tests.support.workspace import wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYED = {"model": "builtin:tiny-ip-adapter", "reference": "key_frame"}
FIXED = {"width": 64, "height": 64, "denoising_strength": 1.0, "steps": 4}
FRAMES = ("frame_0001.png", "frame_0002.png", "frame_0003.png")


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def infotext(path: Path) -> str:
    with Image.open(path) as image:
        return str(image.info["parameters"])


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory, models: ModelCache) -> tuple[Workspace, int]:
    """The same 3-frame clip (and a single image) painted with the key frame as reference and
    without an adapter, by one daemon run; returns the workspace and the encodings it made."""
    workspace = Workspace(tmp_path_factory.mktemp("key-frame"), models.state_dir).create()
    for name, adapter in (("keyed", KEYED), ("plain", None)):
        workspace.profile(name, ip_adapter=adapter, color_correction=False, **FIXED)
        for number, frame in enumerate(FRAMES):
            picture = ("chelsea.png", "astronaut.png", "chelsea.png")[number]
            workspace.drop(DATA / picture, f"{name}/shot/{frame}")
        workspace.drop(DATA / "chelsea.png", f"{name}/single.png")
    before = models.ip_adapters.encoded
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    return workspace, models.ip_adapters.encoded - before


def test_the_key_frame_paints_without_the_adapter_and_the_frames_after_it_with_it(clip_run):
    workspace, _ = clip_run
    keyed, plain = (
        [read(workspace.outbox / f"{name}/shot/{frame}") for frame in FRAMES]
        for name in ("keyed", "plain")
    )
    assert np.array_equal(keyed[0], plain[0]), "nothing to refer to yet"
    assert not np.array_equal(keyed[1], plain[1])
    assert not np.array_equal(keyed[2], plain[2])
    texts = [infotext(workspace.outbox / f"keyed/shot/{frame}") for frame in FRAMES]
    assert "ControlNet 0" not in texts[0]
    assert all('ControlNet 0: "Module: ip-adapter_clip_sd15' in text for text in texts[1:])


def test_the_key_frames_embedding_is_encoded_once_for_the_clip(clip_run):
    _, encoded = clip_run
    assert encoded == 1


def test_a_single_image_paints_without_the_adapter_and_is_not_failed(clip_run):
    workspace, _ = clip_run
    single = workspace.outbox / "keyed/single.png"
    assert np.array_equal(read(single), read(workspace.outbox / "plain/single.png"))
    assert "ControlNet 0" not in infotext(single)
    assert (workspace.inbox / "_done/keyed/single.png").exists()


def test_a_single_image_says_why_it_has_no_adapter(workspace: Workspace, running, logs):
    workspace.profile("keyed", ip_adapter=KEYED, **FIXED)
    running()
    workspace.drop(DATA / "chelsea.png", "keyed/single.png")
    wait_for(lambda: len(workspace.done("keyed")) == 1)
    said = [line for line in logs if "reference: key_frame refers to a clip's key frame" in line]
    assert len(said) == 1, logs


def test_a_reference_image_with_the_clip_wins_over_the_key_frame(
    workspace: Workspace, models: ModelCache
):
    workspace.profile("keyed", ip_adapter=KEYED, color_correction=False, **FIXED)
    workspace.profile("given", ip_adapter={"model": KEYED["model"]}, color_correction=False,
                      **FIXED)  # fmt: skip
    for name in ("keyed", "given"):
        (workspace.inbox / f"{name}/shot/reference").mkdir(parents=True)
        Image.open(DATA / "astronaut.png").save(workspace.inbox / f"{name}/shot/reference/r.png")
        for frame in FRAMES[:2]:
            workspace.drop(DATA / "chelsea.png", f"{name}/shot/{frame}")
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    for frame in FRAMES[:2]:
        keyed, given = (read(workspace.outbox / f"{n}/shot/{frame}") for n in ("keyed", "given"))
        assert np.array_equal(keyed, given), frame


def test_a_clip_resumed_by_another_daemon_refers_to_the_key_frame_kept_on_disk(tmp_path):
    """What a daemon killed mid-clip leaves: the clip's state folder with its key frame. A
    new store (a new process) serves the same pixels from there."""
    store = ClipStore(tmp_path / "clips")
    folder = store.folder("keyed", PurePosixPath("shot"))
    clip = store.open(folder, tmp_path / "inbox/keyed/shot")
    assert clip.key_frame() is None, "no key frame yet: the asking frame leads"
    painted = Image.open(DATA / "chelsea.png").convert("RGB")
    clip.keep_reference(painted)
    resumed = ClipStore(tmp_path / "clips").open(folder, tmp_path / "inbox/keyed/shot")
    kept = resumed.key_frame()
    assert kept is not None and np.array_equal(np.asarray(kept), np.asarray(painted))
    assert resumed.reference == folder / REFERENCE_NAME


def test_a_video_refers_its_frames_to_its_first_frame_as_painted(
    workspace: Workspace, running, models: ModelCache
):
    from tests.support.media import make_test_clip

    make_test_clip(workspace.root / "v.mp4", frames=3)
    for name, adapter in (("keyed", KEYED), ("plain", None)):
        workspace.profile(name, ip_adapter=adapter, color_correction=False, keep_frames=True,
                          **FIXED)  # fmt: skip
    running()
    before = models.ip_adapters.encoded
    for name in ("keyed", "plain"):
        workspace.drop(workspace.root / "v.mp4", f"{name}/v.mp4")
    wait_for(lambda: len(workspace.done("keyed")) == 1 and len(workspace.done("plain")) == 1)
    keyed, plain = (
        [read(path) for path in sorted((workspace.outbox / name / "v").glob("*.png"))]
        for name in ("keyed", "plain")
    )
    assert len(keyed) == len(plain) == 3
    assert np.array_equal(keyed[0], plain[0])
    assert not np.array_equal(keyed[1], plain[1]) and not np.array_equal(keyed[2], plain[2])
    assert models.ip_adapters.encoded - before == 1


@pytest.mark.parametrize("value", ["key-frame", "KeyFrame", "keyframe", "Key_Frame", " "])
def test_a_misspelt_key_frame_or_an_empty_reference_is_refused(value):
    with pytest.raises(ValidationError, match=r"ip_adapter\.reference"):
        Profile(
            model="builtin:tiny-sd",
            ip_adapter={"model": "builtin:tiny-ip-adapter", "reference": value},
        )


def test_key_frame_is_reserved_and_a_file_of_that_name_is_written_with_its_folder():
    keyed = Profile(model="builtin:tiny-sd", ip_adapter=KEYED).ip_adapter
    assert keyed is not None and keyed.refers_to_key_frame
    as_file = Profile(
        model="builtin:tiny-sd", ip_adapter={**KEYED, "reference": "./key_frame"}
    ).ip_adapter
    assert as_file is not None and not as_file.refers_to_key_frame
