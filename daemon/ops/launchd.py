"""The macOS launchd agent for ``img2imgd run`` (the Linux unit: :mod:`daemon.ops.unit`).

A LaunchAgent runs in the user's GUI session, so it sees the user's folders and mounted
shares (a LaunchDaemon would run before login, as another user). launchd supervises the
process itself: the daemon must not fork, and it stops on SIGTERM (the first one finishes
the job in hand), which is what ``launchctl bootout`` sends; after ``ExitTimeOut`` seconds
launchd sends SIGKILL, and the journal requeues an unfinished job on the next start.
``KeepAlive`` with ``SuccessfulExit: false`` restarts it after a crash, not after a clean
stop; ``ThrottleInterval`` keeps a failing start (a config error) from spinning.
``ProcessType: Interactive`` keeps macOS from throttling a GPU job as background work.
"""

from __future__ import annotations

import plistlib
import shlex
from collections.abc import Sequence
from pathlib import Path

LABEL = "local.img2imgd"
STOP_TIMEOUT_S = 300  # as the systemd unit's TimeoutStopSec: a long job may finish


def agent_plist(*, program: Sequence[str], working_dir: Path, log_file: Path) -> bytes:
    """The plist (XML) of the agent that runs ``program`` in ``working_dir``."""
    if not program or not program[0].startswith("/"):
        raise ValueError(f"ProgramArguments needs an absolute interpreter path: {program!r}")
    agent = {
        "Label": LABEL,
        "ProgramArguments": list(program),
        "WorkingDirectory": str(working_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "ProcessType": "Interactive",
        "StandardOutPath": str(log_file),
        "StandardErrorPath": str(log_file),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1", "PYTORCH_ENABLE_MPS_FALLBACK": "1"},
    }
    return plistlib.dumps(agent, fmt=plistlib.FMT_XML, sort_keys=True)


def agent_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_path(home: Path) -> Path:
    return home / "Library" / "Logs" / "img2imgd.log"  # Console.app lists ~/Library/Logs


def load_hint(path: Path, log_file: Path) -> str:
    """The commands that start the agent now (and at every login), stop it, and follow it."""
    quoted = shlex.quote(str(path))
    return "\n".join(
        [
            f"launchctl bootstrap gui/$(id -u) {quoted}",
            f"launchctl bootout gui/$(id -u)/{LABEL}   # stop it (SIGTERM: the job in hand "
            "finishes)",
            f"tail -f {shlex.quote(str(log_file))}",
        ]
    )
