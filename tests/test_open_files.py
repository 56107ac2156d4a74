"""A start-up file that stopped changing long ago and that no process is writing is complete
at once; one that a real process holds open for writing is not. Real files, real processes,
the real /proc (skipped where there is none); a platform without /proc keeps the wait."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.intake.open_files import PROC, not_open_for_writing
from daemon.intake.stability import StabilityTracker, already_settled

DELAY = 30.0  # long, so that only "stable at once" can report a file within a test


def _machine_can_tell() -> bool:
    """Linux's /proc, every process readable (root, or no other user's processes), not in a
    container's PID namespace, and a temporary folder on a local filesystem."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.png"
        probe.write_bytes(b"x")
        return bool(not_open_for_writing([probe]))


needs_proc = pytest.mark.skipif(
    not _machine_can_tell(), reason="this machine cannot tell who writes a file: it waits"
)

HOLDER = """
import sys
handle = open(sys.argv[1], sys.argv[2])
print("open", flush=True)
sys.stdin.readline()
handle.close()
print("closed", flush=True)
sys.stdin.readline()
"""


class Holder:
    """Another process holding a file open (``mode`` as for ``open``) until told to close."""

    def __init__(self, path: Path, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._expect("open")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == word  # blocks until it is so

    def close_file(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self._expect("closed")  # it lives on, with the file closed

    def end(self) -> None:
        self.process.kill()
        self.process.wait(30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.end()


def aged(path: Path, data: bytes = b"finished image bytes") -> Path:
    path.write_bytes(data)
    old = time.time() - 600
    os.utime(path, (old, old))
    return path


def settled_now(paths: list[Path], proc_root: Path = PROC) -> dict[Path, tuple[int, int]]:
    return already_settled(paths, DELAY, now=time.time(), proc_root=proc_root)


@needs_proc
@pytest.mark.parametrize("mode", ["ab", "r+b", "wb"], ids=["append", "read-write", "write"])
def test_a_file_held_open_for_writing_is_not_stable_at_once_until_closed(tmp_path, holders, mode):
    held, free = aged(tmp_path / "held.png"), aged(tmp_path / "free.png")
    holder = Holder(held, mode)
    holders.append(holder)
    os.utime(held, (time.time() - 600,) * 2)  # "wb" truncated it: old again, still open
    assert set(settled_now([held, free])) == {free}

    holder.close_file()
    assert set(settled_now([held, free])) == {held, free}


@needs_proc
def test_a_file_held_open_read_only_is_stable_at_once(tmp_path, holders):
    viewed = aged(tmp_path / "viewed.png")
    holders.append(Holder(viewed, "rb"))
    assert settled_now([viewed]) == {viewed: (viewed.stat().st_size, viewed.stat().st_mtime_ns)}


@needs_proc
def test_a_recent_file_waits_even_when_nobody_holds_it(tmp_path):
    recent = tmp_path / "recent.png"
    recent.write_bytes(b"just written")
    assert settled_now([recent]) == {}


def test_without_proc_the_wait_is_kept(tmp_path):
    old = aged(tmp_path / "old.png")
    assert not_open_for_writing([old], proc_root=tmp_path / "no-proc") == set()
    assert settled_now([old], proc_root=tmp_path / "no-proc") == {}


@needs_proc
def test_a_file_with_another_name_is_not_answered_for(tmp_path):
    """A writer could hold it under its other name: not looked up, so the wait is kept."""
    linked = aged(tmp_path / "linked.png")
    os.link(linked, tmp_path / "elsewhere.bin")
    assert settled_now([linked]) == {}


@needs_proc
def test_a_settled_file_is_reported_by_the_first_poll_unless_it_changed(tmp_path):
    still, changed = aged(tmp_path / "still.png"), aged(tmp_path / "changed.png")
    tracker = StabilityTracker(DELAY)
    for path, (size, mtime_ns) in settled_now([still, changed]).items():
        tracker.settled(path, size, mtime_ns)
    changed.write_bytes(b"a writer came back")
    assert tracker.poll() == [still]
    assert changed in tracker  # it waits the whole delay from its change


def test_settled_leaves_a_tracked_file_as_it_is(tmp_path):
    path = aged(tmp_path / "a.png")
    tracker = StabilityTracker(DELAY)
    tracker.touch(path)
    st = path.stat()
    tracker.settled(path, st.st_size, st.st_mtime_ns)
    assert tracker.poll() == []


@needs_proc
def test_one_proc_walk_for_a_batch_is_cheap(tmp_path):
    """24 start-up files against every process of this machine: well under the delay."""
    files = [aged(tmp_path / f"img_{index:03d}.png") for index in range(24)]
    started = time.perf_counter()
    assert set(settled_now(files)) == set(files)
    assert time.perf_counter() - started < 2.0  # a loaded 2-core machine: ~10-50 ms
