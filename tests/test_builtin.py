"""The built-in tiny model: deterministic, atomic, and loadable through the real diffusers path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from daemon.models.builtin import (
    BUILD_VERSION,
    BUILTIN_MODELS,
    BUILTIN_PREFIX,
    ensure_builtin,
    is_builtin,
    model_hash_file,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_builtin("tiny-sd", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def pipe(folder: Path) -> StableDiffusionImg2ImgPipeline:
    pipeline = StableDiffusionImg2ImgPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _image(width: int, height: int) -> Image.Image:
    """A smooth colour gradient: a real-looking input, no file needed."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _run(pipe: StableDiffusionImg2ImgPipeline, image: Image.Image, prompt: str) -> Image.Image:
    result = pipe(
        prompt,
        image=image,
        num_inference_steps=4,
        strength=0.5,
        generator=torch.Generator().manual_seed(1234),
    )
    out: Image.Image = result.images[0]
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_names() -> None:
    assert is_builtin(BUILTIN_PREFIX + "tiny-sd")
    assert not is_builtin("runwayml/stable-diffusion-v1-5")
    assert not is_builtin("/models/builtin:tiny-sd")
    assert "tiny-sd" in BUILTIN_MODELS
    assert "tiny-sdxl" in BUILTIN_MODELS


def test_import_is_light() -> None:
    code = "import sys, daemon.models.builtin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_folder_layout(folder: Path) -> None:
    assert folder.name == f"tiny-sd-v{BUILD_VERSION}"
    assert (folder / "model_index.json").is_file()
    assert model_hash_file(folder) == folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert model_hash_file(folder).is_file()
    for part in ("unet", "vae", "text_encoder"):
        assert list((folder / part).glob("*.safetensors")), part
    assert not list((folder / "unet").glob("*.bin"))


def test_generation_is_deterministic(folder: Path, tmp_path: Path) -> None:
    again = ensure_builtin("tiny-sd", tmp_path)
    first, second = _files(folder), _files(again)
    assert sorted(first) == sorted(second)
    assert any(name.endswith(".safetensors") for name in first)
    for name, data in first.items():
        assert data == second[name], f"{name} differs between two builds"


def test_existing_folder_is_reused(folder: Path) -> None:
    stamp = model_hash_file(folder).stat().st_mtime_ns
    assert ensure_builtin("tiny-sd", folder.parent) == folder
    assert model_hash_file(folder).stat().st_mtime_ns == stamp


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    ensure_builtin("tiny-sd", tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny-sd"):
        ensure_builtin("huge-sd", tmp_path)
    assert not list(tmp_path.iterdir())


def test_leftover_temp_folders_do_not_break_a_build(tmp_path: Path) -> None:
    name = f"tiny-sd-v{BUILD_VERSION}"
    # The temporary-name pattern of daemon.atomic: ".<name>.<pid>.tmp".
    stale = tmp_path / f".{name}.99998.tmp"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "config.json").write_text("{")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / f".{name}.99999.tmp"  # maybe another process's build in progress
    (fresh / "vae").mkdir(parents=True)
    (tmp_path / name).mkdir()  # an empty final folder (e.g. made by hand) is not a model

    built = ensure_builtin("tiny-sd", tmp_path)

    assert built == tmp_path / name
    assert (built / "model_index.json").is_file()
    assert not stale.exists()
    assert fresh.exists()
    leftovers = {p.name for p in tmp_path.iterdir()} - {name, fresh.name}
    assert not leftovers
    StableDiffusionImg2ImgPipeline.from_pretrained(built)


def test_tokenizer(pipe: StableDiffusionImg2ImgPipeline) -> None:
    tokenizer = pipe.tokenizer
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert len(tokenizer) <= pipe.text_encoder.config.vocab_size
    ids = tokenizer("a photo of a cat, masterpiece").input_ids
    assert len(ids) == 2 + 7  # common words are single tokens, like in the real CLIP vocabulary
    long = tokenizer(" ".join(["word"] * 100), padding="max_length", truncation=True)
    assert len(long.input_ids) == 77
    assert pipe.text_encoder.config.num_hidden_layers >= 3  # clip skip 2 has a layer to skip to


