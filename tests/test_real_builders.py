"""The builders behind ``make test-real``, checked fast on the tiny models' configs: every
layout loads back through the daemon's own loaders with exactly the weights written, and the
streaming safetensors writer writes what safetensors itself reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from daemon.models.builtin import ensure_builtin
from daemon.models.folder_pipeline import load_folder_pipeline
from daemon.models.single_file import load_vae
from tests.support import real_weights
from tests.support.ldm import vae_to_ldm
from tests.support.safetensors_stream import save_streaming

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _configs(name: str, state_dir: Path, target: Path) -> Path:
    """A tiny built-in model's folder without its weights: configs, scheduler, tokenizers."""
    source = ensure_builtin(name, state_dir / "builtin")
    return Path(shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors")))


def _same(loaded: torch.nn.Module, built: torch.nn.Module) -> None:
    ours, theirs = loaded.state_dict(), built.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[key].half(), theirs[key]) for key in theirs)


def test_the_diffusers_folder_is_fp16_variant_files_that_load_exactly(
    state_dir: Path, tmp_path: Path
) -> None:
    configs = _configs("tiny-sdxl", state_dir, tmp_path / "configs")
    folder = real_weights.build_diffusers_folder(configs, tmp_path / "model")
    weights = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    assert weights == [
        "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]  # fmt: skip
    with safe_open(folder / "text_encoder" / "model.fp16.safetensors", "pt") as file:
        names = file.keys()
    assert all(name.startswith("text_model.") for name in names)  # as the hub's files
    pipe = load_folder_pipeline(folder, dtype=torch.float32)
    built = real_weights.random_modules(configs)  # same seed, same weights
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _same(getattr(pipe, part), getattr(built, part))


def test_the_vae_file_is_the_original_layout_in_fp32_and_loads(
    state_dir: Path, tmp_path: Path
) -> None:
    configs = _configs("tiny-sd", state_dir, tmp_path / "configs")
    file = real_weights.build_vae_file(configs, tmp_path / "vae.safetensors")
    tensors = load_file(file)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert any(k.startswith("decoder.up.") for k in tensors) and "quant_conv.weight" in tensors
    like = load_folder_pipeline(ensure_builtin("tiny-sd", state_dir / "builtin")).vae
    vae = load_vae(file, like=like)
    again = vae_to_ldm(vae)  # back to the file's names: the same tensors, nothing left out
    assert sorted(again) == sorted(tensors)
    assert all(torch.equal(again[key], tensors[key]) for key in tensors)


def test_the_lora_is_kohya_layout_and_every_module_of_it_loads(
    state_dir: Path, tmp_path: Path
) -> None:
    configs = _configs("tiny-sd", state_dir, tmp_path / "configs")
    file = real_weights.build_lora_file(configs, tmp_path / "lora.safetensors", rank=4)
    tensors = load_file(file)
    prefixes = {key.split("_")[1] for key in tensors}
    assert prefixes == {"unet", "te"}
    assert {key.rsplit(".", 2)[-2] for key in tensors if key.endswith(".weight")} == {
        "lora_down", "lora_up",
    }  # fmt: skip
    pipe = load_folder_pipeline(ensure_builtin("tiny-sd", state_dir / "builtin"))
    pipe.load_lora_weights(str(file), adapter_name="real")
    assert pipe.get_list_adapters() == {"unet": ["real"], "text_encoder": ["real"]}
    # Every module the file names got its LoRA layer: no key was left unread.
    layers = [
        module
        for part in (pipe.unet, pipe.text_encoder)
        for module in part.modules()
        if "real" in getattr(module, "lora_A", {})
    ]
    assert len(layers) == sum(key.endswith(".lora_down.weight") for key in tensors)


def test_the_v_sidecar_declares_v_prediction(tmp_path: Path) -> None:
    from daemon.models.checkpoints import says_v_prediction

    checkpoint = tmp_path / "model.safetensors"
    assert real_weights.write_v_sidecar(checkpoint) == tmp_path / "model.yaml"
    assert says_v_prediction(checkpoint, {})


def test_the_streaming_writer_writes_what_safetensors_reads(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "b.view": base[:, 1],  # not contiguous, and sharing memory with "a"
        "a": base,
        "half": torch.randn(5, dtype=torch.float16),
        "bf16": torch.randn(2, 2).bfloat16(),
        "ids": torch.arange(7)[None],
        "empty": torch.zeros(0),
        "scalar": torch.tensor(3.5),
    }
    file = save_streaming(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    loaded = load_file(file)
    assert sorted(loaded) == sorted(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    with safe_open(file, "pt") as opened:
        assert opened.metadata() == {"format": "pt"}
        assert list(opened.keys()) == sorted(tensors)
