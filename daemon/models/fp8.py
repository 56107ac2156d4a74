"""float8 weights as ComfyUI and Forge save them, made ordinary weights of the compute dtype.

* Plain fp8 (``*_fp8_e4m3fn.safetensors``, Forge's "flux1-dev-fp8"): every float8 tensor is
  cast up; diffusers would do the same, so this only makes one path of both kinds.
* ComfyUI's *scaled* fp8 (``*_fp8_scaled.safetensors``): a ``scaled_fp8`` marker tensor, and
  beside each quantized ``<layer>.weight`` a ``<layer>.scale_weight`` (one number, or one per
  output row) that the stored values must be multiplied by, and a ``<layer>.scale_input``
  used only by fp8 matmuls. diffusers 0.42.1 knows neither, so loading such a file as it is
  would give weights off by the scale: the scales are multiplied in here, the rest dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_SCALE = ".scale_weight"
_DROPPED = (".scale_input", _SCALE)


def is_float8(tensor: torch.Tensor) -> bool:
    return tensor.dtype.is_floating_point and tensor.element_size() == 1


def dequantize(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`state` with every fp8 weight in `dtype`, scaled ones multiplied by their scale; the
    marker and scale tensors are left out. Other tensors are returned as they are."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith(_DROPPED) or key == "scaled_fp8" or key.endswith(".scaled_fp8"):
            continue
        scale = (
            state.get(key.removesuffix("weight") + _SCALE[1:]) if key.endswith(".weight") else None
        )
        if scale is not None:
            out[key] = tensor.to(dtype) * _broadcast(scale.to(dtype), tensor.ndim)
        elif is_float8(tensor):
            out[key] = tensor.to(dtype)
        else:
            out[key] = tensor
    return out


def _broadcast(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-tensor (0-d or one element) or per-row scale, shaped to multiply a weight."""
    if scale.numel() == 1:
        return scale.reshape(())
    return scale.reshape(-1, *([1] * (ndim - 1)))
