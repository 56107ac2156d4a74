"""Frame sequences: a sub-folder of a profile inbox is one clip, painted as one.

A clip's frames share what makes a video steady: one seed (``seed_mode: fixed``, the
default; ``increment`` adds the frame number; ``random`` draws per frame) and one colour
reference (its first finished frame, see :mod:`daemon.a1111.color`). Both are kept on disk in
``state/sequences/<id>/`` so that a daemon killed mid-clip resumes it the same way; the
state is dropped when the clip's folder runs empty, so the next clip dropped there starts
afresh. Frames themselves are ordinary jobs (one per file), which is what makes a clip
resumable frame by frame and lets a corrupt frame fail alone.

Videos (:mod:`daemon.prepare.video`) keep the same state in their work folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger
from PIL import Image

from daemon.a1111.color import Colors, color_reference
from daemon.a1111.seeds import draw_seed
from daemon.atomic import atomic_writer, write_text
from daemon.intake.pairing import pending_images

BAR_WIDTH = 20


def progress_line(done: int, total: int, per_frame: float | None) -> str:
    """``[######--------------] 6/20 frames, 1.9 s/frame, about 27 s left``; `per_frame`:
    the pace (:class:`Pace`), None before there is one."""
    total = max(total, done)
    filled = round(BAR_WIDTH * done / total) if total else BAR_WIDTH
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    line = f"[{bar}] {done}/{total} frames"
    if done and per_frame is not None:
        line += f", {per_frame:.1f} s/frame"
        if total > done:
            line += f", about {_duration(per_frame * (total - done))} left"
    return line


class Pace:
    """Seconds per frame, from the frames painted after the first one of this run: the first
    carries the model's load (and the start of the clip), which would make every estimate
    after it far too long. The pace is the spacing of the frames' ends, which counts several
    workers painting at once, but never more than their mean painting time, which leaves
    out the wait for frames that arrive more slowly than they are painted."""

    def __init__(self) -> None:
        self._first: float | None = None  # when the first frame of this run was done
        self._last = 0.0
        self._after_first = 0  # frames done since
        self._seconds = 0.0  # painting time of those of them timed
        self._timed = 0

    def frames_done(self, now: float, count: int = 1, seconds: float | None = None) -> None:
        """`count` frames were done at `now` (monotonic), after `seconds` of painting (all
        of them together) if known. The first call of a run only starts the clock."""
        if self._first is None:
            self._first = now
            return
        self._last = now
        self._after_first += count
        if seconds is not None:
            self._seconds += seconds
            self._timed += count

    def per_frame(self) -> float | None:
        """None until a frame after the first one is done."""
        if self._first is None or not self._after_first:
            return None
        estimates = [(self._last - self._first) / self._after_first]
        if self._timed:
            estimates.append(self._seconds / self._timed)
        return min(estimates)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class SequenceState:
    """What a clip keeps between its frames (and across restarts)."""

    source: str = ""  # the clip's inbox folder or the video file: gone → state abandoned
    seed: int | None = None  # the drawn seed, when the profile says -1
    done: int = 0
    seconds: float = 0.0  # painting time of the frames done, for the time left


class SequenceStore:
    """Per-clip state in ``<root>/<id>/``: ``state.json`` and the colour ``reference.png``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._colors: dict[Path, tuple[int, Colors]] = {}
        self._paces: dict[Path, Pace] = {}  # this run's pace of each clip

    def folder(self, profile: str, sub_dir: PurePosixPath) -> Path:
        key = f"{profile}/{sub_dir.as_posix()}".encode()
        name = f"{profile}-{sub_dir.name}-{hashlib.sha256(key).hexdigest()[:12]}"
        return self.root / re.sub(r"[^\w.-]", "_", name)

    def load(self, folder: Path) -> SequenceState:
        return _read_state(folder)

    def start(self, folder: Path, source: Path, requested_seed: int, rng: random.Random) -> int:
        """Open (or resume) the state of the clip or video `source`; returns its base seed:
        the profile's, or one drawn for it and remembered. OSError: the state folder."""
        state = self.load(folder)
        changed = state.source != str(source)
        state.source = str(source)
        if requested_seed == -1 and state.seed is None:
            state.seed = draw_seed(-1, rng)
            changed = True
        if changed:
            self.save(folder, state)
        return requested_seed if requested_seed != -1 or state.seed is None else state.seed

    def save(self, folder: Path, state: SequenceState, *, durable: bool = True) -> None:
        """Write the state; `durable` (a drawn seed) waits for the disk, counts do not."""
        text = json.dumps(
            {
                "source": state.source,
                "seed": state.seed,
                "done": state.done,
                "seconds": state.seconds,
            }
        )
        with self._lock:
            write_text(folder / "state.json", text + "\n", durable=durable)

    def reference_colors(self, folder: Path) -> Colors | None:
        """The clip's colour reference (its first frame's result), read once per clip."""
        path = folder / "reference.png"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._colors.get(folder)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with Image.open(path) as image:
                colors = color_reference(image)
        except (OSError, ValueError):
            return None
        self._colors = {folder: (stamp, colors)}  # one clip runs at a time
        return colors

    def keep_reference(self, folder: Path, image: Image.Image) -> None:
        with atomic_writer(folder / "reference.png") as handle:
            image.convert("RGB").save(handle, format="PNG")

    def frame_done(self, folder: Path, seconds: float) -> tuple[SequenceState, float | None]:
        """Count a frame painted in `seconds`; the clip's state and its pace (s/frame)."""
        state = self.load(folder)
        state.done += 1
        state.seconds += seconds
        self.save(folder, state, durable=False)  # a progress count: not worth an fsync
        with self._lock:
            pace = self._paces.setdefault(folder, Pace())
            pace.frames_done(time.monotonic(), 1, seconds)
            return state, pace.per_frame()

    def forget(self, folder: Path) -> None:
        with self._lock:
            self._paces.pop(folder, None)
        shutil.rmtree(folder, ignore_errors=True)


def _read_state(folder: Path) -> SequenceState:
    try:
        data: dict[str, Any] = json.loads((folder / "state.json").read_text())
        return SequenceState(
            str(data.get("source", "")), data.get("seed"), int(data["done"]), float(data["seconds"])
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return SequenceState()


def drop_abandoned(root: Path, seconds: float, *, now: float | None = None) -> list[Path]:
    """Remove the states (and a video's frames) whose clip folder or video has left the
    inbox — finished, failed or taken away — and that nothing touched for `seconds` (a share
    that is only unmounted for a while keeps them). Returns what was removed."""
    now = time.time() if now is None else now
    dropped = []
    for folder in (p for p in _children(root) if p.is_dir()):
        recorded = _read_state(folder).source
        source = Path(recorded) if recorded else None
        if source is not None and (source.is_file() or any(pending_images(source))):
            continue  # its input is still waiting in the inbox
        try:
            newest = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in _children(folder)])
        except OSError:
            continue
        if now - newest > seconds:
            shutil.rmtree(folder, ignore_errors=True)
            dropped.append(folder)
    if dropped:
        logger.info("removed the state of {} finished or abandoned clip(s)", len(dropped))
    return dropped


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []
