"""Live profiles (``live: true``): an editor exports the same file again and again, and the
result is replaced in place. The exports imitate Photoshop's Generator (a temporary file
elsewhere, renamed into place; a delete and a re-create; identical bytes on opening a
document) and Krita or GIMP (an in-place overwrite), through the real watcher."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from daemon.journal.journal import open_read_only
from daemon.ops.service import JOURNAL_NAME
from tests.conftest import DATA, Workspace, wait_for


def export(source: Path | str, target: Path) -> Path:
    """As Generator does: written to a temporary file elsewhere (outside the watched inbox,
    on the same drive), then renamed into place: the watcher sees a file appear whole."""
    source = DATA / source if isinstance(source, str) else source
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".tmp", delete=False) as staged:
        staged.write(source.read_bytes())
    os.replace(staged.name, target)
    return target


def copy_fallback(source: Path, target: Path) -> None:
    """Generator's fallback when the rename fails (another drive): copy, then delete."""
    shutil.copyfile(source, target)


def edited(tmp: Path, name: str, shade: int) -> Path:
    """A version of the photo with one edit: a filled square of `shade`."""
    with Image.open(DATA / "astronaut.png") as image:
        picture = image.convert("RGB")
    picture.paste((shade, 40, 200), (8, 8, 120, 120))
    path = tmp / name
    picture.save(path)
    return path


def journal_reasons(workspace: Workspace) -> list[str]:
    journal = open_read_only(workspace.state / "journal.sqlite3")
    assert JOURNAL_NAME == "journal.sqlite3"
    if journal is None:
        return []
    try:
        return [entry.reason for entry in journal.recent(100)]
    finally:
        journal.close()


def results(workspace: Workspace, profile: str = "live") -> list[str]:
    return sorted(p.relative_to(workspace.outbox / profile).as_posix()
                  for p in workspace.outputs(profile))  # fmt: skip


def test_each_export_renders_again_and_replaces_the_result_in_place(
    workspace: Workspace, running, tmp_path: Path
):
    workspace.profile("live", live=True, seed=-1)
    daemon = running()
    photo = workspace.inbox / "live" / "photo.png"
    export(edited(tmp_path, "v1.png", 10), photo)
    wait_for(lambda: daemon.tally.done == 1, timeout=60)
    first = (workspace.outbox / "live" / "photo.png").read_bytes()
    seed_line = (workspace.outbox / "live" / "photo.txt").read_text()

    export(edited(tmp_path, "v2.png", 250), photo)
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    assert results(workspace) == ["photo.png", "photo.txt"], "replaced, never a -1 copy"
    assert (workspace.outbox / "live" / "photo.png").read_bytes() != first
    assert photo.exists(), "a live input stays where the editor writes it"
    assert not workspace.done("live")
    seed = next(part for part in seed_line.split(", ") if part.startswith("Seed: "))
    assert seed in (workspace.outbox / "live" / "photo.txt").read_text(), "the seed is kept"


def test_identical_bytes_exported_again_do_not_render_again(
    workspace: Workspace, running, tmp_path: Path
):
    """Generator deletes an asset before each export, and re-exports every asset with the
    same bytes when a document is opened."""
    workspace.profile("live", live=True)
    daemon = running()
    photo = workspace.inbox / "live" / "photo-assets" / "photo.png"
    version = edited(tmp_path, "v1.png", 10)
    export(version, photo)
    wait_for(lambda: daemon.tally.done == 1, timeout=60)
    photo.unlink()
    time.sleep(0.3)
    export(version, photo)
    wait_for(lambda: "unchanged since its last render" in journal_reasons(workspace), 30)
    assert daemon.tally.done == 1
    assert results(workspace) == ["photo-assets/photo.png", "photo-assets/photo.txt"]


