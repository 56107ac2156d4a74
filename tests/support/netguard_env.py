"""The environment of a child process that must stay offline (see tests/support/netguard)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

GUARD_DIR = Path(__file__).resolve().parent / "netguard"
REPO = GUARD_DIR.parent.parent.parent


def guarded_env(log: Path, *, base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the hub offline, the guard first on PYTHONPATH (then the repository) and
    its record going to `log` (created empty, so a test can assert it stayed empty)."""
    log.write_text("")
    path = [str(GUARD_DIR), str(REPO), base.get("PYTHONPATH", "")]
    return {
        **base,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, path)),
        "IMG2IMGD_NET_GUARD_LOG": str(log),
    }
