"""The parts of a flow family's single file, each loaded from files as ComfyUI and Forge keep
them: fp8 and scaled fp8 weights, ComfyUI's text-encoder and VAE files, and where the
parts and tokenizers are found (or what is said when they are not)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.errors import ConfigError
from daemon.models.builtin import ensure_builtin
from daemon.models.checkpoints import read_layout
from daemon.models.flow_components import find_parts, find_tokenizer
from daemon.models.flow_files import classify_flow
from daemon.models.flow_loading import (
    LOADABLE,
    encoder_weights,
    load_flow_vae,
    load_text_encoder,
    load_transformer,
    strip_prefix,
)
from daemon.models.folder_pipeline import IMG2IMG_CLASS
from daemon.models.fp8 import dequantize
from daemon.models.resolve import Search
from daemon.models.single_file import ensure_config_dir
from tests.support.flow_headers import QWEN, flux_shapes, header_only, qwen_transformer_file
from tests.support.ldm import vae_to_ldm
from tests.support.wan_vae import to_wan

E4M3 = torch.float8_e4m3fn


def test_plain_fp8_is_cast_up_and_scaled_fp8_is_multiplied_by_its_scales() -> None:
    weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    state = {
        "plain.weight": weight.to(E4M3),
        "tensor_scaled.weight": (weight / 2).to(E4M3),
        "tensor_scaled.scale_weight": torch.tensor(2.0),
        "row_scaled.weight": (weight / torch.tensor([[4.0], [0.25]])).to(E4M3),
        "row_scaled.scale_weight": torch.tensor([4.0, 0.25]),
        "row_scaled.scale_input": torch.tensor(1.0),
        "scaled_fp8": torch.zeros(0, dtype=E4M3),
        "norm.weight": torch.ones(2),
    }
    out = dequantize(state, torch.float32)
    assert sorted(out) == [
        "norm.weight",
        "plain.weight",
        "row_scaled.weight",
        "tensor_scaled.weight",
    ]
    for key in ("plain.weight", "tensor_scaled.weight", "row_scaled.weight"):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], weight)  # these values are exact in e4m3
    assert out["norm.weight"] is state["norm.weight"]


@pytest.fixture(scope="module")
def tiny_qwen(state_dir: Path) -> Path:
    return ensure_builtin("tiny-qwen-image", state_dir / "builtin")


def test_a_scaled_fp8_transformer_file_loads_to_its_dequantized_weights(tmp_path: Path) -> None:
    original = load_file(str(qwen_transformer_file(tmp_path / "bf16.safetensors")))
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=E4M3)}
    for key, tensor in original.items():
        if tensor.ndim == 2:
            scale = tensor.abs().amax(dim=1).clamp(min=1e-8) / 448  # per row, as ComfyUI's
            scaled[key] = (tensor / scale[:, None]).to(E4M3)
            scaled[key.removesuffix("weight") + "scale_weight"] = scale
        else:
            scaled[key] = tensor
    file = tmp_path / "qwen_image_fp8_scaled.safetensors"
    save_file(scaled, str(file))
    flow = classify_flow(file, read_layout(file))
    assert flow is not None and flow.variant == "qwen-image" and flow.fp8 == "scaled"
    from daemon.models.single_file import CONFIGS_DIR

    weights = dequantize(load_file(str(file)), torch.float32)
    model = load_transformer(
        weights, _shapes(weights), flow, CONFIGS_DIR / "qwen-image", torch.float32
    )
    loaded = model.state_dict()
    assert loaded.keys() == original.keys()
    for key, tensor in original.items():  # e4m3 keeps 3 mantissa bits: within 1/16 of a row's max
        limit = tensor.abs().max().item() / 16 + 1e-6
        assert (loaded[key] - tensor).abs().max().item() <= limit, key


def _comfy_qwen_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2.5-VL as ComfyUI saves it: ``model.`` language model, ``visual.``, no LM head."""
    out = {}
    for key, tensor in state.items():
        if key.startswith("model.language_model."):
            out["model." + key.removeprefix("model.language_model.")] = tensor
        elif key.startswith("model.visual."):
            out[key.removeprefix("model.")] = tensor
    return out


def test_comfyui_qwen_text_encoder_file_loads_under_transformers_names(
    tiny_qwen: Path, tmp_path: Path
) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen / "text_encoder")
    file = tmp_path / "qwen_2.5_vl_7b.safetensors"
    save_file({k: v.contiguous() for k, v in _comfy_qwen_names(reference.state_dict()).items()},
              str(file))  # fmt: skip
    loaded = load_text_encoder(
        file, None, "Qwen2_5_VLForConditionalGeneration", tiny_qwen / "text_encoder",
        torch.float32,
    )  # fmt: skip
    got = loaded.state_dict()
    for key, tensor in reference.state_dict().items():
        if key != "lm_head.weight":  # not in ComfyUI's file, and never used for images
            torch.testing.assert_close(got[key], tensor, msg=key)


