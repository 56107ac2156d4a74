"""Frame sequences: a sub-folder of a profile inbox is a clip, painted in order as one."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.a1111.seeds import frame_seed
from daemon.clips.progress import Pace, progress_line
from daemon.intake.names import frame_number
from tests.conftest import DATA, Workspace, wait_for
from tests.test_crash import (
    assert_no_temporaries,
    committed_outputs,
    finish_once,
    journal_states,
    kill_9_when,
    write_config,
)

FRAMES = 6


def make_frames(folder, count: int = FRAMES, *, size=(64, 48), names="frame_{:04d}.png"):
    """A little clip: the photo panning right, one pixel column per frame... in larger steps."""
    photo = Image.open(DATA / "chelsea.png").convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        box = (index * 12, 0, index * 12 + photo.height * 4 // 3, photo.height)
        paths.append(folder / names.format(index))
        photo.crop(box).resize(size).save(paths[-1])
    return paths


def seeds_of(workspace: Workspace, profile: str, clip: str) -> dict[str, int]:
    folder = workspace.outbox / profile / clip
    return {
        p.stem: int(parse_infotext(p.read_text()).params["Seed"])
        for p in sorted(folder.glob("*.txt"))
    }


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "number"),
    [("frame_0012.png", 12), ("0007.jpg", 7), ("shot12_v2.png", 2), ("title.png", None),
     ("clip-001.mask.png", 1), ("a1b22.png", 22)],
)  # fmt: skip
def test_frame_number(name: str, number: int | None) -> None:
    assert frame_number(name) == number


def test_frame_seeds() -> None:
    rng = random.Random(7)
    assert frame_seed("fixed", 1234, 7, rng) == 1234
    assert frame_seed("increment", 1234, 7, rng) == 1241
    assert frame_seed("increment", 2**32 - 1, 1, rng) == 0  # wraps like A1111's seed range
    assert len({frame_seed("random", 1234, 7, rng) for _ in range(5)}) > 1
    # Drawn from the service's own generator: the same generator state, the same seeds.
    assert frame_seed("random", 0, 1, random.Random(3)) == frame_seed(
        "random", 0, 1, random.Random(3)
    )


def test_progress_line() -> None:
    assert progress_line(0, 4, None) == "[--------------------] 0/4 frames"
    assert progress_line(1, 4, None) == "[#####---------------] 1/4 frames"  # no pace yet
    line = progress_line(3, 12, 2.0)
    assert line == "[#####---------------] 3/12 frames, 2.0 s/frame, about 18 s left"
    assert progress_line(12, 12, 2.0).endswith("12/12 frames, 2.0 s/frame")
    assert "about 2 min left" in progress_line(1, 61, 2.0)


def test_the_pace_leaves_out_the_first_frame_and_counts_workers_painting_at_once() -> None:
    pace = Pace()
    pace.frames_done(30.0, 1, 30.0)  # the first frame, with the model's load
    assert pace.per_frame() is None
    pace.frames_done(32.0, 1, 2.0)
    assert pace.per_frame() == pytest.approx(2.0)
    pace.frames_done(32.0, 1, 2.0)  # a second worker ended one at the same time
    assert pace.per_frame() == pytest.approx(1.0)
    idle = Pace()  # frames that arrive slowly: the painting time, not the wait, counts
    for n in range(4):
        idle.frames_done(10.0 * n, 1, 1.5)
    assert idle.per_frame() == pytest.approx(1.5)
    batch = Pace()  # a video's calls: 8 frames end together, 4 s after the reference
    batch.frames_done(20.0)
    batch.frames_done(24.0, 8)
    assert batch.per_frame() == pytest.approx(0.5)


# --- through the daemon -------------------------------------------------------------------


def test_a_clip_runs_in_order_with_one_seed_and_keeps_its_names(
    workspace: Workspace, running, logs
):
    workspace.profile("img2img", seed=-1)
    staging = workspace.root / "staging"
    frames = make_frames(staging)
    daemon = running()
    for frame in reversed(frames):  # arrival order must not matter
        workspace.drop(frame, f"img2img/clip1/{frame.name}")
    # Counted last, after the archive and the "done" line: the log below is complete.
    wait_for(lambda: daemon.tally.done == FRAMES)

    names = sorted(p.name for p in (workspace.outbox / "img2img/clip1").glob("*.png"))
    assert names == [f.name for f in frames]
    seeds = seeds_of(workspace, "img2img", "clip1")
    assert len(set(seeds.values())) == 1, seeds  # one drawn seed for the whole clip
    done = [line for line in logs if "done img2img/clip1/" in line]
    order = [re.search(r"clip1/(frame_\d+)\.png →", line)[1] for line in done]  # type: ignore[index]
    assert order[1:] == sorted(order[1:])  # the first may start before the rest arrived
    assert any("6/6 frames" in line for line in done), done
    # The clip ends once its folder has stayed empty for the pairing window.
    wait_for(lambda: any("clip img2img/clip1 finished: 6 frame(s)" in line for line in logs))


def test_a_clips_time_left_comes_from_the_frames_painted_after_the_first(
    workspace: Workspace, running, logs
):
    """The first frame of a run is the slow one (it carries the model's load; here it is
    made slow for sure by its own YAML asking for ten times the steps): the pace and time
    left said after it come from the frames painted since, not from it."""
    workspace.profile("img2img", steps=4)
    frames = make_frames(workspace.inbox / "img2img/clip1")
    (frames[0].parent / "frame_0001.yaml").write_text("steps: 40\n")
    daemon = running()
    wait_for(lambda: daemon.tally.done == FRAMES, timeout=120)

    done = [line for line in logs if "done img2img/clip1/" in line]
    assert len(done) == FRAMES, done
    took = [float(re.search(r"\(([\d.]+) s\)", line)[1]) for line in done]  # type: ignore[index]
    paces = [re.search(r"([\d.]+) s/frame", line) for line in done]
    assert "1/6 frames" in done[0] and paces[0] is None, done[0]  # no pace from one frame
    # (No assertion that the first frame was the slow one: on a loaded machine the others can
    # take as long, and the rule below holds either way.)
    for line, pace in zip(done[1:], paces[1:], strict=True):
        assert pace is not None, line
        # At most the slowest of the frames after the first (the shown value is rounded).
        assert float(pace[1]) <= max(took[1:]) + 0.05, (line, took)
    assert "about" in done[1] and "left" in done[1], done[1]


@pytest.mark.parametrize("mode", ["increment", "random"])
def test_seed_modes(workspace: Workspace, running, mode: str):
    workspace.profile("img2img", seed=1000, seed_mode=mode)
    make_frames(workspace.inbox / "img2img/clip", 3)
    running()
    wait_for(lambda: len(workspace.done("img2img")) == 3)
    seeds = seeds_of(workspace, "img2img", "clip")
    if mode == "increment":
        assert seeds == {"frame_0001": 1001, "frame_0002": 1002, "frame_0003": 1003}
    else:
        assert len(set(seeds.values())) == 3


def test_colours_follow_the_first_frame(workspace: Workspace, running):
    """With correction (the default for clips) every later frame is the uncorrected result
    matched to the first frame's colours (the colour maths itself: test_color.py)."""
    from daemon.a1111.color import apply_color_correction, color_reference

    workspace.profile("corrected", seed=7)
    workspace.profile("plain", seed=7, color_correction=False)
    for profile in ("corrected", "plain"):
        make_frames(workspace.inbox / profile / "clip", 3)
    running()
    wait_for(lambda: len(workspace.done("corrected")) == len(workspace.done("plain")) == 3)

    def out(profile: str, index: int) -> Image.Image:
        return Image.open(workspace.outbox / profile / f"clip/frame_{index:04d}.png").convert("RGB")

    assert np.array_equal(np.asarray(out("corrected", 1)), np.asarray(out("plain", 1)))
    reference = color_reference(out("corrected", 1))
    for index in (2, 3):
        expected = apply_color_correction(reference, out("plain", index))
        assert np.array_equal(np.asarray(out("corrected", index)), np.asarray(expected))
        assert not np.array_equal(
            np.asarray(out("corrected", index)), np.asarray(out("plain", index))
        )


