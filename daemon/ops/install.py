"""``img2imgd install-service``: the service definition for Linux (systemd), macOS (launchd)
or Windows (a logon task), written where that system looks, with the commands to start it.

The platform is ``sys.platform``'s unless ``--platform`` names another (to write the file
for another machine, and so every kind is tested on any machine).
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from daemon.atomic import write_bytes
from daemon.config.settings import Settings
from daemon.ops import launchd, logon_task
from daemon.ops.unit import enable_hint, install_unit, unit_file, writable_dirs

Platform = Literal["linux", "macos", "windows"]
PLATFORMS: tuple[Platform, ...] = ("linux", "macos", "windows")


def this_platform(name: str = sys.platform) -> Platform:
    if name == "darwin":
        return "macos"
    return "windows" if name in ("win32", "cygwin") else "linux"


def daemon_command(config: Path | None, cwd: Path) -> list[str]:
    """The venv's interpreter running the daemon with this config (found as ``run`` would)."""
    command = [sys.executable, "-m", "daemon"]
    if config is None and (cwd / "img2imgd.yaml").is_file():
        config = cwd / "img2imgd.yaml"
    if config is not None:
        command += ["--config", str(config.resolve())]
    return [*command, "run"]


def install(
    settings: Settings,
    platform: Platform,
    *,
    command: Sequence[str],
    cwd: Path,
    user: bool,
    print_only: bool,
    home: Path | None = None,
) -> tuple[Path | None, str]:
    """Write the definition (unless ``print_only``); returns its path and what to run next
    (with ``print_only``: no path, and the definition's text)."""
    if platform == "linux":
        text = unit_file(exec_start=command, working_dir=cwd, settings=settings, user=user)
        if print_only:
            return None, text
        for folder in writable_dirs(settings):  # systemd refuses to start without them
            folder.mkdir(parents=True, exist_ok=True)
        path = install_unit(text, user=user, home=home)
        return path, enable_hint(path, user=user)
    home = home or Path.home()
    if platform == "macos":
        log_file = launchd.log_path(home)
        data = launchd.agent_plist(program=command, working_dir=cwd, log_file=log_file)
        path = launchd.agent_path(home)
        hint = launchd.load_hint(path, log_file)
    else:
        program = [logon_task.windowless_python(command[0]), *command[1:]]
        data = logon_task.task_xml(program=program, working_dir=str(cwd), user=_windows_user())
        path = cwd / "img2imgd-task.xml"
        hint = logon_task.create_hint(str(path))
    if print_only:
        return None, data.decode("utf-16" if platform == "windows" else "utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if platform == "macos":
        launchd.log_path(home).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)
    return path, hint


def _windows_user() -> str:
    # DOMAIN\user as Task Scheduler names principals; on another system, the plain name.
    domain = os.environ.get("USERDOMAIN", "")
    name = os.environ.get("USERNAME") or getpass.getuser()
    return f"{domain}\\{name}" if domain else name
