"""Single files of SD 3 / 3.5, Flux.1, Flux.2 and Qwen-Image told apart from their headers.

The headers are written as ComfyUI, Forge and BFL files name their tensors (key names and
the shapes that matter), without tensor data: classification never reads any.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.families import family_of_class
from daemon.models.flow_files import FlowFile, classify_flow, detect_file
from daemon.models.model_family import source_family
from daemon.models.resolve import ModelSource

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


def _flux(*, guidance: bool = True, in_channels: int = 64, double: int = 19) -> Shapes:
    keys = {f"double_blocks.{i}.img_attn.qkv.weight": [9216, 3072] for i in range(double)}
    keys |= {f"single_blocks.{i}.linear1.weight": [21504, 3072] for i in range(38)}
    keys["img_in.weight"] = [3072, in_channels]
    if guidance:
        keys["guidance_in.in_layer.weight"] = [3072, 256]
    return keys


def _sd3(blocks: int, *, dual: bool = False) -> Shapes:
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
PREFIX = "model.diffusion_model."


@pytest.mark.parametrize(
    ("shapes", "variant", "family"),
    [
        (_flux(), "flux-dev", "Flux.1"),
        (_flux(guidance=False), "flux-schnell", "Flux.1"),
        (_flux(in_channels=384), "flux-fill", None),
        (_sd3(24), "sd3-medium", "SD 3.5"),
        (_sd3(24, dual=True), "sd35-medium", "SD 3.5"),
        (_sd3(38), "sd35-large", "SD 3.5"),
        (QWEN, "qwen-image", "Qwen-Image"),
    ],
)
@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_transformer_files_are_told_apart(
    shapes: Shapes, variant: str, family: str | None, prefix: str, tmp_path: Path
) -> None:
    file = header_only(tmp_path / "t.safetensors", {prefix + k: v for k, v in shapes.items()})
    found = detect_file(file)
    assert isinstance(found, FlowFile)
    assert (found.variant, found.prefix, found.all_in_one, found.fp8) == (
        variant,
        prefix,
        False,
        None,
    )
    source = ModelSource("m", "single_file", str(file), "m")
    got = source_family(source)
    assert (got.name if got else None) == family


def test_flux2_dev_and_klein_by_their_block_counts(tmp_path: Path) -> None:
    dev = classify_flow(tmp_path, FLUX2)
    klein = classify_flow(
        tmp_path, {k: v for k, v in FLUX2.items() if not k.startswith("single_blocks.4")}
    )
    assert dev is not None and klein is not None
    assert (dev.variant, klein.variant) == ("flux2-dev", "flux2-klein")
    assert klein.blocks == {"double_blocks": 8, "single_blocks": 40}


def test_all_in_one_file_lists_its_components(tmp_path: Path) -> None:
    shapes = {PREFIX + k: v for k, v in _sd3(24, dual=True).items()}
    shapes |= {
        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": [768],
        "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight": [1280],
        "text_encoders.t5xxl.transformer.shared.weight": [32128, 4096],
        "first_stage_model.decoder.conv_in.weight": [512, 16, 3, 3],
    }
    found = detect_file(header_only(tmp_path / "sd35m.safetensors", shapes, dtype="F8_E4M3"))
    assert isinstance(found, FlowFile)
    assert found.text_encoders == ("clip_g", "clip_l", "t5xxl")
    assert (found.vae_prefix, found.all_in_one, found.fp8) == ("first_stage_model.", True, "plain")
    assert found.label == "SD 3.5 Medium checkpoint"


def test_scaled_fp8_is_recognised(tmp_path: Path) -> None:
    shapes = _flux() | {"scaled_fp8": [0], "double_blocks.0.img_attn.qkv.scale_weight": []}
    found = classify_flow(tmp_path, shapes)
    assert found is not None and found.fp8 == "scaled"


def test_chroma_and_flux_depth_are_refused_plainly(tmp_path: Path) -> None:
    chroma = _flux(guidance=False) | {"distilled_guidance_layer.in_proj.bias": [3072]}
    with pytest.raises(ConfigError, match="Chroma is not supported"):
        detect_file(header_only(tmp_path / "chroma.safetensors", chroma))
    with pytest.raises(ConfigError, match=r"Flux\.1 Depth"):
        detect_file(header_only(tmp_path / "depth.safetensors", _flux(in_channels=128)))


def test_sd_files_and_other_things_are_not_flow_files(tmp_path: Path) -> None:
    sd = {
        PREFIX + "input_blocks.0.0.weight": [320, 4, 3, 3],
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768],
    }
    assert classify_flow(tmp_path, sd) is None
    assert detect_file(header_only(tmp_path / "sd.safetensors", sd)) == "sd1"
    lora = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [16, 3072]}
    with pytest.raises(ConfigError, match="LoRA"):
        detect_file(header_only(tmp_path / "lora.safetensors", lora))
    assert family_of_class("QwenImagePipeline") is not None