def test_a_text_encoder_file_missing_weights_is_said_plainly(
    tiny_qwen: Path, tmp_path: Path
) -> None:
    file = tmp_path / "qwen_2.5_vl_broken.safetensors"
    save_file({"model.norm.weight": torch.ones(16)}, str(file))
    with pytest.raises(ConfigError, match=r"lacks \d+ weights the model needs"):
        load_text_encoder(
            file, None, "Qwen2_5_VLForConditionalGeneration", tiny_qwen / "text_encoder",
            torch.float32,
        )  # fmt: skip


def test_clip_and_t5_files_load_as_comfyui_saves_them(state_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextModel, T5EncoderModel

    flux = ensure_builtin("tiny-flux", state_dir / "builtin")
    clip = CLIPTextModel.from_pretrained(flux / "text_encoder")
    file = tmp_path / "clip_l.safetensors"  # ComfyUI's clip_l keeps text_model.
    save_file({f"text_model.{k}": v.contiguous() for k, v in clip.state_dict().items()}, str(file))
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection"):  # Flux's, SD 3's
        loaded = load_text_encoder(file, None, name, flux / "text_encoder", torch.float32)
        got = {k.removeprefix("text_model."): v for k, v in loaded.state_dict().items()}
        for key, tensor in clip.state_dict().items():
            torch.testing.assert_close(got[key], tensor, msg=key)
    hidden = clip.config.hidden_size
    torch.testing.assert_close(loaded.text_projection.weight, torch.eye(hidden))
    t5 = T5EncoderModel.from_pretrained(flux / "text_encoder_2")
    file = tmp_path / "t5xxl_fp16.safetensors"
    state = {
        k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"
    }
    save_file(state, str(file))
    loaded = load_text_encoder(file, None, "T5EncoderModel", flux / "text_encoder_2", torch.float32)
    torch.testing.assert_close(loaded.encoder.embed_tokens.weight, t5.shared.weight)


def test_qwen_vae_file_with_diffusers_names_loads(tiny_qwen: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage.from_pretrained(tiny_qwen / "vae")
    file = tmp_path / "qwen_image_vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(file))
    loaded = load_flow_vae(file, None, "AutoencoderKLQwenImage", tiny_qwen / "vae", torch.float32)
    for key, tensor in vae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, msg=key)


def _place(root: Path, relative: str, content: Any = b"") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        path.write_text(json.dumps(content))
    else:
        path.write_bytes(content)
    return path


def test_a_bare_flux_transformer_says_every_part_it_lacks(tmp_path: Path) -> None:
    models = tmp_path / "ComfyUI" / "models"
    file = header_only(_place(models, "diffusion_models/flux1-dev.safetensors"), flux_shapes())
    flow = classify_flow(file, {k: {"shape": v} for k, v in flux_shapes().items()})
    assert flow is not None
    parts = find_parts(file, flow, Search(models))
    said = "\n".join(parts.missing)
    assert len(parts.missing) == 4, said  # clip_l, t5xxl, the VAE, the T5 tokenizer
    expected = ["text encoder clip_l", "text encoder t5xxl", "ae.safetensors", "T5 tokenizer"]
    for words in [*expected, str(models / "text_encoders"), str(models / "tokenizers/t5")]:
        assert words in said


def test_parts_are_found_by_their_usual_names(tmp_path: Path) -> None:
    models = tmp_path / "ComfyUI" / "models"
    file = header_only(_place(models, "unet/flux1-dev.safetensors"), flux_shapes())
    clip = _place(models, "clip/clip_l.safetensors")
    _place(models, "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors")
    t5 = _place(models, "text_encoders/t5xxl_fp16.safetensors")  # full precision wins
    _place(models, "text_encoders/t5xxl-notes.txt")
    _place(models, "vae/aesthetic_vae.safetensors")  # "ae" only as a whole word
    ae = _place(models, "vae/ae.safetensors")
    tokenizer = _place(tmp_path, "ComfyUI/comfy/text_encoders/t5_tokenizer/tokenizer.json", {})
    flow = classify_flow(file, {k: {"shape": v} for k, v in flux_shapes().items()})
    assert flow is not None
    parts = find_parts(file, flow, Search(models))
    assert parts.missing == []
    assert parts.encoders == {"clip_l": clip, "t5xxl": t5}
    assert (parts.vae, parts.tokenizer, parts.modules) == (ae, tokenizer.parent, [ae, clip, t5])


def test_tokenizers_are_found_where_forge_and_our_own_folder_keep_them(tmp_path: Path) -> None:
    forge = tmp_path / "forge"
    flux = "backend/huggingface/black-forest-labs/FLUX.1-dev"
    found = _place(forge, f"{flux}/tokenizer_2/tokenizer.json", {}).parent
    assert find_tokenizer("t5", Search(forge / "models")) == found
    assert find_tokenizer("qwen25", Search(forge / "models")) is None
    own = tmp_path / "mine"
    _place(own, "tokenizers/qwen25/vocab.json", {})
    assert find_tokenizer("qwen25", Search(own)) is None  # merges.txt too
    _place(own, "tokenizers/qwen25/merges.txt")
    assert find_tokenizer("qwen25", Search(own)) == own / "tokenizers" / "qwen25"
    assert classify_flow(tmp_path, QWEN) is not None


def _shapes(weights: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in weights.items()}


def test_an_all_in_one_files_encoders_and_vae_load_from_their_prefixes(
    state_dir: Path, tmp_path: Path
) -> None:
    """Forge's / civitai's all-in-one layout: CLIP-L and T5 under ``text_encoders.<name>.
    transformer.``, the VAE in LDM names under ``vae.`` (Flux's ae.safetensors is the same
    VAE without the prefix)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, T5EncoderModel

    flux = ensure_builtin("tiny-flux", state_dir / "builtin")
    clip = CLIPTextModel.from_pretrained(flux / "text_encoder")
    t5 = T5EncoderModel.from_pretrained(flux / "text_encoder_2")
    vae = AutoencoderKL.from_pretrained(flux / "vae")
    state = {
        f"text_encoders.clip_l.transformer.text_model.{k}": v for k, v in clip.state_dict().items()
    }
    state |= {f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5.state_dict().items()}
    state |= {f"vae.{k}": v for k, v in vae_to_ldm(vae).items()}
    del state["text_encoders.t5xxl.transformer.encoder.embed_tokens.weight"]  # tied: not saved
    file = tmp_path / "flux1-dev-aio.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    saved = load_file(str(file))
    got_clip = load_text_encoder(None, encoder_weights(saved, "clip_l"), "CLIPTextModel",
                                 flux / "text_encoder", torch.float32)  # fmt: skip
    got_t5 = load_text_encoder(None, encoder_weights(saved, "t5xxl"), "T5EncoderModel",
                               flux / "text_encoder_2", torch.float32)  # fmt: skip
    got_vae = load_flow_vae(
        None, strip_prefix(saved, "vae."), "AutoencoderKL", flux / "vae", torch.float32
    )
    ae = tmp_path / "ae.safetensors"  # Flux's VAE file: the same names, no prefix
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae).items()}, str(ae))
    got_ae = load_flow_vae(ae, None, "AutoencoderKL", flux / "vae", torch.float32)
    for got, want in ((got_clip, clip), (got_t5, t5), (got_vae, vae), (got_ae, vae)):
        mine = got.state_dict()
        for key, tensor in want.state_dict().items():
            torch.testing.assert_close(mine[key], tensor, msg=key)


@pytest.mark.parametrize("variant", LOADABLE)
def test_shipped_flow_configs_build_their_models(variant: str, tmp_path: Path) -> None:
    """Each shipped config folder is whole and consistent: every model it names builds at
    its real size (on the meta device: no memory), its tokenizers load, and the pipeline
    class has an img2img class."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    folder = ensure_config_dir(variant, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] in IMG2IMG_CLASS
    with init_empty_weights():
        for slot, entry in index.items():
            if slot.startswith(("_", "tokenizer", "scheduler")):
                continue
            library, name = entry
            if library == "diffusers":
                model_class = getattr(diffusers, name)
                model_class.from_config(model_class.load_config(folder / slot))
            else:
                model_class = getattr(transformers, name)
                model_class(model_class.config_class.from_pretrained(folder / slot))
    scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder / "scheduler")
    assert scheduler.config.num_train_timesteps == 1000
    for slot in ("tokenizer", "tokenizer_2"):
        if (folder / slot).is_dir():
            assert len(transformers.CLIPTokenizer.from_pretrained(folder / slot)) == 49408


def test_comfyui_qwen_vae_file_in_wan_names_loads(tmp_path: Path) -> None:
    """ComfyUI's qwen_image_vae.safetensors uses Wan's original names (ComfyUI runs it as
    its Wan VAE): converted with diffusers' Wan converter into the Qwen-Image VAE."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
    )  # fmt: skip
    vae.save_config(tmp_path / "vae")
    file = tmp_path / "qwen_image_vae.safetensors"
    save_file({k: v.contiguous() for k, v in to_wan(vae.state_dict()).items()}, str(file))
    assert "decoder.upsamples.4.shortcut.weight" in load_file(str(file))  # Wan's names
    loaded = load_flow_vae(file, None, "AutoencoderKLQwenImage", tmp_path / "vae", torch.float32)
    for key, tensor in vae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, msg=key)
