"""A clip's progress: the bar, the pace of its frames and the time left.

``[######--------------] 6/20 frames, 1.9 s/frame, about 27 s left``: a clip folder says it
with each frame's "done" line, a video in a line of its own every few seconds.
"""

from __future__ import annotations

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
