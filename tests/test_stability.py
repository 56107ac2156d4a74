"""The stability tracker, driven by a fake clock and a fake ``lstat`` (and once by real files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daemon.intake.stability import StabilityTracker

DELAY = 2.0
A = Path("/inbox/p/a.png")
B = Path("/inbox/p/b.png")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Disk:
    """Sizes and mtimes of fake files; ``lstat`` raises like the real one for missing paths."""

    def __init__(self) -> None:
        self.files: dict[Path, tuple[int, int, int]] = {}
        self.calls = 0

    def write(self, path: Path, size: int, *, directory: bool = False) -> None:
        mode = (stat.S_IFDIR if directory else stat.S_IFREG) | 0o644
        previous = self.files.get(path, (0, 0, 0))[2]
        self.files[path] = (mode, size, previous + 1_000_000)

    def remove(self, path: Path) -> None:
        del self.files[path]

    def lstat(self, path: Path) -> os.stat_result:
        self.calls += 1
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        mode, size, mtime_ns = self.files[path]
        return os.stat_result((mode, 1, 1, 1, 0, 0, size, 0, 0, 0), {"st_mtime_ns": mtime_ns})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def tracker(clock: Clock, disk: Disk) -> StabilityTracker:
    return StabilityTracker(DELAY, clock=clock, lstat=disk.lstat)


def run_for(tracker: StabilityTracker, clock: Clock, seconds: float, step: float = 0.25) -> list:
    """Poll every ``step`` seconds for ``seconds``; return everything reported."""
    ready = []
    elapsed = 0.0
    while elapsed < seconds:
        ready += tracker.poll()
        clock.advance(step)
        elapsed += step
    return ready


def test_a_file_is_not_ready_before_the_delay_and_ready_after(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A)
    assert tracker.poll() == []
    clock.advance(DELAY - 0.1)
    assert tracker.poll() == []
    assert A in tracker
    clock.advance(0.2)
    assert tracker.poll() == [A]
    assert A not in tracker and len(tracker) == 0
    assert tracker.poll() == []  # reported once


def test_a_file_that_keeps_changing_is_never_reported(tracker, clock, disk):
    disk.write(A, 1)
    tracker.touch(A)
    for second in range(600):  # ten minutes of a slow writer, one change a second
        disk.write(A, second + 2)
        assert tracker.poll() == []
        clock.advance(1.0)
    assert A in tracker
    clock.advance(DELAY)
    assert tracker.poll() == [A]  # the writer stopped: ready after the delay


def test_modify_events_keep_postponing_even_when_size_is_unchanged(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A)
    tracker.poll()
    for _ in range(10):
        clock.advance(DELAY / 2)
        tracker.touch(A)  # a modify event
        assert tracker.poll() == []
    clock.advance(DELAY)
    assert tracker.poll() == [A]


def test_a_close_event_makes_a_non_empty_file_ready_at_once(tracker, disk):
    disk.write(A, 100)
    tracker.touch(A)
    tracker.touch(A, closed=True)
    assert tracker.poll() == [A]


def test_a_file_first_seen_closed_is_ready_at_once(tracker, disk):
    disk.write(A, 100)
    tracker.touch(A, closed=True)
    assert tracker.poll() == [A]


def test_an_empty_file_waits_for_the_delay_even_when_closed(tracker, clock, disk):
    disk.write(A, 0)
    tracker.touch(A, closed=True)
    assert tracker.poll() == []
    clock.advance(DELAY - 0.1)
    assert tracker.poll() == []
    clock.advance(0.2)
    assert tracker.poll() == [A]


def test_a_modification_after_close_resets(tracker, clock, disk):
    disk.write(A, 0)
    tracker.touch(A, closed=True)  # an empty placeholder was created and closed
    assert tracker.poll() == []
    clock.advance(1.0)
    disk.write(A, 50)
    tracker.touch(A)  # the writer came back: a modify event
    assert tracker.poll() == []
    clock.advance(DELAY - 0.1)
    assert tracker.poll() == []
    clock.advance(0.2)
    assert tracker.poll() == [A]


def test_closed_then_modified_before_any_poll_is_not_ready_at_once(tracker, clock, disk):
    disk.write(A, 10)
    tracker.touch(A, closed=True)
    disk.write(A, 20)
    tracker.touch(A)
    assert tracker.poll() == []
    assert run_for(tracker, clock, DELAY - 0.3) == []
    assert run_for(tracker, clock, 0.6) == [A]


def test_a_change_seen_by_poll_after_a_close_is_not_ready_at_once(tracker, clock, disk):
    disk.write(A, 0)
    tracker.touch(A, closed=True)
    assert tracker.poll() == []  # empty: waits
    clock.advance(0.5)
    disk.write(A, 4096)  # the writer is back; its modify event is still in the watcher queue
    assert tracker.poll() == []


def test_a_vanished_file_is_dropped(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A)
    tracker.poll()
    disk.remove(A)
    clock.advance(DELAY + 1)
    assert tracker.poll() == []
    assert A not in tracker and len(tracker) == 0


def test_a_file_that_never_existed_is_dropped(tracker):
    tracker.touch(A, closed=True)
    assert tracker.poll() == []
    assert len(tracker) == 0


def test_not_before_holds_a_file_back(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A, closed=True, not_before=clock.now + 30)
    calls = disk.calls
    assert run_for(tracker, clock, 29.5, step=0.5) == []
    assert disk.calls == calls  # not even looked at before its time
    assert A in tracker
    assert run_for(tracker, clock, 1.0) == [A]


def test_not_before_is_never_shortened_by_a_later_touch(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A, not_before=clock.now + 30)
    tracker.touch(A, closed=True)  # e.g. an event arrives during the back-off
    tracker.touch(A, closed=True, not_before=clock.now + 5)
    assert run_for(tracker, clock, 29.5) == []
    assert run_for(tracker, clock, 1.0) == [A]


def test_not_before_then_the_normal_delay_applies(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A, not_before=clock.now + 10)
    clock.advance(10)
    assert tracker.poll() == []  # first look after the back-off
    clock.advance(DELAY)
    assert tracker.poll() == [A]


def test_touch_is_idempotent(tracker, clock, disk):
    disk.write(A, 100)
    for _ in range(5):
        tracker.touch(A)
    assert len(tracker) == 1
    tracker.poll()
    clock.advance(DELAY)
    tracker.touch(A, closed=True)
    tracker.touch(A, closed=True)
    assert len(tracker) == 1
    assert tracker.poll() == [A]
    assert tracker.poll() == []


def test_directories_are_dropped(tracker, clock, disk):
    folder = Path("/inbox/p/shots")
    disk.write(folder, 4096, directory=True)
    tracker.touch(folder, closed=True)
    assert tracker.poll() == []
    assert folder not in tracker
    clock.advance(DELAY + 1)
    assert tracker.poll() == []


def test_forget_stops_tracking(tracker, clock, disk):
    disk.write(A, 100)
    tracker.touch(A)
    tracker.forget(A)
    tracker.forget(B)  # unknown: no error
    clock.advance(DELAY + 1)
    assert tracker.poll() == [] and len(tracker) == 0


def test_files_are_independent(tracker, clock, disk):
    disk.write(A, 100)
    disk.write(B, 100)
    tracker.touch(A)
    clock.advance(1.0)
    tracker.touch(B)
    tracker.poll()
    clock.advance(DELAY)
    assert tracker.poll() == [A, B]  # both first looked at in the same poll


def test_zero_delay_reports_on_the_second_look(clock, disk):
    tracker = StabilityTracker(0.0, clock=clock, lstat=disk.lstat)
    disk.write(A, 100)
    tracker.touch(A)
    assert tracker.poll() == []  # the first look records size and mtime
    assert tracker.poll() == [A]


def test_real_files_and_a_symlink_with_the_real_lstat(tmp_path, clock):
    tracker = StabilityTracker(DELAY, clock=clock)
    image = tmp_path / "a.png"
    image.write_bytes(b"x" * 10)
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "missing-target.png")  # dangling: lstat sees the link itself
    tracker.touch(image)
    tracker.touch(link)
    assert tracker.poll() == []
    with image.open("ab") as handle:
        handle.write(b"more")
    clock.advance(DELAY)
    assert tracker.poll() == [link]  # the image changed: its delay starts again
    clock.advance(DELAY)
    assert tracker.poll() == [image]
