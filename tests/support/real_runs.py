"""Real-size runs as whole, offline, measured processes: building a model and ``img2imgd once``.

Shared by tests/test_real_models.py and tests/test_real_memory.py. Every child runs with the
network guard (tests/support/netguard) and ``HF_HUB_OFFLINE=1``; its record of attempts is
returned for the caller to assert empty.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.measured import Measured, mem_available, run_measured
from tests.support.netguard_env import guarded_env
from tests.support.workspace import FAST_PROFILE, FAST_SETTINGS, Workspace

GIB = 2**30
SDXL_NEEDS = 20 * GIB  # available memory before an SDXL build or load (fp32 on CPU: ~14 GB)
LOADED = "loaded model "  # the daemon's line once a model is ready ("loaded model X in N s")
LOAD_SECONDS = r"loaded model \S+ in ([\d.]+) s"
SHARED_STATE = ("single-file-configs", "tokenizers")  # generated once, as for a user


@dataclass(frozen=True)
class Built:
    path: Path
    size: int  # bytes on disk
    seconds: float  # the build's; 0 when it was already there
    peak_rss: int  # the building process's


@dataclass(frozen=True)
class Run:
    measured: Measured
    workspace: Workspace
    network: list[str]  # attempts the guard refused (must be none)


def enough_memory_for(name: str) -> str | None:
    """Why `name` must not be built or loaded now (too little free memory), or None."""
    if "sdxl" not in name or mem_available() >= SDXL_NEEDS:
        return None
    return f"{name}: {mem_available() / GIB:.1f} GiB available, {SDXL_NEEDS / GIB:.0f} needed"


def build(name: str, folder: Path, work: Path) -> Built:
    """Build (or find) real model `name` in a child process, so its memory is gone after."""
    work.mkdir(parents=True, exist_ok=True)
    measured = run_measured(
        [sys.executable, "-m", "tests.support.real_models", name, str(folder)],
        cwd=work, env=guarded_env(work / f"build-{name}.net", base=os.environ),
        log=work / f"build-{name}.log",
    )  # fmt: skip
    assert measured.returncode == 0, measured.output[-3000:]
    report = json.loads(measured.output.strip().splitlines()[-1])
    seconds = report["seconds"] if report["built"] else 0.0
    return Built(Path(report["path"]), report["bytes"], seconds, measured.peak_rss)


def run_once(
    root: Path, models: Path, shared: Path, *, sample: str = "chelsea.png", **profile: Any
) -> Run:
    """``img2imgd once`` on one dropped image in a fresh workspace, `models` as models_dir.

    `shared` keeps what a user's state folder keeps between runs (the generated configs and
    tokenizers, the hash cache), so each run is a second run, not a first install."""
    workspace = Workspace(root, shared, profile_base={**FAST_PROFILE, **profile},
                          settings_base=dict(FAST_SETTINGS)).create()  # fmt: skip
    workspace.profile("p")
    workspace.drop(sample, "p/a.png")
    config = workspace.config_file(models_dir=models)
    for name in SHARED_STATE:
        (shared / name).mkdir(parents=True, exist_ok=True)
        (workspace.state / name).symlink_to(shared / name, target_is_directory=True)
    hashes = shared / "hashes.json"
    if hashes.is_file():
        shutil.copyfile(hashes, workspace.state / "hashes.json")
    network = root / "network.log"
    measured = run_measured(
        [sys.executable, "-m", "daemon", "--config", str(config), "once"],
        cwd=root, env=guarded_env(network, base=os.environ), log=root / "daemon.log",
        marker=LOADED,
    )  # fmt: skip
    if (workspace.state / "hashes.json").is_file():
        shutil.copyfile(workspace.state / "hashes.json", hashes)
    return Run(measured, workspace, network.read_text().splitlines())
