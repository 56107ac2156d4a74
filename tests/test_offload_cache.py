"""Offload modes through the real model cache and the real daemon (daemon/render/offload.py).

On the CPU the real path is taken as it is: everything stays on the CPU, whatever is asked.
A GPU cannot be had here, so its side is fault injection only: the cache is told its device
is CUDA, ``torch.cuda.mem_get_info`` reports a chosen free memory, and diffusers' two offload
calls are replaced by recorders (they refuse to run without an accelerator); a pipeline moved
``.to("cuda")`` would fail, so a placement that should not move it proves it was not moved.
Everything else (the built-in tiny Flux, its files' headers, loading, painting, the daemon
with its watcher and journal) is real: the tiny model runs on the CPU with hooks absent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

from daemon.engines.diffusion import DiffusionEngine
from daemon.models.builtin import ensure_builtin
from daemon.models.model_size import folder_size
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from daemon.render.offload import HEADROOM
from tests.conftest import Workspace, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FLUX = "builtin:tiny-flux"


@pytest.fixture
def offloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(mode, pipeline class, device) of every offload call; ``.to("cuda")`` is refused."""
    calls: list[tuple[str, str, str]] = []

    def recorder(mode: str) -> Callable[..., None]:
        def record(pipe: Any, gpu_id: int | None = None, device: Any = None) -> None:
            calls.append((mode, type(pipe).__name__, str(device)))

        return record

    real_to = diffusers.DiffusionPipeline.to

    def to(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        if any(str(arg).startswith("cuda") for arg in (*args, *kwargs.values())):
            raise AssertionError("the pipeline was moved to the GPU")
        return real_to(pipe, *args, **kwargs)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "enable_model_cpu_offload", recorder("model"))
    monkeypatch.setattr(
        diffusers.DiffusionPipeline, "enable_sequential_cpu_offload", recorder("sequential")
    )
    monkeypatch.setattr(diffusers.DiffusionPipeline, "to", to)
    return calls


def free_gpu_memory(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))


def said(logs: list[str], text: str) -> str:
    """The first log line that holds `text` (the test fails where there is none)."""
    found = [line for line in logs if text in line]
    assert found, f"nothing logged {text!r}"
    return found[0]


def tiny_flux_free_for(state_dir: Path, mode: str) -> int:
    """Free bytes for which ``auto`` chooses `mode` for the tiny Flux (bf16 on a GPU)."""
    size = folder_size(ensure_builtin("tiny-flux", state_dir / "builtin"))
    assert size is not None
    needed = {"none": size.total, "model": size.largest}[mode] * 2
    return int(needed / HEADROOM) + 16


def test_on_the_cpu_everything_stays_there_whatever_is_asked(
    state_dir: Path, offloads: list[tuple[str, str, str]], logs: list[str]
) -> None:
    cache = ModelCache(models_dir=None, state_dir=state_dir, device="cpu", offload="sequential")
    pipe = cache.pipeline(FLUX, "img2img", offload="model")
    assert offloads == [] and pipe.transformer.device.type == "cpu"
    assert not hasattr(pipe.transformer, "_hf_hook")
    assert said(logs, "model builtin-tiny-flux: offload: model needs a CUDA GPU: all on the cpu")


