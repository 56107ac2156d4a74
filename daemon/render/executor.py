"""Executors: where requests are rendered. One today, in-process on the worker thread.

An executor takes a list of requests and returns one outcome per request, in order: a
result, or the exception that request raised (so that one input's failure is that input's
alone). Batching and executors that render in other processes or on other machines plug in
here, behind the same two methods.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from daemon.config.profiles import Profile
from daemon.render.cache import ModelCache
from daemon.render.render import render, warm
from daemon.render.values import RenderRequest, RenderResult

Outcome = RenderResult | Exception


class Executor(Protocol):
    def render(self, requests: Sequence[RenderRequest]) -> list[Outcome]: ...

    def unload_idle(self, seconds: float) -> list[str]:
        """Free the models nothing has used for `seconds`; their names."""
        ...

    def warm(self, settings: Profile) -> None:
        """Import the libraries and load the models `settings` will render with, ahead of
        the first request (a no-op for what is loaded already)."""
        ...


class InProcessExecutor:
    """Renders on the calling thread with one warm model cache (a GPU wants one owner)."""

    def __init__(self, models: ModelCache) -> None:
        self.models = models
        # Held while rendering and while unloading, so a model is never freed mid-render.
        self._lock = threading.Lock()

    def render(self, requests: Sequence[RenderRequest]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        with self._lock:
            for request in requests:
                try:
                    outcomes.append(render(request, self.models))
                except Exception as exc:  # the request's own failure, classified by the caller
                    outcomes.append(exc)
        return outcomes

    def unload_idle(self, seconds: float) -> list[str]:
        with self._lock:
            return self.models.unload_idle(seconds)

    def warm(self, settings: Profile) -> None:
        with self._lock:
            warm(settings, self.models)


def render_one(executor: Executor, request: RenderRequest) -> RenderResult:
    """Render a single request; its failure is raised."""
    (outcome,) = executor.render([request])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
