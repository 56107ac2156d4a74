"""Sketch, inpaint and inpaint sketch through the daemon, and the A1111 inpaint promises."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from daemon.a1111.infotext import parse_infotext
from daemon.a1111.masks import prepare_mask
from tests.conftest import Workspace, wait_for


def write_pair(workspace: Workspace, folder: str, size=(64, 64)) -> tuple[Image.Image, Image.Image]:
    """A 64x64 photo crop and a mask with a white square in the middle."""
    image = Image.open(workspace_data("astronaut.png")).convert("RGB").resize(size)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((20, 20, 43, 43), fill=255)
    target = workspace.inbox / folder
    target.mkdir(parents=True, exist_ok=True)
    mask.save(target / "shot.mask.png")  # companion first, as scripts do
    image.save(target / "shot.png")
    return image, mask


def workspace_data(name: str):
    from tests.conftest import DATA

    return DATA / name


def test_inpaint_keeps_unmasked_pixels_exactly(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint", mask_blur=4, denoising_strength=0.9)
    running()
    image, mask = write_pair(workspace, "inpaint")
    wait_for(lambda: len(workspace.done("inpaint")) == 2)
    result = np.asarray(Image.open(workspace.outbox / "inpaint/shot.png").convert("RGB"))
    original = np.asarray(image)
    blurred = np.asarray(prepare_mask(mask, invert=False, blur=4))
    keep = blurred == 0
    assert np.array_equal(result[keep], original[keep])
    assert not np.array_equal(result[~keep], original[~keep]), "the masked area was repainted"
    params = parse_infotext((workspace.outbox / "inpaint/shot.txt").read_text()).params
    assert params["Mask blur"] == "4" and params["Inpaint area"] == "Whole picture"
    assert params["Masked content"] == "original"
    assert {p.name for p in workspace.done("inpaint")} == {"shot.png", "shot.mask.png"}


def test_inpaint_not_masked_inverts(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint", mask_blur=0, inpainting_mask_invert=True)
    running()
    image, mask = write_pair(workspace, "inpaint")
    wait_for(lambda: len(workspace.done("inpaint")) == 2)
    result = np.asarray(Image.open(workspace.outbox / "inpaint/shot.png").convert("RGB"))
    inside_square = np.asarray(mask) == 255
    assert np.array_equal(result[inside_square], np.asarray(image)[inside_square])
    text = (workspace.outbox / "inpaint/shot.txt").read_text()
    assert parse_infotext(text).params["Mask mode"] == "Inpaint not masked"


def test_only_masked_repaints_a_crop_and_keeps_the_input_size(workspace: Workspace, running):
    workspace.profile(
        "inpaint", task="inpaint", inpaint_full_res=True, inpaint_full_res_padding=4,
        width=32, height=32, mask_blur=0,
    )  # fmt: skip
    running()
    image, mask = write_pair(workspace, "inpaint", size=(96, 96))
    wait_for(lambda: len(workspace.done("inpaint")) == 2)
    result = Image.open(workspace.outbox / "inpaint/shot.png").convert("RGB")
    assert result.size == (96, 96)  # pasted back into the full picture
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(result)[outside], np.asarray(image)[outside])
    params = parse_infotext((workspace.outbox / "inpaint/shot.txt").read_text()).params
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "4"


def test_masked_content_modes_all_run(workspace: Workspace, running):
    running()
    for index, fill in enumerate(("fill", "latent noise", "latent nothing")):
        name = f"inpaint{index}"
        workspace.profile(name, task="inpaint", inpainting_fill=fill, mask_blur=0)
        image, mask = write_pair(workspace, name)
        wait_for(lambda name=name: len(workspace.done(name)) == 2, timeout=60)
        result = np.asarray(Image.open(workspace.outbox / f"{name}/shot.png").convert("RGB"))
        keep = np.asarray(mask) == 0
        assert np.array_equal(result[keep], np.asarray(image)[keep]), fill
        text = (workspace.outbox / f"{name}/shot.txt").read_text()
        assert parse_infotext(text).params["Masked content"] == fill


def test_masks_folder_serves_as_mask(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint")
    running()
    folder = workspace.inbox / "inpaint/clip"
    (folder / "masks").mkdir(parents=True)
    Image.new("L", (64, 64), 255).save(folder / "masks/f1.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "f1.png")
    wait_for(lambda: len(workspace.done("inpaint")) == 2)
    assert (workspace.inbox / "_done/inpaint/clip/masks/f1.png").exists()
    assert (workspace.outbox / "inpaint/clip/f1.png").exists()


def test_late_mask_is_paired_within_the_window(workspace: Workspace, running):
    """Photoshop exports one file at a time: the mask may land after the image."""
    workspace.profile("inpaint", task="inpaint")
    daemon = running(pairing_window=30.0)
    image = workspace.inbox / "inpaint/late.png"
    Image.new("RGB", (64, 64), (90, 90, 200)).save(image)
    wait_for(lambda: image in daemon.admission.waiting())
    assert not workspace.outputs("inpaint"), "an inpaint job must wait for its mask"
    Image.new("L", (64, 64), 255).save(workspace.inbox / "inpaint/late.mask.png")
    wait_for(lambda: len(workspace.done("inpaint")) == 2)
    assert not workspace.failed("inpaint")


def test_missing_mask_fails_after_the_window_with_a_report(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint")
    running(pairing_window=0.5)
    Image.new("RGB", (64, 64)).save(workspace.inbox / "inpaint/alone.png")
    # The input moves last (after its report), so its arrival means the report is complete.
    wait_for(lambda: (workspace.inbox / "_failed/inpaint/alone.png").exists())
    report = (workspace.inbox / "_failed/inpaint/alone.error.txt").read_text()
    assert report.startswith("no mask for alone.png")
    assert (workspace.inbox / "_failed/inpaint/alone.png").exists()


def test_mask_of_another_size_is_resized_and_said(workspace: Workspace, running, logs):
    workspace.profile("inpaint", task="inpaint")
    running()
    Image.new("L", (32, 32), 255).save(workspace.inbox / "inpaint/s.mask.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(workspace.inbox / "inpaint/s.png")
    wait_for(lambda: len(workspace.done("inpaint")) == 2)
    assert any("s.png: mask: " in line and "resized to 64x64" in line for line in logs), logs


def test_sketch_strokes_reach_img2img(workspace: Workspace, running):
    workspace.profile("sketch", task="sketch", denoising_strength=0.05, steps=20)
    running()
    folder = workspace.inbox / "sketch"
    Image.open(workspace_data("astronaut.sketch.png")).resize((64, 64)).save(
        folder / "a.sketch.png"
    )
    Image.open(workspace_data("astronaut.png")).convert("RGB").resize((64, 64)).save(
        folder / "a.png"
    )
    wait_for(lambda: len(workspace.done("sketch")) == 2)
    assert (workspace.outbox / "sketch/a.png").exists()


def test_inpaint_sketch_keeps_pixels_outside_the_strokes(workspace: Workspace, running):
    workspace.profile("isk", task="inpaint_sketch", mask_blur=0)
    running()
    folder = workspace.inbox / "isk"
    sketch = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(sketch).ellipse((16, 16, 40, 40), fill=(255, 220, 0, 255))
    sketch.save(folder / "p.sketch.png")
    image = Image.open(workspace_data("chelsea.png")).convert("RGB").resize((64, 64))
    image.save(folder / "p.png")
    wait_for(lambda: len(workspace.done("isk")) == 2)
    result = np.asarray(Image.open(workspace.outbox / "isk/p.png").convert("RGB"))
    outside = np.asarray(sketch)[..., 3] == 0
    assert np.array_equal(result[outside], np.asarray(image)[outside])
    assert parse_infotext((workspace.outbox / "isk/p.txt").read_text()).params["Mask blur"] == "0"


def test_img2img_with_a_mask_companion_inpaints(workspace: Workspace, running):
    workspace.profile("img2img", task="img2img", mask_blur=0)
    running()
    image, mask = write_pair(workspace, "img2img")
    wait_for(lambda: len(workspace.done("img2img")) == 2)
    result = np.asarray(Image.open(workspace.outbox / "img2img/shot.png").convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(result[keep], np.asarray(image)[keep])
