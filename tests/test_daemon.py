"""End to end through the real watcher, real files and the real diffusers pipeline."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image
from sd_parsers import ParserManager

from daemon.a1111.infotext import parse_infotext, png_info
from tests.conftest import DATA, Workspace, wait_for


def small_png(path, size=(64, 64), color=(200, 80, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_img2img_drop_to_output_keeps_name_and_archives_input(workspace: Workspace, running):
    workspace.profile("img2img", task="img2img")
    running()
    workspace.drop("chelsea.png", "img2img/shoot/chelsea.png")

    image = wait_for(lambda: (workspace.outbox / "img2img/shoot/chelsea.png").exists()
                     and workspace.outbox / "img2img/shoot/chelsea.png")  # fmt: skip
    wait_for(lambda: workspace.done("img2img"))
    assert workspace.done("img2img") == [workspace.inbox / "_done/img2img/shoot/chelsea.png"]
    assert not (workspace.inbox / "img2img/shoot/chelsea.png").exists()

    with Image.open(image) as result:
        # 451x300 at a 64x64 budget keeps the aspect ratio in multiples of 8.
        assert result.size == (72, 48)
        text = png_info(result)
    sidecar = (workspace.outbox / "img2img/shoot/chelsea.txt").read_text()
    assert text is not None and sidecar.strip() == text
    params = parse_infotext(text).params
    assert params["Seed"] == "1234" and params["Size"] == "72x48" and params["Steps"] == "4"
    assert params["Model"] == "builtin-tiny-sd" and len(params["Model hash"]) == 10

    parsed = ParserManager().parse(image)  # an independent reader of A1111 metadata
    assert parsed is not None
    assert parsed.full_prompt == "a test"


def test_files_present_at_startup_are_processed(workspace: Workspace, running):
    workspace.profile("img2img")
    for index in range(3):
        small_png(workspace.inbox / f"img2img/frame_{index}.png")
    running()
    wait_for(lambda: len(workspace.done("img2img")) == 3)
    names = [p.name for p in workspace.outputs("img2img") if p.suffix == ".png"]
    assert names == ["frame_0.png", "frame_1.png", "frame_2.png"]


def test_slow_writer_is_waited_for(workspace: Workspace, running):
    """A file written in pieces over longer than the stability delay is read only when whole."""
    workspace.profile("img2img")
    running(stability_delay=0.3)
    data = (DATA / "chelsea.png").read_bytes()
    target = workspace.inbox / "img2img/slow.png"
    with target.open("wb") as handle:
        for start in range(0, len(data), len(data) // 5):
            handle.write(data[start : start + len(data) // 5])
            handle.flush()
            os.fsync(handle.fileno())
            time.sleep(0.15)
    wait_for(lambda: workspace.done("img2img"))
    assert not workspace.failed("img2img")
    assert (workspace.outbox / "img2img/slow.png").exists()


def test_atomic_rename_into_inbox(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    temporary = workspace.inbox / "img2img/~export.tmp"
    temporary.write_bytes((DATA / "chelsea.png").read_bytes())
    # A barrier: a file written after the temporary one is taken only after the watcher
    # and the stability check have seen the temporary one too.
    small_png(workspace.inbox / "img2img/barrier.png")
    wait_for(lambda: [p.name for p in workspace.done("img2img")] == ["barrier.png"])
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["barrier.png", "barrier.txt"]
    os.replace(temporary, workspace.inbox / "img2img/export.png")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    names = sorted(p.name for p in workspace.outputs("img2img"))
    assert names == ["barrier.png", "barrier.txt", "export.png", "export.txt"]


def test_junk_and_underscore_folders_are_ignored(workspace: Workspace, running):
    workspace.profile("img2img")
    for name in (".DS_Store", "Thumbs.db", "a.png.part", "._a.png", "x.crdownload"):
        (workspace.inbox / "img2img" / name).write_bytes(b"junk")
    small_png(workspace.inbox / "_private/img2img/a.png")
    running()
    small_png(workspace.inbox / "img2img/real.png")  # after the junk: taken after it was seen
    wait_for(lambda: workspace.done("img2img"))
    assert [p.name for p in workspace.done("img2img")] == ["real.png"]
    assert (workspace.inbox / "img2img/.DS_Store").exists()
    assert not workspace.failed("img2img")


def test_same_name_twice_never_overwrites(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    workspace.drop("chelsea.png", "img2img/cat.png")
    wait_for(lambda: len(workspace.done("img2img")) == 1)
    workspace.drop("chelsea.png", "img2img/cat.png")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    names = sorted(p.name for p in workspace.outputs("img2img"))
    assert names == ["cat-1.png", "cat-1.txt", "cat.png", "cat.txt"]
    assert sorted(p.name for p in workspace.done("img2img")) == ["cat-1.png", "cat.png"]


def test_overwrite_true_replaces(workspace: Workspace, running):
    workspace.profile("img2img", overwrite=True)
    running()
    for count in (1, 2):
        workspace.drop("chelsea.png", "img2img/cat.png")
        wait_for(lambda count=count: len(workspace.done("img2img")) == count)
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["cat.png", "cat.txt"]


def test_same_seed_gives_identical_pixels(workspace: Workspace, running):
    workspace.profile("img2img", seed=42)
    running()
    workspace.drop("chelsea.png", "img2img/a.png")
    workspace.drop("chelsea.png", "img2img/b.png")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    a = np.asarray(Image.open(workspace.outbox / "img2img/a.png"))
    b = np.asarray(Image.open(workspace.outbox / "img2img/b.png"))
    assert np.array_equal(a, b)


def test_random_seed_is_drawn_and_recorded(workspace: Workspace, running):
    workspace.profile("img2img", seed=-1)
    running()
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: workspace.done("img2img"))
    seed = parse_infotext((workspace.outbox / "img2img/a.txt").read_text()).params["Seed"]
    assert seed.isdigit() and 0 <= int(seed) < 2**32


def test_per_image_yaml_overrides_profile(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    (workspace.inbox / "img2img/cat.yaml").write_text(
        "prompt: a tiger\nseed: 7\nwidth: 32\nheight: 32\n"
    )
    workspace.drop("chelsea.png", "img2img/cat.png")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    text = (workspace.outbox / "img2img/cat.txt").read_text()
    info = parse_infotext(text)
    assert (
        info.prompt == "a tiger" and info.params["Seed"] == "7" and info.params["Size"] == "32x32"
    )
    assert {p.name for p in workspace.done("img2img")} == {"cat.png", "cat.yaml"}


def test_batch_outputs_are_numbered_with_their_own_seeds(workspace: Workspace, running):
    workspace.profile("img2img", batch_size=2, n_iter=2, seed=100)
    running()
    workspace.drop("chelsea.png", "img2img/cat.png")
    wait_for(lambda: workspace.done("img2img"))
    images = [p for p in workspace.outputs("img2img") if p.suffix == ".png"]
    assert [p.name for p in images] == ["cat_1.png", "cat_2.png", "cat_3.png", "cat_4.png"]
    seeds = [parse_infotext(p.with_suffix(".txt").read_text()).params["Seed"] for p in images]
    assert seeds == ["100", "101", "102", "103"]


def a1111_reads(path) -> str:
    """The parameters of a JPEG or WebP read exactly as A1111's PNG Info reads them
    (modules/images.py, read_info_from_image): piexif.load, then UserComment.load."""
    import piexif
    import piexif.helper

    with Image.open(path) as image:
        exif = piexif.load(image.info["exif"])
    return piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment])


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_jpeg_and_webp_carry_parameters_that_a1111_reads(workspace: Workspace, running, fmt):
    workspace.profile("img2img", output_format=fmt, prompt="un café, 猫")
    running()
    workspace.drop("chelsea.png", "img2img/cat.png")
    wait_for(lambda: workspace.done("img2img"))
    result = workspace.outbox / f"img2img/cat.{fmt}"
    infotext = (workspace.outbox / "img2img/cat.txt").read_text().removesuffix("\n")
    assert "Seed: 1234" in infotext
    assert a1111_reads(result) == infotext
    with Image.open(result) as image:
        assert png_info(image) == infotext  # our own reader (use_png_info)
        parsed = ParserManager().parse(image)  # sd-parsers, as other tools read it
    assert parsed is not None and parsed.full_prompt == "un café, 猫"


def test_changed_profile_applies_to_next_job_without_restart(workspace: Workspace, running):
    path = workspace.profile("img2img", prompt="first")
    running()
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: workspace.done("img2img"))
    path.write_text(path.read_text().replace("prompt: first", "prompt: second"))
    workspace.drop("chelsea.png", "img2img/b.png")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    assert parse_infotext((workspace.outbox / "img2img/b.txt").read_text()).prompt == "second"


def test_polling_mode_for_network_shares(workspace: Workspace, running):
    """No inotify events on SMB/NFS: the polling observer and the stability delay do it."""
    workspace.profile("img2img")
    daemon = running(polling=True, poll_interval=0.1)
    assert daemon._watcher is not None and daemon._watcher.polling
    workspace.drop("chelsea.png", "img2img/share/cat.png")
    wait_for(lambda: workspace.done("img2img"))
    assert (workspace.outbox / "img2img/share/cat.png").exists()


def test_folder_moved_in_with_files_is_processed(workspace: Workspace, running, tmp_path):
    """Files inside a moved-in folder arrive with no events of their own."""
    workspace.profile("img2img")
    running()
    staging = tmp_path / "staging/clip"
    for index in range(2):
        small_png(staging / f"f{index}.png")
    os.rename(staging, workspace.inbox / "img2img/clip")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    assert sorted(p.name for p in workspace.outputs("img2img") if p.suffix == ".png") == [
        "f0.png",
        "f1.png",
    ]


def test_rescan_catches_files_the_watcher_missed(workspace: Workspace, running):
    """Events can be dropped (queue overflow, remote writes); the periodic rescan finds them."""
    workspace.profile("img2img")
    daemon = running(rescan_interval=0.3)
    assert daemon._watcher is not None
    daemon._watcher.stop()  # from now on no events arrive at all
    small_png(workspace.inbox / "img2img/missed.png")
    wait_for(lambda: workspace.done("img2img"), timeout=20)
