"""A GGUF-quantized transformer (city96's layout: diffusers names for Qwen-Image, Q8_0 rows)
found by name in ComfyUI's folder, told apart from its GGUF header and loaded quantized
through diffusers' GGUF support. Skipped without the optional ``gguf`` package
(``pip install 'img2imgd[gguf]'``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from daemon.models.flow_files import FlowFile, detect_file, read_model_layout
from daemon.models.flow_loading import load_transformer
from daemon.models.resolve import Search, resolve_model
from daemon.models.single_file import CONFIGS_DIR
from tests.support.flow_headers import qwen_transformer_file

gguf = pytest.importorskip("gguf")


def write_q8_gguf(weights: dict[str, torch.Tensor], path: Path) -> Path:
    """Q8_0 where a row holds whole 32-value blocks, F32 elsewhere (as small layers are)."""
    writer = gguf.GGUFWriter(str(path), arch="qwen_image")
    for name, tensor in weights.items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[1] % 32 == 0:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_q8_gguf_transformer_is_found_told_apart_and_loads_quantized(tmp_path: Path) -> None:
    weights = load_file(str(qwen_transformer_file(tmp_path / "source.safetensors")))
    models = tmp_path / "ComfyUI" / "models"
    (models / "diffusion_models").mkdir(parents=True)
    file = write_q8_gguf(weights, models / "diffusion_models" / "qwen-image-Q8_0.gguf")

    source = resolve_model("qwen-image-Q8_0.gguf", Search(models))  # named with its extension
    assert (source.kind, Path(source.location)) == ("single_file", file)
    flow = detect_file(file)
    assert isinstance(flow, FlowFile) and flow.variant == "qwen-image"
    shapes = {k: v["shape"] for k, v in read_model_layout(file).items()}
    assert shapes["img_in.weight"] == list(weights["img_in.weight"].shape)

    model = load_transformer(str(file), shapes, flow, CONFIGS_DIR / "qwen-image", torch.float32)
    quantized = [n for n, p in model.named_parameters() if type(p).__name__ == "GGUFParameter"]
    assert "img_in.weight" in quantized
    layer = model.img_in
    probe = torch.randn(3, weights["img_in.weight"].shape[1])
    want = probe @ weights["img_in.weight"].T + weights["img_in.bias"]
    got = layer(probe)
    assert (got - want).abs().max().item() < 0.02 * want.abs().max().item()  # Q8_0 rounding
