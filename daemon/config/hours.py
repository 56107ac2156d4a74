"""Processing hours ("only at night"): outside the window, files wait in the inbox."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """Daily hours when jobs may run; ``start > end`` crosses midnight (22:00-06:00)."""

    start: dt.time
    end: dt.time

    def __contains__(self, moment: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    """``"22:00-06:00"`` → Window; ValueError with the expected form otherwise."""
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"expected hours like '22:00-06:00', got {text!r}")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    try:
        window = Window(dt.time(h1, m1), dt.time(h2, m2))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from exc
    if window.start == window.end:
        raise ValueError(f"{text!r} is an empty window; leave processing_hours out to run always")
    return window
