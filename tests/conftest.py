"""Shared fixtures: real folders, the real watcher, the real tiny diffusers pipeline.

The built-in model is generated once per session and its pipeline stays warm across tests
(one ModelCache), exactly as the daemon keeps it warm across jobs.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.support.workspace import DATA, FAST_PROFILE, Workspace, wait_for

# The workspace helper lives in tests/support (the benchmarks use it too); many test modules
# import it from here.
__all__ = ["DATA", "FAST_PROFILE", "Workspace", "wait_for"]


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


@pytest.fixture
def workspace(tmp_path: Path, state_dir: Path) -> Workspace:
    return Workspace(tmp_path, state_dir).create()


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
