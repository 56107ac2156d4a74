"""Run the daemon's CLI as it would behave on Windows or macOS, on this Linux machine.

``python tests/support/imitate.py windows|macos [img2imgd arguments]``. What ../shared/PLATFORMS.md
records is imitated before the daemon's code runs; what cannot be imitated (a real NTFS or
APFS volume, a real ReadDirectoryChangesW or FSEvents stream) is not, and the README says so.

Both: the platform seam says "no close events, names compared case-insensitively"; inotify's
close events are dropped by the watcher because of it; /proc cannot tell who holds a file.
Windows also: the daemon's own modules cannot import a Unix-only module (an import hook, not a
meta-path finder, so that a module a library loaded already is refused too; libraries stay
free, as they choose their Windows code by ``sys.platform``, which nothing can change), the
signals Windows lacks do not exist, no folder opens as a file, and ``os.replace`` onto an
existing file named ``IMITATE_HELD_NAME`` fails with WinError 32 (a viewer holds it) for the
first ``IMITATE_HELD`` attempts. macOS also: every watcher event arrives twice (FSEvents
repeats and coalesces).
"""

from __future__ import annotations

import builtins
import errno
import os
import signal
import sys
from typing import Any

UNIX_ONLY_MODULES = frozenset(
    {"fcntl", "pwd", "grp", "termios", "tty", "pty", "resource", "syslog"}
)
WINDOWS_SIGNALS = frozenset(
    {"SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM", "SIGBREAK"}
)
HELD_MARK = "imitating Windows: the target is held by another program (WinError 32)"


def imitate_windows() -> None:
    library_import = builtins.__import__

    def windows_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        importer = (globals or {}).get("__name__") or ""
        if (
            level == 0
            and name.split(".")[0] in UNIX_ONLY_MODULES
            and importer.split(".")[0] == "daemon"
        ):
            raise ModuleNotFoundError(f"No module named {name!r} (imitating Windows)", name=name)
        return library_import(name, globals, locals, fromlist, level)

    builtins.__import__ = windows_import
    for name in [s.name for s in signal.Signals if s.name not in WINDOWS_SIGNALS]:
        delattr(signal, name)
    if hasattr(os, "O_DIRECTORY"):
        del os.O_DIRECTORY
    try:
        exec("import fcntl", {"__name__": "daemon.probe"})
    except ModuleNotFoundError:
        print("imitating Windows: no fcntl, no SIGKILL", flush=True)
    _hold_replaced_files(
        os.environ.get("IMITATE_HELD_NAME", ""), int(os.environ.get("IMITATE_HELD", "0"))
    )


def _hold_replaced_files(name: str, times: int) -> None:
    """``os.replace`` onto an existing file `name` fails `times` times, as while a viewer
    holds it."""
    real_replace = os.replace
    left = [times]

    def held_replace(source: Any, target: Any, **kwargs: Any) -> None:
        if left[0] > 0 and os.path.basename(target) == name and os.path.isfile(target):
            left[0] -= 1
            print(f"{HELD_MARK}: {os.fsdecode(target)}", flush=True)
            error = PermissionError(errno.EACCES, "The process cannot access the file", target)
            error.winerror = 32  # type: ignore[attr-defined]
            raise error
        real_replace(source, target, **kwargs)

    os.replace = held_replace


def imitate_repeated_events() -> None:
    """FSEvents: each event may come twice (and created+modified coalesced into one)."""
    from daemon.intake import watcher

    once = watcher._Handler.dispatch

    def twice(self: Any, event: Any) -> None:
        once(self, event)
        once(self, event)

    watcher._Handler.dispatch = twice  # type: ignore[method-assign]


def main(system: str, arguments: list[str]) -> int:
    if system == "windows":
        imitate_windows()
    from daemon import platform_seam
    from daemon.intake import stability

    platform_seam.PLATFORM = platform_seam.WINDOWS if system == "windows" else platform_seam.MACOS
    stability.not_open_for_writing = lambda paths, **_: set()  # no /proc there
    if system == "macos":
        imitate_repeated_events()
    print(f"imitating {system}: {platform_seam.PLATFORM}", flush=True)
    from daemon.cli import main as cli

    return cli(arguments)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))  # its modules must not shadow libraries'
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    sys.exit(main(sys.argv[1], sys.argv[2:]))
