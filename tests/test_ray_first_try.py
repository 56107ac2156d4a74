"""``executor: ray`` as a newcomer first tries it: two CPU workers on one machine, from the
config alone (the README's recipe), with the daemon's own private Ray instance.

The real ``img2imgd run`` in a subprocess, with TMPDIR and HOME pointed at empty folders:
Ray must keep its sessions, logs and sockets in the state folder (a service has a read-only
home and a private /tmp), its token out of ``~/.ray``, its warnings and the workers' lines
in the daemon's log format, and every one of the two workers must paint part of a clip.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.journal.journal import open_read_only
from daemon.models.builtin import ensure_builtin
from daemon.ops.service import JOURNAL_NAME
from daemon.ops.status import WORKERS_NAME, status_report
from daemon.render.ray_instance import SOCKET_PATH_MAX, SOCKET_SUFFIX, ray_temp_dir
from tests.support.ray_cluster import LOOPBACK
from tests.support.workspace import Workspace, wait_for
from tests.test_sequences import make_frames

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

ROOT = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL) ")
# What the libraries themselves leave in TMPDIR when imported, in any process, Ray or not:
# torch's compile cache folder, and onnxruntime's telemetry session file.
LIBRARY_TEMP_FILES = {f"torchinductor_{getpass.getuser()}", ".ses"}
FRAMES = 8


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A workspace whose state folder is short enough for Ray's sockets under it (pytest's
    own temporary paths are not: see the fallback test below)."""
    root = Path(tempfile.mkdtemp(prefix="i2r-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def first_try_config(workspace: Workspace) -> Path:
    """The README's recipe: CPU workers, two of them, and nothing else about Ray."""
    ensure_builtin("tiny-sd", workspace.state_dir / "builtin")
    # Frames slow enough (about a second each) that one worker is still painting its share
    # when the other's is sent.
    workspace.profile("p", steps=20, max_pixels=96 * 96, denoising_strength=0.8)
    return workspace.config_file(
        executor="ray", ray_gpus_per_worker=0, ray_workers=2, max_batch="auto"
    )


def daemon_environment(temp: Path, home: Path) -> dict[str, str]:
    """The loopback recipe, but Ray's folder left to the daemon (no RAY_TMPDIR)."""
    env = {**os.environ, **LOOPBACK, "TMPDIR": str(temp), "HOME": str(home)}
    env.pop("RAY_TMPDIR")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def ray_default_folder() -> list[tuple[str, int]] | None:
    """What is in /tmp/ray (Ray's default folder) now, with times; None when it is absent."""
    folder = Path("/tmp/ray")
    if not folder.exists():
        return None
    return sorted((path.name, path.lstat().st_mtime_ns) for path in folder.iterdir())


def workers_shown(state: Path) -> list[dict[str, object]]:
    try:
        shown = json.loads((state / WORKERS_NAME).read_text())
    except (OSError, ValueError):
        return []
    return list(shown.get("workers", []))


def painted_by(state: Path) -> dict[str, str]:
    journal = open_read_only(state / JOURNAL_NAME)
    assert journal is not None
    try:
        return {e.label: e.worker for e in journal.recent(100) if e.state.value == "done"}
    finally:
        journal.close()


def processes_under(folder: Path) -> list[int]:
    """PIDs whose command line names `folder` (the private instance's processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def test_two_cpu_workers_from_the_config_alone_paint_a_clip_and_write_only_the_state_folder(
    short_root: Path, state_dir: Path, tmp_path: Path
):
    workspace = Workspace(short_root, state_dir).create()
    config = first_try_config(workspace)
    temp, home = tmp_path / "tmp", tmp_path / "home"
    temp.mkdir()
    home.mkdir()
    before = ray_default_folder()
    log = tmp_path / "daemon.log"  # a file, as under systemd: not a TTY
    with log.open("w") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(config), "run"], cwd=short_root,
            env=daemon_environment(temp, home), stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            # Both workers up first: a frame goes only to a worker that has answered.
            both = lambda: sum(bool(w["alive"]) for w in workers_shown(workspace.state)) == 2  # noqa: E731
            wait_for(lambda: both() or daemon.poll() is not None, timeout=240)
            assert daemon.poll() is None, log.read_text()
            report = status_report(workspace.state, JOURNAL_NAME)
            assert len(re.findall(r"w\d  127\.0\.0\.1 CPU  pid \d+  ready", report)) == 2, report
            for frame in make_frames(short_root / "staging", FRAMES, size=(96, 72)):
                workspace.drop(frame, f"p/clip/{frame.name}")
            wait_for(lambda: len(painted_by(workspace.state)) == FRAMES, timeout=300)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=120) == 0, log.read_text()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(30)
    output = log.read_text()

    # The clip spread over both workers: 7 frames after the colour reference, split 4 + 3.
    workers = painted_by(workspace.state)
    after_reference = [workers[f"p/clip/frame_{i:04d}.png"] for i in range(2, FRAMES + 1)]
    shares = sorted(after_reference.count(w) for w in set(after_reference))
    assert shares == [3, 4], workers

    # The log: every line in the daemon's format, no colour codes, no raw Ray message; the
    # workers' own lines are there, under their names.
    assert "\x1b[" not in output
    strays = [line for line in output.splitlines() if not LOG_LINE.match(line)]
    assert not strays, output
    assert re.search(r"INFO +w[12]@127\.0\.0\.1 CPU: loading model", output), output
    assert "Token authentication" not in output, output

    # Nothing outside the state folder: Ray's sessions are in state/ray, TMPDIR holds only
    # what importing torch and onnxruntime leaves in any process, no ~/.ray, /tmp/ray as it was.
    assert list((workspace.state / "ray").glob("session_2*")), "no Ray session in state/ray"
    assert {p.name for p in temp.iterdir()} <= LIBRARY_TEMP_FILES, list(temp.iterdir())
    assert not (home / ".ray").exists(), "Ray wrote its token into the home folder"
    assert ray_default_folder() == before, "this run touched /tmp/ray"
    left = wait_for_gone(short_root)
    assert not left, f"Ray processes outlived the daemon: {left}"


def wait_for_gone(folder: Path, timeout: float = 30.0) -> list[int]:
    """The private instance's processes still there after `timeout` s (then ended)."""
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not processes_under(folder), timeout=timeout, interval=0.2)
    left = processes_under(folder)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def test_a_state_folder_too_long_for_ray_sockets_is_reached_through_a_short_link(
    tmp_path: Path, short_root: Path, monkeypatch: pytest.MonkeyPatch
):
    short = short_root / "state"
    assert ray_temp_dir(short) == short / "ray"
    deep = tmp_path / ("a-long-folder-name-" * 4) / "state"
    monkeypatch.setattr(tempfile, "tempdir", str(short_root))  # the temporary folder
    temp = ray_temp_dir(deep)
    assert len(os.fsencode(temp)) + SOCKET_SUFFIX <= SOCKET_PATH_MAX
    assert temp.parent == short_root and temp.resolve() == (deep / "ray").resolve()
    assert ray_temp_dir(deep) == temp  # the same link next time
