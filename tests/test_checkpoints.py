"""Single-file checkpoints: architecture detection, offline loading, shipped configs, VAE swap.

The tiny built-in models are written out the way A1111/civitai files are laid out (original
LDM key names: ``model.diffusion_model.…``, ``first_stage_model.…``, ``cond_stage_model.…`` /
``conditioner.embedders.…``) and loaded back through :func:`load_single_file`: the weights
must come back tensor for tensor, and the pictures pixel for pixel. The key mapping
(:mod:`tests.support.ldm`) is the inverse of diffusers' conversion.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import re
import struct
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import save_file

from daemon.errors import ConfigError
from daemon.models.builtin import ensure_builtin
from daemon.models.checkpoints import ARCHITECTURES, detect_architecture, read_header, read_layout
from daemon.models.single_file import (
    CLIP_VOCAB_SIZE,
    CONFIGS_DIR,
    clip_merges,
    clip_vocab,
    ensure_clip_tokenizer_files,
    ensure_config_dir,
    load_single_file,
    load_vae,
)
from tests.support.ldm import Tensors, vae_to_ldm, write_ldm_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sd_folder(cache: Path) -> Path:
    return ensure_builtin("tiny-sd", cache / "builtin")


@pytest.fixture(scope="module")
def sdxl_folder(cache: Path) -> Path:
    return ensure_builtin("tiny-sdxl", cache / "builtin")


@pytest.fixture(scope="module")
def sd_pipe(sd_folder: Path) -> Any:
    return _quiet(StableDiffusionImg2ImgPipeline.from_pretrained(sd_folder))


@pytest.fixture(scope="module")
def sdxl_pipe(sdxl_folder: Path) -> Any:
    return _quiet(StableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl_folder))


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_same_module(got: Any, want: Any, name: str) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert sorted(got_state) == sorted(want_state), name
    for key, tensor in want_state.items():
        assert torch.equal(got_state[key], tensor), f"{name}: {key} differs"


def _assert_same_weights(loaded: Any, expected: Any, parts: tuple[str, ...]) -> None:
    for part in parts:
        _assert_same_module(getattr(loaded, part), getattr(expected, part), part)


def _image(size: int = 64) -> Image.Image:
    x = np.linspace(0, 255, size, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, size, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return mask


def _pixels(pipe: Any, **extra: Any) -> np.ndarray:
    result = pipe(
        "a photo of a cat",
        image=_image(),
        num_inference_steps=2,
        strength=1.0,  # both steps run
        generator=torch.Generator().manual_seed(1234),
        **extra,
    )
    return np.asarray(result.images[0])


# ---------------------------------------------------------------------------------------------
# Loading single files (tiny models, real loading path)


def test_sd1_file_loads_back_identical(sd_pipe: Any, sd_folder: Path, tmp_path: Path) -> None:
    file = write_ldm_checkpoint(sd_pipe, tmp_path / "tiny.safetensors")
    assert detect_architecture(file) == "sd1"
    loaded = _quiet(load_single_file(file, dtype=torch.float32, config_dir=sd_folder))
    assert isinstance(loaded, StableDiffusionImg2ImgPipeline)
    _assert_same_weights(loaded, sd_pipe, ("unet", "vae", "text_encoder"))
    assert np.array_equal(_pixels(loaded), _pixels(sd_pipe))


def test_sd2_layout_loads_back_identical(sd_pipe: Any, sd_folder: Path, tmp_path: Path) -> None:
    """The OpenCLIP text-encoder layout of SD 2.x files (fused q/k/v), on the tiny model."""
    file = write_ldm_checkpoint(sd_pipe, tmp_path / "tiny2.safetensors", open_clip=True)
    assert detect_architecture(file) == "sd2"
    loaded = _quiet(load_single_file(file, dtype=torch.float32, config_dir=sd_folder))
    _assert_same_weights(loaded, sd_pipe, ("unet", "vae", "text_encoder"))
    assert np.array_equal(_pixels(loaded), _pixels(sd_pipe))


def test_sdxl_file_loads_back_identical(sdxl_pipe: Any, sdxl_folder: Path, tmp_path: Path) -> None:
    file = write_ldm_checkpoint(sdxl_pipe, tmp_path / "tinyxl.safetensors")
    assert detect_architecture(file) == "sdxl"
    loaded = _quiet(load_single_file(file, dtype=torch.float32, config_dir=sdxl_folder))
    assert isinstance(loaded, StableDiffusionXLImg2ImgPipeline)
    _assert_same_weights(loaded, sdxl_pipe, ("unet", "vae", "text_encoder", "text_encoder_2"))
    assert np.array_equal(_pixels(loaded), _pixels(sdxl_pipe))
    inpaint = _quiet(AutoPipelineForInpainting.from_pipe(loaded))
    assert isinstance(inpaint, StableDiffusionXLInpaintPipeline)
    assert inpaint.unet is loaded.unet  # shared, not reloaded
    assert _pixels(inpaint, mask_image=_mask()).shape == (64, 64, 3)


def test_shipped_configs_are_used_offline(sd_pipe: Any, tmp_path: Path, cache: Path) -> None:
    """Without `config_dir`, the shipped SD 1.5 configs are used, from local files only.

    The tiny weights do not fit SD 1.5's real sizes, so loading stops at the first weight —
    which shows the real config was read locally (no hub access, which would fail offline).
    """
    file = write_ldm_checkpoint(sd_pipe, tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match=r"expected shape torch\.Size\(\[77, 768\]\)"):
        load_single_file(file, dtype=torch.float32, cache_dir=cache)
    assert list((cache / "single-file-configs").glob("sd1-*/tokenizer/vocab.json"))


def test_tiny_sdxl_img2img_and_inpaint_are_deterministic(sdxl_folder: Path) -> None:
    pipe = _quiet(AutoPipelineForImage2Image.from_pretrained(sdxl_folder))
    assert isinstance(pipe, StableDiffusionXLImg2ImgPipeline)
    first, second = _pixels(pipe), _pixels(pipe)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, second)
    inpaint = _quiet(AutoPipelineForInpainting.from_pipe(pipe))
    assert isinstance(inpaint, StableDiffusionXLInpaintPipeline)
    masked = _pixels(inpaint, mask_image=_mask())
    assert np.array_equal(masked, _pixels(inpaint, mask_image=_mask()))
    assert not np.array_equal(masked, first)


def test_v_prediction_marker_sets_the_scheduler(
    sd_pipe: Any, sd_folder: Path, tmp_path: Path
) -> None:
    file = write_ldm_checkpoint(sd_pipe, tmp_path / "vpred.safetensors")
    with_marker = tmp_path / "vpred-marked.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(file))
    state["v_pred"] = torch.zeros(0)
    state["ztsnr"] = torch.zeros(0)
    save_file(state, str(with_marker))
    pipe = load_single_file(with_marker, dtype=torch.float32, config_dir=sd_folder)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr is True
    plain = load_single_file(file, dtype=torch.float32, config_dir=sd_folder)
    assert plain.scheduler.config.prediction_type == "epsilon"


# ---------------------------------------------------------------------------------------------
# VAE override


@pytest.fixture(scope="module")
def other_vae(sd_pipe: Any) -> Any:
    """A VAE that differs from the model's own in every weight."""
    vae = AutoencoderKL.from_config(sd_pipe.vae.config)
    vae.load_state_dict({k: v + 0.01 for k, v in sd_pipe.vae.state_dict().items()})
    return vae


