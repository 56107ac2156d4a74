"""Notice paths in the inbox; nothing more.

The watcher only reports paths (and whether the writer closed the file); it never opens or
decodes anything, so a slow share or a huge file never blocks it. Native inotify is used when
it can be; ``polling`` (network shares, where no events arrive) or an inotify limit switches
to watchdog's polling observer. Files inside a folder that is moved or copied in arrive
without events of their own, so a new folder is walked.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from loguru import logger
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.intake.names import is_ignored_dir, is_ignored_name
from daemon.platform_seam import current

OnPath = Callable[[Path, bool], None]  # (path, closed_after_write)
OnLost = Callable[[], None]  # events were lost: look at the whole inbox again


def walk_files(root: Path) -> Iterator[Path]:
    """Every candidate file below ``root``; ignored folders, names and symlinked dirs skipped."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if not is_ignored_dir(entry.name):
                yield from walk_files(Path(entry.path))
        elif not is_ignored_name(entry.name):
            yield Path(entry.path)


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, on_path: OnPath, on_lost: OnLost) -> None:
        self.root = root
        self.on_path = on_path
        self.on_lost = on_lost

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # a watcher thread that dies silently loses every later file
            logger.exception("watcher: could not handle {}", event)

    def _dispatch(self, event: FileSystemEvent) -> None:
        # Windows (ReadDirectoryChangesW) and macOS (FSEvents) have no close event; where the
        # simulation imitates them, inotify's are dropped, so only quiet time completes a file.
        # Repeated and coalesced events (FSEvents) only refresh the stability wait.
        if isinstance(event, EventsLostEvent):
            logger.warning(
                "watcher: the system dropped file events (its buffer overflowed); "
                "rescanning the inbox so that no file is missed"
            )
            self.on_lost()
        elif isinstance(event, FileClosedEvent):
            if current().close_events:
                self._report(_str(event.src_path), closed=True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent | FileDeletedEvent):
            self._report(_str(event.src_path), closed=False)  # a delete: the path is gone
        elif isinstance(event, FileMovedEvent):
            self._report(_str(event.dest_path), closed=True)  # a rename finishes a write
        elif isinstance(event, DirCreatedEvent | DirMovedEvent):
            folder = Path(
                _str(event.dest_path if isinstance(event, DirMovedEvent) else event.src_path)
            )
            for path in walk_files(folder):
                self.on_path(path, False)

    def _report(self, raw: str, *, closed: bool) -> None:
        path = Path(raw)
        if not is_ignored_name(path.name):
            self.on_path(path, closed)


def _str(value: str | bytes) -> str:
    return os.fsdecode(value)


class InboxWatcher:
    """Start/stop a watchdog observer on the inbox root."""

    def __init__(
        self, root: Path, on_path: OnPath, *, polling: bool, poll_interval: float,
        on_lost: OnLost = lambda: None,
    ) -> None:  # fmt: skip
        self.root, self.on_path, self.on_lost = root, on_path, on_lost
        self.polling, self.poll_interval = polling, poll_interval
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        handler = _Handler(self.root, self.on_path, self.on_lost)
        try:
            self._observer = self._make_observer(polling=self.polling)
            self._observer.schedule(handler, str(self.root), recursive=True)
            self._observer.start()
        except OSError as exc:
            self.stop()  # release what the failed observer holds (inotify fd, threads)
            if self.polling or exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENFILE):
                raise
            logger.warning(
                "inotify limit reached ({}); falling back to polling every {} s. Raise "
                "fs.inotify.max_user_watches (sysctl) to get native events back.",
                exc.strerror,
                self.poll_interval,
            )
            self.polling = True
            self.start()

    def _make_observer(self, *, polling: bool) -> BaseObserver:
        if polling:
            return PollingObserver(timeout=self.poll_interval)
        return Observer()

    def is_alive(self) -> bool:
        """False when the observer or its emitter stopped (e.g. the inbox was deleted or its
        share unmounted: watchdog's emitter ends quietly while the observer lives on)."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = list(observer.emitters)
        return bool(emitters) and all(emitter.is_alive() for emitter in emitters)

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
