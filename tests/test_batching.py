"""Frames that share every setting are painted in one pipeline call, each with its own seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.config.profiles import Profile
from daemon.engines.diffusion import DiffusionEngine
from daemon.render.cache import ModelCache
from daemon.render.executor import InProcessExecutor
from daemon.render.values import RenderRequest
from tests.conftest import FAST_PROFILE, Workspace, wait_for
from tests.support.media import make_test_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FRAMES = 5


def frames_of(folder: Path) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
        for p in sorted(folder.glob("*.png"))
    ]


def test_a_batched_video_is_within_one_level_of_frame_by_frame(workspace: Workspace, running, logs):
    """The bound stated in the README: batched results differ from one-by-one ones by at
    most 1 level in 8 bits (the batch sums in another order)."""
    painted: dict[int, list[np.ndarray]] = {}
    for batch in (1, 4):
        name = f"b{batch}"
        workspace.profile(name, keep_frames=True, color_correction=False, max_batch=batch,
                          seed_mode="increment")  # fmt: skip
        make_test_clip(workspace.root / f"{name}.mp4", frames=FRAMES, size=(64, 48), audio=False)
    daemon = running()
    for batch in (1, 4):
        workspace.drop(workspace.root / f"b{batch}.mp4", f"b{batch}/clip.mp4")
    wait_for(lambda: daemon.tally.done == 2, timeout=120)
    for batch in (1, 4):
        painted[batch] = frames_of(workspace.outbox / f"b{batch}" / "clip")
    assert len(painted[1]) == len(painted[4]) == FRAMES
    worst = max(int(np.abs(a - b).max()) for a, b in zip(painted[1], painted[4], strict=True))
    assert worst <= 1, f"batched frames differ by {worst} levels"
    seeds = [
        Image.open(p).info["parameters"]
        for p in sorted((workspace.outbox / "b4/clip").glob("*.png"))
    ]
    assert len({text.split("Seed: ")[1].split(",")[0] for text in seeds}) == FRAMES  # own seeds


def request(settings: Profile, seed: int) -> RenderRequest:
    image = Image.new("RGB", (64, 64), (seed % 255, 90, 140))
    return RenderRequest(f"frame {seed}", settings, image, size=(64, 64), seed=seed)


@pytest.fixture
def executor(models: ModelCache) -> InProcessExecutor:
    return InProcessExecutor(models)


def test_one_request_failing_in_a_batch_fails_alone(executor: InProcessExecutor, monkeypatch):
    """Fault injection: the batched call fails, and so does painting seed 666 alone."""
    settings = Profile.model_validate(FAST_PROFILE)
    real = DiffusionEngine.paint

    def batch_fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something in this batch is wrong")

    def paint(self: DiffusionEngine, canvas: Any, settings: Profile, **kwargs: Any) -> Any:
        if kwargs["seed"] == 666:
            raise ValueError("this input is the bad one")
        return real(self, canvas, settings, **kwargs)

    monkeypatch.setattr(DiffusionEngine, "paint_batch", batch_fails)
    monkeypatch.setattr(DiffusionEngine, "paint", paint)
    outcomes = executor.render([request(settings, 1), request(settings, 666), request(settings, 3)])
    assert isinstance(outcomes[1], ValueError)
    assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[2], Exception)
    assert outcomes[0].seeds == (1,) and outcomes[2].seeds == (3,)


def test_out_of_memory_on_a_batch_tries_smaller_batches_first(
    executor: InProcessExecutor, monkeypatch, logs
):
    """Fault injection: a batch of more than two runs out of memory; halves of two fit."""
    import torch

    settings = Profile.model_validate(FAST_PROFILE)
    real = DiffusionEngine.paint_batch
    sizes: list[int] = []

    def limited(self: DiffusionEngine, images: list[Any], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(DiffusionEngine, "paint_batch", limited)
    outcomes = executor.render([request(settings, seed) for seed in range(1, 5)])
    assert sizes == [4, 2, 2]
    assert [o.seeds for o in outcomes if not isinstance(o, Exception)] == [(1,), (2,), (3,), (4,)]
    assert any("trying 2 at a time" in line for line in logs)
    assert not executor.models.low_memory(settings.model), "no low-memory mode was needed"


def spy_batches(monkeypatch) -> list[list[int]]:
    """The seeds of every batched pipeline call (the real one runs)."""
    batches: list[list[int]] = []
    real = DiffusionEngine.paint_batch

    def counted(self: DiffusionEngine, images: list[Any], *args: Any, **kwargs: Any) -> Any:
        batches.append(list(kwargs["seeds"]))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(DiffusionEngine, "paint_batch", counted)
    return batches


def make_clip(root: Path, name: str) -> None:
    folder = root / name / "clip"
    folder.mkdir(parents=True)
    for index in range(1, 7):
        Image.new("RGB", (64, 48), (40 * index % 255, 90, 140)).save(folder / f"f_{index:04d}.png")


def rename_in(workspace: Workspace, name: str) -> None:
    """A whole folder renamed into the inbox: every frame is queued at once."""
    (workspace.inbox / name).rmdir()
    (workspace.root / name).rename(workspace.inbox / name)


def test_clip_frames_share_calls_within_one_level_of_frame_by_frame(
    workspace: Workspace, running, monkeypatch
):
    sizes = spy_batches(monkeypatch)
    for name, batch in (("one", 1), ("four", 4)):
        workspace.profile(name, max_batch=batch, seed_mode="increment", color_correction=False)
        make_clip(workspace.root, name)
    daemon = running()
    for name in ("one", "four"):
        rename_in(workspace, name)
    wait_for(lambda: daemon.tally.done == 12, timeout=120)
    # How frames group depends on how many are queued when the worker looks: some calls
    # of up to four, for the profile with max_batch 4 only.
    assert sizes and all(2 <= len(seeds) <= 4 for seeds in sizes)
    assert sum(map(len, sizes)) <= 6
    one = frames_of(workspace.outbox / "one/clip")
    four = frames_of(workspace.outbox / "four/clip")
    assert len(one) == len(four) == 6
    worst = max(int(np.abs(a - b).max()) for a, b in zip(one, four, strict=True))
    assert worst <= 1, f"batched frames differ by {worst} levels"
    assert len(workspace.done("four")) == 6 and not workspace.failed("four")


def test_a_clips_colour_reference_is_painted_first_and_alone(
    workspace: Workspace, running, monkeypatch, logs
):
    """Colour correction on (the clips' default): the key frame alone, the rest in batches
    after it, corrected towards its result. The key frame is the first frame to arrive:
    frame 1 when the frames come in order, but on a busy machine frame 2 can settle first,
    and the clip cannot wait for a frame it does not know is coming."""
    sizes = spy_batches(monkeypatch)
    workspace.profile("p", max_batch=4, seed_mode="increment")  # frame N: seed 1234 + N
    make_clip(workspace.root, "p")
    daemon = running()
    rename_in(workspace, "p")
    wait_for(lambda: daemon.tally.done == 6, timeout=120)
    done = [line.split("done p/clip/f_")[1][:4] for line in logs if "done p/clip/f_" in line]
    key = int(done[0])
    assert sizes, "the frames after the reference shared calls"
    assert all(1234 + key not in seeds for seeds in sizes), "the key frame was painted alone"
    first = Image.open(workspace.outbox / f"p/clip/f_{key:04d}.png").info["parameters"]
    assert f"Seed: {1234 + key}" in first


def test_a_broken_image_among_same_size_images_fails_alone(
    workspace: Workspace, running, monkeypatch
):
    sizes = spy_batches(monkeypatch)
    workspace.profile("img2img", max_batch=8)
    staging = workspace.root / "staging"
    staging.mkdir()
    for index in range(4):
        Image.new("RGB", (64, 64), (60 * index, 80, 120)).save(staging / f"good_{index}.png")
    (staging / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    daemon = running()
    (workspace.inbox / "img2img").rmdir()
    staging.rename(workspace.inbox / "img2img")
    wait_for(lambda: daemon.tally.done + daemon.tally.failed == 5, timeout=120)
    assert daemon.tally.done == 4 and daemon.tally.failed == 1
    assert sum(map(len, sizes)) >= 2, "the good ones shared calls"
    assert [p.name for p in workspace.failed("img2img")] == ["broken.error.txt", "broken.png"]
