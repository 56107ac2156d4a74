"""The one seam for guidance: per-call steps that prepare a pipeline call and hook into it.

Every pipeline call the engine makes (one in :meth:`DiffusionEngine.paint_batch`, one per
iteration in :meth:`DiffusionEngine.paint`) goes through :func:`run_call` with an ordered
list of :class:`CallStep`. Each step, in order,

* ``prepare``s the call's keyword arguments (the prompts' embeddings, a callback, tomorrow a
  ControlNet unit's image), and
* is ``hooked`` into the pipeline for that one call (forward hooks, attention processors),
  installed before the call and removed after it, in reverse order, whether the call ends,
  fails, or is stopped by a live render's newer version.

This is diffusers' own way of changing a call without forking the pipeline
(``callback_on_step_end``, ``unet.set_attn_processor``, module hooks): prompt editing and
``AND`` are the first step; ControlNet units, reference and cross-frame attention are steps
added to the list, not branches in ``paint``, ``paint_batch`` or the model cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
"""diffusers' ``callback_on_step_end(pipe, step, timestep, callback_kwargs)``."""


@dataclass(frozen=True)
class CallContext:
    """What a step may know of the pipeline call it prepares."""

    images: int  # images the call paints: the UNet's batch, twice that when guided
    per_prompt: int  # the call's num_images_per_prompt (images ÷ prompt rows)


class CallStep(Protocol):
    """One per-call step. A step lives for one job, so it may count across that job's calls."""

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        """The call's keyword arguments with this step's own added (a new dict)."""
        ...

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        """Hooks on `pipe` for the length of the ``with`` block, removed on leaving it."""
        ...


class PrepareOnly:
    """A base for steps that only add keyword arguments: no hooks."""

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        return nullcontext()


def run_call(
    pipe: Any, call: dict[str, Any], steps: Sequence[CallStep], context: CallContext
) -> list[Image.Image]:
    """The pipeline called once with `call` as every step prepares it, each step's hooks on."""
    import torch

    for step in steps:
        call = step.prepare(call, context)
    with torch.inference_mode(), ExitStack() as hooks:
        for step in steps:
            hooks.enter_context(step.hooked(pipe, context))
        images: list[Image.Image] = pipe(**call).images
    return images


def with_step_end(call: dict[str, Any], callback: StepEnd) -> dict[str, Any]:
    """`call` with `callback` run at the end of every step, after any callback it has, so
    that several steps can each watch the steps."""
    earlier: StepEnd | None = call.get("callback_on_step_end")
    if earlier is None:
        return {**call, "callback_on_step_end": callback}

    def both(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return callback(pipe, step, timestep, earlier(pipe, step, timestep, kwargs))

    return {**call, "callback_on_step_end": both}


class Progress(PrepareOnly):
    """Reports (done, total) after every sampling step, counted over the job's calls; a
    live render's stop is raised from `on_step`, which leaves the call and its hooks."""

    def __init__(self, on_step: Callable[[int, int], None], total: int) -> None:
        self.on_step = on_step
        self.total = total
        self.done = 0

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return with_step_end(call, self._step_end)

    def _step_end(self, _pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.done += 1
        self.on_step(self.done, self.total)
        return kwargs


@contextmanager
def removed_after(*handles: Any) -> Iterator[None]:
    """Torch hook handles, removed when the ``with`` block is left in any way."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
