"""ControlNet control images per file and per frame, through the real daemon: real folders,
the real watcher and pairing, the real tiny pipeline and the built-in tiny ControlNet.

``<stem>.control.png`` is unit 0's image, ``<stem>.control-<n>.png`` unit n's; a clip
folder's ``control/`` holds them by frame number. Every profile saves its control images
(``save_control``), so that each test can see which image each unit used."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace
from tests.support.workspace import wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CANNY = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet"}
AS_IS = {  # the image itself, stretched: what it is, is what the unit sees
    "enabled": True, "module": "none", "model": "builtin:tiny-controlnet",
    "resize_mode": "Just Resize",
}  # fmt: skip
FIXED = {"width": 64, "height": 64, "save_control": True, "denoising_strength": 1.0}

CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Path | bytes]]] = {
    "input": ([CANNY], {}),
    "own": ([CANNY], {"cat.control.png": DATA / "astronaut.png"}),
    "itself": (
        [{**CANNY, "resize_mode": "Just Resize"}],
        {"cat.control.png": DATA / "chelsea.png"},
    ),
    # (two objects: yaml.safe_dump would write an alias, which a profile may not hold)
    "second": ([CANNY, {**CANNY}], {"cat.control-1.png": DATA / "astronaut.png"}),
    "broken": ([CANNY], {"cat.control.png": b"\x89PNG\r\n\x1a\n this is not a picture"}),
    "unused": ([], {"cat.control.png": DATA / "astronaut.png"}),
}
"""Profile name → its units, and the companions dropped beside ``cat.png`` (chelsea)."""


def noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def inbox_run(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> Workspace:
    """Every case painted by one daemon run, the same picture and seed in each."""
    workspace = Workspace(tmp_path_factory.mktemp("control-images"), state_dir).create()
    for name, (units, companions) in CASES.items():
        workspace.profile(name, controlnet=units, **FIXED)
        for companion, content in companions.items():
            if isinstance(content, bytes):
                (workspace.inbox / name / companion).write_bytes(content)
            else:
                workspace.drop(content, f"{name}/{companion}")
        image = workspace.drop(DATA / "chelsea.png", f"{name}/cat.png")
        if name == "broken":  # written long ago: not one whose writer may only have paused
            os.utime(image, (time.time() - 60, time.time() - 60))
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    return workspace


def output(workspace: Workspace, profile: str, name: str = "cat.png") -> np.ndarray:
    return read(workspace.outbox / profile / name)


def test_a_dropped_control_image_steers_instead_of_the_input(inbox_run):
    assert not np.array_equal(output(inbox_run, "own"), output(inbox_run, "input"))
    own_edges = output(inbox_run, "own", "cat.control.png")
    assert not np.array_equal(own_edges, output(inbox_run, "input", "cat.control.png"))
    # The input dropped as its own control image paints exactly as the input does.
    assert np.array_equal(output(inbox_run, "itself"), output(inbox_run, "input"))
    for name in ("cat.png", "cat.control.png"):
        assert (inbox_run.inbox / "_done/own" / name).exists(), name


def test_a_control_1_image_goes_to_unit_1(inbox_run):
    assert np.array_equal(
        output(inbox_run, "second", "cat.control.png"),
        output(inbox_run, "input", "cat.control.png"),
    ), "unit 0 has no image of its own: the input"
    assert np.array_equal(
        output(inbox_run, "second", "cat.control-1.png"),
        output(inbox_run, "own", "cat.control.png"),
    ), "unit 1 has astronaut"
    assert (inbox_run.inbox / "_done/second/cat.control-1.png").exists()


def test_a_control_image_that_does_not_decode_fails_its_input_with_a_report(inbox_run):
    failed = inbox_run.inbox / "_failed/broken"
    report = (failed / "cat.error.txt").read_text()
    assert "ControlNet unit 0's control image" in report and "cat.control.png" in report
    assert (failed / "cat.png").exists() and (failed / "cat.control.png").exists()
    assert not inbox_run.outputs("broken")


def test_a_control_image_without_a_unit_is_archived_with_its_input_and_unused(inbox_run):
    assert (inbox_run.inbox / "_done/unused/cat.control.png").exists()
    assert not (inbox_run.outbox / "unused/cat.control.png").exists()
    assert (inbox_run.outbox / "unused/cat.png").exists()


def test_a_late_control_image_is_paired_within_the_window(workspace: Workspace, running):
    workspace.profile("late", controlnet=[{**AS_IS, "own_image": True}], **FIXED)
    daemon = running(pairing_window=30.0)
    image = workspace.drop(DATA / "chelsea.png", "late/cat.png")
    wait_for(lambda: image in daemon.admission.waiting())
    assert not workspace.outputs("late"), "it waits for its control image"
    control = noise(1)
    control.save(workspace.inbox / "late/cat.control.png")
    wait_for(lambda: len(workspace.done("late")) == 2)
    # What the unit used, saved: the control image itself (module none, the painting's size).
    assert np.array_equal(read(workspace.outbox / "late/cat.control.png"), np.asarray(control))


def test_a_missing_own_control_image_fails_its_input_after_the_window(
    workspace: Workspace, running
):
    workspace.profile("alone", controlnet=[CANNY, {**AS_IS, "own_image": True}], **FIXED)
    running(pairing_window=0.3)
    workspace.drop(DATA / "chelsea.png", "alone/cat.png")
    wait_for(lambda: (workspace.inbox / "_failed/alone/cat.png").exists())
    report = (workspace.inbox / "_failed/alone/cat.error.txt").read_text()
    assert report.startswith("no control image for cat.png: ControlNet unit 1"), report
    assert "cat.control-1.png" in report


def test_a_clips_control_folder_pairs_frames_by_number_one_arriving_late(
    workspace: Workspace, running
):
    workspace.profile("clip", controlnet=[{**AS_IS, "own_image": True}], **FIXED)
    daemon = running(pairing_window=30.0)
    controls = {number: noise(number) for number in (1, 2)}
    folder = workspace.inbox / "clip/shot"
    (folder / "control").mkdir(parents=True)
    controls[1].save(folder / "control/edges_0001.png")
    for number in (1, 2):
        workspace.drop(DATA / "chelsea.png", f"clip/shot/frame_{number:04d}.png")
    late = folder / "frame_0002.png"
    wait_for(lambda: late in daemon.admission.waiting())
    controls[2].save(folder / "control/edges_0002.png")
    wait_for(lambda: len(workspace.done("clip")) == 4)
    for number, control in controls.items():
        saved = workspace.outbox / f"clip/shot/frame_{number:04d}.control.png"
        assert np.array_equal(read(saved), np.asarray(control)), number
        assert (workspace.inbox / f"_done/clip/shot/control/edges_{number:04d}.png").exists()


def test_a_control_image_beside_a_video_steers_every_frame(workspace: Workspace, running):
    from daemon.media.video import read_frames
    from tests.support.media import make_test_clip

    make_test_clip(workspace.root / "v.mp4", frames=3)
    for name in ("with", "without"):
        workspace.profile(name, controlnet=[AS_IS], **FIXED)
    running()
    noise(3).save(workspace.inbox / "with/v.control.png")
    for name in ("with", "without"):
        workspace.drop(workspace.root / "v.mp4", f"{name}/v.mp4")
    wait_for(lambda: len(workspace.done("with")) == 2 and len(workspace.done("without")) == 1)
    steered, plain = (
        [
            np.asarray(frame)
            for _, frame in zip(
                range(3), read_frames(workspace.outbox / f"{name}/v.mp4"), strict=False
            )
        ]
        for name in ("with", "without")
    )
    assert len(steered) == len(plain) == 3
    assert all(not np.array_equal(a, b) for a, b in zip(steered, plain, strict=True))
