"""Videos dropped into a profile inbox: split, repainted frame by frame, joined again."""

from __future__ import annotations

import os
import re
import time
from fractions import Fraction

import numpy as np
from PIL import Image

from daemon.media.video import probe, read_frames
from tests.conftest import Workspace, wait_for
from tests.support.media import make_test_clip
from tests.test_crash import assert_no_temporaries, finish_once, kill_9_when, write_config


def test_a_video_is_repainted_with_its_rate_frames_and_sound(workspace: Workspace, running):
    workspace.profile("img2img", keep_frames=True)
    clip = workspace.root / "clip.mp4"
    make_test_clip(clip, frames=12, fps=Fraction(24000, 1001), audio=True)
    running()
    workspace.drop(clip, "img2img/shots/clip.mp4")
    wait_for(lambda: workspace.done("img2img"), timeout=120)

    out = workspace.outbox / "img2img/shots"
    result = probe(out / "clip.mp4")
    original = probe(clip)
    assert (result.frames, result.fps) == (12, Fraction(24000, 1001))
    assert (result.width, result.height) == (original.width, original.height)
    assert result.has_audio
    kept = sorted((out / "clip").glob("*.png"))
    assert [p.name for p in kept] == [f"clip_{i:06d}.png" for i in range(1, 13)]
    # (Frame order, pixel for pixel: the masked test below. These frames are the tiny
    # model's noise, colour-matched to the first: too alike to tell apart after H.264.)
    params = (out / "clip.txt").read_text()
    assert "Frames: 12, FPS: 23.976" in params and "Seed: 1234" in params
    assert workspace.done("img2img") == [workspace.inbox / "_done/img2img/shots/clip.mp4"]
    videos = workspace.root / "state/videos"
    assert not videos.exists() or not list(videos.iterdir())  # no work folder is left


def test_a_masked_video_keeps_every_unmasked_pixel_in_order(workspace: Workspace, running):
    """A black <stem>.mask.png masks every frame: each frame comes out as it went in, which
    shows that frames keep their order and names (the pixels are random noise otherwise)."""
    workspace.profile("inpaint", task="inpaint", keep_frames=True, mask_blur=0)
    clip = workspace.inbox / "inpaint/anim.gif"
    Image.new("L", (64, 48), 0).save(workspace.inbox / "inpaint/anim.mask.png")
    make_test_clip(workspace.root / "anim.gif", frames=6, audio=False)
    running()
    workspace.drop(workspace.root / "anim.gif", "inpaint/anim.gif")
    wait_for(lambda: len(workspace.done("inpaint")) == 2, timeout=120)

    inputs = [np.asarray(f) for f in read_frames(workspace.inbox / "_done/inpaint/anim.gif")]
    kept = sorted((workspace.outbox / "inpaint/anim").glob("*.png"))
    assert len(kept) == 6
    for frame, path in zip(inputs, kept, strict=True):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), frame), path.name
    joined = [np.asarray(f, dtype=int) for f in read_frames(workspace.outbox / "inpaint/anim.gif")]
    for index, frame in enumerate(joined):  # the joined clip keeps the order (GIF is lossy)
        errors = [np.abs(frame - np.asarray(f, dtype=int)).mean() for f in inputs]
        assert int(np.argmin(errors)) == index
    assert not clip.exists()


