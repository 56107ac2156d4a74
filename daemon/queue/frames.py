"""The one frame pipeline: every image the worker paints goes through it.

A single image, the frames of a clip folder (a job each) and the frames of a video (one job)
differ only in where their frames come from, a :class:`FrameSource` (queued jobs, prepared:
:mod:`.images`; a video, decoded: :mod:`.videos`), and where their results go, a
:class:`FrameSink` (the outbox, on the writer's thread; a video's work folder). The rules are
coded here once:

* frames are painted in the order their source gives them (a clip's in natural order);
* a clip's key frame (its first finished frame: the colour reference of the frames after it,
  see :mod:`daemon.clips.state`) is painted first and alone, and the frames after it are
  prepared once it is written (:meth:`daemon.clips.state.Clip.colors` waits for it);
* the others are sent in calls of up to ``max_batch`` (``auto``: as many as fit), shared out
  over the idle render workers; a frame that cannot share the call is sent alone after it;
* calls are written in the order they were sent, each with its painting time (a clip's pace).

Resuming after a crash needs nothing here: a clip's seed and key frame are kept on disk by its
clip, a video's painted frames are skipped by its source, and a clip folder's finished frames
were archived.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Generic, Literal, Protocol, TypeVar

from daemon.clips.state import Clip
from daemon.render.executor import Dispatched, Executor, Outcome, batch_limit
from daemon.render.render import share_a_call
from daemon.render.values import RenderRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Frame(Generic[T]):
    """One image to paint: its request, and what its sink writes it with (`item`)."""

    request: RenderRequest
    item: T
    clip: Clip | None = None
    leads: bool = False  # its clip's key frame: the frames after it need its result


class FrameSource(Protocol[T]):
    def next(self) -> Frame[T] | None:
        """The next frame to paint, prepared; None when there is none (for now)."""
        ...

    def ready(self, head: Frame[T]) -> int:
        """How many frames like `head` are ready to paint, `head` included."""
        ...

    def more(self, head: Frame[T], count: int) -> list[Frame[T]]:
        """Up to `count` frames ready now that come after `head` and may share its call."""
        ...

    def read_ahead(self) -> None:
        """A call is about to be painted that holds no key frame: what comes after it may be
        read meanwhile."""
        ...


class FrameSink(Protocol[T]):
    def dispatched(self, frames: list[Frame[T]]) -> Dispatched | None:
        """What to tell when `frames` go to a render worker (``executor: ray``)."""
        ...

    def later(self, write: Callable[[], None], *, leads: bool) -> None:
        """Run `write` (the writing of a call's results) after the calls sent before it, on
        the sink's own terms: on the writer's thread, or on this one before the next frame is
        read. `leads`: the call holds a key frame, whose result the next frame needs."""
        ...

    def write(self, frames: list[Frame[T]], outcomes: list[Outcome], seconds: float) -> None:
        """A call's outcomes, one per frame in order, once rendered; `seconds`: each frame's
        share of the call's painting time."""
        ...


class FramePipeline:
    """Sends a source's frames to the executor and their results to a sink (see above)."""

    def __init__(self, executor: Executor, *, max_batch: Literal["auto"] | int = 1) -> None:
        self.executor = executor
        self.max_batch = max_batch  # the daemon's; a profile may say otherwise

    def paint(self, source: FrameSource[T], sink: FrameSink[T]) -> None:
        """Every frame `source` has, in order, each call written by `sink` once rendered."""
        started = time.monotonic()
        while (head := source.next()) is not None:
            for call in self._calls(head, source):
                if not call[0].leads:
                    source.read_ahead()
                self._send(call, sink, started)
                started = time.monotonic()

    def _calls(self, head: Frame[T], source: FrameSource[T]) -> list[list[Frame[T]]]:
        """`head` alone when it is a key frame; else with the frames ready after it that can
        share its pipeline call, up to the batch limit, and those that cannot, each alone."""
        if head.leads:
            return [[head]]
        limit = batch_limit(self.executor, head.request, self.max_batch, ready=source.ready(head))
        joined: list[Frame[T]] = [head]
        alone: list[Frame[T]] = []
        for frame in source.more(head, limit - 1):
            shares = share_a_call(head.request, frame.request) and not frame.leads
            (joined if shares else alone).append(frame)
        return [joined, *([frame] for frame in alone)]

    def _send(self, call: list[Frame[T]], sink: FrameSink[T], started: float) -> None:
        requests = [frame.request for frame in call]
        pending = self.executor.submit(requests, on_dispatch=sink.dispatched(call))
        keys = [frame.clip for frame in call if frame.leads and frame.clip is not None]
        for clip in keys:
            clip.key_on_its_way()
        write = partial(_write, sink, call, pending, _Clock(pending, started), keys)
        sink.later(write, leads=bool(keys))


def _write(
    sink: FrameSink[T],
    call: list[Frame[T]],
    pending: Future[list[Outcome]],
    clock: _Clock,
    keys: list[Clip],
) -> None:
    """A call's results through its sink; its key frames are settled whatever happens."""
    try:
        try:
            outcomes: list[Outcome] = pending.result()
        except Exception as exc:  # the executor itself broke: every frame of the call
            outcomes = [exc] * len(call)
        sink.write(call, outcomes, clock.seconds() / len(call))  # the call's time, shared
    finally:
        for clip in keys:
            clip.key_settled()


class _Clock:
    """A call's time, from when its first frame started being read to when it was rendered
    (not when its turn to be written came)."""

    def __init__(self, pending: Future[list[Outcome]], started: float) -> None:
        self.started = started
        self.ended: float | None = None
        pending.add_done_callback(self._end)

    def _end(self, _pending: Future[list[Outcome]]) -> None:
        self.ended = time.monotonic()

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started