def test_vae_override_from_a_single_file(
    sd_pipe: Any, sd_folder: Path, other_vae: Any, tmp_path: Path
) -> None:
    vae_file = tmp_path / "other.vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae_to_ldm(other_vae).items()}, str(vae_file))
    file = write_ldm_checkpoint(sd_pipe, tmp_path / "tiny.safetensors")
    pipe = load_single_file(file, dtype=torch.float32, config_dir=sd_folder, vae=vae_file)
    _assert_same_module(pipe.vae, other_vae, "vae")
    _assert_same_weights(pipe, sd_pipe, ("unet", "text_encoder"))
    # Swapped into a running pipeline: the family settings follow the pipeline's VAE.
    swapped = load_vae(vae_file, like=sd_pipe.vae)
    assert swapped.config.scaling_factor == sd_pipe.vae.config.scaling_factor
    _assert_same_module(swapped, other_vae, "vae")


# ---------------------------------------------------------------------------------------------
# Pickled checkpoints (read only when the configuration allows pickles)


class ModelCheckpoint:
    """Pickled under Lightning's name, as the callback the original SD .ckpt files carry."""

    def __init__(self) -> None:
        self.monitor = None
        self.best_model_score = torch.tensor(0.5)


def save_training_checkpoint(state: Tensors, path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`state` saved as a Lightning training run saves it: wrapped, with leftovers beside it."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)
    module.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    monkeypatch.setattr(ModelCheckpoint, "__module__", name)
    for prefix in ("pytorch_lightning", "pytorch_lightning.callbacks", name):
        monkeypatch.setitem(sys.modules, prefix, module)
    leftovers = {"callbacks": {"ModelCheckpoint{}": ModelCheckpoint()}, "epoch": np.int64(7)}
    torch.save({"state_dict": state, "global_step": np.float64(470000.0), **leftovers}, path)
    return path


def test_pickled_checkpoint_loads_back_identical(
    sd_pipe: Any, sd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old SD 1.x style .ckpt, Lightning callback and numpy scalars included, loads
    through the tensors-only unpickler to the same weights and pixels as its safetensors twin."""
    twin = write_ldm_checkpoint(sd_pipe, tmp_path / "tiny.safetensors")
    from safetensors.torch import load_file

    ckpt = save_training_checkpoint(load_file(twin), tmp_path / "tiny.ckpt", monkeypatch)
    monkeypatch.delitem(sys.modules, "pytorch_lightning.callbacks.model_checkpoint")  # as here
    assert {k: v["shape"] for k, v in read_layout(ckpt).items()} == {
        k: v["shape"] for k, v in read_header(twin).items() if k != "__metadata__"
    }
    assert detect_architecture(ckpt) == "sd1"
    loaded = _quiet(load_single_file(ckpt, dtype=torch.float32, config_dir=sd_folder))
    _assert_same_weights(loaded, sd_pipe, ("unet", "vae", "text_encoder"))
    assert np.array_equal(_pixels(loaded), _pixels(sd_pipe))


class _Payload:
    """A pickle that would create a folder when unpickled by the full unpickler."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.target),))


def test_pickle_that_would_run_code_is_refused_even_when_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "x": _Payload(marker)}, file
    )
    with pytest.raises(ConfigError, match=r"needs more than tensors.*mkdir"):
        detect_architecture(file)
    with pytest.raises(ConfigError, match="needs more than tensors"):
        load_vae(file)
    assert not marker.exists()


