"""Crash safety: kill -9 at any point, SIGTERM mid-job, and recovery from the journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from daemon.intake.jobs import Job, JobStatus
from daemon.intake.pairing import Companions
from daemon.journal.journal import Journal, open_read_only
from daemon.models.builtin import ensure_builtin
from daemon.ops.service import JOURNAL_NAME
from tests.conftest import Workspace, wait_for

ROOT = Path(__file__).resolve().parents[1]


def write_config(workspace: Workspace, **keys: Any) -> Path:
    """A config for a daemon in a subprocess; the built-in model comes from the shared state."""
    ensure_builtin("tiny-sd", workspace.state_dir / "builtin")  # generated once per session
    return workspace.config_file(**keys)


def start(config: Path, command: str = "run") -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "--config", str(config), command],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def kill_9_when(config: Path, ready: Callable[[], object], timeout: float = 120) -> None:
    """Run the daemon until `ready()` holds, then kill -9 it."""
    daemon = start(config)
    try:
        wait_for(ready, timeout=timeout)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    finally:
        daemon.kill()


def finish_once(config: Path, timeout: float = 300) -> str:
    """``img2imgd once`` after a crash; it must succeed. Returns its log."""
    again = start(config, "once")
    output, _ = again.communicate(timeout=timeout)
    assert again.returncode == 0, output
    return output


def journal_states(workspace: Workspace) -> list[str]:
    journal = open_read_only(workspace.root / "state" / JOURNAL_NAME)
    if journal is None:
        return []
    try:
        return [entry.state.value for entry in journal.recent(100)]
    finally:
        journal.close()


def committed_outputs(workspace: Workspace, suffix: str) -> list[Path]:
    """Outputs of the jobs the journal records as written (or done): never painted again."""
    journal = open_read_only(workspace.root / "state" / JOURNAL_NAME)
    if journal is None:
        return []
    try:
        entries = journal.recent(100, states=(JobStatus.WRITTEN, JobStatus.DONE))
    finally:
        journal.close()
    return [p for entry in entries for p in entry.outputs if p.suffix == suffix]


def slow_profile(workspace: Workspace) -> None:
    # Big enough that the job is still running when the test acts (a few seconds on a CPU).
    workspace.profile("img2img", max_pixels=256 * 256, steps=40, denoising_strength=1.0)


def assert_no_temporaries(workspace: Workspace) -> None:
    hidden = [p for p in workspace.outbox.rglob(".*") if p.is_file()]
    assert not hidden, f"half-written files left in the outbox: {hidden}"


def test_kill_9_mid_job_then_restart_redoes_it_once(workspace: Workspace):
    slow_profile(workspace)
    config = write_config(workspace)
    workspace.drop("astronaut.png", "img2img/a.png")
    kill_9_when(config, lambda: "running" in journal_states(workspace), timeout=60)
    assert (workspace.inbox / "img2img/a.png").exists(), "the input must survive a kill -9"
    assert not workspace.outputs("img2img")
    assert_no_temporaries(workspace)

    output = finish_once(config, timeout=120)
    assert "interrupted mid-job; it runs again" in output
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["a.png", "a.txt"]
    assert [p.name for p in workspace.done("img2img")] == ["a.png"]


def test_sigterm_finishes_the_job_in_hand_then_exits_0(workspace: Workspace):
    slow_profile(workspace)
    config = write_config(workspace)
    daemon = start(config)
    try:
        workspace.drop("astronaut.png", "img2img/a.png")
        wait_for(lambda: "running" in journal_states(workspace), timeout=60)
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=120)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, output
    assert "finishing the job in hand" in output
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["a.png", "a.txt"]
    assert [p.name for p in workspace.done("img2img")] == ["a.png"]
    assert_no_temporaries(workspace)


def crashed_job(workspace: Workspace, state: JobStatus, outputs: list[Path]) -> None:
    """The journal as a crash leaves it: a job stopped in ``state`` with these outputs."""
    image = workspace.inbox / "img2img/a.png"
    journal = Journal(workspace.root / "state" / JOURNAL_NAME).open()
    job = Job(profile="img2img", image=image, sub_dir=Path(), companions=Companions())
    row = journal.queued(job)
    journal.running(row)
    journal.writing(row, outputs)
    if state is JobStatus.WRITTEN:
        journal.written(row)
    journal.close()


def test_crash_while_writing_outputs_rolls_back_and_reruns(workspace: Workspace, running):
    workspace.profile("img2img")
    (workspace.root / "state").mkdir()
    workspace.drop("chelsea.png", "img2img/a.png")
    folder = workspace.outbox / "img2img"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.png")  # the image made it, the .txt did not
    (folder / ".a.txt.999.tmp").write_text("half")
    crashed_job(workspace, JobStatus.WRITING, [folder / "a.png", folder / "a.txt"])

    running()
    wait_for(lambda: workspace.done("img2img"))
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["a.png", "a.txt"]
    with Image.open(folder / "a.png") as result:
        assert result.size != (8, 8), "the partial output was replaced by a real run"
    assert_no_temporaries(workspace)


def test_crash_after_outputs_complete_archives_without_repainting(workspace: Workspace, running):
    workspace.profile("img2img")
    (workspace.root / "state").mkdir()
    workspace.drop("chelsea.png", "img2img/a.png")
    folder = workspace.outbox / "img2img"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "a.txt").write_text("params")
    crashed_job(workspace, JobStatus.WRITTEN, [folder / "a.png", folder / "a.txt"])

    daemon = running()
    wait_for(lambda: workspace.done("img2img"))
    wait_for(lambda: daemon.started.is_set() and daemon.idle())  # start-up rescan included
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["a.png", "a.txt"]
    assert daemon.tally.done == 0, "nothing was painted again"


def test_a_second_daemon_on_the_same_folders_is_refused(workspace: Workspace):
    workspace.profile("img2img")
    config = write_config(workspace)
    first = start(config)
    try:
        wait_for(lambda: _locked(workspace), timeout=60)
        second = start(config, "once")
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 2
        assert "already running" in output
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


def _locked(workspace: Workspace) -> bool:
    from daemon.journal.lock import lock_owner

    return lock_owner(workspace.root / "state") is not None


def test_status_shows_recent_results_and_failures(workspace: Workspace, running):
    workspace.profile("img2img")
    running()
    workspace.drop("chelsea.png", "img2img/good.png")
    (workspace.inbox / "img2img/bad.png").write_text("nope")
    wait_for(lambda: workspace.done("img2img") and workspace.failed("img2img"))
    config = write_config(workspace)
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "img2imgd is running (pid" in text
    assert "img2img/good.png" in text and "done" in text
    assert "recent failures" in text and "img2img/bad.png" in text
    entries = json.dumps(journal_states(workspace))
    assert "done" in entries and "failed" in entries


def journal_with(
    workspace: Workspace, state: JobStatus, inputs: list[Path], reason: str = ""
) -> None:
    """The journal as a crash leaves it, with the job stopped in ``state``."""
    journal = Journal(workspace.root / "state" / JOURNAL_NAME).open()
    companions = Companions(mask=inputs[1]) if len(inputs) > 1 else Companions()
    job = Job(profile="inpaint", image=inputs[0], sub_dir=Path(), companions=companions)
    row = journal.queued(job)
    journal.running(row)
    if state is JobStatus.WRITTEN:
        journal.writing(row, [])
        journal.written(row)
    if state is JobStatus.FAILING:
        journal.failing(row, reason)
    journal.close()


def test_crash_between_archiving_image_and_mask_archives_the_mask(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint")
    (workspace.root / "state").mkdir()
    image, mask = workspace.inbox / "inpaint/a.png", workspace.inbox / "inpaint/a.mask.png"
    Image.new("RGB", (64, 64)).save(image)
    Image.new("L", (64, 64), 255).save(mask)
    journal_with(workspace, JobStatus.WRITTEN, [image, mask])
    done = workspace.inbox / "_done/inpaint"
    done.mkdir(parents=True)
    image.rename(done / "a.png")  # the crash came after the image moved, before the mask

    running()
    wait_for(lambda: (done / "a.mask.png").exists())
    assert not mask.exists() and not workspace.outputs("inpaint")


def test_crash_while_failing_finishes_the_move_and_keeps_the_report(workspace: Workspace, running):
    workspace.profile("inpaint", task="inpaint")
    (workspace.root / "state").mkdir()
    image, mask = workspace.inbox / "inpaint/b.png", workspace.inbox / "inpaint/b.mask.png"
    image.write_text("not an image")
    Image.new("L", (64, 64), 255).save(mask)
    journal_with(workspace, JobStatus.FAILING, [image, mask], reason="b.png is not an image")
    failed = workspace.inbox / "_failed/inpaint"
    failed.mkdir(parents=True)
    (failed / ".b.error.txt.4242.tmp").write_text("half a report")  # killed mid-write

    running()
    wait_for(lambda: (failed / "b.png").exists() and (failed / "b.mask.png").exists())
    assert (failed / "b.error.txt").read_text().startswith("b.png is not an image")
    assert not list(failed.glob(".*")), "the half-written report was removed"
    assert not image.exists() and not mask.exists()
