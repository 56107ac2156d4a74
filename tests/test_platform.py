"""The platform seam: what differs on Windows and macOS is looked up, never assumed.

No Windows machine runs these tests; they imitate what ../shared/PLATFORMS.md records: no
``fcntl`` (nor any other Unix-only module), no folder that opens as a file, an fsync that
needs a writable handle, and files held open by other programs.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.atomic import write_bytes
from daemon.deliver.recovery import StateLock, lock_owner
from daemon.errors import ConfigError
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "daemon"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
JOBS = 240  # s; a run that loads torch and the model (generous for a loaded machine)

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
from daemon.deliver.recovery import StateLock
lock = StateLock(Path(sys.argv[1]))  # kept: a lock that is garbage collected is released
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""
