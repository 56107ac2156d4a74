"""A1111's batch "PNG info": settings from the input's own parameters or its sidecar."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from daemon.a1111.infotext import parse_infotext
from daemon.a1111.pnginfo import model_note, settings_from_infotext
from tests.conftest import DATA, Workspace, wait_for

EXAMPLE = (
    "a cat, (masterpiece:1.2)\n"
    "Negative prompt: lowres\n"
    "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 777, "
    "Size: 64x64, Model hash: 0123456789, Model: x, Denoising strength: 0.4, Version: v1.10.1"
)


def test_settings_from_an_infotext():
    found = settings_from_infotext(EXAMPLE)
    assert found.overrides == {
        "prompt": "a cat, (masterpiece:1.2)",
        "negative_prompt": "lowres",
        "steps": 12,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "cfg_scale": 5.5,
        "seed": 777,
        "denoising_strength": 0.4,
    }
    assert found.model_hash == "0123456789"


def test_a_caption_without_parameters_is_a_prompt_alone():
    found = settings_from_infotext("1girl, solo, smile\n")
    assert found.overrides == {"prompt": "1girl, solo, smile"}


def test_bad_values_are_left_out_and_said():
    found = settings_from_infotext("x\nSteps: many, Sampler: Euler, Seed: 3")
    assert "steps" not in found.overrides and found.overrides["seed"] == 3
    assert any("Steps" in note for note in found.notes)


def test_model_note_only_on_mismatch():
    assert model_note("abc", "abc", "m") is None
    assert model_note(None, "abc", "m") is None
    assert "model hash 0123456789" in (model_note("0123456789", "abcdef0123", "m") or "")


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a red fox", ""),
        # Prompt editing, alternation and AND: recorded as written, scheduled again.
        ("[a red fox:a blue car:0.5] AND [a fox|a car]:0.6", "[ugly:lowres:2]"),
    ],
)
def test_original_input_plus_sidecar_reproduces_the_output(
    workspace: Workspace, running, prompt: str, negative: str
):
    workspace.profile("first", seed=-1, prompt=prompt, negative_prompt=negative, cfg_scale=5)
    workspace.profile("again", use_png_info=True, seed=1, prompt="something else", cfg_scale=9)
    running()
    workspace.drop("chelsea.png", "first/cat.png")
    wait_for(lambda: workspace.done("first"))
    sidecar = workspace.outbox / "first/cat.txt"
    info = parse_infotext(sidecar.read_text())
    # The original input and the earlier output's parameters, dropped together.
    shutil.copyfile(sidecar, workspace.inbox / "again/cat.txt")
    workspace.drop("chelsea.png", "again/cat.png")
    wait_for(lambda: len(workspace.done("again")) == 2)
    first = np.asarray(Image.open(workspace.outbox / "first/cat.png"))
    second = np.asarray(Image.open(workspace.outbox / "again/cat.png"))
    assert np.array_equal(first, second)
    again = parse_infotext((workspace.outbox / "again/cat.txt").read_text())
    assert (info.prompt, info.negative_prompt) == (prompt, negative)
    assert again.prompt == prompt and again.params["Seed"] == info.params["Seed"]
    assert {p.name for p in workspace.done("again")} == {"cat.png", "cat.txt"}


def test_parameters_inside_the_input_png_are_used(workspace: Workspace, running):
    workspace.profile("again", use_png_info=True, prompt="profile prompt")
    running()
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", "from the png\nSteps: 3, Sampler: Euler a, CFG scale: 4, Seed: 99")
    target = workspace.inbox / "again/in.png"
    Image.open(DATA / "chelsea.png").save(target, pnginfo=chunk)
    wait_for(lambda: workspace.done("again"))
    info = parse_infotext((workspace.outbox / "again/in.txt").read_text())
    assert info.prompt == "from the png"
    assert info.params["Seed"] == "99" and info.params["Sampler"] == "Euler a"


def older_img2imgd_exif(text: str) -> bytes:
    """EXIF as img2imgd wrote it before it used piexif: Pillow's Exif, which types the
    UserComment as BYTE (a list of numbers to piexif, so A1111 could not read it)."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    return exif.tobytes()


def test_parameters_in_a_jpeg_are_used_as_a1111_and_older_img2imgd_wrote_them(
    workspace: Workspace, running, tmp_path
):
    import piexif
    import piexif.helper

    workspace.profile("again", use_png_info=True, prompt="profile prompt")
    a1111 = tmp_path / "a1111.jpg"
    Image.open(DATA / "chelsea.png").convert("RGB").save(a1111, quality=95)
    comment = piexif.helper.UserComment.dump(
        "as A1111 wrote it\nSteps: 3, Sampler: Euler a, CFG scale: 4, Seed: 41", encoding="unicode"
    )  # A1111's save_image_with_geninfo: save, then insert the EXIF block
    piexif.insert(piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}}), str(a1111))
    older = tmp_path / "older.jpg"
    Image.open(DATA / "chelsea.png").convert("RGB").save(
        older, quality=95, exif=older_img2imgd_exif("older\nSteps: 3, Sampler: Euler, Seed: 42")
    )
    running()
    workspace.drop(a1111, "again/a1111.jpg")
    workspace.drop(older, "again/older.jpg")
    wait_for(lambda: len(workspace.done("again")) == 2)
    first = parse_infotext((workspace.outbox / "again/a1111.txt").read_text())
    assert (first.prompt, first.params["Seed"]) == ("as A1111 wrote it", "41")
    second = parse_infotext((workspace.outbox / "again/older.txt").read_text())
    assert (second.prompt, second.params["Seed"]) == ("older", "42")


def test_per_image_yaml_wins_over_png_info_and_txt_is_ignored_without_it(
    workspace: Workspace, running
):
    workspace.profile("again", use_png_info=True)
    workspace.profile("plain")
    running()
    (workspace.inbox / "again/a.txt").write_text("from txt\nSteps: 3, Seed: 5, CFG scale: 4")
    (workspace.inbox / "again/a.yaml").write_text("seed: 6\n")
    workspace.drop("chelsea.png", "again/a.png")
    (workspace.inbox / "plain/b.txt").write_text("ignored caption")
    workspace.drop("chelsea.png", "plain/b.png")
    wait_for(lambda: len(workspace.done("again")) == 3 and len(workspace.done("plain")) == 2)
    a = parse_infotext((workspace.outbox / "again/a.txt").read_text())
    assert a.prompt == "from txt" and a.params["Seed"] == "6"
    b = parse_infotext((workspace.outbox / "plain/b.txt").read_text())
    assert b.prompt == "a test"
