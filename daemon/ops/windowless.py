"""Logging without a console: under ``pythonw.exe`` (the Windows logon task) Python gives the
process no stdout or stderr at all, and every log line would raise. They are pointed at
``img2imgd.log`` in the working folder instead."""

from __future__ import annotations

import sys
from pathlib import Path

LOG_NAME = "img2imgd.log"


def redirect_missing_streams(folder: Path) -> Path | None:
    """Open ``folder/img2imgd.log`` for the streams Python left as None; its path, or None
    when both streams exist (a console, a terminal, launchd, systemd)."""
    if sys.stdout is not None and sys.stderr is not None:
        return None
    path = folder / LOG_NAME
    stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - the process's
    if sys.stdout is None:
        sys.stdout = stream
    if sys.stderr is None:
        sys.stderr = stream
    return path
