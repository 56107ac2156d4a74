"""Results are written beside the model: delivering one input overlaps painting the next."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.deliver.results import Deliverer
from daemon.render.executor import InProcessExecutor
from daemon.render.values import RenderRequest
from tests.conftest import Workspace, wait_for


def test_the_next_input_paints_while_the_previous_one_is_written(
    workspace: Workspace, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's delivery waits until B's painting has started: that only ends if the two overlap
    (on one thread it would wait in vain, and the test would see it)."""
    b_paints = threading.Event()
    threads: dict[str, str] = {}
    overlapped: list[bool] = []
    deliver, render = Deliverer.deliver, InProcessExecutor.render

    def rendering(self: InProcessExecutor, requests: list[RenderRequest]) -> Any:
        threads[requests[0].label] = threading.current_thread().name
        if requests[0].label.endswith("b.png"):
            b_paints.set()
        return render(self, requests)

    def delivering(self: Deliverer, prepared: Any, *args: Any, **kwargs: Any) -> Any:
        name = prepared.job.image.name
        threads[f"deliver {name}"] = threading.current_thread().name
        if name == "a.png":
            overlapped.append(b_paints.wait(timeout=30))
        return deliver(self, prepared, *args, **kwargs)

    monkeypatch.setattr(InProcessExecutor, "render", rendering)
    monkeypatch.setattr(Deliverer, "deliver", delivering)
    workspace.profile("img2img")
    daemon = running()
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: "img2img/a.png" in threads)  # A is painting: B comes after it
    workspace.drop("astronaut.png", "img2img/b.png")
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    assert overlapped == [True]
    assert threads["img2img/a.png"] == threads["img2img/b.png"] == "img2imgd-worker"
    assert threads["deliver a.png"] == threads["deliver b.png"] == "img2imgd-writer"
    assert sorted(p.name for p in workspace.outputs("img2img")) == [
        "a.png", "a.txt", "b.png", "b.txt",
    ]  # fmt: skip
    assert not Path(workspace.inbox / "img2img/a.png").exists()