def test_a_video_still_being_copied_waits_until_complete(workspace: Workspace, running):
    workspace.profile("img2img")
    source = workspace.root / "slow.mp4"
    make_test_clip(source, frames=8)
    data = source.read_bytes()
    running(stability_delay=0.6)
    target = workspace.inbox / "img2img/slow.mp4"
    with target.open("wb") as handle:  # a copy in progress: no rename, pauses between chunks
        for start_at in range(0, len(data), len(data) // 4 + 1):
            handle.write(data[start_at : start_at + len(data) // 4 + 1])
            handle.flush()
            time.sleep(0.3)
    wait_for(lambda: workspace.done("img2img"), timeout=120)
    assert probe(workspace.outbox / "img2img/slow.mp4").frames == 8
    assert not workspace.failed("img2img")


def test_a_video_in_an_interrogate_profile_fails_with_a_report(workspace: Workspace, running):
    workspace.profile(
        "tags", task="interrogate", interrogator="deepbooru", model="builtin:tiny-tagger"
    )
    make_test_clip(workspace.root / "c.mp4", frames=3)
    running()
    workspace.drop(workspace.root / "c.mp4", "tags/c.mp4")
    wait_for(lambda: (workspace.inbox / "_failed/tags/c.mp4").exists())
    report = (workspace.inbox / "_failed/tags/c.error.txt").read_text()
    assert "is a video" in report.splitlines()[0]


def test_a_killed_video_resumes_at_the_first_frame_without_a_result(workspace: Workspace):
    workspace.profile(
        "img2img", keep_frames=True, max_pixels=128 * 128, steps=12, denoising_strength=1.0
    )
    make_test_clip(workspace.inbox / "img2img/long.mp4", frames=12, size=(128, 96))
    os.utime(workspace.inbox / "img2img/long.mp4", (time.time() - 10, time.time() - 10))
    config = write_config(workspace)
    frames = workspace.outbox / "img2img/long"
    kill_9_when(config, lambda: len(list(frames.glob("*.png"))) >= 3)
    before = {p.name: p.stat().st_mtime_ns for p in frames.glob("*.png")}
    assert 3 <= len(before) < 12

    output = finish_once(config)
    assert f"resumed: {len(before)} of 12 frames were done before" in output
    after = {p.name: p.stat().st_mtime_ns for p in frames.glob("*.png")}
    assert len(after) == 12
    assert all(after[name] == stamp for name, stamp in before.items())  # never redone
    assert probe(workspace.outbox / "img2img/long.mp4").frames == 12
    assert_no_temporaries(workspace)


def test_an_inpaint_video_without_a_mask_fails_with_a_report(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint")
    make_test_clip(workspace.root / "v.mp4", frames=3)
    running(pairing_window=0.3)
    workspace.drop(workspace.root / "v.mp4", "inpaint/v.mp4")
    wait_for(lambda: (workspace.inbox / "_failed/inpaint/v.mp4").exists())
    report = (workspace.inbox / "_failed/inpaint/v.error.txt").read_text()
    assert report.startswith("no mask for v.mp4")


def test_a_videos_progress_paces_from_the_frames_after_the_first(
    workspace: Workspace, running, logs
):
    """The first frame carries the model's load and the video's decoding: its line has no
    pace yet; the last line's pace comes from the frames after it."""
    workspace.profile("img2img")
    clip = workspace.root / "v.mp4"
    make_test_clip(clip, frames=12)
    running()
    workspace.drop(clip, "img2img/v.mp4")
    wait_for(lambda: workspace.done("img2img"), timeout=120)
    lines = [line for line in logs if "img2img/v.mp4: [" in line]
    assert lines[0].endswith("] 1/12 frames"), lines  # no s/frame from the first alone
    assert re.search(r"\] 12/12 frames, \d+\.\d s/frame$", lines[-1]), lines


def test_kept_frames_of_an_earlier_video_are_never_reused(workspace: Workspace, running):
    workspace.profile("img2img", keep_frames=True)
    running()
    for frames in (4, 6):  # the same name twice: a re-edited clip
        make_test_clip(workspace.root / "v.mp4", frames=frames)
        workspace.drop(workspace.root / "v.mp4", "img2img/v.mp4")
        wait_for(lambda: (workspace.inbox / "img2img/v.mp4").exists() is False)
        wait_for(lambda n=frames: len(workspace.done("img2img")) == (1 if n == 4 else 2))
    out = workspace.outbox / "img2img"
    assert probe(out / "v.mp4").frames == 4
    assert probe(out / "v-1.mp4").frames == 6
    assert len(list((out / "v").glob("*.png"))) == 4
    assert len(list((out / "v-1").glob("*.png"))) == 6


def test_stopping_mid_video_defers_it_between_frames(workspace: Workspace, running):
    workspace.profile(
        "img2img", keep_frames=True, max_pixels=128 * 128, steps=12, denoising_strength=1.0
    )
    make_test_clip(workspace.root / "long.mp4", frames=40, size=(128, 96))
    daemon = running()
    workspace.drop(workspace.root / "long.mp4", "img2img/long.mp4")
    frames = workspace.outbox / "img2img/long"
    wait_for(lambda: len(list(frames.glob("*.png"))) >= 2, timeout=120)
    started = time.monotonic()
    daemon.stop_event.set()  # what SIGTERM does
    wait_for(lambda: not daemon._worker.is_alive(), timeout=10)  # one frame, not the 40
    assert time.monotonic() - started < 10
    assert (workspace.inbox / "img2img/long.mp4").exists()
    assert 2 <= len(list(frames.glob("*.png"))) < 40
