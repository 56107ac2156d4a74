"""The core flows through the real daemon, run as on Windows and macOS (a simulation).

No Windows or macOS machine runs these tests. tests/support/imitate.py starts the real CLI in a
subprocess with the platform seam switched and the system's behaviour imitated as
../shared/PLATFORMS.md records it: no ``fcntl``, no close events, ``os.replace`` onto a held
file failing with WinError 32, names compared case-insensitively (Windows); every event twice
and no close events (macOS). What a real NTFS/APFS volume or a real ReadDirectoryChangesW or
FSEvents stream does beyond that is not tested here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA, Workspace, wait_for
from tests.support.imitate import HELD_MARK
from tests.test_crash import journal_states, write_config

REPO = Path(__file__).resolve().parent.parent
IMITATE = REPO / "tests" / "support" / "imitate.py"
JOBS = 240  # s: loading torch and the model in a subprocess, on a loaded 2-core machine


def imitating(system: str, config: Path, command: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(IMITATE), system, "--config", str(config), command],
        cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
             "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip


def stopped(daemon: subprocess.Popen[str]) -> str:
    """Stop a running daemon gracefully (Ctrl-Break on Windows; SIGTERM here) and return its
    log; it must exit 0."""
    daemon.send_signal(signal.SIGTERM)
    output, _ = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, output
    assert "Traceback" not in output, output
    return output


def names(files: list[Path]) -> list[str]:
    return sorted(path.name for path in files)


def test_as_on_windows_drop_paint_deliver_and_fail(workspace: Workspace):
    workspace.profile("img2img")
    workspace.profile("live", overwrite=True)  # a result that replaces itself, as live does
    config = write_config(workspace)
    daemon = imitating("windows", config, "run", IMITATE_HELD_NAME="a.png", IMITATE_HELD="2")
    try:
        for name in ("Cat.png", "CON.png", "trailing..png"):
            workspace.drop("chelsea.png", f"img2img/{name}")
        (workspace.inbox / "img2img" / "broken.png").write_bytes(b"not a picture")
        workspace.drop("chelsea.png", "live/a.png")
        wait_for(lambda: len(workspace.done("img2img")) == 3, timeout=JOBS)
        wait_for(lambda: len(workspace.failed("img2img")) == 2, timeout=JOBS)
        wait_for(lambda: workspace.done("live"), timeout=JOBS)
        workspace.drop("chelsea.png", "img2img/cat.png")  # Cat.png's result is in the outbox
        workspace.drop("chelsea.png", "live/a.png")  # its result is held by a viewer
        wait_for(lambda: len(workspace.done("img2img")) == 4, timeout=JOBS)
        wait_for(lambda: len(workspace.done("live")) == 2, timeout=JOBS)
    finally:
        output = stopped(daemon)
    assert "imitating Windows: no fcntl" in output and "imitating windows" in output
    assert names(workspace.outputs("img2img")) == [
        "Cat.png", "Cat.txt", "_CON.png", "_CON.txt", "cat-1.png", "cat-1.txt",
        "trailing.png", "trailing.txt",
    ]  # fmt: skip
    assert names(workspace.failed("img2img")) == ["broken.error.txt", "broken.png"]
    assert output.count(f"{HELD_MARK}: ") == 2, output
    assert names(workspace.outputs("live")) == ["a.png", "a.txt"]
    assert not [p for p in workspace.outbox.rglob(".*") if p.is_file()], "no temporary left"


def test_as_on_windows_a_kill_mid_job_is_recovered(workspace: Workspace):
    """TerminateProcess on Windows, as kill -9 here: no handler runs; the journal recovers."""
    workspace.profile("img2img", max_pixels=256 * 256, steps=40, denoising_strength=1.0)
    config = write_config(workspace)
    workspace.drop("chelsea.png", "img2img/a.png")
    daemon = imitating("windows", config, "run")
    try:
        wait_for(lambda: "running" in journal_states(workspace), timeout=JOBS)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
    finally:
        daemon.kill()
        daemon.communicate(timeout=30)
    assert (workspace.inbox / "img2img" / "a.png").exists(), "the input survives the kill"
    workspace.profile("img2img")  # fast now: recovery is what is tested
    again = imitating("windows", config, "once")
    output, _ = again.communicate(timeout=JOBS)
    assert again.returncode == 0, output
    assert "1 done, 0 failed, 0 left in the inbox" in output, output
    assert names(workspace.outputs("img2img")) == ["a.png", "a.txt"]
    assert names(workspace.done("img2img")) == ["a.png"]


def test_as_on_macos_repeated_events_and_no_close_take_each_file_once_and_whole(
    workspace: Workspace,
):
    """Files written in place in pieces (no rename, no close event): only quiet time says
    they are whole, and each event arriving twice paints nothing twice."""
    workspace.profile("img2img")
    config = write_config(workspace, stability_delay=0.5)
    daemon = imitating("macos", config, "run")
    picture = (DATA / "chelsea.png").read_bytes()
    try:
        folder = workspace.inbox / "img2img"
        for name in ("a.png", "b.png"):
            with open(folder / name, "wb") as handle:
                for start in range(0, len(picture), len(picture) // 4 + 1):
                    handle.write(picture[start : start + len(picture) // 4 + 1])
                    handle.flush()
        wait_for(lambda: len(workspace.done("img2img")) == 2, timeout=JOBS)
    finally:
        output = stopped(daemon)
    assert "imitating macos" in output
    assert names(workspace.outputs("img2img")) == ["a.png", "a.txt", "b.png", "b.txt"]
    assert not workspace.failed("img2img"), output
