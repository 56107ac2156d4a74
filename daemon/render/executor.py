"""Executors: where requests are rendered. In-process on the worker thread (``local``), or
on the GPUs of a Ray cluster (``ray``, :mod:`daemon.render.cluster`).

An executor takes a list of requests and gives back one outcome per request, in order: a
result, or the exception that request raised (so that one input's failure is that input's
alone). :meth:`Executor.submit` returns at once with a future when the executor renders
elsewhere, so that the worker thread prepares the next inputs and the writer delivers the
last results while several workers paint.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, Protocol

from loguru import logger

from daemon.config.profiles import Profile
from daemon.errors import is_out_of_memory
from daemon.render.cache import ModelCache
from daemon.render.render import render, render_batch, share_a_call, warm
from daemon.render.values import RenderRequest, RenderResult

Outcome = RenderResult | Exception


Dispatched = Callable[[str, Sequence[int]], None]
"""Told the worker's name and which requests (their positions in the submission) each time
some are sent to a worker: the journal records it."""


@dataclass(frozen=True)
class WorkerInfo:
    """One render worker, as ``img2imgd status`` shows it."""

    name: str
    node: str
    gpus: str
    pid: int
    alive: bool
    models: tuple[str, ...]
    done: int
    in_flight: int
    last_error: str = ""


class Executor(Protocol):
    @property
    def slots(self) -> int:
        """Submissions in flight at once, over every worker (1 in-process)."""
        ...

    def submit(
        self, requests: Sequence[RenderRequest], on_dispatch: Dispatched | None = None
    ) -> Future[list[Outcome]]:
        """Render `requests`; the future holds one outcome per request, in order. Blocks
        while every worker is full, so the caller never runs far ahead of the painting."""
        ...

    def unload_idle(self, seconds: float) -> list[str]:
        """Free the models nothing has used for `seconds`; their names."""
        ...

    def batch_limit(self, request: RenderRequest) -> int:
        """``max_batch: auto``: how many requests like this one to send at once."""
        ...

    def warm(self, settings: Profile) -> None:
        """Import the libraries and load the models `settings` will render with, ahead of
        the first request (a no-op for what is loaded already)."""
        ...

    def workers(self) -> list[WorkerInfo]:
        """The render workers, for ``img2imgd status``; empty when rendering in-process."""
        ...

    def waiting(self) -> list[str]:
        """Labels of the requests submitted that no worker has taken yet (``status`` says
        "waiting for a worker"); empty in-process, where the caller paints them itself."""
        ...

    def idle_workers(self) -> int:
        """Workers with nothing in hand and no call on its way to them: how many ways a
        batch is split (1 in-process)."""
        ...

    def cancel(self, label: str) -> None:
        """Stop the render of request `label` at its next step, if it is being painted (a
        live input's newer version arrived); its outcome is then :class:`Superseded`."""
        ...

    def close(self) -> None:
        """After the last submission: let go of workers and connections."""
        ...


class InProcessExecutor:
    """Renders on the calling thread with one warm model cache (a GPU wants one owner)."""

    def __init__(self, models: ModelCache) -> None:
        self.models = models
        # Held while rendering and while unloading, so a model is never freed mid-render.
        self._lock = threading.Lock()
        self._painting: str | None = None  # the label being painted alone, and whether
        self._stop = False  # a newer version asked it to stop (see cancel)

    @property
    def slots(self) -> int:
        return 1

    def submit(
        self, requests: Sequence[RenderRequest], on_dispatch: Dispatched | None = None
    ) -> Future[list[Outcome]]:
        """Renders now, on the calling thread; the future is done when this returns."""
        future: Future[list[Outcome]] = Future()
        future.set_result(self.render(requests))
        return future

    def render(self, requests: Sequence[RenderRequest]) -> list[Outcome]:
        """Consecutive requests that share a call are painted together (the caller decides
        how many it sends at once: ``max_batch``)."""
        outcomes: list[Outcome] = []
        with self._lock:
            for group in _groups(requests):
                outcomes += self._render_group(group)
        return outcomes

    def _render_group(self, group: Sequence[RenderRequest]) -> list[Outcome]:
        if len(group) == 1:
            return [self._render_one(group[0])]
        try:
            return list(render_batch(group, self.models))
        except Exception as exc:
            if is_out_of_memory(exc):  # a smaller batch first; low-memory mode only alone
                logger.warning(
                    "out of memory painting {} images at once; trying {} at a time",
                    len(group), (len(group) + 1) // 2,
                )  # fmt: skip
                half = (len(group) + 1) // 2
                return self._render_group(group[:half]) + self._render_group(group[half:])
            # One input's own failure must not fail the others: each alone finds the culprit.
            return [self._render_one(request) for request in group]

    def _render_one(self, request: RenderRequest) -> Outcome:
        self._painting, self._stop = request.label, False
        try:
            return render(request, self.models, stop=lambda: self._stop)
        except Exception as exc:  # the request's own failure, classified by the caller
            return exc
        finally:
            self._painting = None

    @property
    def painting(self) -> str | None:
        """The label of the request being painted alone now, if any."""
        return self._painting

    def cancel(self, label: str) -> None:
        if self._painting == label:  # (a stale cancel must not stop the next version)
            self._stop = True

    def batch_limit(self, request: RenderRequest) -> int:
        return auto_batch(self.models.device[0], request)

    def unload_idle(self, seconds: float) -> list[str]:
        with self._lock:
            return self.models.unload_idle(seconds)

    def warm(self, settings: Profile) -> None:
        with self._lock:
            warm(settings, self.models)

    def workers(self) -> list[WorkerInfo]:
        return []

    def waiting(self) -> list[str]:
        return []

    def idle_workers(self) -> int:
        return 1

    def close(self) -> None:
        """Nothing to let go of: the model cache is the caller's (tests share a warm one)."""


CPU_BATCH = 8
"""``max_batch: auto`` on a CPU. Measured here (96 px, 10 steps): per image 666 ms alone, 625 at
2, 640 at 4, 567 at 8; a CPU has the memory for it at any size a CPU can paint."""
GPU_BYTES_PER_PIXEL = 2_500  # what one image of a batch takes on a GPU, per output pixel, fp16


def auto_batch(device: str, request: RenderRequest, free: int | None = None) -> int:
    """How many requests like `request` to paint at once with ``max_batch: auto``; `free`:
    the GPU's free bytes (None: ask torch)."""
    if device == "cpu":
        return CPU_BATCH
    if not device.startswith("cuda"):
        return 1  # MPS and others: no figures to go by
    if free is None:
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
    width, height = request.size
    per_image = (
        GPU_BYTES_PER_PIXEL * width * height * (2 if "xl" in request.settings.model.lower() else 1)
    )
    return max(1, min(16, int(free * 0.6 // per_image)))


def batch_limit(
    executor: Executor, request: RenderRequest, default: Literal["auto"] | int, *, ready: int
) -> int:
    """How many requests like `request` to send at once, with `ready` such requests in hand
    or queued: the profile's ``max_batch``, else the daemon's (`default`; ``auto`` asks the
    executor), and no more than each idle render worker's share of `ready`, so that every
    worker paints (7 frames on 2 idle workers: 4, then 3 for the one still idle; not 7 on
    one). 1 for a request that cannot share."""
    if not share_a_call(request, request):
        return 1
    wanted = request.settings.max_batch or default
    most = executor.batch_limit(request) if wanted == "auto" else wanted
    return max(1, min(most, math.ceil(ready / max(1, executor.idle_workers()))))


def _groups(requests: Sequence[RenderRequest]) -> list[list[RenderRequest]]:
    """Runs of consecutive requests that share a call with the run's first."""
    groups: list[list[RenderRequest]] = []
    for request in requests:
        if groups and share_a_call(groups[-1][0], request):
            groups[-1].append(request)
        else:
            groups.append([request])
    return groups
