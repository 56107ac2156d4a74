"""Control videos, through the real daemon: ``<stem>.control.gif`` / ``.control-<n>.mp4``
beside a video steers frame i by its frame i; one of another length fails the video with a
report naming both counts, and the two files go to ``_failed`` together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.intake.names import is_input_name
from daemon.media.video import read_frames
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace
from tests.support.media import make_test_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AS_IS = {  # the control frame as it is, at the painting's size: what the net gets, exactly
    "enabled": True, "module": "none", "model": "builtin:tiny-controlnet",
    "resize_mode": "Just Resize", "own_image": True,
}  # fmt: skip
FIXED = {"width": 64, "height": 48, "denoising_strength": 1.0}


@pytest.fixture(scope="module")
def video_run(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> tuple[Workspace, list[np.ndarray]]:
    """One daemon run: a 3-frame video with a 3-frame control GIF (decoded pixels unlike the
    video's own, so the net cannot be getting the input), one with a 4-frame control video,
    and an image with a control video. Returns the control images the net was given."""
    import torch

    workspace = Workspace(tmp_path_factory.mktemp("control-video"), state_dir).create()
    workspace.profile("v", controlnet=[{"enabled": False}, AS_IS], **FIXED)
    make_test_clip(workspace.inbox / "v/clip.mp4", frames=3, audio=False)
    make_test_clip(workspace.inbox / "v/clip.control-1.gif", frames=3)
    make_test_clip(workspace.inbox / "v/long.mp4", frames=3, audio=False)
    make_test_clip(workspace.inbox / "v/long.control-1.mp4", frames=4, audio=False)
    workspace.drop(DATA / "chelsea.png", "v/cat.png")
    make_test_clip(workspace.inbox / "v/cat.control-1.mp4", frames=2, audio=False)
    seen: list[np.ndarray] = []

    def spy(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        for row in kwargs["controlnet_cond"]:
            picture = (row.permute(1, 2, 0).float() * 255).round().to(torch.uint8).numpy()
            if not any(np.array_equal(picture, earlier) for earlier in seen):
                seen.append(picture)

    handle = models.controlnets.get(str(AS_IS["model"])).net.register_forward_pre_hook(
        spy, with_kwargs=True
    )
    try:
        Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    finally:
        handle.remove()
    return workspace, seen


def test_frame_i_is_steered_by_the_control_videos_frame_i(video_run):
    workspace, seen = video_run
    expected = [np.asarray(frame.convert("RGB")) for frame in read_frames(workspace_done(
        workspace, "clip.control-1.gif"))]  # fmt: skip
    assert len(expected) == 3
    assert len(seen) == 3 and all(
        np.array_equal(a, b) for a, b in zip(seen, expected, strict=True)
    ), "the net did not get the control video's frames, one per frame, in order"
    assert (workspace.outbox / "v/clip.mp4").exists()


def workspace_done(workspace: Workspace, name: str) -> Path:
    return workspace.inbox / "_done/v" / name


def test_a_control_video_of_another_length_fails_its_video_naming_both_counts(video_run):
    workspace, _ = video_run
    failed = workspace.inbox / "_failed/v"
    report = (failed / "long.error.txt").read_text()
    assert report.startswith("long.control-1.mp4 has 4 frames but long.mp4 has 3"), report
    assert (failed / "long.mp4").exists() and (failed / "long.control-1.mp4").exists()


def test_a_control_video_beside_an_image_fails_it_with_a_report(video_run):
    workspace, _ = video_run
    report = (workspace.inbox / "_failed/v/cat.error.txt").read_text()
    assert "cat.control-1.mp4 is a control video" in report, report
    assert (workspace.inbox / "_failed/v/cat.control-1.mp4").exists()


def test_a_control_video_is_a_companion_not_an_input():
    assert not is_input_name("clip.control.mp4") and not is_input_name("clip.control-2.webm")
    assert is_input_name("clip.mp4") and is_input_name("control.mp4")
