"""Running out of memory is the process's fault, wherever it happens.

Fault injection: a CPU ``MemoryError`` or torch's CUDA ``OutOfMemoryError`` is raised while
loading the pipeline, the VAE or a LoRA, or while painting. Once: the job is retried at once
in low-memory mode and succeeds. Every time: the input is deferred, never failed. Everything
else (watcher, files, model, journal) is the real daemon's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.engines.adapters import AdapterManager
from daemon.engines.diffusion import DiffusionEngine
from daemon.models.builtin import ensure_builtin
from daemon.ops.service import Daemon
from daemon.render import cache
from daemon.render.cache import ModelCache
from tests.conftest import Workspace, wait_for
from tests.support.lora import LoraMaker, write

ERRORS: dict[str, Callable[[], BaseException]] = {
    "MemoryError": MemoryError,
    "CUDA OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"),
}


def inject(monkeypatch: pytest.MonkeyPatch, where: str, error: Callable[[], BaseException],
           times: int) -> dict[str, int]:  # fmt: skip
    """Make the real function at `where` raise `error` on its first `times` calls."""
    owner, name = {
        "pipeline": (ModelCache, "_load"),
        "vae": (cache, "load_vae"),
        "lora": (AdapterManager, "_load_lora"),
        "painting": (DiffusionEngine, "_sample"),
    }[where]
    real = getattr(owner, name)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return calls


@pytest.fixture
def start(workspace: Workspace, state_dir: Path) -> Iterator[Callable[[str], Daemon]]:
    """The real daemon with a model cache of its own (a fresh load, where the faults are)."""
    folder = ensure_builtin("tiny-sd", state_dir / "builtin")
    loras = workspace.root / "Lora"
    write(loras / "Style.safetensors", LoraMaker(folder).make(1))
    started: list[tuple[Daemon, threading.Thread]] = []

    def run(where: str) -> Daemon:
        keys: dict[str, Any] = {}
        if where == "vae":
            keys["vae"] = str(folder / "vae")
        if where == "lora":
            keys["prompt"] = "a test <lora:Style:1>"
        workspace.profile("img2img", **keys)
        models = ModelCache(models_dir=None, state_dir=state_dir, device="cpu", lora_dirs=[loras])
        daemon = Daemon(workspace.settings(retry_delay=30, lora_dirs=[loras]), models=models)
        thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
        thread.start()
        started.append((daemon, thread))
        workspace.drop("chelsea.png", "img2img/oom.png")
        return daemon

    yield run
    for daemon, thread in started:
        daemon.stop_event.set()
        thread.join(timeout=60)


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("where", ["pipeline", "vae", "lora", "painting"])
def test_out_of_memory_once_is_retried_at_once_in_low_memory_mode(
    start: Callable[[str], Daemon], workspace: Workspace, monkeypatch: pytest.MonkeyPatch,
    logs: list[str], where: str, error: str,
) -> None:  # fmt: skip
    calls = inject(monkeypatch, where, ERRORS[error], times=1)
    daemon = start(where)
    wait_for(lambda: daemon.tally.done, timeout=60)  # counted last, after the archive
    assert calls["n"] >= 2, "the failing step ran again"
    assert daemon.tally.done == 1 and daemon.tally.deferred == 0 and daemon.tally.failed == 0
    assert any("out of memory; retrying once with attention slicing" in line for line in logs)
    assert [p.name for p in workspace.outputs("img2img")] == ["oom.png", "oom.txt"]


@pytest.mark.parametrize("where", ["pipeline", "vae", "lora", "painting"])
def test_out_of_memory_every_time_defers_and_never_fails_the_file(
    start: Callable[[str], Daemon], workspace: Workspace, monkeypatch: pytest.MonkeyPatch,
    logs: list[str], where: str,
) -> None:  # fmt: skip
    inject(monkeypatch, where, ERRORS["MemoryError"], times=10**6)
    daemon = start(where)
    wait_for(
        lambda: any("even with low-memory settings" in line and "retrying in" in line
                    for line in logs),
        timeout=60,
    )  # fmt: skip
    assert (
        daemon.tally.deferred == 1 and daemon.tally.failed == 0 and not workspace.failed("img2img")
    )
    assert (workspace.inbox / "img2img/oom.png").exists(), "the input waits in the inbox"
