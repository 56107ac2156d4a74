"""The bench's trained tiny model (bench/trained_tiny.py): the folder it writes is an ordinary
diffusers folder that the real daemon loads offline and paints with, and it is built once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.trained_tiny import trained_tiny_sd
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MINUTES = 0.1
"""Six seconds of training: enough to run every step of the recipe, not to learn much."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_tiny_sd(tmp_path_factory.mktemp("trained") / "model", minutes=MINUTES)


def test_the_daemon_paints_with_the_trained_folder(
    trained: Path, workspace: Workspace, models: ModelCache
) -> None:
    workspace.profile("trained", model=str(trained), width=64, height=64, steps=4,
                      denoising_strength=0.5)  # fmt: skip
    workspace.drop(DATA / "astronaut.png", "trained/astronaut.png")
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    with Image.open(workspace.outbox / "trained/astronaut.png") as image:
        assert image.size == (64, 64)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0, "a picture, not a flat colour"
    assert (workspace.inbox / "_done/trained/astronaut.png").exists()


def test_the_scaling_factor_is_measured_not_sd_s(trained: Path) -> None:
    config = (trained / "vae" / "config.json").read_text()
    assert '"scaling_factor": 0.18215' not in config
    assert '"block_out_channels": [\n    16,\n    32,\n    64,\n    64\n  ]' in config


def test_a_second_call_reuses_the_folder(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = trained / "unet" / "diffusion_pytorch_model.safetensors"
    written = weights.stat().st_mtime_ns
    assert trained_tiny_sd(trained, minutes=MINUTES) == trained
    assert weights.stat().st_mtime_ns == written
    assert "trained-tiny" not in capsys.readouterr().out, "no training the second time"