def test_masks_by_frame_number_and_a_shared_mask(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint", mask_blur=0, denoising_strength=1.0)
    numbered = workspace.inbox / "inpaint/numbered"
    frames = make_frames(numbered, 3)
    (numbered / "masks").mkdir()
    for index in range(1, 4):  # each frame repaints a different column band
        mask = Image.new("L", (64, 48), 0)
        mask.paste(255, (index * 16, 0, index * 16 + 8, 48))
        mask.save(numbered / "masks" / f"m{index}.png")
    shared = workspace.inbox / "inpaint/shared"
    make_frames(shared, 3)
    (shared / "masks").mkdir()
    Image.new("L", (64, 48), 0).save(shared / "masks/matte.png")  # keeps everything
    running()
    wait_for(lambda: len(workspace.done("inpaint")) >= 9)  # 6 frames, 3 masks (the matte later)

    for index, frame in enumerate(frames, start=1):
        out = np.asarray(Image.open(workspace.outbox / "inpaint/numbered" / frame.name))
        original = np.asarray(Image.open(workspace.inbox / "_done/inpaint/numbered" / frame.name))
        keep = np.ones((48, 64), bool)
        keep[:, index * 16 - 2 : index * 16 + 10] = False  # the band, with the overlay's seam
        assert np.array_equal(out[keep], original[keep]), frame.name
        assert not np.array_equal(out[~keep], original[~keep]), frame.name
    for name in ("frame_0001", "frame_0002", "frame_0003"):
        out = np.asarray(Image.open(workspace.outbox / f"inpaint/shared/{name}.png"))
        original = np.asarray(Image.open(workspace.inbox / f"_done/inpaint/shared/{name}.png"))
        assert np.array_equal(out, original)  # the black matte served every frame
    wait_for(lambda: (workspace.inbox / "_done/inpaint/shared/masks/matte.png").exists())
    assert not (shared / "masks/matte.png").exists()


def test_a_corrupt_frame_fails_alone(workspace: Workspace, running):
    workspace.profile("img2img")
    folder = workspace.inbox / "img2img/clip"
    frames = make_frames(folder, 4)
    frames[2].write_bytes(frames[2].read_bytes()[:200])
    running(stability_delay=0.05)
    wait_for(lambda: len(workspace.done("img2img")) == 3)
    wait_for(lambda: (workspace.inbox / "_failed/img2img/clip/frame_0003.png").exists())
    outputs = sorted(p.name for p in (workspace.outbox / "img2img/clip").glob("*.png"))
    assert outputs == ["frame_0001.png", "frame_0002.png", "frame_0004.png"]


def test_a_killed_clip_resumes_without_redoing_a_frame(workspace: Workspace):
    workspace.profile("img2img", seed=-1, max_pixels=128 * 128, steps=12, denoising_strength=1.0)
    make_frames(workspace.inbox / "img2img/clip", 8, size=(128, 96))
    config = write_config(workspace)
    out = workspace.outbox / "img2img/clip"
    kill_9_when(config, lambda: journal_states(workspace).count("done") >= 3)
    # Frames the journal records as written: a group still `writing` when the kill came is
    # rolled back and painted again by design, even when both files are already in place.
    before = {p.name: p.stat().st_mtime_ns for p in committed_outputs(workspace, ".png")}
    assert 3 <= len(before) < 8

    finish_once(config)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(after) == [f"frame_{i:04d}.png" for i in range(1, 9)]  # no -1 copies
    assert all(after[name] == stamp for name, stamp in before.items())  # never redone
    assert len(set(seeds_of(workspace, "img2img", "clip").values())) == 1  # the same seed
    assert_no_temporaries(workspace)


def test_abandoned_states_are_dropped(tmp_path):
    import os
    import time

    from daemon.clips.state import drop_abandoned

    old, fresh = tmp_path / "old-clip", tmp_path / "fresh-clip"
    for folder in (old, fresh):
        (folder / "frames").mkdir(parents=True)
        (folder / "state.json").write_text("{}")
    week_ago = time.time() - 8 * 86400
    for path in (old, old / "frames", old / "state.json"):
        os.utime(path, (week_ago, week_ago))
    assert drop_abandoned(tmp_path, 7 * 86400) == [old]
    assert not old.exists() and fresh.exists()
    assert drop_abandoned(tmp_path / "missing", 1) == []


def test_the_queue_runs_a_folder_in_natural_order(tmp_path):
    from pathlib import PurePosixPath

    from daemon.intake.jobs import Job
    from daemon.queue.job_queue import JobQueue

    queue = JobQueue()
    clip, other = tmp_path / "clip", tmp_path / "other"
    for path in (clip / "f10.png", other / "b.png", clip / "f2.png", clip / "f1.png"):
        queue.put(Job("p", path, PurePosixPath(path.parent.name)))
    taken = [queue.get(0).image for _ in range(4)]  # type: ignore[union-attr]
    # The oldest job's folder first, in natural order; then the next folder.
    assert taken == [clip / "f1.png", clip / "f2.png", clip / "f10.png", other / "b.png"]


def test_frames_that_arrive_slower_than_they_are_painted_stay_one_clip(
    workspace: Workspace, running
):
    workspace.profile("img2img", seed=-1)
    staging = workspace.root / "staging"
    frames = make_frames(staging, 3)
    running(pairing_window=5.0)
    for index, frame in enumerate(frames):
        workspace.drop(frame, f"img2img/slow/{frame.name}")
        wait_for(lambda n=index + 1: len(workspace.done("img2img")) == n)  # the folder empties
    assert len(set(seeds_of(workspace, "img2img", "slow").values())) == 1


def test_a_per_image_yaml_cannot_turn_a_clip_frame_into_interrogation(
    workspace: Workspace, running
):
    workspace.profile("img2img")
    running()
    (workspace.inbox / "img2img/a.yaml").write_text("task: interrogate\n")
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: (workspace.inbox / "_failed/img2img/a.error.txt").exists())
    report = (workspace.inbox / "_failed/img2img/a.error.txt").read_text()
    assert "only a profile may" in report.splitlines()[0]
