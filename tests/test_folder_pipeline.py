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
    "index", [None, "not json", json.dumps([1]), json.dumps({"_class_name": "FluxPipeline"})]
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
