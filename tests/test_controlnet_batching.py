"""Frames that share their ControlNet units share a pipeline call, each frame steered by its
own control image (stacked one row per frame), through the real daemon: the same pixels as
frame by frame, within the one level the batch tests allow (the batch sums in another
order)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.render.cache import ModelCache
from tests.conftest import Workspace, wait_for
from tests.test_batching import rename_in, spy_batches
from tests.test_controlnet_images import noise, read

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AS_IS = {  # the frame's own control image as it is: what the step got is what is saved
    "enabled": True, "module": "none", "model": "builtin:tiny-controlnet",
    "resize_mode": "Just Resize", "own_image": True,
}  # fmt: skip
CANNY = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet", "weight": 0.7}
FRAMES = 6


def make_controlled_clip(root: Path, name: str) -> None:
    """Six frames, each with its own control image in ``control/`` (unit 0's)."""
    folder = root / name / "clip"
    (folder / "control").mkdir(parents=True)
    for index in range(1, FRAMES + 1):
        Image.new("RGB", (64, 48), (40 * index % 255, 90, 140)).save(folder / f"f_{index:04d}.png")
        noise(index, (64, 48)).save(folder / f"control/f_{index:04d}.png")


def test_frames_with_units_share_calls_each_with_its_own_control_image(
    workspace: Workspace, running, monkeypatch, batched_rows: set[bytes]
):
    sizes = spy_batches(monkeypatch)
    for name, batch in (("one", 1), ("four", 4)):
        workspace.profile(name, max_batch=batch, seed_mode="increment", color_correction=False,
                          controlnet=[AS_IS, CANNY], save_control=True)  # fmt: skip
        make_controlled_clip(workspace.root, name)
    daemon = running()
    for name in ("one", "four"):
        rename_in(workspace, name)
    wait_for(lambda: daemon.tally.done == 2 * FRAMES, timeout=180)
    assert sizes and all(2 <= len(seeds) <= 4 for seeds in sizes), sizes  # really batched
    assert sum(map(len, sizes)) <= FRAMES  # the max_batch 1 profile's frames: one call each
    one = frames_of_outputs(workspace.outbox / "one/clip")
    four = frames_of_outputs(workspace.outbox / "four/clip")
    assert len(one) == len(four) == FRAMES
    worst = max(int(np.abs(a - b).max()) for a, b in zip(one, four, strict=True))
    assert worst <= 1, f"batched frames differ by {worst} levels"
    for index in range(1, FRAMES + 1):  # each frame was steered by its own control image
        saved = workspace.outbox / f"four/clip/f_{index:04d}.control.png"
        assert np.array_equal(read(saved), np.asarray(noise(index, (64, 48)))), index
    assert not workspace.failed("four")
    # The tiny net moves pixels by about a level, too little for the comparison above to
    # tell one frame's control image from another's: so look at what the net was given.
    # Each frame of a batched call had its own control image in its rows (unit 0's; the
    # flat frames' canny edges are empty).
    assert len(batched_rows) == sum(map(len, sizes)), "not one control image per frame"


@pytest.fixture
def batched_rows(models: ModelCache) -> Iterator[set[bytes]]:
    """The distinct non-empty control images the tiny net gets in calls of several images."""
    seen: set[bytes] = set()

    def spy(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cond = kwargs["controlnet_cond"]
        if cond.shape[0] > 2 and cond.abs().sum() > 0:  # guided: 2 rows an image
            seen.update(row.numpy().tobytes() for row in cond)

    net = models.controlnets.get(str(AS_IS["model"])).net
    handle = net.register_forward_pre_hook(spy, with_kwargs=True)
    yield seen
    handle.remove()


def frames_of_outputs(folder: Path) -> list[np.ndarray]:
    """The painted frames (not the saved control images)."""
    return [
        np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
        for p in sorted(folder.glob("f_????.png"))
    ]