def test_pickled_vae_loads(other_vae: Any, tmp_path: Path) -> None:
    vae_file = tmp_path / "vae-ft-mse.ckpt"
    torch.save({"state_dict": vae_to_ldm(other_vae)}, vae_file)
    _assert_same_module(load_vae(vae_file, like=other_vae), other_vae, "vae")


def test_vae_override_from_a_diffusers_folder(other_vae: Any, tmp_path: Path) -> None:
    other_vae.save_pretrained(tmp_path / "myvae")
    _assert_same_module(load_vae(tmp_path / "myvae"), other_vae, "vae")
    other_vae.save_pretrained(tmp_path / "model" / "vae")  # a whole model folder
    _assert_same_module(load_vae(tmp_path / "model"), other_vae, "vae")


def test_vae_refuses_what_is_not_a_vae(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_vae(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_vae(tmp_path / "empty")
    pickled = tmp_path / "vae.pt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="not a readable torch checkpoint"):
        load_vae(pickled)
    not_vae = _header_file(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": [1, 1]})
    with pytest.raises(ConfigError, match="no VAE weights"):
        load_vae(not_vae)


# ---------------------------------------------------------------------------------------------
# Architecture detection from headers alone


def _header_file(
    path: Path, shapes: dict[str, list[int]], metadata: dict[str, str] | None = None
) -> Path:
    """A real safetensors file with only the given key names (tiny tensors of those shapes)."""
    tensors = {key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


_UNET_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": [1, 4, 1, 1]}
_ATTN2 = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SD1_KEYS = {
    **_UNET_KEYS,
    _ATTN2: [1, 768],
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [1, 768],
}
SD2_KEYS = {
    **_UNET_KEYS,
    _ATTN2: [1, 1024],
    "cond_stage_model.model.token_embedding.weight": [1, 1024],
}
SDXL_KEYS = {
    **_UNET_KEYS,
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [1, 2048],
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": [
        1,
        768,
    ],
    "conditioner.embedders.1.model.positional_embedding": [1, 1280],
}


@pytest.mark.parametrize(
    ("keys", "expected"), [(SD1_KEYS, "sd1"), (SD2_KEYS, "sd2"), (SDXL_KEYS, "sdxl")]
)
def test_detect_architecture(keys: dict[str, list[int]], expected: str, tmp_path: Path) -> None:
    assert detect_architecture(_header_file(tmp_path / "m.safetensors", keys)) == expected


def test_header_is_read_without_the_tensors(tmp_path: Path) -> None:
    file = _header_file(tmp_path / "m.safetensors", SD1_KEYS)
    with file.open("r+b") as handle:  # destroy every tensor byte: detection must not care
        (size,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + size)
        handle.write(b"\xff" * (file.stat().st_size - 8 - size))
    assert detect_architecture(file) == "sd1"
    assert read_header(file)[_ATTN2]["shape"] == [1, 768]


def test_sd2_v_prediction_markers(tmp_path: Path) -> None:
    assert detect_architecture(_header_file(tmp_path / "a.safetensors", SD2_KEYS)) == "sd2"
    marked = _header_file(tmp_path / "b.safetensors", {**SD2_KEYS, "v_pred": [0]})
    assert detect_architecture(marked) == "sd2-v"
    spec = _header_file(tmp_path / "c.safetensors", SD2_KEYS, {"modelspec.prediction_type": "v"})
    assert detect_architecture(spec) == "sd2-v"
    sidecar = _header_file(tmp_path / "d.safetensors", SD2_KEYS)
    (tmp_path / "d.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    assert detect_architecture(sidecar) == "sd2-v"
    (tmp_path / "d.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert detect_architecture(sidecar) == "sd2"
    (tmp_path / "d.yaml").write_text("model: ldm\n")
    assert detect_architecture(sidecar) == "sd2"
    (tmp_path / "d.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"d\.yaml"):
        detect_architecture(sidecar)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"some.weight": [1]}, "not a Stable Diffusion checkpoint.*first keys: some.weight"),
        ({"lora_unet_down.lora_down.weight": [1, 1]}, "LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": [1, 1]}, "VAE"),
        (_UNET_KEYS, "no text encoder.*unknown layout"),
        ({**SD1_KEYS, _ATTN2: [1, 1024]}, "attends to 1024-wide"),
        ({**SD1_KEYS, "model.diffusion_model.input_blocks.0.0.weight": [1, 9, 1, 1]}, "9 input"),
        (
            {**_UNET_KEYS, "conditioner.embedders.0.model.text_projection": [1, 1]},
            "SDXL refiner",
        ),
    ],
)
def test_unknown_layouts_are_config_errors(
    keys: dict[str, list[int]], message: str, tmp_path: Path
) -> None:
    file = _header_file(tmp_path / "odd.safetensors", keys)
    with pytest.raises(ConfigError, match=message) as caught:
        detect_architecture(file)
    assert str(file) in str(caught.value)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    for name, data in (("short", b"abc"), ("huge", b"\xff" * 64), ("text", b"\x05" + b"\0" * 7)):
        file = tmp_path / f"{name}.safetensors"
        file.write_bytes(data + b"{bad}")
        with pytest.raises(ConfigError, match=re.escape(f"{file}: not a .safetensors")):
            detect_architecture(file)


# ---------------------------------------------------------------------------------------------
# Shipped configs and the generated vocabulary


def test_clip_vocabulary(cache: Path) -> None:
    merges = clip_merges()
    vocab = clip_vocab(merges)
    assert len(vocab) == CLIP_VOCAB_SIZE == 49408
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407
    folder = ensure_clip_tokenizer_files(cache)
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == vocab
    assert ensure_clip_tokenizer_files(cache) == folder  # made once


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shipped_configs(arch: str, cache: Path) -> None:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = ensure_config_dir(arch, cache)  # type: ignore[arg-type]
    assert ensure_config_dir(arch, cache) == folder  # type: ignore[arg-type]
    index = json.loads((folder / "model_index.json").read_text())
    unet_config = UNet2DConditionModel.load_config(folder / "unet")
    vae_config = AutoencoderKL.load_config(folder / "vae")
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == index["scheduler"][1]
    with init_empty_weights():  # the real sizes, without memory: the configs are consistent
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
    encoders = [n for n in ("text_encoder", "text_encoder_2") if n in index]
    texts = [CLIPTextConfig.from_pretrained(folder / name) for name in encoders]
    assert unet_config["cross_attention_dim"] == sum(t.hidden_size for t in texts)
    millions = round(sum(p.numel() for p in unet.parameters()) / 1e6)
    assert millions == {"sd1": 860, "sd2": 866, "sd2-v": 866, "sdxl": 2567}[arch]
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6) == 84
    if arch == "sdxl":
        time_ids = 6 * unet_config["addition_time_embed_dim"]
        pooled = texts[1].projection_dim
        assert unet_config["projection_class_embeddings_input_dim"] == time_ids + pooled
    pads = {"sd1": ["<|endoftext|>"], "sdxl": ["<|endoftext|>", "!"]}.get(arch, ["!"])
    for name, pad in zip(sorted(n for n in index if n.startswith("tokenizer")), pads, strict=True):
        tokenizer = CLIPTokenizer.from_pretrained(folder / name)
        assert len(tokenizer) == CLIP_VOCAB_SIZE
        assert tokenizer.pad_token == pad
        assert tokenizer.model_max_length == 77
        # The ids of the real SD tokenizers for this prompt.
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    prediction = scheduler.get("prediction_type", "epsilon")
    assert prediction == ("v_prediction" if arch == "sd2-v" else "epsilon")