def test_an_in_place_overwrite_and_a_mask_change_render_again(
    workspace: Workspace, running, tmp_path: Path
):
    """Krita and GIMP export over the same file; a mask layer changes on its own."""
    workspace.profile("live", live=True)
    daemon = running()
    folder = workspace.inbox / "live"
    export(edited(tmp_path, "v1.png", 10), folder / "photo.png")
    export("astronaut.mask.png", folder / "photo.mask.png")
    wait_for(lambda: daemon.tally.done >= 1, timeout=60)
    wait_for(lambda: daemon.idle(), timeout=30)
    done = daemon.tally.done

    with (folder / "photo.png").open("r+b") as handle:  # written in place, then closed
        handle.write(edited(tmp_path, "v2.png", 250).read_bytes())
    wait_for(lambda: daemon.tally.done == done + 1, timeout=60)

    with Image.open(DATA / "astronaut.mask.png") as mask:
        mask.convert("L").point(lambda v: 255 - v).save(tmp_path / "mask2.png")
    copy_fallback(tmp_path / "mask2.png", folder / "photo.mask.png")  # the mask alone
    wait_for(lambda: daemon.tally.done == done + 2, timeout=60)
    assert results(workspace) == ["photo.png", "photo.txt"]


def test_a_broken_version_keeps_the_last_result_and_reports_until_a_good_one(
    workspace: Workspace, running, tmp_path: Path
):
    workspace.profile("live", live=True)
    daemon = running()
    photo = workspace.inbox / "live" / "photo.png"
    export(edited(tmp_path, "v1.png", 10), photo)
    wait_for(lambda: daemon.tally.done == 1, timeout=60)
    good = (workspace.outbox / "live" / "photo.png").read_bytes()

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 50)
    old = time.time() - 60  # not "written moments ago": judged at once
    os.utime(broken, (old, old))
    export(broken, photo)
    os.utime(photo, (old, old))
    report = workspace.outbox / "live" / "photo.error.txt"
    wait_for(report.exists, timeout=60)
    assert photo.exists(), "the editor will overwrite it: it stays"
    assert not workspace.failed("live")
    assert (workspace.outbox / "live" / "photo.png").read_bytes() == good
    assert "renders again at its next export" in report.read_text()

    export(edited(tmp_path, "v3.png", 250), photo)
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    wait_for(lambda: not report.exists(), timeout=10)


def test_the_editors_own_files_are_ignored_and_a_sub_folder_is_not_a_clip(
    workspace: Workspace, running, tmp_path: Path
):
    workspace.profile("live", live=True)
    daemon = running()
    folder = workspace.inbox / "live"
    (folder / "poster.psd").write_bytes(b"8BPS" + bytes(200))
    assets = folder / "poster-assets"
    export(edited(tmp_path, "a.png", 10), assets / "photo.png")
    (assets / "errors.txt").write_text("Generator: layer 'x' is empty\n")
    export(edited(tmp_path, "b.png", 200), assets / "sky.png")
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    wait_for(lambda: daemon.idle(), timeout=30)
    assert daemon.tally.failed == 0
    assert not workspace.failed("live")
    assert (folder / "poster.psd").exists() and (assets / "errors.txt").exists()
    assert not (workspace.state / "sequences" / "live").exists(), "no clip state"
    assert results(workspace) == [
        "poster-assets/photo.png", "poster-assets/photo.txt",
        "poster-assets/sky.png", "poster-assets/sky.txt",
    ]  # fmt: skip


def test_after_a_restart_only_the_changed_inputs_render(
    workspace: Workspace, running, tmp_path: Path, models
):
    from daemon.ops.service import Daemon

    workspace.profile("live", live=True)
    folder = workspace.inbox / "live"
    export(edited(tmp_path, "a.png", 10), folder / "a.png")
    export(edited(tmp_path, "b.png", 200), folder / "b.png")
    first = Daemon(workspace.settings(), watch=False, models=models)
    assert first.run_once(tick=0.02).done == 2

    shutil.copyfile(edited(tmp_path, "b2.png", 90), folder / "b.png")  # changed while down
    old = time.time() - 10
    os.utime(folder / "b.png", (old, old))
    again = Daemon(workspace.settings(), watch=False, models=models)
    tally = again.run_once(tick=0.02)
    assert tally.done == 1, tally
    assert "unchanged since its last render" in journal_reasons(workspace)
    assert sorted(results(workspace)) == ["a.png", "a.txt", "b.png", "b.txt"]


