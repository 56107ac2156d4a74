"""A model folder loads as the img2img pipeline AutoPipeline would pick, without importing
AutoPipeline's tables of every pipeline diffusers has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.models.builtin import ensure_builtin
from daemon.models.folder_pipeline import img2img_class_name, load_folder_pipeline

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_the_same_pipeline_as_auto_pipeline(tmp_path_factory, name):
    from diffusers import AutoPipelineForImage2Image

    folder = ensure_builtin(name, tmp_path_factory.mktemp("cache"))
    direct = load_folder_pipeline(folder)
    auto = AutoPipelineForImage2Image.from_pretrained(folder, local_files_only=True)
    assert type(direct) is type(auto)
    assert dict(direct.config) == dict(auto.config)
    for part in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(direct, part).state_dict(), getattr(auto, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(ours[key].equal(theirs[key]) for key in ours), part


def test_a_text_to_image_folder_maps_to_its_img2img_class(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline"})
    )
    assert img2img_class_name(tmp_path) == "StableDiffusionImg2ImgPipeline"


@pytest.mark.parametrize(
    "index",
    [None, "not json", json.dumps([1]), json.dumps({"_class_name": "KandinskyV22Pipeline"})],
)
def test_other_folders_are_left_to_auto_pipeline(tmp_path, index):
    if index is not None:
        (tmp_path / "model_index.json").write_text(index)
    assert img2img_class_name(tmp_path) is None
    assert img2img_class_name("some-org/some-repo") is None


def test_loading_does_not_import_auto_pipeline(tmp_path):
    folder = ensure_builtin("tiny-sd", tmp_path / "cache")
    script = (
        "import sys\n"
        "from daemon.models.folder_pipeline import load_folder_pipeline\n"
        f"load_folder_pipeline({str(folder)!r})\n"
        "print('diffusers.pipelines.auto_pipeline' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("plain_vae", [False, True], ids=["fp16 only", "mixed"])
def test_a_folder_of_fp16_variant_files_loads(tmp_path, plain_vae):
    """As a folder downloaded with ``--include "*.fp16.safetensors"``: every component (or
    all but one) has only ``<name>.fp16.safetensors``; the weights load, as the dtype asked."""
    import torch

    pipe = load_folder_pipeline(ensure_builtin("tiny-sd", tmp_path / "cache"))
    folder = tmp_path / "downloaded"
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    if plain_vae:
        for file in (folder / "vae").glob("*.fp16.safetensors"):
            file.rename(file.with_name(file.name.replace(".fp16", "")))
    assert not list(folder.glob("unet/diffusion_pytorch_model.safetensors"))
    loaded = load_folder_pipeline(folder, dtype=torch.float32)
    assert loaded.unet.dtype == torch.float32
    expected = pipe.unet.state_dict()["conv_in.weight"].float()
    assert loaded.unet.state_dict()["conv_in.weight"].equal(expected)
