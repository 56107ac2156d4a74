"""The platform seam: what differs on Windows and macOS is looked up, never assumed.

No Windows machine runs these tests; they imitate what ../shared/PLATFORMS.md records: no
``fcntl`` (nor any other Unix-only module), no folder that opens as a file, an fsync that
needs a writable handle, and files held open by other programs.
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.atomic import write_bytes
from daemon.errors import ConfigError, Fault, classify
from daemon.journal.lock import StateLock, lock_owner
from tests.conftest import Workspace, wait_for
from tests.support.imitate import UNIX_ONLY_MODULES

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "daemon"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
IMITATE = REPO / "tests" / "support" / "imitate.py"
JOBS = 240  # s; a run that loads torch and the model (generous for a loaded machine)

# ----------------------------------------------------------------- a file held by another program


def sharing_violation(winerror: int) -> OSError:
    """What Windows raises when another program holds the file (no errno of its own here)."""
    error = OSError(f"[WinError {winerror}] The process cannot access the file")
    error.winerror = winerror  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied", "a.png"),
        PermissionError(errno.EPERM, "Operation not permitted", "a.png"),
        OSError(errno.EBUSY, "Device or resource busy", "a.png"),
        sharing_violation(32),  # ERROR_SHARING_VIOLATION
        sharing_violation(33),  # ERROR_LOCK_VIOLATION
    ],
    ids=["EACCES", "EPERM", "EBUSY", "winerror 32", "winerror 33"],
)
def test_a_held_file_is_the_process_fault_on_every_try_and_says_what_to_do(error):
    for attempt in range(10):  # an unforeseen error would blame the file from the third
        verdict = classify(error, attempt=attempt, age=3600.0, name="a.png")
        assert verdict.fault is Fault.PROCESS, (attempt, verdict)
        assert verdict.foreseen and not verdict.retry_soon
        assert verdict.reason.startswith("storage error: ")
        assert "close that program, or fix the permissions" in verdict.reason


def test_other_storage_errors_keep_their_reason():
    verdict = classify(OSError(errno.ENOSPC, "No space left on device"), attempt=5)
    assert verdict == classify(OSError(errno.ENOSPC, "No space left on device"))
    assert verdict.fault is Fault.PROCESS
    assert verdict.reason == "storage error: [Errno 28] No space left on device"


def test_an_input_held_by_another_program_waits_then_is_done(
    workspace: Workspace, running, monkeypatch, logs
):
    """Fault injection: opening the input fails with EACCES twice (an antivirus scan)."""
    real_open = Path.open
    refused: list[Path] = []

    def held_open(self: Path, mode: str = "r", *args, **kwargs):
        if self.name == "held.png" and "r" in mode and len(refused) < 2:
            refused.append(self)
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", held_open)
    workspace.profile("img2img")
    daemon = running(retry_delay=0.2)
    workspace.drop("chelsea.png", "img2img/held.png")
    wait_for(lambda: daemon.tally.done == 1)  # counted after the input is archived
    assert len(refused) == 2
    assert not workspace.failed("img2img")
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["held.png", "held.txt"]
    retries = [line for line in logs if "held.png" in line and "retrying in" in line]
    assert len(retries) == 2, logs
    assert all("Permission denied" in line and "close that program" in line for line in retries)
    assert daemon.tally.failed == 0 and [p.name for p in workspace.done("img2img")] == ["held.png"]


# ----------------------------------------------------------------- durable writes


def test_durable_writes_fsync_through_handles_that_may_write(tmp_path, monkeypatch):
    """Fault injection, as on Windows: fsync refuses a read-only descriptor, and there is no
    ``os.O_DIRECTORY`` (a folder cannot be opened), so no folder is opened at all."""
    real_open, real_fsync = os.open, os.fsync
    read_only: set[int] = set()
    opened: list[str] = []
    synced: list[int] = []

    def spy_open(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))  # as Windows
        descriptor = real_open(path, flags, *args, **kwargs)
        opened.append(os.fspath(path))
        if flags & (os.O_WRONLY | os.O_RDWR):
            read_only.discard(descriptor)
        else:
            read_only.add(descriptor)
        return descriptor

    def windows_fsync(descriptor: int) -> None:
        if descriptor in read_only:  # FlushFileBuffers needs GENERIC_WRITE
            raise OSError(errno.EBADF, "Bad file descriptor")
        synced.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.delattr(os, "O_DIRECTORY", raising=False)
    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", windows_fsync)
    target = tmp_path / "out" / "a.png"
    write_bytes(target, b"painted")
    assert target.read_bytes() == b"painted"
    assert synced, "the file was flushed"
    assert not [p for p in tmp_path.rglob(".*")], "no temporary left behind"


@pytest.mark.skipif(not hasattr(os, "O_DIRECTORY"), reason="folders open only with O_DIRECTORY")
def test_where_a_folder_opens_its_renames_are_flushed_too(tmp_path, monkeypatch):
    real_open = os.open
    folders: list[str] = []

    def spy_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECTORY:
            folders.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    write_bytes(tmp_path / "a.png", b"painted")
    assert folders == [os.fspath(tmp_path)]


# ----------------------------------------------------------------- the single-instance lock


def test_one_lock_per_state_folder_and_status_sees_its_owner(tmp_path):
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    assert lock_owner(tmp_path) is None
    first.acquire()
    try:
        assert lock_owner(tmp_path) == os.getpid()
        with pytest.raises(ConfigError, match=rf"another img2imgd \(pid {os.getpid()}\) is alr"):
            second.acquire()
    finally:
        first.release()
    assert lock_owner(tmp_path) is None
    second.acquire()  # free again
    second.release()


def test_a_killed_owner_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert lock_owner(tmp_path) == holder.pid
    finally:
        holder.kill()  # SIGKILL; TerminateProcess on Windows: no handler runs
        holder.wait(30)
    wait_for(lambda: lock_owner(tmp_path) is None, timeout=10)
    lock = StateLock(tmp_path)
    lock.acquire()
    lock.release()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from daemon.journal.lock import StateLock
lock = StateLock(Path(sys.argv[1]))  # kept: a lock that is garbage collected is released
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


# ----------------------------------------------------------------- no Unix-only module

UNIX_ONLY_NAMES = {
    "os": {"O_DIRECTORY", "O_NOFOLLOW", "getuid", "geteuid", "getgid", "fork", "setsid", "killpg"},
    "socket": {"AF_UNIX", "SOCK_CLOEXEC"},
}


def unix_only_uses(tree: ast.AST) -> list[str]:
    """Imports of Unix-only modules, and Unix-only names used as attributes (not looked up)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"import {n}" for n in names if (n or "").split(".")[0] in UNIX_ONLY_MODULES]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module, name = node.value.id, node.attr
            if name in UNIX_ONLY_NAMES.get(module, ()) or (
                module == "signal"
                and name.startswith(("SIG", "CTRL_"))
                and not name.startswith("SIG_")
            ):
                found.append(f"{module}.{name}")
    return found


