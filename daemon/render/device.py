"""Which device and dtype ``device: auto`` means, on Linux/Windows (CUDA) and macOS (MPS).

Apple Silicon runs diffusers through MPS. fp16 is what MPS runs fastest and what the SD
families (1.5, 2.x, XL) are published in. The flow families (FLUX, SD 3.x, Qwen) overflow
fp16, so they get bf16 everywhere a GPU runs them; MPS has bf16 kernels only from macOS 14
(Sonoma, torch 2.3+), so on an older macOS those families fall back to fp32 (slower, twice
the memory, but right) rather than to fp16, which would give black or NaN images.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

# torch reads this once, when it is imported: an operation MPS lacks then runs on the CPU
# (with a warning naming it) instead of raising NotImplementedError. In diffusers pipelines
# these are few and small (some upsampling and index operations, depending on torch's
# version); the denoising loop itself stays on the GPU.
MPS_FALLBACK_VARIABLE = "PYTORCH_ENABLE_MPS_FALLBACK"

DtypeName = Literal["float16", "bfloat16", "float32"]


def auto_device(*, cuda: bool, mps: bool) -> str:
    """``auto``: CUDA when present, else Apple's MPS, else the CPU."""
    if cuda:
        return "cuda"
    return "mps" if mps else "cpu"


def dtype_name(device: str, *, flow: bool, mps_bf16: bool) -> DtypeName:
    """The weights' dtype for a model of a flow family (``flow``) or not on ``device``.

    ``mps_bf16``: this Mac's MPS runs bf16 (macOS 14 or later).
    """
    if device == "cpu":
        return "float32"  # fp16 on the CPU is slow and some operations lack it
    if not flow:
        return "float16"
    if device == "mps" and not mps_bf16:
        return "float32"  # fp16 overflows in T5 and the flow transformers
    return "bfloat16"


def enable_mps_fallback(
    platform: str = sys.platform, environ: MutableMapping[str, str] = os.environ
) -> bool:
    """On macOS, set ``PYTORCH_ENABLE_MPS_FALLBACK=1`` unless the user chose a value; True
    when set here. Called before anything imports torch (it is read only at import)."""
    if platform != "darwin" or MPS_FALLBACK_VARIABLE in environ:
        return False
    environ[MPS_FALLBACK_VARIABLE] = "1"
    return True


def pick_device(requested: str) -> tuple[str, torch.dtype]:
    """``auto`` → CUDA with fp16 when present, else Apple MPS (fp16), else CPU (fp32).

    The dtype is for the SD families; flow families ask :func:`flow_dtype` for theirs.
    """
    import torch

    device = requested
    if requested == "auto":
        device = auto_device(cuda=torch.cuda.is_available(), mps=_mps_available())
    name = dtype_name(device, flow=False, mps_bf16=False)
    return device, getattr(torch, name)


def flow_dtype(device: str) -> torch.dtype:
    """The dtype of a flow family's weights on ``device`` (see the module's notes)."""
    import torch

    return getattr(torch, dtype_name(device, flow=True, mps_bf16=_mps_runs_bf16()))


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _mps_runs_bf16() -> bool:
    import torch

    newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(_mps_available() and newer is not None and newer(14, 0))