def test_shipped_configs_are_small() -> None:
    files = [p for p in CONFIGS_DIR.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".json" for p in files)
    assert sum(p.stat().st_size for p in files) < 100_000


def test_shipped_tokenizers_load_without_library_noise(tmp_path: Path) -> None:
    """A real checkpoint's tokenizers come from the shipped configs, loaded as diffusers'
    ``from_single_file`` loads them (``from_pretrained`` on the config folder). Legacy
    ``"__type": "AddedToken"`` entries made the tokenizers library print "Ignored unknown
    kwarg option __type" on the process's stderr, outside the log; the tiny built-ins carry
    their own tokenizer files, so only this path shows it. A subprocess sees the raw stderr."""
    code = """
import sys
from pathlib import Path
from transformers import CLIPTokenizer
from daemon.models.single_file import ensure_config_dir
for arch in ("sd1", "sd2", "sd2-v", "sdxl"):
    folder = ensure_config_dir(arch, Path(sys.argv[1]))
    for sub in sorted(p.name for p in folder.glob("tokenizer*")):
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder=sub, local_files_only=True)
        ids = tokenizer("a photo of a cat")["input_ids"]
        assert ids[0] == 49406 and ids[-1] == 49407, ids
        print(arch, sub, tokenizer.eos_token, tokenizer.pad_token)
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )  # fmt: skip
    loaded = done.stdout.splitlines()
    assert loaded == [
        "sd1 tokenizer <|endoftext|> <|endoftext|>",
        "sd2 tokenizer <|endoftext|> !",
        "sd2-v tokenizer <|endoftext|> !",
        "sdxl tokenizer <|endoftext|> <|endoftext|>",
        "sdxl tokenizer_2 <|endoftext|> !",
    ]
    assert "Ignored unknown kwarg" not in done.stderr
    assert done.stderr.strip() == ""
