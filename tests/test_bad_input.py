"""Section 7: bad input gets a clear error and nothing is lost; the next job goes on."""

from __future__ import annotations

import errno
import struct
import zlib

import pytest
from PIL import Image

from daemon.intake.names import (
    IMAGE_EXTENSIONS,
    PARAMETERS_EXTENSION,
    SETTINGS_EXTENSIONS,
    VIDEO_EXTENSIONS,
)
from tests.conftest import DATA, Workspace, wait_for


def report_for(workspace: Workspace, profile: str, stem: str) -> str:
    return (workspace.inbox / "_failed" / profile / f"{stem}.error.txt").read_text()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge size; the pixel data is never reached."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def text_bomb_png(kind: bytes, *, after_pixels: bool) -> bytes:
    """chelsea.png with a zTXt or iTXt chunk of 20 kB that inflates to 64 MB, before the
    pixel data (read as the file opens) or after it (read as the pixels are decoded)."""
    png = (DATA / "chelsea.png").read_bytes()
    flags = b"\0" if kind == b"zTXt" else b"\1\0\0\0"  # iTXt: compressed, no language
    bomb = png_chunk(kind, b"parameters\0" + flags + zlib.compress(b"a" * (64 << 20), 9))
    at = png.index(b"IEND") - 4 if after_pixels else 8 + 25  # before IEND, or after IHDR
    return png[:at] + bomb + png[at:]


def drop_good_after(workspace: Workspace, profile: str) -> None:
    """Every bad input is followed by a good one, which must succeed."""
    workspace.drop("chelsea.png", f"{profile}/good.png")
    wait_for(lambda: any(p.name == "good.png" for p in workspace.done(profile)))