def test_the_daemon_imports_no_unix_only_module_and_looks_up_platform_names():
    """Every module, also those `check` and `once` never import (the subprocess test below)."""
    findings = [
        f"{path.relative_to(REPO)}:{use}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for use in unix_only_uses(ast.parse(path.read_text()))
    ]
    assert not findings, "use getattr(module, name, None) instead: " + ", ".join(findings)


def windows_like(config: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`command` run as on Windows (see tests/support/imitate.py)."""
    return subprocess.run(
        [sys.executable, str(IMITATE), "windows", "--config", str(config), command],
        cwd=config.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=JOBS,
    )  # fmt: skip


def test_check_and_once_run_where_fcntl_cannot_be_imported(workspace: Workspace):
    workspace.profile("img2img")
    config = workspace.config_file()
    workspace.drop("chelsea.png", "img2img/a.png")

    check = windows_like(config, "check")
    assert "imitating Windows: no fcntl" in check.stdout, check.stdout
    assert check.returncode == 0, check.stdout
    assert "1 profile(s) are valid: img2img" in check.stdout

    once = windows_like(config, "once")
    assert once.returncode == 0, once.stdout
    assert "1 done, 0 failed, 0 left in the inbox" in once.stdout
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["a.png", "a.txt"]
    assert [p.name for p in workspace.done("img2img")] == ["a.png"]
    assert "Traceback" not in once.stdout, once.stdout
