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

    def delivering(self: Deliverer, job: Any, *args: Any, **kwargs: Any) -> Any:
        name = job.image.name
        threads[f"deliver {name}"] = threading.current_thread().name
        if name == "a.png":
            overlapped.append(b_paints.wait(timeout=30))
        return deliver(self, job, *args, **kwargs)

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


def test_the_next_input_is_read_while_the_previous_one_paints(
    workspace: Workspace, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paints only once B is being read: that only ends if reading B overlaps painting A."""
    from daemon.prepare.prepare import Preparer

    b_read = threading.Event()
    where: dict[str, str] = {}
    overlapped: list[bool] = []
    prepare, render = Preparer.prepare, InProcessExecutor.render
    holder: dict[str, Any] = {}

    def preparing(self: Preparer, job: Any) -> Any:
        where[job.image.name] = threading.current_thread().name
        if job.image.name == "a.png":  # B is queued before A paints, whatever the timing
            wait_for(lambda: len(holder["daemon"].queue) >= 1)
        if job.image.name == "b.png":
            b_read.set()
        return prepare(self, job)

    def rendering(self: InProcessExecutor, requests: list[RenderRequest]) -> Any:
        if requests[0].label.endswith("a.png"):
            overlapped.append(b_read.wait(timeout=30))
        return render(self, requests)

    monkeypatch.setattr(Preparer, "prepare", preparing)
    monkeypatch.setattr(InProcessExecutor, "render", rendering)
    workspace.profile("img2img")
    holder["daemon"] = daemon = running()
    staging = workspace.root / "staging"
    staging.mkdir()
    for name, sample in (("a.png", "chelsea.png"), ("b.png", "astronaut.png")):
        (staging / name).write_bytes((Path(__file__).parent / "data" / sample).read_bytes())
    (workspace.inbox / "img2img").rmdir()
    staging.rename(workspace.inbox / "img2img")
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    assert overlapped == [True]
    assert where["a.png"] == "img2imgd-worker" and where["b.png"].startswith("img2imgd-reader")


def test_a_second_result_for_a_finished_job_is_dropped(
    workspace: Workspace, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At-least-once executors (Ray after a failure) may answer twice: the fault injected
    here delivers every result a second time, after the job is archived. The journal says the
    job is finished, so the second one is dropped: no ``-1`` copy, nothing failed."""
    from daemon.queue.images import Deliveries

    deliver = Deliveries.write

    def twice(self: Deliveries, *args: Any) -> None:
        deliver(self, *args)
        deliver(self, *args)

    monkeypatch.setattr(Deliveries, "write", twice)
    workspace.profile("img2img")
    daemon = running()
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: daemon.tally.done == 1, timeout=60)
    assert sorted(p.name for p in workspace.outputs("img2img")) == ["a.png", "a.txt"]
    assert [p.name for p in workspace.done("img2img")] == ["a.png"]
    assert daemon.tally.failed == daemon.tally.deferred == 0
