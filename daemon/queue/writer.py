"""Writing beside the model: results are delivered on a thread of their own, in order.

While the model paints the next inputs, the previous results are PNG-encoded, fsync'd and
renamed into the outbox, their inputs archived and their journal rows finished. Each job's
journal states and their order are exactly those of a delivery on the worker thread, so a
``kill -9`` at any moment is recovered the same way (see journal.py). The queue is short:
results hold decoded images, and a writer that falls behind makes the worker wait.

A clip's key frame must be written before the next frame of the clip is prepared: its clip
waits for it (:meth:`daemon.clips.state.Clip.colors`), not the writer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from loguru import logger

DEPTH = 2  # batches waiting to be written at most


class Writer:
    def __init__(self, *, depth: int = DEPTH) -> None:
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="img2imgd-writer", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` after the ones before it. Blocks while the queue is full."""
        self._tasks.put(task)

    def stop(self) -> None:
        """Run what is queued, then end the thread."""
        if self._thread is not None:
            self._tasks.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                if task is None:
                    return
                try:
                    task()
                except Exception:  # a bug: the inputs stay claimed in the inbox, never lost
                    logger.exception("writing results failed unexpectedly")
            finally:
                self._tasks.task_done()