def test_auto_offloads_a_model_too_big_for_the_free_memory_and_each_pipeline_of_it(
    state_dir: Path, offloads: list[tuple[str, str, str]], logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    free_gpu_memory(monkeypatch, tiny_flux_free_for(state_dir, "model"))
    cache = ModelCache(models_dir=None, state_dir=state_dir, device="cuda")
    cache.pipeline(FLUX, "img2img")
    cache.pipeline(FLUX, "inpaint")  # from_pipe: the same modules, its own hooks
    assert offloads == [
        ("model", "FluxImg2ImgPipeline", "cuda"),
        ("model", "FluxInpaintPipeline", "cuda"),
    ]
    line = said(logs, "model builtin-tiny-flux: transformer 0.0 GB + encoders ")
    assert line.endswith("free: model CPU offload (slower; set offload: none to force)")


def test_a_profile_that_disagrees_with_the_loaded_model_is_told_once_and_waits(
    state_dir: Path, offloads: list[tuple[str, str, str]], logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    free_gpu_memory(monkeypatch, 80 * 2**30)
    cache = ModelCache(models_dir=None, state_dir=state_dir, device="cuda")
    first = cache.pipeline(FLUX, "img2img", offload="model")
    again = [cache.pipeline(FLUX, "img2img", offload="sequential") for _ in range(3)]
    assert all(pipe is first for pipe in again), "the loaded model was kept"
    assert cache.pipeline(FLUX, "img2img") is first  # the daemon's auto: no opinion, no warning
    assert offloads == [("model", "FluxImg2ImgPipeline", "cuda")]
    told = [line for line in logs if "stays as loaded with offload" in line]
    assert len(told) == 1 and told[0].endswith(
        "model builtin-tiny-flux stays as loaded with offload: model (model CPU offload); "
        "offload: sequential applies when it loads again (after unload_after idle, or a restart)"
    )
    cache.unload(FLUX)
    cache.pipeline(FLUX, "img2img", offload="sequential")
    assert offloads[-1] == ("sequential", "FluxImg2ImgPipeline", "cuda")


# ----------------------------------------------------------------------------- out of memory


@pytest.fixture
def models(state_dir: Path) -> ModelCache:
    """A cache of its own (a fresh load, where the faults are) that believes it has a GPU;
    conftest's ``running`` starts the real daemon with it."""
    return ModelCache(models_dir=None, state_dir=state_dir, device="cuda")


@pytest.fixture
def start(
    running: Callable[..., Daemon], workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> Callable[[int], Daemon]:
    """The real daemon painting with the tiny Flux, whose profile asks for model offload;
    `failures`: how many times painting runs out of memory."""

    def run(failures: int) -> Daemon:
        real = DiffusionEngine._sample
        calls = {"n": 0}

        def sample(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] <= failures:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB")
            return real(*args, **kwargs)

        monkeypatch.setattr(DiffusionEngine, "_sample", sample)
        free_gpu_memory(monkeypatch, 80 * 2**30)
        workspace.profile("flux", model=FLUX, offload="model", steps=2, max_pixels=64 * 64)
        daemon = running(retry_delay=30)
        workspace.drop("chelsea.png", "flux/oom.png")
        return daemon

    return run


def test_out_of_memory_loads_a_flow_model_again_offloaded_further(
    start: Callable[[int], Daemon], workspace: Workspace,
    offloads: list[tuple[str, str, str]], logs: list[str],
) -> None:  # fmt: skip
    daemon = start(1)
    wait_for(lambda: daemon.tally.done, timeout=120)
    assert daemon.tally.done == 1 and daemon.tally.deferred == 0 and daemon.tally.failed == 0
    assert [mode for mode, _, _ in offloads] == ["model", "sequential"]
    assert said(logs, "out of memory; loading the model again with sequential CPU offload")
    assert said(logs, "model builtin-tiny-flux: sequential CPU offload, since it ran out of memory")
    assert not any("attention slicing" in line for line in logs), "offloading was enough"
    assert [p.name for p in workspace.outputs("flux")] == ["oom.png", "oom.txt"]


def test_out_of_memory_past_every_mode_defers_the_input(
    start: Callable[[int], Daemon], workspace: Workspace,
    offloads: list[tuple[str, str, str]], logs: list[str],
) -> None:  # fmt: skip
    daemon = start(10**6)
    wait_for(
        lambda: any("even with low-memory settings" in line and "retrying in" in line
                    for line in logs),
        timeout=120,
    )  # fmt: skip
    assert [mode for mode, _, _ in offloads] == ["model", "sequential"]
    assert said(logs, "retrying once with attention slicing")
    assert daemon.tally.deferred == 1 and daemon.tally.failed == 0
    assert (workspace.inbox / "flux/oom.png").exists(), "the input waits in the inbox"
