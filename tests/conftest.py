"""Shared fixtures: real folders, the real watcher, the real tiny diffusers pipeline.

The built-in model is generated once per session and its pipeline stays warm across tests
(one ModelCache), exactly as the daemon keeps it warm across jobs.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config.settings import Settings
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache

DATA = Path(__file__).parent / "data"

# Small and fast: 64x64 at 4 steps keeps a job well under a second on a 2-core CPU.
FAST_PROFILE: dict[str, Any] = {
    "model": "builtin:tiny-sd",
    "prompt": "a test",
    "steps": 4,
    "denoising_strength": 0.5,
    "max_pixels": 64 * 64,
    "seed": 1234,
    "sampler_name": "Euler",
}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate`` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


# Threads that libraries keep for the life of the process, not ours to stop.
LIBRARY_THREADS = ("pydevd", "ThreadPoolExecutor", "tqdm_monitor")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules that run tiny models directly: they gain nothing from threads, and on a
    busy 2-core machine torch's spinning worker threads make each run 10-50x slower (a 0.1 s
    run was measured taking 5-15 s). Restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def models(state_dir: Path) -> ModelCache:
    return ModelCache(models_dir=None, state_dir=state_dir, device="cpu")


@dataclass
class Workspace:
    root: Path
    state_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    def profile(self, name: str, **keys: Any) -> Path:
        """Write profiles/<name>.yaml: the fast defaults plus ``keys`` (None removes a key)."""
        data = {**FAST_PROFILE, **keys}
        data = {k: v for k, v in data.items() if v is not None}
        self.profiles.mkdir(parents=True, exist_ok=True)
        path = self.profiles / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        (self.inbox / name).mkdir(parents=True, exist_ok=True)
        return path

    def settings(self, **keys: Any) -> Settings:
        values = {
            "inbox": self.inbox,
            "outbox": self.outbox,
            "profiles": self.profiles,
            "state_dir": self.root / "state",  # journal and lock: one daemon per test
            "device": "cpu",
            "stability_delay": 0.1,
            "pairing_window": 1.0,
            "retry_delay": 0.3,
            **self.overrides,
            **keys,
        }
        return Settings(**values)

    def drop(self, source: Path | str, relative: str) -> Path:
        """Copy a sample into the inbox the way most tools do: temp name, then rename."""
        source = DATA / source if isinstance(source, str) else source
        target = self.inbox / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.part")
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        return target

    def outputs(self, profile: str) -> list[Path]:
        folder = self.outbox / profile
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

    def done(self, profile: str) -> list[Path]:
        folder = self.inbox / "_done" / profile
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

    def failed(self, profile: str) -> list[Path]:
        folder = self.inbox / "_failed" / profile
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def workspace(tmp_path: Path, state_dir: Path) -> Workspace:
    ws = Workspace(tmp_path, state_dir)
    for folder in (ws.inbox, ws.outbox, ws.profiles):
        folder.mkdir()
    return ws


@pytest.fixture
def running(workspace: Workspace, models: ModelCache) -> Iterator[Callable[..., Daemon]]:
    """Start the real daemon (watcher, scheduler, worker) in a thread; stopped after the test."""
    started: list[tuple[Daemon, threading.Thread]] = []

    def start(**settings: Any) -> Daemon:
        daemon = Daemon(workspace.settings(**settings), models=models)
        thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
        thread.start()
        wait_for(lambda: daemon._watcher is not None and daemon._watcher.is_alive(), 10)
        started.append((daemon, thread))
        return daemon

    yield start
    for daemon, thread in started:
        daemon.stop_event.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the daemon did not stop"


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log message emitted during the test, as plain text."""
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message).rstrip()), level="DEBUG")
    yield lines
    logger.remove(handler)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test that leaves a thread running (observer, worker, scheduler) fails."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [
            t
            for t in set(threading.enumerate()) - before
            if t.is_alive() and not t.name.startswith(LIBRARY_THREADS)
        ]
        if not leaked:
            return
        time.sleep(0.05)
    raise AssertionError(f"threads leaked: {leaked}")