def test_non_image_truncated_and_bomb_fail_with_reports(workspace: Workspace, running):
    workspace.profile("img2img")
    data = (DATA / "chelsea.png").read_bytes()
    (workspace.inbox / "img2img/notes.png").write_text("this is not an image")
    (workspace.inbox / "img2img/cut.png").write_bytes(data[: len(data) // 2])
    (workspace.inbox / "img2img/bomb.png").write_bytes(bomb_png(30000, 30000))
    (workspace.inbox / "img2img/empty.png").write_bytes(b"")
    running(stability_delay=0.05)
    wait_for(lambda: len([p for p in workspace.failed("img2img") if p.suffix == ".txt"]) == 4)
    drop_good_after(workspace, "img2img")

    notes = report_for(workspace, "img2img", "notes").splitlines()[0]
    assert "notes.png" in notes
    # The types the inbox takes, no more (BMP and GIF decode when renamed, but are not taken).
    assert "it takes .jpeg .jpg .png .tif .tiff .webp images" in notes
    assert "BMP" not in notes and "GIF" not in notes
    assert "cut.png" in report_for(workspace, "img2img", "cut").splitlines()[0]
    assert "pixel" in report_for(workspace, "img2img", "bomb").splitlines()[0]
    assert "empty" in report_for(workspace, "img2img", "empty").splitlines()[0]
    for name in ("notes.png", "cut.png", "bomb.png", "empty.png"):
        assert (workspace.inbox / "_failed/img2img" / name).exists(), name
    assert not list((workspace.inbox / "img2img").iterdir())


def test_png_text_chunk_bomb_is_said_to_be_one(workspace: Workspace, running):
    workspace.profile("img2img")
    (workspace.inbox / "img2img/z.png").write_bytes(text_bomb_png(b"zTXt", after_pixels=False))
    (workspace.inbox / "img2img/i.png").write_bytes(text_bomb_png(b"iTXt", after_pixels=True))
    running(stability_delay=0.05)
    failed = workspace.inbox / "_failed/img2img"
    wait_for(lambda: (failed / "z.png").exists() and (failed / "i.png").exists())
    for stem in ("z", "i"):
        first = report_for(workspace, "img2img", stem).splitlines()[0]
        assert "PNG text metadata that decompresses to more than 1 MB" in first, first
        assert "decompression bomb" in first and "corrupt" not in first
    drop_good_after(workspace, "img2img")


def test_mask_that_is_not_an_image_fails_the_job(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint")
    (workspace.inbox / "inpaint/a.mask.png").write_text("not a mask")
    Image.new("RGB", (64, 64)).save(workspace.inbox / "inpaint/a.png")
    running()
    # The report is written first, then the inputs move: wait for the last of them.
    wait_for(lambda: (workspace.inbox / "_failed/inpaint/a.mask.png").exists())
    assert (workspace.inbox / "_failed/inpaint/a.png").exists()
    assert "a.mask.png" in report_for(workspace, "inpaint", "a").splitlines()[0]
    Image.new("L", (64, 64), 255).save(workspace.inbox / "inpaint/good.mask.png")
    drop_good_after(workspace, "inpaint")


def test_broken_per_image_yaml_fails_with_the_key_named(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    (workspace.inbox / "img2img/a.yaml").write_text("steps: 9000\n")
    workspace.drop("chelsea.png", "img2img/a.png")
    (workspace.inbox / "img2img/b.yaml").write_text("prompt: [unclosed\n")
    workspace.drop("chelsea.png", "img2img/b.png")
    (workspace.inbox / "img2img/c.yaml").write_text("model: /etc/passwd\n")
    workspace.drop("chelsea.png", "img2img/c.png")
    wait_for(lambda: len([p for p in workspace.failed("img2img") if p.suffix == ".txt"]) == 3)
    drop_good_after(workspace, "img2img")
    assert "steps" in report_for(workspace, "img2img", "a").splitlines()[0]
    assert "not valid YAML" in report_for(workspace, "img2img", "b").splitlines()[0]
    assert "only a profile may set" in report_for(workspace, "img2img", "c").splitlines()[0]
    assert (workspace.inbox / "_failed/img2img/a.yaml").exists()


def test_yaml_alias_bomb_is_refused(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for index in range(1, 9):
        prev = chr(ord("a") + index - 1)
        lines.append(f"{chr(ord('a') + index)}: &{chr(ord('a') + index)} [*{prev},*{prev},*{prev}]")
    (workspace.inbox / "img2img/lol.yaml").write_text("\n".join(lines) + "\n")
    workspace.drop("chelsea.png", "img2img/lol.png")
    wait_for(lambda: (workspace.inbox / "_failed/img2img/lol.error.txt").exists())
    assert "aliases" in report_for(workspace, "img2img", "lol")


def test_yaml_nested_too_deeply_is_the_files_fault_in_one_line(workspace: Workspace, running, logs):
    """PyYAML composes recursively: this would reach Python's recursion limit."""
    workspace.profile("img2img")
    running()
    (workspace.inbox / "img2img/deep.yaml").write_text("prompt: " + "[" * 5000 + "]" * 5000)
    workspace.drop("chelsea.png", "img2img/deep.png")
    failed = workspace.inbox / "_failed/img2img"
    wait_for(lambda: (failed / "deep.png").exists() and (failed / "deep.yaml").exists())
    report = report_for(workspace, "img2img", "deep")
    assert report.splitlines()[0].startswith("deep.yaml:1: it is nested more than 32 levels")
    assert "Traceback" not in report and not any("unexpected" in line for line in logs)
    drop_good_after(workspace, "img2img")


def test_unsupported_file_type_goes_to_failed(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    (workspace.inbox / "img2img/brief.docx").write_bytes(b"PK\x03\x04")
    wait_for(lambda: (workspace.inbox / "_failed/img2img/brief.docx").exists())  # after its report
    said = report_for(workspace, "img2img", "brief").splitlines()[0]
    assert said.startswith("brief.docx is not a file type img2imgd handles")
    # Every kind that is taken, from the names the intake goes by.
    kinds = [*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS, *SETTINGS_EXTENSIONS, PARAMETERS_EXTENSION]
    assert all(f"{kind} " in said or f"{kind})" in said for kind in kinds), said
    for companion in ("<name>.mask.png", "masks/<name>.png", "<name>.sketch.png", "<name>.txt"):
        assert companion in said


def test_symlink_in_inbox_is_refused_not_followed(workspace: Workspace, running, tmp_path):
    workspace.profile("img2img")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(secret)
    running()
    (workspace.inbox / "img2img/link.png").symlink_to(secret)
    # The report is written first, then the input moves (journal.py): wait for both.
    wait_for(lambda: (workspace.inbox / "_failed/img2img/link.png").is_symlink())
    assert "symbolic link" in report_for(workspace, "img2img", "link")
    assert secret.exists() and not workspace.outputs("img2img")


def test_symlink_to_a_folder_in_inbox_is_refused_as_a_link(workspace: Workspace, running, tmp_path):
    workspace.profile("img2img")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (64, 64)).save(elsewhere / "secret.png")
    running()
    (workspace.inbox / "img2img/shoot").symlink_to(elsewhere, target_is_directory=True)
    wait_for(lambda: (workspace.inbox / "_failed/img2img/shoot").is_symlink())  # after its report
    said = report_for(workspace, "img2img", "shoot").splitlines()[0]
    assert said.startswith("shoot is a symbolic link to a folder; links are never followed")
    assert (elsewhere / "secret.png").exists() and not workspace.outputs("img2img")
    drop_good_after(workspace, "img2img")


def test_missing_model_leaves_input_in_inbox_and_retries(workspace: Workspace, running, logs):
    path = workspace.profile("img2img", model="/nowhere/model.safetensors")
    running(retry_delay=0.2)
    workspace.drop("chelsea.png", "img2img/wait.png")
    wait_for(lambda: any("model '/nowhere/model.safetensors' not found" in line for line in logs))
    assert (workspace.inbox / "img2img/wait.png").exists()
    assert not workspace.failed("img2img")
    path.write_text(path.read_text().replace("/nowhere/model.safetensors", "builtin:tiny-sd"))
    wait_for(lambda: workspace.done("img2img"), timeout=30)
    assert (workspace.outbox / "img2img/wait.png").exists()


def test_disk_full_while_writing_keeps_the_input(workspace: Workspace, running, monkeypatch, logs):
    """Fault injection: the first write of the results fails with ENOSPC."""
    import daemon.deliver.results as processing

    real_write = processing.write_image
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(processing, "write_image", full_disk)
    workspace.profile("img2img")
    running(retry_delay=0.2)
    workspace.drop("chelsea.png", "img2img/full.png")
    wait_for(lambda: workspace.done("img2img"))
    assert any("No space left on device" in line and "retrying" in line for line in logs)
    assert not workspace.failed("img2img")
    names = sorted(p.name for p in workspace.outputs("img2img"))
    assert names == ["full.png", "full.txt"]  # the failed attempt left nothing behind
    assert not [p for p in (workspace.outbox / "img2img").iterdir() if p.name.startswith(".")]


@pytest.fixture
def fresh_model_afterwards(models):
    """Low-memory mode stays on for a model; the next test gets the model as it loads."""
    yield
    models.unload("builtin:tiny-sd")
    models.use_low_memory("builtin:tiny-sd", enabled=False)


def inject_out_of_memory(monkeypatch, times: int) -> dict[str, int]:
    """Fault injection: the pipeline raises torch's OutOfMemoryError ``times`` times."""
    import torch

    from daemon.engines import diffusion

    real = diffusion.DiffusionEngine._sample
    calls = {"n": 0}

    def out_of_memory(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(diffusion.DiffusionEngine, "_sample", out_of_memory)
    return calls


def test_out_of_memory_retries_at_once_with_low_memory_settings(
    workspace: Workspace, running, monkeypatch, logs, models, fresh_model_afterwards
):
    calls = inject_out_of_memory(monkeypatch, times=1)
    workspace.profile("img2img")
    daemon = running(retry_delay=60)
    workspace.drop("chelsea.png", "img2img/oom.png")
    wait_for(lambda: workspace.done("img2img"))
    assert calls["n"] == 2 and daemon.tally.deferred == 0
    assert any("retrying once with attention slicing" in line for line in logs)
    pipe = models.pipeline("builtin:tiny-sd", "img2img")
    assert pipe.vae.use_tiling, "low-memory settings stay on for the model"


def test_out_of_memory_twice_defers_without_failing_the_file(
    workspace: Workspace, running, monkeypatch, logs, fresh_model_afterwards
):
    inject_out_of_memory(monkeypatch, times=2)
    workspace.profile("img2img")
    running(retry_delay=0.2)
    workspace.drop("chelsea.png", "img2img/oom.png")
    wait_for(lambda: workspace.done("img2img"))
    assert any("even with low-memory settings" in line and "retrying" in line for line in logs)
    assert not workspace.failed("img2img")


def test_broken_model_files_never_fail_the_input(workspace: Workspace, running, models, logs):
    """A checkpoint that does not load is the process's problem: the input waits."""
    import shutil

    from daemon.models.builtin import ensure_builtin

    broken = workspace.root / "broken-model"
    shutil.copytree(ensure_builtin("tiny-sd", workspace.state_dir / "builtin"), broken)
    (broken / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 100)
    workspace.profile("img2img", model=str(broken))
    running(retry_delay=60)
    workspace.drop("chelsea.png", "img2img/patient.png")
    wait_for(lambda: any("could not load model broken-model" in line for line in logs))
    assert (workspace.inbox / "img2img/patient.png").exists()
    assert not workspace.failed("img2img")
