"""Writing beside the model: results are delivered on a thread of their own, in order.

While the model paints the next inputs, the previous results are PNG-encoded, fsync'd and
renamed into the outbox, their inputs archived and their journal rows finished. Each job's
journal states and their order are exactly those of a delivery on the worker thread, so a
``kill -9`` at any moment is recovered the same way (see journal.py). The queue is short:
results hold decoded images, and a writer that falls behind makes the worker wait.

One ordering matters beyond that: a clip's colour reference (its first frame's result) must
be on disk before the next frame of the clip is prepared, so the worker waits for it
(:meth:`Writer.wait_for_folder`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

from loguru import logger

DEPTH = 2  # batches waiting to be written at most


class Writer:
    def __init__(self, *, depth: int = DEPTH) -> None:
        self._tasks: queue.Queue[tuple[Callable[[], None], Path | None] | None] = queue.Queue(
            maxsize=depth
        )
        self._lock = threading.Condition()
        self._folders: dict[Path, int] = {}  # folders whose reference frame is on its way
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="img2imgd-writer", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None], *, reference_of: Path | None = None) -> None:
        """Run `task` after the ones before it; `reference_of`: it writes that folder's clip
        colour reference. Blocks while the queue is full."""
        if reference_of is not None:
            with self._lock:
                self._folders[reference_of] = self._folders.get(reference_of, 0) + 1
        self._tasks.put((task, reference_of))

    def wait_for_folder(self, folder: Path) -> None:
        """Until the colour reference of `folder`'s clip, if one is on its way, is written."""
        with self._lock:
            self._lock.wait_for(lambda: folder not in self._folders)

    def stop(self) -> None:
        """Run what is queued, then end the thread."""
        if self._thread is not None:
            self._tasks.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._tasks.get()
            try:
                if item is None:
                    return
                task, reference_of = item
                try:
                    task()
                except Exception:  # a bug: the inputs stay claimed in the inbox, never lost
                    logger.exception("writing results failed unexpectedly")
                finally:
                    if reference_of is not None:
                        with self._lock:
                            self._folders[reference_of] -= 1
                            if not self._folders[reference_of]:
                                del self._folders[reference_of]
                            self._lock.notify_all()
            finally:
                self._tasks.task_done()
