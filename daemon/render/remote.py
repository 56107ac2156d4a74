"""A render worker: what runs inside one Ray actor, on one GPU of the cluster (or a CPU).

It holds warm pipelines in its own model cache and renders the requests it is sent with the
same in-process executor the daemon uses alone, so a request gives the same result here as
at home. It never sees a path of the inbox or the outbox, or the journal: requests arrive
and results leave through Ray's object store. Models are found by their references on this
machine (the same ``models_dir`` path, or the hub cache).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.config.profiles import Profile
from daemon.config.settings import Settings
from daemon.errors import ConfigError, InputError, TransientError, is_out_of_memory
from daemon.libraries import quiet_libraries
from daemon.render.cache import ModelCache
from daemon.render.executor import InProcessExecutor, Outcome
from daemon.render.ray_instance import worker_logging
from daemon.render.values import RenderRequest


@dataclass(frozen=True)
class Reply:
    """A worker's answer to a render: the outcomes, and what the daemon places by."""

    outcomes: list[Outcome]
    models: tuple[str, ...]  # loaded now (placement prefers a worker that has the model)
    free_memory: int | None  # GPU bytes free (max_batch: auto); None on a CPU


@dataclass(frozen=True)
class Description:
    node: str
    pid: int
    gpus: str  # the GPU ids Ray gave this worker
    device: str
    free_memory: int | None


class RenderWorker:
    """Wrapped by ``ray.remote`` at run time (see cluster.py), so importing this module
    needs no Ray. One request (or batch) at a time: a GPU wants one owner."""

    def __init__(self, settings: Settings) -> None:
        quiet_libraries()  # a process of its own: the CLI's start-up never ran here
        worker_logging(settings.log_level)  # lines the daemon logs in its own format
        device = _device(settings)
        self.models = ModelCache.from_settings(settings, device=device)
        self.executor = InProcessExecutor(self.models)

    def describe(self) -> Description:
        import ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU", [])
        return Description(
            node=ray.util.get_node_ip_address(),
            pid=os.getpid(),
            gpus=",".join(str(gpu) for gpu in gpus),
            device=self.models.device[0],
            free_memory=self._free_memory(),
        )

    def render(self, requests: Sequence[RenderRequest]) -> Reply:
        outcomes = [_portable(outcome) for outcome in self.executor.render(requests)]
        return Reply(outcomes, tuple(self.models.loaded), self._free_memory())

    def warm(self, settings: Profile) -> tuple[str, ...]:
        self.executor.warm(settings)
        return tuple(self.models.loaded)

    def unload_idle(self, seconds: float) -> list[str]:
        return self.executor.unload_idle(seconds)

    def _free_memory(self) -> int | None:
        device = self.models.device[0]
        if not device.startswith("cuda"):
            return None
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)


def _device(settings: Settings) -> str:
    """A CPU worker paints on the CPU; Ray gives a GPU worker its GPU as cuda:0, whatever
    cuda:N the daemon names."""
    if settings.ray_gpus_per_worker == 0:
        return "cpu"
    return "cuda" if settings.device.startswith("cuda:") else settings.device


def _portable(outcome: Outcome) -> Outcome:
    """An exception that survives the trip to the daemon: one holding what does not pickle
    (a library's handle, a lock) travels as its kind of error with its message, so that the
    daemon still judges it as it would have at home."""
    if not isinstance(outcome, Exception):
        return outcome
    try:
        pickle.loads(pickle.dumps(outcome))
    except Exception:
        kind = next(
            (k for k in (InputError, ConfigError, TransientError) if isinstance(outcome, k)),
            RuntimeError,
        )
        message = f"{type(outcome).__name__}: {outcome}"
        if is_out_of_memory(outcome):
            return MemoryError(message)
        return kind(message)
    return outcome
