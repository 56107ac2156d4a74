"""The built-in tiny models of the flow-matching families (Flux.1, SD 3.5, Qwen-Image and
the edit models): deterministic, cached, and loadable through the real folder path as the
img2img, inpaint and edit pipelines the daemon runs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from daemon.libraries import quiet_libraries
from daemon.models.builtin import BUILTIN_MODELS, ensure_builtin, model_hash_file
from daemon.models.folder_pipeline import edit_class_name, edit_pipeline, load_folder_pipeline
from daemon.models.qwen_processor import image_only_processor_class, processor_from_folder
from daemon.models.resolve import Search, resolve_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# builtin -> (img2img class, inpaint class): the pipelines of its family the daemon runs
FAMILIES = {
    "tiny-flux": ("FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    "tiny-flux-kontext": ("FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    "tiny-sd3": ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    "tiny-qwen-image": ("QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
    "tiny-qwen-image-edit": ("QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
}
# (Flux.2 runs through the daemon in test_flux2.py)
BUILT = [*FAMILIES, "tiny-flux2", "tiny-flux2-dev"]
EDIT_MODELS = {"tiny-flux-kontext": "FluxKontextPipeline",
               "tiny-qwen-image-edit": "QwenImageEditPlusPipeline"}  # fmt: skip
SIZE = 64


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def cache(state: Path) -> Path:
    """Where the daemon keeps built-in models: ``<state folder>/builtin``."""
    return state / "builtin"


@pytest.fixture(scope="module")
def pipes(cache: Path) -> dict[str, Any]:
    """Each builtin's img2img pipeline, loaded once for the module (as the daemon keeps it)."""
    loaded = {}
    for name in FAMILIES:
        pipe = load_folder_pipeline(ensure_builtin(name, cache))
        pipe.set_progress_bar_config(disable=True)
        loaded[name] = pipe
    return loaded