def test_a_deleted_input_is_gone_only_after_the_grace_and_its_result_stays(
    workspace: Workspace, running, tmp_path: Path, logs
):
    workspace.profile("live", live=True, live_grace=0.5)
    daemon = running()
    photo = workspace.inbox / "live" / "layer.png"
    export(edited(tmp_path, "v1.png", 10), photo)
    wait_for(lambda: daemon.tally.done == 1, timeout=60)
    photo.unlink()  # a renamed layer: the old name is deleted for good, a new one appears
    export(edited(tmp_path, "v1.png", 10), workspace.inbox / "live" / "sky.png")
    said = "live/layer.png was deleted and did not come back within 0.5 s"
    wait_for(lambda: any(said in line for line in logs), timeout=30)
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    assert results(workspace) == ["layer.png", "layer.txt", "sky.png", "sky.txt"]
    assert daemon.tally.failed == 0


def test_a_newer_version_stops_the_render_in_hand_and_renders_next(
    workspace: Workspace, running, tmp_path: Path
):
    workspace.profile("live", live=True, steps=150, denoising_strength=1.0, max_pixels=128 * 128)
    daemon = running()
    photo = workspace.inbox / "live" / "photo.png"
    export(edited(tmp_path, "v1.png", 10), photo)
    wait_for(lambda: daemon.executor.painting == "live/photo.png", timeout=60, interval=0.005)
    export(edited(tmp_path, "v2.png", 250), photo)  # while v1 paints (seconds a render)
    wait_for(lambda: daemon.tally.done == 1, timeout=120)
    assert "a newer version arrived" in journal_reasons(workspace)
    assert results(workspace) == ["photo.png", "photo.txt"]


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_ten_edits_in_one_second_end_with_the_last_after_few_renders(
    workspace: Workspace, running, tmp_path: Path
):
    workspace.profile("live", live=True)
    daemon = running()
    folder = workspace.inbox / "live"
    versions = [edited(tmp_path, f"v{i}.png", 20 * i) for i in range(10)]
    for version in versions:
        export(version, folder / "photo.png")
        time.sleep(0.1)
    export(versions[-1], folder / "reference.png")  # the last edit, rendered on its own
    out = workspace.outbox / "live"
    wait_for(lambda: (out / "reference.png").exists() and (out / "photo.png").exists(), 60)
    wait_for(lambda: daemon.idle(), timeout=60)
    wait_for(lambda: daemon.tally.done >= 2, timeout=30)  # counted just after the release
    renders = daemon.tally.done - 1
    assert 1 <= renders <= 3, f"{renders} renders for ten edits"
    out = workspace.outbox / "live"
    assert pixels(out / "photo.png") == pixels(out / "reference.png"), "the last edit's result"


def test_one_input_edited_again_and_again_does_not_starve_another(
    workspace: Workspace, running, tmp_path: Path
):
    """A stopped render goes to the back of the queue: the other input gets its turn."""
    workspace.profile("live", live=True, steps=60, denoising_strength=1.0, max_pixels=96 * 96)
    daemon = running()
    folder = workspace.inbox / "live"
    versions = [edited(tmp_path, f"v{i}.png", 25 * i) for i in range(10)]
    export(versions[0], folder / "busy.png")
    wait_for(lambda: daemon.worker.current is not None, timeout=60)
    export(versions[1], folder / "other.png")
    other = workspace.outbox / "live" / "other.png"
    edits = 0
    deadline = time.monotonic() + 120
    while not other.exists() and time.monotonic() < deadline:
        edits += 1
        export(versions[edits % len(versions)], folder / "busy.png")  # quiet, then edited
        time.sleep(0.4)
    assert other.exists(), f"the other input never rendered during {edits} edits of busy.png"
