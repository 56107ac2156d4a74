"""The platform seam's rules, run here as Windows and macOS would apply them.

No Windows or macOS machine runs these tests: the seam is switched (``platform_seam.PLATFORM``)
and the system's behaviour is imitated as ../shared/PLATFORMS.md records it. The daemon-level
flows under the same imitation are in tests/test_windows_sim.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from watchdog.events import EventsLostEvent, FileClosedEvent

from daemon import platform_seam
from daemon.atomic import HELD_WAITS, write_bytes
from daemon.deliver.lifecycle import report_path
from daemon.deliver.outputs import claim_names, move_into
from daemon.intake.watcher import InboxWatcher
from daemon.paths import portable_name
from daemon.platform_seam import LINUX, MACOS, WINDOWS, Platform, fit_stem, for_system
from tests.conftest import Workspace, wait_for


@pytest.fixture
def as_windows(monkeypatch: pytest.MonkeyPatch) -> Platform:
    monkeypatch.setattr(platform_seam, "PLATFORM", WINDOWS)
    return WINDOWS


def test_the_real_platform_comes_from_sys_platform():
    assert for_system("win32") is WINDOWS and for_system("cygwin") is WINDOWS
    assert for_system("darwin") is MACOS
    assert for_system("linux") is LINUX and for_system("freebsd14") is LINUX
    assert not WINDOWS.close_events and not MACOS.close_events and LINUX.close_events
    assert platform_seam.current() is for_system(os.sys.platform)


def test_a_name_taken_in_another_case_gets_the_next_free_one(tmp_path, as_windows):
    (tmp_path / "Cat.png").write_bytes(b"x")
    assert claim_names(tmp_path, ["cat"], [".png", ".txt"], overwrite=False) == ["cat-1"]
    (tmp_path / "CAT.error.txt").write_text("x")
    assert report_path(tmp_path, "cat.png").name == "cat-1.error.txt"
    source = tmp_path / "in" / "cat.png"
    source.parent.mkdir()
    source.write_bytes(b"y")
    assert [p.name for p in move_into([source], tmp_path)] == ["cat-1.png"]


def test_where_case_counts_the_same_names_are_free(tmp_path, monkeypatch):
    monkeypatch.setattr(platform_seam, "PLATFORM", LINUX)
    (tmp_path / "Cat.png").write_bytes(b"x")
    assert claim_names(tmp_path, ["cat"], [".png"], overwrite=False) == ["cat"]


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("CON", "_CON"), ("nul.tar", "_nul.tar"), ("Com1", "_Com1"), ("lpt9 ", "_lpt9"),
     ("trailing. .", "trailing"), ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"), ("CONSOLE", "CONSOLE")],
)  # fmt: skip
def test_outputs_get_names_windows_accepts(stem, expected):
    assert portable_name(stem) == expected


def test_a_long_name_is_shortened_to_fit_max_path_keeping_its_end(tmp_path, as_windows):
    folder = tmp_path / ("deep" * 20)
    stem = "frame-of-a-very-long-name-" * 12 + "0042"
    (fitted,) = claim_names(folder, [stem], [".png", ".txt"], overwrite=False)
    assert fitted.endswith("~ame-0042") and fitted.startswith("frame-of-a")
    assert len(str(folder / f"{fitted}-99999.png")) <= 259


def test_a_long_name_fits_one_name_s_limit_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(platform_seam, "PLATFORM", LINUX)
    stem = "é" * 200  # 400 bytes of UTF-8
    fitted = fit_stem(tmp_path, stem, room=10)
    assert len(fitted.encode()) <= 245 and fitted.endswith("~" + "é" * 8)
    assert fit_stem(tmp_path, "short", room=10) == "short"


def test_a_replace_onto_a_held_file_is_waited_for(tmp_path, monkeypatch):
    """Fault injection, as on Windows: a viewer holds the target for two tries."""
    real_replace, refused = os.replace, []

    def held(source, target):
        if len(refused) < 2:
            error = PermissionError(errno.EACCES, "The process cannot access the file", target)
            error.winerror = 32  # type: ignore[attr-defined]
            refused.append(error)
            raise error
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", held)
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(refused) == 2
    assert not list(tmp_path.glob(".*")), "no temporary left behind"


def test_a_file_held_longer_raises_for_the_caller_to_retry(tmp_path, monkeypatch):
    def always_held(source, target):
        raise PermissionError(errno.EACCES, "The process cannot access the file", target)

    monkeypatch.setattr(os, "replace", always_held)
    monkeypatch.setattr("daemon.atomic.HELD_WAITS", tuple(0.0 for _ in HELD_WAITS))
    with pytest.raises(PermissionError):
        write_bytes(tmp_path / "a.png", b"new")
    assert not list(tmp_path.iterdir()), "the temporary is removed"


def _dispatch(watcher: InboxWatcher, event) -> None:
    """Put `event` into the running observer's queue, as its emitter would."""
    observer = watcher._observer
    assert observer is not None
    (emitter,) = observer.emitters
    observer.event_queue.put((event, emitter.watch))


def test_events_lost_means_a_rescan_and_close_events_are_dropped_as_on_windows(
    tmp_path, as_windows
):
    lost: list[bool] = []
    noticed: list[tuple[Path, bool]] = []
    watcher = InboxWatcher(
        tmp_path, lambda path, closed: noticed.append((path, closed)), polling=False,
        poll_interval=1.0, on_lost=lambda: lost.append(True),
    )  # fmt: skip
    watcher.start()
    try:
        _dispatch(watcher, FileClosedEvent(str(tmp_path / "a.png")))
        _dispatch(watcher, EventsLostEvent(str(tmp_path)))
        wait_for(lambda: lost, timeout=10)
        (tmp_path / "b.png").write_bytes(b"x")
        wait_for(lambda: any(p.name == "b.png" for p, _ in noticed), timeout=10)
        assert not [closed for _, closed in noticed if closed], "no close event on Windows"
        assert all(p.name != "a.png" for p, _ in noticed)
    finally:
        watcher.stop()


def test_a_daemon_rescans_when_events_were_lost(workspace: Workspace, running, monkeypatch, logs):
    """Fault injection: the system dropped the events of `lost.png`, then said so."""
    from daemon.intake import watcher as watching

    real_report = watching._Handler._report

    def dropped(self, raw: str, *, closed: bool) -> None:
        if Path(raw).name != "lost.png":
            real_report(self, raw, closed=closed)

    monkeypatch.setattr(watching._Handler, "_report", dropped)
    workspace.profile("img2img")
    daemon = running(rescan_interval=3600.0)
    workspace.drop("chelsea.png", "img2img/lost.png")
    assert daemon._watcher is not None
    _dispatch(daemon._watcher, EventsLostEvent(str(workspace.inbox)))
    wait_for(lambda: daemon.tally.done == 1, timeout=60)
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["lost.png", "lost.txt"]
    assert any("dropped file events" in line and "rescanning" in line for line in logs)
