"""Rendering on every GPU of a Ray cluster (``executor: ray``).

One Ray actor per GPU the cluster offers (:class:`~daemon.render.remote.RenderWorker`), or
``ray_workers`` of them on CPUs (``ray_gpus_per_worker: 0``), each with warm pipelines; the
daemon keeps the files, the journal and every decision about them. A dispatcher thread sends
submissions to workers with a free slot (at most ``ray_inflight_per_worker`` each, the least
busy first, then one that has the model loaded), collects the replies, and resolves each
submission's future exactly once.

Ray promises at-least-once after a failure, so what happens then is decided here and in the
journal, never by Ray's own retries (``max_task_retries=0``):

* a reply carries each request's own outcome; a request's exception is classified by the
  daemon as it is in-process (a ``RayTaskError`` from the worker's code is unwrapped to it);
* a model missing on one worker (a ``ConfigError`` there) sends the call to another worker;
* a worker that dies with a call in hand (``RayActorError``) is restarted by Ray, and the
  call goes to another worker, alone per request; a request in hand at MAX_CRASHES deaths
  fails as the input's fault (a poison file must not take the cluster down for ever);
* any other Ray error sends the call again, up to MAX_TRIES, then defers its jobs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from daemon.config.profiles import Profile
from daemon.config.settings import Settings
from daemon.errors import ConfigError, InputError, NotStarted, TransientError
from daemon.render.executor import Dispatched, Outcome, WorkerInfo, auto_batch
from daemon.render.ray_instance import (
    connect,
    connected,
    forward_worker_logs,
    stop_forwarding_worker_logs,
)
from daemon.render.remote import Description, RenderWorker, Reply
from daemon.render.values import RenderRequest

MAX_CRASHES = 3  # worker deaths with a request in hand before the request's input fails
MAX_TRIES = 3  # sends after other Ray errors before the jobs are deferred
REFRESH = 2.0  # s between looks at the cluster's GPUs (nodes joining or leaving)
WAIT = 0.1  # s the dispatcher waits for a reply before it looks at new submissions
CONTROL_TIMEOUT = 30.0  # s to wait for a worker's answer to warm-up or unload
SLOW_START = 120.0  # s after which a worker that never answered is said to be stuck


@dataclass
class _Call:
    """One submission, until its future is resolved."""

    requests: list[RenderRequest]
    future: Future[list[Outcome]]
    on_dispatch: Dispatched | None
    positions: list[int]  # of these requests in the submission (a split call's pieces)
    crashes: int = 0  # its worker died while it was in hand
    tries: int = 0  # other Ray errors
    avoid: set[str] = field(default_factory=set)  # workers that lack its model

    def piece(self, index: int) -> _Call:
        """Request `index` alone, with what this call went through so far."""
        return _Call(
            [self.requests[index]], Future(), self.on_dispatch, [self.positions[index]],
            self.crashes, self.tries, set(self.avoid),
        )  # fmt: skip

    @property
    def model(self) -> str:
        settings = self.requests[0].settings
        return settings.interrogating or settings.model


@dataclass
class _Worker:
    name: str
    handle: Any  # the actor
    alive: bool = False  # answered since it was made or last died
    description: Description | None = None
    models: tuple[str, ...] = ()
    free_memory: int | None = None
    in_flight: int = 0
    done: int = 0
    last_error: str = ""
    probing: bool = False
    made_at: float = field(default_factory=time.monotonic)
    said_slow: bool = False  # warned that it does not start

    @property
    def label(self) -> str:
        where = self.description
        if where is None:
            return self.name
        return f"{self.name}@{where.node} " + (f"GPU {where.gpus}" if where.gpus else "CPU")

    def has(self, model: str) -> bool:
        return any(name == model or name.startswith(model + " + ") for name in self.models)


class RayExecutor:
    """The :class:`~daemon.render.executor.Executor` of ``executor: ray``."""

    def __init__(self, settings: Settings, *, stop: threading.Event | None = None) -> None:
        self._owns_ray = not connected()
        self.ray = connect(settings.ray_address, settings.state_dir)
        self.stop = stop or threading.Event()  # the daemon is stopping: send nothing new
        self.gpus_per_worker = settings.ray_gpus_per_worker  # 0: CPU workers
        self.inflight_per_worker = settings.ray_inflight_per_worker
        self.settings = settings  # what each worker builds its model cache from
        self._actor_class = self.ray.remote(
            num_gpus=self.gpus_per_worker,
            num_cpus=1,  # Ray then gives torch one thread per worker on a CPU-only node
            max_restarts=-1,  # a dead worker comes back (on another node if need be)
            max_task_retries=0,  # a call is never re-run behind the journal's back
        )(RenderWorker)
        self._cond = threading.Condition()
        self._workers: list[_Worker] = []
        self._waiting: deque[_Call] = deque()  # not sent yet; retries go first
        self._calls: dict[Any, tuple[_Call, _Worker]] = {}  # reply ref -> in hand
        self._probes: dict[Any, _Worker] = {}  # describe ref -> worker
        self._made = 0
        self._closing = False
        self._said_no_gpu = False
        self._held: _Call | None = None  # in submit(), waiting for room in the queue
        forward_worker_logs(self._label_of_pid)
        self._refresh()
        self._thread = threading.Thread(target=self._run, name="img2imgd-ray", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the Executor

    @property
    def slots(self) -> int:
        with self._cond:
            return max(1, len(self._workers)) * self.inflight_per_worker

    def submit(
        self, requests: Sequence[RenderRequest], on_dispatch: Dispatched | None = None
    ) -> Future[list[Outcome]]:
        call = _Call(list(requests), Future(), on_dispatch, list(range(len(requests))))
        with self._cond:
            # One call waits for a free slot at most: the caller prepares the next meanwhile.
            self._held = call
            while self._waiting and not self._stopping():
                self._cond.wait(WAIT)
            self._held = None
            if self._stopping():
                call.future.set_result([_not_started()] * len(call.requests))
                return call.future
            self._waiting.append(call)
            self._cond.notify_all()
        return call.future

    def waiting(self) -> list[str]:
        """The labels of the requests that no worker has taken yet."""
        with self._cond:
            calls = [*self._waiting, *([self._held] if self._held else [])]
        return [request.label for call in calls for request in call.requests]

    def idle_workers(self) -> int:
        """Workers with nothing in hand, less the calls waiting to go to one. A worker still
        starting counts: it takes calls in seconds."""
        with self._cond:
            idle = sum(1 for w in self._workers if not w.in_flight)
            return max(0, idle - len(self._waiting) - (1 if self._held else 0))

    def batch_limit(self, request: RenderRequest) -> int:
        with self._cond:
            alive = [w for w in self._workers if w.alive and w.description]
        if not alive:
            return 1
        return min(
            auto_batch(w.description.device, request, w.free_memory)  # type: ignore[union-attr]
            for w in alive
        )

    def warm(self, settings: Profile) -> None:
        """Every live worker loads the profile's models (each in its turn between renders)."""
        with self._cond:
            alive = [w for w in self._workers if w.alive]
        for worker in alive:
            worker.handle.warm.remote(settings)  # its reply is not waited for

    def unload_idle(self, seconds: float) -> list[str]:
        with self._cond:
            alive = [w for w in self._workers if w.alive]
        names = []
        for worker in alive:
            try:
                unloaded = self.ray.get(
                    worker.handle.unload_idle.remote(seconds), timeout=CONTROL_TIMEOUT
                )
            except Exception as exc:  # busy for long, or gone: it unloads on the next pass
                logger.debug("{}: no answer to unload ({})", worker.label, exc)
                continue
            names += [f"{name} (on {worker.label})" for name in unloaded]
        return names

    def cancel(self, label: str) -> None:
        """A live render on a Ray worker runs to its end (the worker takes one call at a
        time, so a cancel could only arrive after it); the newer version renders next."""

    def workers(self) -> list[WorkerInfo]:
        with self._cond:
            return [
                WorkerInfo(
                    name=w.name,
                    node=w.description.node if w.description else "?",
                    gpus=w.description.gpus if w.description else "",
                    pid=w.description.pid if w.description else 0,
                    alive=w.alive,
                    models=w.models,
                    done=w.done,
                    in_flight=w.in_flight,
                    last_error=w.last_error,
                )
                for w in self._workers
            ]

    def close(self) -> None:
        """Calls not sent yet are given back (their jobs stay in the inbox); calls in hand
        finish; then the workers end, and Ray's connection (or private instance) with them."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        for worker in self._workers:
            self.ray.kill(worker.handle, no_restart=True)
        self._workers.clear()
        stop_forwarding_worker_logs()
        if self._owns_ray:
            self.ray.shutdown()

    def _label_of_pid(self, pid: str) -> str | None:
        """The worker whose process `pid` is (for its log lines), if one is."""
        with self._cond:
            workers = list(self._workers)
        return next(
            (w.label for w in workers if w.description and str(w.description.pid) == pid), None
        )

    def _stopping(self) -> bool:
        return self._closing or self.stop.is_set()

    def _give_back_unsent(self) -> None:
        with self._cond:
            unsent, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for call in unsent:
            call.future.set_result([_not_started()] * len(call.requests))

    # ----------------------------------------------------------------- the dispatcher

    def _run(self) -> None:
        next_refresh = time.monotonic() + REFRESH
        while True:
            if self._stopping():
                self._give_back_unsent()
                if not self._calls:
                    return
            if time.monotonic() >= next_refresh:
                self._refresh()
                next_refresh = time.monotonic() + REFRESH
            self._send()
            refs = [*self._calls, *self._probes]
            if not refs:
                with self._cond:
                    self._cond.wait(WAIT)
                continue
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=WAIT)
            if ready:
                ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in self._probes:
                    self._answered(ref, self._probes.pop(ref))
                else:
                    self._replied(ref, *self._calls.pop(ref))

    def _send(self) -> None:
        """Waiting calls to workers with a free slot, oldest (and retries) first."""
        while True:
            with self._cond:
                if not self._waiting:
                    return
                call = self._waiting[0]
                worker = self._pick(call)
                if worker is None:
                    return
                self._waiting.popleft()
                worker.in_flight += 1
                self._cond.notify_all()  # submit() may go on
            ref = worker.handle.render.remote(call.requests)
            self._calls[ref] = (call, worker)
            if call.on_dispatch is not None:
                call.on_dispatch(worker.label, call.positions)

    def _pick(self, call: _Call) -> _Worker | None:
        """A live worker with a free slot: the least busy, and among those one with the model
        loaded (an idle worker paints now; a busy one with the model would make the call
        wait for a whole batch, and every worker is warmed with the model anyway)."""
        free = [
            w
            for w in self._workers
            if w.alive and w.in_flight < self.inflight_per_worker and w.name not in call.avoid
        ]
        if not free:
            return None
        return min(free, key=lambda w: (w.in_flight, not w.has(call.model), w.name))

    def _replied(self, ref: Any, call: _Call, worker: _Worker) -> None:
        ray = self.ray
        with self._cond:
            worker.in_flight -= 1
        try:
            reply: Reply = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the worker's code raised: a bug there
            worker.last_error = _first_line(exc)
            self._resolve(call, [exc.as_instanceof_cause()] * len(call.requests))
        except ray.exceptions.RayActorError as exc:
            self._died(call, worker, exc)
        except ray.exceptions.RayError as exc:
            call.tries += 1
            worker.last_error = _first_line(exc)
            if call.tries >= MAX_TRIES:
                error = TransientError(f"the Ray cluster failed {call.tries} times: {exc}")
                self._resolve(call, [error] * len(call.requests))
            else:
                self._again([call])
        else:
            worker.models, worker.free_memory = reply.models, reply.free_memory
            missing = next((o for o in reply.outcomes if isinstance(o, ConfigError)), None)
            if missing is not None:
                worker.last_error = str(missing)
                call.avoid.add(worker.name)
                if any(w.name not in call.avoid for w in self._workers):
                    logger.warning("{}: {}; trying another worker", worker.label, missing)
                    self._again([call])
                    return
            worker.done += len(call.requests)
            self._resolve(call, reply.outcomes)

    def _died(self, call: _Call, worker: _Worker, exc: Exception) -> None:
        """The worker died with `call` in hand. Ray restarts it; until it answers again,
        nothing more is sent to it. The call goes elsewhere, one request at a time, so that
        the one that kills its worker is found and the others are painted."""
        if worker.alive:
            logger.warning(
                "render worker {} died with {} in hand; Ray restarts it, and the job goes to "
                "another worker", worker.label, call.requests[0].label,
            )  # fmt: skip
        worker.alive = False
        worker.last_error = f"died with {call.requests[0].label} in hand"
        call.crashes += 1
        if call.crashes >= MAX_CRASHES:
            error = InputError(
                f"its render worker died {call.crashes} times while painting it (the worker "
                f"process crashed or its machine went away each time); last: {_first_line(exc)}"
            )
            self._resolve(call, [error] * len(call.requests))
            return
        if len(call.requests) == 1:
            self._again([call])
            return
        pieces = [call.piece(i) for i in range(len(call.requests))]
        self._again(pieces, parent=call)

    def _again(self, calls: list[_Call], parent: _Call | None = None) -> None:
        """Send `calls` again before anything new; the pieces of a split `parent` resolve it
        once all are back."""
        if parent is not None:
            _join_pieces(parent, calls)
        with self._cond:
            self._waiting.extendleft(reversed(calls))
            self._cond.notify_all()

    def _resolve(self, call: _Call, outcomes: list[Outcome]) -> None:
        if call.future.done():  # a second answer to the same call: at-least-once, dropped
            logger.debug("a second reply for {} was dropped", call.requests[0].label)
            return
        call.future.set_result(list(outcomes))

    # ----------------------------------------------------------------- the worker set

    def _wanted(self) -> int:
        """How many workers: ray_workers CPU workers, or one per ray_gpus_per_worker GPUs of
        the cluster (at most ray_workers)."""
        most = self.settings.ray_workers
        if self.gpus_per_worker == 0:
            return most or 1
        gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        wanted = int(gpus / self.gpus_per_worker + 1e-9)
        return min(wanted, most) if most else wanted

    def _refresh(self) -> None:
        """As many workers as wanted (GPUs come and go); ask the ones not answering yet."""
        ray = self.ray
        wanted = self._wanted()
        with self._cond:
            if wanted == 0 and not self._said_no_gpu:
                logger.warning(
                    "the Ray cluster offers no GPU for a render worker (ray_gpus_per_worker: "
                    "{:g}); jobs wait until a node with a GPU joins. To paint on CPUs instead, "
                    "set ray_gpus_per_worker: 0 and ray_workers: N", self.gpus_per_worker,
                )  # fmt: skip
            self._said_no_gpu = wanted == 0
            while len(self._workers) < wanted:
                self._made += 1
                handle = self._actor_class.remote(self.settings)
                self._workers.append(_Worker(f"w{self._made}", handle))
                logger.info("render worker w{} starting", self._made)
            surplus = [w for w in self._workers if not w.alive and not w.in_flight]
            for worker in surplus[: max(0, len(self._workers) - wanted)]:
                logger.info("render worker {} ended: its node left the cluster", worker.label)
                ray.kill(worker.handle, no_restart=True)
                self._workers.remove(worker)
            asking = [w for w in self._workers if not w.alive and not w.probing]
        self._say_slow_starts()
        for worker in asking:
            worker.probing = True
            self._probes[worker.handle.describe.remote()] = worker

    def _say_slow_starts(self) -> None:
        """Once per worker: it has never answered after SLOW_START s, most likely because
        the cluster has no free CPU or GPU for it (Ray leaves it pending without a word)."""
        now = time.monotonic()
        for worker in self._workers:
            if worker.description or worker.said_slow or now - worker.made_at < SLOW_START:
                continue
            worker.said_slow = True
            logger.warning(
                "render worker {} has not started in {:.0f} s: the Ray cluster may have no free "
                "{} for it (each worker takes 1 CPU{}). Lower ray_workers, or add a node; the "
                "other workers paint meanwhile",
                worker.name, now - worker.made_at, "CPU" if self.gpus_per_worker == 0 else "GPU",
                "" if self.gpus_per_worker == 0 else f" and {self.gpus_per_worker:g} GPU",
            )  # fmt: skip

    def _answered(self, ref: Any, worker: _Worker) -> None:
        worker.probing = False
        try:
            description: Description = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # not back yet: asked again later
            worker.last_error = _first_line(exc)
            return
        with self._cond:
            worker.description = description
            worker.free_memory = description.free_memory
            worker.alive = True
            self._cond.notify_all()
        logger.info(
            "render worker {} ready (pid {}, {})", worker.label, description.pid,
            description.device,
        )  # fmt: skip


def _join_pieces(parent: _Call, pieces: list[_Call]) -> None:
    """Resolve `parent` with its pieces' outcomes, in order, once every piece has one."""
    remaining = [len(pieces)]
    lock = threading.Lock()

    def piece_done(_future: Future[list[Outcome]]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last and not parent.future.done():
            parent.future.set_result([piece.future.result()[0] for piece in pieces])

    for piece in pieces:
        piece.future.add_done_callback(piece_done)


def _not_started() -> NotStarted:
    return NotStarted("the daemon stopped before it was sent to a render worker")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
