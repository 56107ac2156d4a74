"""Run a Python program as it is, and write what it did on the GPU to a JSON file at exit.

    python bench/gpu_probe.py STATS.json -m daemon --config img2imgd.yaml once
    python bench/gpu_probe.py STATS.json bench/plain_gpu.py ARGS...

bench/gpu.py times both sides of its comparison as whole processes through this wrapper, so
both are measured the same way. At exit it writes:

* ``peak_allocated`` / ``peak_reserved``: torch's peak GPU memory, in bytes;
* ``unet_calls``, ``image_steps`` and ``unet_seconds``: the UNet's calls, the denoising steps
  they advanced summed over the images of each call, and their GPU time. The UNet is timed
  from outside, so that ``torch.compile`` sees it untouched: a CUDA event is recorded when the
  Euler a scheduler scales the UNet's input and one when it takes the UNet's output
  (``scale_model_input`` and ``step``, plain Python around every UNet call in diffusers'
  loop). Flux's pipelines call nothing of their scheduler before the transformer, so there
  the transformer's ``forward`` itself is timed (Flux is not compiled in the benchmark).
  Events do not wait for the GPU; they are read once, at exit.

The scheduler and the transformer are patched when their modules are first imported (an
import hook), not before: importing torch and diffusers up front would change when the
daemon imports them.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

SCHEDULER_MODULE = "diffusers.schedulers.scheduling_euler_ancestral_discrete"
FLUX_MODULE = "diffusers.models.transformers.transformer_flux"
_events: list[tuple[Any, Any, int]] = []  # (before the UNet, after it, images in the call)
_started: list[Any] = []


def _patch(module: ModuleType) -> None:
    import torch

    scheduler = module.EulerAncestralDiscreteScheduler
    scale, step = scheduler.scale_model_input, scheduler.step

    def scale_model_input(self: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        if sample.is_cuda:
            _started.append(torch.cuda.Event(enable_timing=True))
            _started[-1].record()
        return scale(self, sample, *args, **kwargs)

    def timed_step(
        self: Any, model_output: Any, timestep: Any, sample: Any, *a: Any, **k: Any
    ) -> Any:
        if _started and sample.is_cuda:
            done = torch.cuda.Event(enable_timing=True)
            done.record()
            _events.append((_started.pop(), done, int(sample.shape[0])))
        return step(self, model_output, timestep, sample, *a, **k)

    scheduler.scale_model_input = scale_model_input
    scheduler.step = timed_step


def _patch_flux(module: ModuleType) -> None:
    import torch

    transformer = module.FluxTransformer2DModel
    forward = transformer.forward

    def timed_forward(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        if not hidden_states.is_cuda:
            return forward(self, hidden_states, *args, **kwargs)
        started, done = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        started.record()
        output = forward(self, hidden_states, *args, **kwargs)
        done.record()
        _events.append((started, done, int(hidden_states.shape[0])))
        return output

    transformer.forward = timed_forward


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the patched modules with the other finders, and patches each once loaded."""

    def __init__(self) -> None:
        self.pending = {SCHEDULER_MODULE: _patch, FLUX_MODULE: _patch_flux}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = self.pending.pop(name, None)
        if patch is None:
            return None
        if not self.pending:
            sys.meta_path.remove(self)  # each once; and the other finders find the real module
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, real_exec = spec.loader, spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            real_exec(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def stats() -> dict[str, float]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    torch.cuda.synchronize()
    return {
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "peak_reserved": torch.cuda.max_memory_reserved(),
        "unet_calls": len(_events),
        "image_steps": sum(images for _, _, images in _events),
        "unet_seconds": sum(a.elapsed_time(b) for a, b, _ in _events) / 1000,
    }


def main() -> None:
    out, program = Path(sys.argv[1]), sys.argv[2:]
    atexit.register(lambda: out.write_text(json.dumps(stats())))
    sys.meta_path.insert(0, _PatchOnImport())
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = program
        sys.path.insert(0, str(Path(program[0]).resolve().parent))
        runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main()
