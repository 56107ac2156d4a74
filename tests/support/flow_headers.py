"""Flow-family files for the tests: headers named as ComfyUI, Forge and BFL name their
tensors (no tensor data: classification reads headers only), and a small real Qwen-Image
transformer file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

Shapes = dict[str, list[int]]


def header_only(path: Path, shapes: Shapes, *, dtype: str = "BF16") -> Path:
    """A safetensors header naming `shapes` (no tensor bytes: only headers are read)."""
    header: dict[str, object] = {
        key: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]}
        for key, shape in shapes.items()
    }
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def flux_shapes(*, guidance: bool = True, in_channels: int = 64, double: int = 19) -> Shapes:
    keys = {f"double_blocks.{i}.img_attn.qkv.weight": [9216, 3072] for i in range(double)}
    keys |= {f"single_blocks.{i}.linear1.weight": [21504, 3072] for i in range(38)}
    keys["img_in.weight"] = [3072, in_channels]
    if guidance:
        keys["guidance_in.in_layer.weight"] = [3072, 256]
    return keys


def sd3_shapes(blocks: int, *, dual: bool = False) -> Shapes:
    keys = {f"joint_blocks.{i}.x_block.attn.qkv.weight": [4608, 1536] for i in range(blocks)}
    if dual:
        keys["joint_blocks.0.x_block.attn2.qkv.weight"] = [4608, 1536]
    return keys


QWEN = {
    "img_in.weight": [3072, 64],
    "txt_norm.weight": [3584],
    **{f"transformer_blocks.{i}.img_mod.1.weight": [18432, 3072] for i in range(60)},
}
FLUX2 = {
    "single_stream_modulation.lin.weight": [9216, 3072],
    **{f"double_blocks.{i}.img_attn.qkv.weight": [1, 1] for i in range(8)},
    **{f"single_blocks.{i}.linear1.weight": [1, 1] for i in range(48)},
}


def qwen_transformer_file(path: Path) -> Path:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=128,
        num_attention_heads=1, joint_attention_dim=16, axes_dims_rope=(16, 56, 56),
    )  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