def _image() -> Image.Image:
    """A smooth colour gradient: a real-looking input, no file needed."""
    x = np.linspace(0, 255, SIZE, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, SIZE, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixels(result: Any) -> np.ndarray:
    image: Image.Image = result.images[0]
    assert image.size == (SIZE, SIZE)
    return np.asarray(image)


def _img2img(pipe: Any, seed: int) -> np.ndarray:
    return _pixels(
        pipe(
            "a photo of a cat",
            image=_image(),
            width=SIZE,  # the flow pipelines make 1024 px unless told
            height=SIZE,
            strength=0.5,
            num_inference_steps=2,
            generator=_seed(seed),
        )
    )


def test_every_one_is_listed_with_a_description() -> None:
    for name in BUILT:
        assert BUILTIN_MODELS[name].startswith("tiny random ")


@pytest.mark.parametrize("name", BUILT)
def test_a_build_is_the_same_bytes_every_time(tmp_path: Path, name: str) -> None:
    first = ensure_builtin(name, tmp_path / "one")
    second = ensure_builtin(name, tmp_path / "two")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert Path("transformer/diffusion_pytorch_model.safetensors") in files
    for file in files:
        assert (first / file).read_bytes() == (second / file).read_bytes(), file
    size = sum((first / file).stat().st_size for file in files)
    assert size < 2_000_000, f"{name} is {size} bytes: a tiny model should stay small"


def test_a_built_model_is_reused(cache: Path) -> None:
    folder = ensure_builtin("tiny-flux", cache)
    weights = model_hash_file(folder)
    stamp = weights.stat().st_mtime_ns
    assert ensure_builtin("tiny-flux", cache) == folder
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", BUILT)
def test_a_profile_names_it_and_its_hash_is_the_transformer_file(
    state: Path, cache: Path, name: str
) -> None:
    source = resolve_model(f"builtin:{name}", Search(None, state))
    folder = ensure_builtin(name, cache)
    assert (source.kind, Path(source.location)) == ("folder", folder)
    assert source.hash_file == folder / "transformer/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("name", FAMILIES)
def test_img2img_at_64_px_is_deterministic(pipes: dict[str, Any], name: str) -> None:
    pipe = pipes[name]
    assert type(pipe).__name__ == FAMILIES[name][0]
    first = _img2img(pipe, seed=1)
    assert np.array_equal(first, _img2img(pipe, seed=1))
    assert not np.array_equal(first, _img2img(pipe, seed=2))


@pytest.mark.parametrize("name", FAMILIES)
def test_inpaint_shares_the_loaded_modules(pipes: dict[str, Any], name: str) -> None:
    pipe = pipes[name]
    inpaint = getattr(diffusers, FAMILIES[name][1]).from_pipe(pipe)
    assert inpaint.transformer is pipe.transformer
    pixels = _pixels(
        inpaint(
            "a photo of a cat",
            image=_image(),
            mask_image=_mask(),
            width=SIZE,
            height=SIZE,
            strength=0.5,
            num_inference_steps=2,
            generator=_seed(1),
        )
    )
    assert pixels.std() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_only_the_edit_models_have_an_edit_pipeline(cache: Path, name: str) -> None:
    folder = ensure_builtin(name, cache)
    assert edit_class_name(folder) == EDIT_MODELS.get(name)
    if name not in EDIT_MODELS:
        with pytest.raises(ValueError, match="not an instruction-edit model"):
            edit_pipeline(None, folder)


@pytest.mark.parametrize("name", EDIT_MODELS)
def test_an_edit_at_64_px(cache: Path, pipes: dict[str, Any], name: str) -> None:
    edit = edit_pipeline(pipes[name], ensure_builtin(name, cache))
    assert type(edit).__name__ == EDIT_MODELS[name]
    assert edit.transformer is pipes[name].transformer
    size: dict[str, Any] = {"width": SIZE, "height": SIZE}
    if name == "tiny-flux-kontext":  # else Kontext snaps to its ~1 MP sizes
        size |= {"_auto_resize": False, "max_area": SIZE * SIZE}
    # One run: Qwen-Image-Edit encodes the input at ~1 MP whatever the size asked (3 s here).
    run = {"image": _image(), "prompt": "make it blue", "num_inference_steps": 2, **size}
    pixels = _pixels(edit(**run, generator=_seed(1)))
    assert pixels.std() > 0


def test_the_first_qwen_edit_model_runs_as_its_own_pipeline(
    pipes: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    """Qwen-Image-Edit (before 2509) names QwenImageEditPipeline: one image, no list."""
    copy = shutil.copytree(ensure_builtin("tiny-qwen-image-edit", cache), tmp_path / "edit")
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "QwenImageEditPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    edit = edit_pipeline(pipes["tiny-qwen-image-edit"], copy)
    assert type(edit).__name__ == "QwenImageEditPipeline"
    run = {"image": _image(), "prompt": "make it blue", "width": SIZE, "height": SIZE}
    assert _pixels(edit(**run, num_inference_steps=2, generator=_seed(1))).std() > 0


def test_the_qwen_edit_processor_comes_from_the_hub_layout_or_the_tokenizer(
    cache: Path, tmp_path: Path
) -> None:
    folder = ensure_builtin("tiny-qwen-image-edit", cache)
    assert (folder / "processor/preprocessor_config.json").is_file()
    from_hub_layout = processor_from_folder(folder)
    assert isinstance(from_hub_layout, image_only_processor_class())
    copy = shutil.copytree(folder, tmp_path / "without-processor")
    shutil.rmtree(copy / "processor")
    from_tokenizer = processor_from_folder(copy)
    inputs = [
        p(text=["<|vision_start|><|image_pad|><|vision_end|>a cat"], images=[_image()])
        for p in (from_hub_layout, from_tokenizer)
    ]
    assert inputs[0]["input_ids"] == inputs[1]["input_ids"]
    assert inputs[0]["input_ids"][0].count(from_tokenizer.image_token_id) > 1  # the patches
    assert np.array_equal(inputs[0]["pixel_values"], inputs[1]["pixel_values"])
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(FileNotFoundError, match="download the model again"):
        processor_from_folder(copy)


def test_the_qwen_edit_processor_reads_the_hub_settings(cache: Path, tmp_path: Path) -> None:
    """The hub's preprocessor_config.json names the torchvision class and pixel bounds."""
    copy = shutil.copytree(ensure_builtin("tiny-qwen-image-edit", cache), tmp_path / "hub")
    settings = copy / "processor/preprocessor_config.json"
    hub = {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136,
           "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
           "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip
    settings.write_text(json.dumps(hub))
    size = processor_from_folder(copy).image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 12845056)


def test_loading_an_edit_model_as_img2img_ignores_its_processor(cache: Path) -> None:
    """The processor cannot be loaded without torchvision: the img2img load must not try."""
    pipe = load_folder_pipeline(ensure_builtin("tiny-qwen-image-edit", cache))
    assert "processor" not in pipe.components


def test_the_empty_float32_advice_of_from_pipe_is_not_logged() -> None:
    quiet_libraries()
    logger = logging.getLogger("diffusers.models.modeling_utils")

    def record(message: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)

    empty = "There are modules in FluxTransformer2DModel that should be kept in float32: []."
    assert not logger.filter(record(empty))
    assert logger.filter(record("There are modules in X that should be kept in float32: ['a']"))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["diffusion_pytorch_model.fp16.safetensors"], 0),
        (
            [
                "diffusion_pytorch_model-00002-of-00002.safetensors",
                "diffusion_pytorch_model-00001-of-00002.safetensors",
                "diffusion_pytorch_model.safetensors.index.json",
            ],
            1,
        ),
    ],
)
def test_the_hash_of_a_variant_or_sharded_transformer(
    tmp_path: Path, files: list[str], expected: int
) -> None:
    """Hub folders of these families are often sharded (FLUX.1-dev: 3 shards) or fp16 only."""
    (tmp_path / "transformer").mkdir()
    for name in files:
        (tmp_path / "transformer" / name).write_bytes(b"")
    assert model_hash_file(tmp_path) == tmp_path / "transformer" / files[expected]
    (tmp_path / "unet").mkdir()  # a UNet's file comes first (none here: still the transformer)
    assert model_hash_file(tmp_path) == tmp_path / "transformer" / files[expected]
