"""The platform seam: what differs on Windows and macOS is looked up, never assumed.

No Windows machine runs these tests; they imitate what ../shared/PLATFORMS.md records: no
``fcntl`` (nor any other Unix-only module), no folder that opens as a file, an fsync that
needs a writable handle, and files held open by other programs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
