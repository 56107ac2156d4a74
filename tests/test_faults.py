"""Issue 3's faults and hostile inputs, each through the real daemon."""

from __future__ import annotations

import errno
import os
import shutil
import time

import pytest
from PIL import Image

from daemon.config.hours import Window, parse_window
from daemon.config.settings import Settings
from daemon.ops.housekeeping import prune_done
from tests.conftest import Workspace, wait_for


def small_png(path, size=(64, 64), color=(30, 120, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_inbox_removed_and_recreated_is_watched_again(workspace: Workspace, running, logs):
    """A share that drops out and comes back: re-armed, nothing treated as deleted."""
    workspace.profile("img2img")
    running()
    small_png(workspace.inbox / "img2img/before.png")
    wait_for(lambda: workspace.done("img2img"))
    shutil.rmtree(workspace.inbox)
    wait_for(lambda: any("is gone" in line for line in logs))
    small_png(workspace.inbox / "img2img/after.png")
    wait_for(lambda: any("is back; watching it again" in line for line in logs))
    wait_for(lambda: (workspace.inbox / "_done/img2img/after.png").exists())
    assert not workspace.failed("img2img")


def test_inotify_limit_falls_back_to_polling(workspace: Workspace, running, monkeypatch, logs):
    """Fault injection: adding the inotify watch fails with ENOSPC (max_user_watches)."""
    from watchdog.observers import Observer

    def no_watches_left(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(Observer, "schedule", no_watches_left)
    workspace.profile("img2img")
    daemon = running(poll_interval=0.1)
    assert daemon._watcher is not None and daemon._watcher.polling
    assert any("falling back to polling" in line for line in logs)
    small_png(workspace.inbox / "img2img/a.png")
    wait_for(lambda: workspace.done("img2img"))


@pytest.mark.slow
def test_burst_of_1000_files_each_processed_exactly_once(workspace: Workspace, running):
    workspace.profile("img2img", max_pixels=16 * 16, steps=1, denoising_strength=1.0)
    running(stability_delay=0.05)
    for index in range(1000):
        small_png(workspace.inbox / f"img2img/burst/f{index:04d}.png", size=(16, 16))
    wait_for(lambda: len(workspace.done("img2img")) == 1000, timeout=400)
    outputs = [p.name for p in workspace.outputs("img2img") if p.suffix == ".png"]
    assert len(outputs) == 1000 and len(set(outputs)) == 1000
    assert not any("-1" in name for name in outputs), "no file was processed twice"
    assert not workspace.failed("img2img")


def test_idle_models_are_unloaded_and_load_again(workspace: Workspace, running, models, logs):
    workspace.profile("img2img")
    running(unload_after=0.5)
    small_png(workspace.inbox / "img2img/a.png")
    wait_for(lambda: workspace.done("img2img"))
    # "… builtin-tiny-sd after": the shared cache may hold builtin-tiny-sdxl too, unloaded first
    wait_for(lambda: any("unloaded model builtin-tiny-sd after" in line for line in logs), 20)
    assert "builtin:tiny-sd" not in models.loaded
    small_png(workspace.inbox / "img2img/b.png")
    wait_for(lambda: len(workspace.done("img2img")) == 2)


def test_processing_hours_hold_files_in_the_inbox(workspace: Workspace, running, logs):
    now = time.localtime()
    closed = f"{(now.tm_hour + 2) % 24:02d}:00-{(now.tm_hour + 3) % 24:02d}:00"
    workspace.profile("img2img")
    daemon = running(processing_hours=closed)
    small_png(workspace.inbox / "img2img/later.png")
    wait_for(lambda: any("outside the processing hours" in line for line in logs))
    wait_for(lambda: len(daemon.queue) == 1)  # complete and queued: only the hours hold it
    assert (workspace.inbox / "img2img/later.png").exists() and not workspace.outputs("img2img")
    daemon.worker.hours.window = None  # the window opens
    wait_for(lambda: workspace.done("img2img"))


def test_window_parsing_and_midnight():
    night = parse_window("22:00-06:00")
    assert night == Window(*(parse_window("22:00-06:00").start, parse_window("22:00-06:00").end))
    import datetime as dt

    assert dt.time(23, 30) in night and dt.time(5, 59) in night
    assert dt.time(6, 0) not in night and dt.time(12, 0) not in night
    day = parse_window("09:00-17:30")
    assert dt.time(9, 0) in day and dt.time(17, 30) not in day
    for bad in ("9-17", "25:00-01:00", "10:00-10:00"):
        with pytest.raises(ValueError):
            parse_window(bad)
    with pytest.raises(ValueError, match="processing_hours"):
        Settings(processing_hours="soon")


def test_prune_done_removes_old_archives_only(tmp_path):
    done = tmp_path / "_done/img2img/clip"
    small_png(done / "old.png")
    small_png(done / "new.png")
    ctime = (done / "old.png").stat().st_ctime
    removed = prune_done(tmp_path / "_done", older_than=10, now=ctime + 5)
    assert removed == []
    removed = prune_done(tmp_path / "_done", older_than=10, now=ctime + 20)
    assert sorted(p.name for p in removed) == ["new.png", "old.png"]
    assert not (tmp_path / "_done/img2img").exists(), "empty folders are removed"


def test_hard_link_in_inbox_is_refused(workspace: Workspace, running, tmp_path):
    secret = tmp_path / "secret.png"
    small_png(secret)
    workspace.profile("img2img")
    running()
    os.link(secret, workspace.inbox / "img2img/linked.png")
    wait_for(lambda: (workspace.inbox / "_failed/img2img/linked.error.txt").exists())
    report = (workspace.inbox / "_failed/img2img/linked.error.txt").read_text()
    assert "hard link" in report and not workspace.outputs("img2img")
    assert secret.exists()


def test_oversized_and_path_escaping_per_image_yaml(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    folder = workspace.inbox / "img2img"
    (folder / "big.yaml").write_text("prompt: " + "x" * 70_000 + "\n")
    small_png(folder / "big.png")
    (folder / "esc.yaml").write_text("output_format: ../../etc/cron.d/x\n")
    small_png(folder / "esc.png")
    (folder / "nul.yaml").write_text('prompt: "a\\0b"\nmodel: "../../models/x.safetensors"\n')
    small_png(folder / "nul.png")
    wait_for(lambda: len([p for p in workspace.failed("img2img") if p.suffix == ".txt"]) == 3)
    failed = workspace.inbox / "_failed/img2img"
    assert "larger than 64 KiB" in (failed / "big.error.txt").read_text()
    assert "output_format" in (failed / "esc.error.txt").read_text()
    assert "only a profile may set" in (failed / "nul.error.txt").read_text()
    assert not workspace.outputs("img2img")
    assert not list(workspace.root.glob("etc*"))


def test_pickled_checkpoint_is_refused_by_check_and_jobs_wait(workspace: Workspace, running, logs):
    pickle = workspace.root / "model.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")  # a pickle; never loaded
    workspace.profile("img2img", model=str(pickle))
    from daemon.cli import check_problems

    problems = check_problems(workspace.settings())
    assert any("pickled file" in p for p in problems)
    running(retry_delay=60)
    small_png(workspace.inbox / "img2img/a.png")
    wait_for(lambda: any("pickled file" in line for line in logs))
    assert (workspace.inbox / "img2img/a.png").exists() and not workspace.failed("img2img")
