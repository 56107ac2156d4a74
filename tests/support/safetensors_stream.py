"""A safetensors writer that streams: one tensor at a time from memory to the file.

Why not ``safetensors.torch.save_file``: it first turns every tensor into a bytes object,
a second full copy of the weights (7 GB for SDXL in fp16), and it refuses tensors that share
memory. Here each tensor's bytes go straight from its storage to the file, so writing costs
no memory beyond what is already held. The format (safetensors' published spec): an 8-byte
little-endian header length, a JSON header padded with spaces to a multiple of 8, then the
raw little-endian tensor bytes. Tensors are stored in name order, as safetensors' own
writer orders the tensors of one dtype (loaders meet the weights in the order real files
give them).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def save_streaming(
    tensors: Mapping[str, torch.Tensor],
    path: Path,
    *,
    metadata: Mapping[str, str] | None = None,
    fill: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Path:
    """Write `tensors` to `path` as a .safetensors file, holding one tensor's copy at most.

    `fill(name, tensor)`: the values to write for each tensor, made only when it is written
    (`tensors` may then be on the meta device: only their shapes and dtypes are read)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    names = sorted(tensors)
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for name in names:
            tensor = fill(name, tensors[name]) if fill else tensors[name]
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            file.write(memoryview(raw.numpy()))
    return path
