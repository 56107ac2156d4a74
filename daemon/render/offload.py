"""Where a diffusion model's weights live: all on the GPU, or offloaded to the CPU's memory.

A Flux.1 transformer is 23.8 GB in bf16 and its T5 encoder 9.5 GB; Qwen-Image's are 40 and
16 GB. On a 24 GB card they cannot all sit on the GPU, so diffusers offers two ways to paint
anyway (``docs/source/en/optimization/memory.md``): *model* offload keeps each part in CPU
memory and moves it to the GPU while it runs (the transformer, the encoders and the VAE in
turn: a little slower), and *sequential* offload moves layer by layer (the least GPU memory,
many times slower). ``offload: auto`` (the default) chooses from the model's size, read from
its files' headers before loading (:mod:`daemon.models.model_size`), and the GPU's free
memory: all on the GPU when it fits with headroom, else model offload when its largest part
fits, else sequential. The choice is :func:`choose_offload`, a pure function; the rest of
this module applies it. Offloading needs a CUDA GPU: on the CPU and Apple's MPS everything
stays on the device (diffusers refuses to offload without an accelerator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from daemon.families import Family
from daemon.models.model_size import ModelSize, model_size
from daemon.models.resolve import ModelSource
from daemon.tasks.keys import Offload

Mode = Literal["none", "model", "sequential"]
HEADROOM = 0.85
"""The share of the GPU's free memory the weights may take; the rest is for the activations,
the VAE's decode and CUDA's own buffers (the research notes' rule, issue 26 §6)."""
STRONGER: dict[Mode, Mode] = {"none": "model", "model": "sequential"}
"""The next mode to try after running out of memory (sequential is the last)."""
NAMES: dict[Mode, str] = {
    "none": "all on the GPU",
    "model": "model CPU offload",
    "sequential": "sequential CPU offload",
}
_HINTS: dict[Mode, str] = {
    "none": "",
    "model": " (slower; set offload: none to force)",
    "sequential": " (much slower; set offload: model or none to force)",
}


@dataclass(frozen=True)
class Placement:
    mode: Mode
    reason: str  # one line for the log: what was chosen and why


def choose_offload(
    requested: Offload,
    *,
    device: str,
    size: ModelSize | None,
    free: int | None,
    bytes_per_parameter: int = 2,
    denoiser: str = "transformer",
) -> Placement:
    """Where a model goes: `requested` (a profile's or the daemon's ``offload``) on `device`,
    for a model of `size` (None: unknown) with `free` bytes free on the GPU (None: unknown),
    loaded at `bytes_per_parameter` (2 for fp16/bf16). `denoiser` names its UNet or
    transformer in the reason."""
    if not device.startswith("cuda"):
        if requested in ("model", "sequential"):
            return Placement("none", f"offload: {requested} needs a CUDA GPU: all on the {device}")
        return Placement("none", f"all on the {device}")
    if requested != "auto":
        return Placement(requested, f"{NAMES[requested]} (offload: {requested})")
    if size is None or free is None:
        unknown = "the model's size" if size is None else "the GPU's free memory"
        return Placement("none", f"{unknown} is unknown: all on the GPU (set offload: model "
                                 "if it runs out of memory)")  # fmt: skip
    budget = HEADROOM * free
    parts = _parts(size, bytes_per_parameter, denoiser)
    within = f"{int(HEADROOM * 100)}% of {_gb(free)} free"
    if size.total * bytes_per_parameter <= budget:
        return Placement("none", f"{parts} <= {within}: {_chosen('none')}")
    if size.largest * bytes_per_parameter <= budget:
        return Placement("model", f"{parts} > {within}: {_chosen('model')}")
    return Placement(
        "sequential",
        f"{parts} > {within}, and its largest part alone does not fit: {_chosen('sequential')}",
    )


def placement_for(
    source: ModelSource,
    requested: Offload,
    *,
    family: Family | None,
    device: str,
    forced: Mode | None = None,
) -> Placement:
    """:func:`choose_offload` for a resolved model, its size read from its files' headers
    and the GPU's free memory asked now; `forced`: the mode running out of memory chose."""
    if forced is not None:
        return Placement(forced, f"{NAMES[forced]}, since it ran out of memory before")
    return choose_offload(
        requested,
        device=device,
        size=model_size(source) if device.startswith("cuda") else None,
        free=free_memory(device),
        denoiser="transformer" if family is not None and family.flow else "UNet",
    )


def stronger(mode: Mode, *, device: str) -> Mode | None:
    """The mode to retry with after running out of memory in `mode` (None: none is left, or
    `device` cannot offload)."""
    return STRONGER.get(mode) if device.startswith("cuda") else None


def free_memory(device: str) -> int | None:
    """Bytes free on CUDA device `device` now (None elsewhere, or when CUDA cannot say)."""
    import torch

    if not device.startswith("cuda"):
        return None
    try:
        free, _total = torch.cuda.mem_get_info(torch.device(device))
    except (RuntimeError, AssertionError):  # a torch without CUDA asserts
        return None
    return int(free)


def place(pipe: Any, mode: Mode, device: str) -> None:
    """Put a freshly loaded pipeline's weights where `mode` says, instead of ``pipe.to``:
    offloading must start from the CPU (a model moved to the GPU first would stay there)."""
    if mode == "none":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def place_derived(pipe: Any, mode: Mode, device: str) -> None:
    """A pipeline made from a placed one (``from_pipe``: the same modules). Model offload
    hooks belong to the pipeline that installed them and are re-installed after each of its
    calls, so each pipeline gets its own; sequential hooks sit on the shared layers and
    already carry the device; with none, the modules already are on it."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)


def _chosen(mode: Mode) -> str:
    return NAMES[mode] + _HINTS[mode]


def _parts(size: ModelSize, bytes_per_parameter: int, denoiser: str) -> str:
    named = [(denoiser, size.denoiser), ("encoders", size.encoders), ("VAE", size.vae)]
    shown = [f"{name} {_gb(count * bytes_per_parameter)}" for name, count in named if count]
    return " + ".join(shown)


def _gb(count: int) -> str:
    return f"{count / 1e9:.1f} GB"
