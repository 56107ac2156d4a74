"""When a clip is over: its folder has stayed empty for the pairing window.

Frames that come slower than they are painted still belong to the clip (same seed, same
colours), so a clip does not end the moment its folder runs empty. When it ends, its state
goes, and a mask that served all its images (the only file in ``masks/``) is archived.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from loguru import logger

from daemon.clips.state import ClipStore
from daemon.deliver.lifecycle import archive_inputs
from daemon.intake.jobs import Job
from daemon.intake.pairing import pending_images
from daemon.paths import escaped


class ClipEnds:
    """Watches folders whose last job finished; thread-safe (worker and main loop)."""

    def __init__(self, inbox: Path, clips: ClipStore, *, window: float) -> None:
        self.inbox = inbox
        self.clips = clips
        self.window = window
        self._lock = threading.Lock()
        self._ending: dict[Path, tuple[float, Job]] = {}  # emptied folder -> since, last job

    def after_job(self, job: Job) -> None:
        """A job left its folder: if nothing else waits there, the clip may be over."""
        folder = job.image.parent
        with self._lock:
            if any(pending_images(folder)):
                self._ending.pop(folder, None)
            else:
                self._ending[folder] = (time.monotonic(), job)

    def end_due(self, busy: set[Path], *, now: float | None = None, at_stop: bool = False) -> None:
        """End the clips whose folder stayed empty for the window; `busy`: folders with work
        in hand. ``at_stop``: nothing more arrives for them in this run."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [
                (folder, job)
                for folder, (since, job) in self._ending.items()
                if at_stop or now - since >= self.window
            ]
            for folder, _ in due:
                del self._ending[folder]
        for folder, job in due:
            if folder not in busy and not any(pending_images(folder)):
                self._end(job)

    def _end(self, job: Job) -> None:
        shared = [path for path in job.companions.shared if path.exists()]
        if shared:
            try:
                archive_inputs(shared, job.profile, self.inbox)
            except OSError as exc:
                logger.warning(
                    "{}: could not archive the folder's shared mask or reference: {}",
                    job.label, exc,
                )  # fmt: skip
        state = self.clips.folder(job.profile, job.sub_dir)
        if job.sub_dir.parts and state.exists():
            done = self.clips.close(state)
            logger.info(
                "clip {} finished: {} frame(s) in {:.0f} s",
                escaped(f"{job.profile}/{job.sub_dir}"), done.done, done.seconds,
            )  # fmt: skip
