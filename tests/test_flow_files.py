"""Single files of SD 3 / 3.5, Flux.1, Flux.2 and Qwen-Image told apart from their headers.

The headers are written as ComfyUI, Forge and BFL files name their tensors (key names and
the shapes that matter), without tensor data: classification never reads any.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.families import family_of_class
from daemon.models.flow_files import FlowFile, classify_flow, detect_file
from daemon.models.model_family import source_family
from daemon.models.resolve import ModelSource
from tests.support.flow_headers import FLUX2, QWEN, Shapes, flux_shapes, header_only, sd3_shapes

PREFIX = "model.diffusion_model."


@pytest.mark.parametrize(
    ("shapes", "variant", "family"),
    [
        (flux_shapes(), "flux-dev", "Flux.1"),
        (flux_shapes(guidance=False), "flux-schnell", "Flux.1"),
        (flux_shapes(in_channels=384), "flux-fill", None),
        (sd3_shapes(24), "sd3-medium", "SD 3.5"),
        (sd3_shapes(24, dual=True), "sd35-medium", "SD 3.5"),
        (sd3_shapes(38), "sd35-large", "SD 3.5"),
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
    shapes = {PREFIX + k: v for k, v in sd3_shapes(24, dual=True).items()}
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
    shapes = flux_shapes() | {"scaled_fp8": [0], "double_blocks.0.img_attn.qkv.scale_weight": []}
    found = classify_flow(tmp_path, shapes)
    assert found is not None and found.fp8 == "scaled"


def test_chroma_and_flux_depth_are_refused_plainly(tmp_path: Path) -> None:
    chroma = flux_shapes(guidance=False) | {"distilled_guidance_layer.in_proj.bias": [3072]}
    with pytest.raises(ConfigError, match="Chroma is not supported"):
        detect_file(header_only(tmp_path / "chroma.safetensors", chroma))
    with pytest.raises(ConfigError, match=r"Flux\.1 Depth"):
        detect_file(header_only(tmp_path / "depth.safetensors", flux_shapes(in_channels=128)))


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