def test_img2img_64_is_deterministic(pipe: StableDiffusionImg2ImgPipeline) -> None:
    assert pipe.vae_scale_factor == 8
    first = _run(pipe, _image(64, 64), "a photo of a cat")
    second = _run(pipe, _image(64, 64), "a photo of a cat")
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_img2img_non_square(pipe: StableDiffusionImg2ImgPipeline) -> None:
    assert _run(pipe, _image(96, 64), "a landscape").size == (96, 64)


def test_long_prompt(pipe: StableDiffusionImg2ImgPipeline) -> None:
    prompt = " ".join(["beautiful", "mountain", "landscape", "zebra"] * 25)  # 100 words
    assert _run(pipe, _image(64, 64), prompt).size == (64, 64)


def test_auto_pipeline_loads(folder: Path) -> None:
    auto = AutoPipelineForImage2Image.from_pretrained(folder)
    assert isinstance(auto, StableDiffusionImg2ImgPipeline)


# --- tiny-sdxl ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_builtin("tiny-sdxl", tmp_path_factory.mktemp("cache-xl"))


@pytest.fixture(scope="module")
def xl_pipe(xl_folder: Path) -> StableDiffusionXLImg2ImgPipeline:
    pipeline = AutoPipelineForImage2Image.from_pretrained(xl_folder)
    assert isinstance(pipeline, StableDiffusionXLImg2ImgPipeline)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_sdxl_folder_layout(xl_folder: Path) -> None:
    assert xl_folder.name == f"tiny-sdxl-v{BUILD_VERSION}"
    assert model_hash_file(xl_folder).is_file()
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert list((xl_folder / part).glob("*.safetensors")), part
    for part in ("tokenizer", "tokenizer_2"):
        assert (xl_folder / part / "vocab.json").is_file(), part


def test_sdxl_generation_is_deterministic(xl_folder: Path, tmp_path: Path) -> None:
    first, second = _files(xl_folder), _files(ensure_builtin("tiny-sdxl", tmp_path))
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        assert data == second[name], f"{name} differs between two builds"


def test_sdxl_shape(xl_pipe: StableDiffusionXLImg2ImgPipeline) -> None:
    """What SDXL conditions on, in miniature: the widths must add up as in the real model."""
    unet = xl_pipe.unet.config
    te1, te2 = xl_pipe.text_encoder.config, xl_pipe.text_encoder_2.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    # Six size/crop numbers (original size, crop corner, target size) plus the pooled text.
    expected = 6 * unet.addition_time_embed_dim + te2.projection_dim
    assert unet.projection_class_embeddings_input_dim == expected
    assert te1.hidden_size != te2.hidden_size  # single-file loading tells them apart by width
    assert xl_pipe.vae_scale_factor == 8
    assert xl_pipe.tokenizer.pad_token_id == xl_pipe.tokenizer.eos_token_id
    assert xl_pipe.tokenizer_2.pad_token == "!"  # as SDXL's second tokenizer
    assert te1.num_hidden_layers >= 3 and te2.num_hidden_layers >= 3  # clip skip 2


def test_sdxl_img2img_and_inpaint(xl_pipe: StableDiffusionXLImg2ImgPipeline) -> None:
    first = _run(xl_pipe, _image(64, 64), "a photo of a cat")
    assert first.size == (64, 64)
    assert np.array_equal(
        np.asarray(first), np.asarray(_run(xl_pipe, _image(64, 64), "a photo of a cat"))
    )
    assert _run(xl_pipe, _image(96, 64), "a landscape").size == (96, 64)
    inpaint = AutoPipelineForInpainting.from_pipe(xl_pipe)
    assert isinstance(inpaint, StableDiffusionXLInpaintPipeline)
    assert inpaint.unet is xl_pipe.unet and inpaint.unet.config.in_channels == 4
    inpaint.set_progress_bar_config(disable=True)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = inpaint(
        "a photo of a cat",
        image=_image(64, 64),
        mask_image=mask,
        num_inference_steps=4,
        strength=0.5,
        generator=torch.Generator().manual_seed(1234),
    ).images[0]
    assert result.size == (64, 64)
