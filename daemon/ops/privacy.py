"""macOS privacy controls (TCC) and the configured folders.

A process that launchd starts (the agent of ``install-service``) is refused, silently or by
hanging on a prompt nobody sees, when it reads ``~/Desktop``, ``~/Documents`` or
``~/Downloads`` (and iCloud Drive, which lives under ``~/Library/Mobile Documents``), unless
that exact Python binary was granted access. The default folders (next to img2imgd.yaml)
avoid them; a configured folder inside one gets a warning from ``check`` saying how to grant
access. Pure on paths and the platform name, so it is tested on any system.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath

PROTECTED = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")


def protected_folder_warnings(
    folders: Mapping[str, PurePath], *, platform: str, home: PurePath, python: str
) -> list[str]:
    """One warning per configured folder (``{"inbox": path, ...}``) under a protected one."""
    if platform != "darwin":
        return []
    warnings = []
    for key, folder in folders.items():
        protected = next((home / p for p in PROTECTED if _is_under(folder, home / p)), None)
        if protected is None:
            continue
        warnings.append(
            f"{key}: {folder} is inside {protected}, which macOS refuses to a background "
            "process (the launchd agent) unless its Python is allowed: System Settings > "
            "Privacy & Security > Files and Folders (or Full Disk Access), add "
            f"{python}; or move the folder elsewhere (e.g. ~/img2imgd/{key})"
        )
    return warnings


def configured_folders(settings: object) -> dict[str, PurePath]:
    """The folders of ``settings`` the daemon reads or writes, by their config key."""
    keys = ("inbox", "outbox", "profiles", "state_dir", "models_dir")
    return {k: v for k in keys if isinstance(v := getattr(settings, k, None), PurePath)}


def _is_under(path: PurePath, parent: PurePath) -> bool:
    return path == parent or parent in path.parents
