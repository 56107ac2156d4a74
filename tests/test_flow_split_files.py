"""A Qwen-Image transformer-only file in a ComfyUI tree, painted through the real daemon with
the text encoder, VAE and tokenizer found where ComfyUI keeps them; and what happens while
one of them is missing: ``check`` says what to put where, the input waits, nothing is lost
and nothing is downloaded.

Small models, real files: the transformer is a one-block Qwen-Image transformer with
Qwen-Image's own 128-wide heads (so the shipped config's rotary axes fit), saved with bare
diffusers names as ComfyUI's Qwen-Image files are; the text encoder and VAE are the built-in
tiny Qwen-Image's, as folders with their ``config.json`` (a 7B encoder's shipped config
cannot describe a tiny one); the tokenizer is the built-in's, written as ComfyUI ships
Qwen's (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext, png_info
from daemon.config.profiles import load_profile
from daemon.models.builtin import ensure_builtin
from daemon.ops.service import Daemon
from daemon.render.availability import missing_models
from tests.conftest import DATA, Workspace
from tests.support.flow_headers import qwen_transformer_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRANSFORMER = "qwen_image_tiny"


def comfy_tokenizer(source: Path, target: Path) -> None:
    """Qwen's tokenizer as ComfyUI ships it: the BPE files, no tokenizer.json."""
    target.mkdir(parents=True)
    model = json.loads((source / "tokenizer.json").read_text())["model"]
    (target / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (target / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    shutil.copyfile(source / "tokenizer_config.json", target / "tokenizer_config.json")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    """``ComfyUI/`` with models/diffusion_models, text_encoders and vae filled (the
    tokenizer is left to each test)."""
    root = tmp_path_factory.mktemp("comfy") / "ComfyUI"
    models = root / "models"
    tiny = ensure_builtin("tiny-qwen-image", state_dir / "builtin")
    (models / "diffusion_models").mkdir(parents=True)
    qwen_transformer_file(models / "diffusion_models" / f"{TRANSFORMER}.safetensors")
    shutil.copytree(tiny / "text_encoder", models / "text_encoders" / "qwen_2.5_vl_tiny")
    shutil.copytree(tiny / "vae", models / "vae" / "qwen_image_vae_tiny")
    (models / "vae" / "some_sdxl_vae.safetensors").write_bytes(b"not this one")
    return root


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every connection attempted, refused (there must be none)."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_split_files_wait_for_their_tokenizer_then_paint(
    comfy: Path, state_dir: Path, tmp_path: Path, no_network: list[object]
) -> None:
    workspace = Workspace(tmp_path, state_dir).create()
    workspace.profile("q", model=TRANSFORMER, width=64, height=64, steps=2)
    workspace.drop(DATA / "chelsea.png", "q/cat.png")
    settings = workspace.settings(models_dir=comfy / "models")

    problems = missing_models(load_profile(workspace.profiles, "q").settings, settings)
    assert len(problems) == 1, problems
    assert "Qwen2.5 tokenizer" in problems[0]
    assert str(comfy / "models" / "tokenizers" / "qwen25") in problems[0]
    assert "vocab.json and merges.txt" in problems[0]

    Daemon(settings, watch=False).run_once(tick=0.01)
    assert (workspace.inbox / "q" / "cat.png").is_file()  # waits: not failed, not lost
    assert not workspace.outputs("q") and not workspace.failed("q")

    tiny = ensure_builtin("tiny-qwen-image", state_dir / "builtin")
    comfy_tokenizer(tiny / "tokenizer", comfy / "comfy" / "text_encoders" / "qwen25_tokenizer")
    assert missing_models(load_profile(workspace.profiles, "q").settings, settings) == []
    Daemon(settings, watch=False).run_once(tick=0.01)

    assert not workspace.failed("q"), [p.read_text() for p in workspace.failed("q")
                                       if p.suffix == ".txt"]  # fmt: skip
    (painted,) = [p for p in workspace.outputs("q") if p.suffix == ".png"]
    with Image.open(painted) as image:
        assert image.size == (64, 64)
        text = png_info(image)
    assert text is not None
    fields = parse_infotext(text).params
    assert fields["Model"] == TRANSFORMER
    assert (fields["Module 1"], fields["Module 2"]) == ("qwen_image_vae_tiny", "qwen_2.5_vl_tiny")
    assert no_network == []
