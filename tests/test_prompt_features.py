"""Issue 4 through the daemon: A1111 prompt weighting, LoRA tags and embeddings by name."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.ops.service import Daemon
from tests.conftest import DATA, Workspace, wait_for
from tests.test_adapters import LoraMaker, vectors, write


@pytest.fixture
def webui(tmp_path: Path, state_dir: Path) -> Path:
    """An A1111 `models` folder with one LoRA, and `embeddings` beside it."""
    from daemon.models.builtin import ensure_builtin

    models = tmp_path / "webui/models"
    write(
        models / "Lora/korean.safetensors",
        LoraMaker(ensure_builtin("tiny-sd", state_dir / "builtin")).make(1),
    )
    write(models.parent / "embeddings/EasyNegative.safetensors", {"emb_params": vectors(10, 2)})
    return models


def start(workspace: Workspace, webui: Path) -> tuple[Daemon, threading.Thread]:
    """A daemon with its own models (LoRAs change the pipeline it loads)."""
    settings = workspace.settings(models_dir=webui)
    (workspace.root / "state").mkdir(exist_ok=True)
    builtin = workspace.root / "state/builtin"
    if not builtin.exists():
        builtin.symlink_to(workspace.state_dir / "builtin", target_is_directory=True)
    daemon = Daemon(settings)
    thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
    thread.start()
    return daemon, thread


def test_lora_tags_embeddings_and_weights_through_the_daemon(workspace: Workspace, webui: Path):
    seed_prompt = "<lora:korean:0.8>, (RAW photo, best quality), (realistic:1.2)"
    workspace.profile("lora", prompt=seed_prompt, negative_prompt="(EasyNegative:1.2), lowres")
    workspace.profile("plain", prompt="(RAW photo, best quality), (realistic:1.2)",
                      negative_prompt="(EasyNegative:1.2), lowres")  # fmt: skip
    workspace.profile("after", prompt="(RAW photo, best quality), (realistic:1.2)",
                      negative_prompt="(EasyNegative:1.2), lowres")  # fmt: skip
    daemon, thread = start(workspace, webui)
    try:
        workspace.drop("chelsea.png", "plain/a.png")
        wait_for(lambda: workspace.done("plain"), timeout=120)
        workspace.drop("chelsea.png", "lora/a.png")
        wait_for(lambda: workspace.done("lora"), timeout=120)
        workspace.drop("chelsea.png", "after/a.png")
        wait_for(lambda: workspace.done("after"), timeout=120)
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)

    def pixels(profile: str) -> np.ndarray:
        return np.asarray(Image.open(workspace.outbox / f"{profile}/a.png"))

    assert not np.array_equal(pixels("plain"), pixels("lora")), "the LoRA changed the image"
    assert np.array_equal(pixels("plain"), pixels("after")), "no LoRA residue in the next job"
    info = parse_infotext((workspace.outbox / "lora/a.txt").read_text())
    assert info.prompt == seed_prompt  # recorded as written, tags included (as A1111)
    assert info.params["Lora hashes"].startswith("korean: ")
    assert info.params["TI hashes"].startswith("EasyNegative: ")


def test_sdxl_img2img_and_inpaint_through_the_daemon(workspace: Workspace, running):
    workspace.profile("xl", model="builtin:tiny-sdxl", prompt="(a cat:1.3) BREAK sofa")
    workspace.profile("xlinpaint", model="builtin:tiny-sdxl", task="inpaint", mask_blur=0)
    running()
    workspace.drop("chelsea.png", "xl/a.png")
    folder = workspace.inbox / "xlinpaint"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(folder / "b.mask.png")
    image = Image.open(DATA / "astronaut.png").convert("RGB").resize((64, 64))
    image.save(folder / "b.png")
    wait_for(lambda: workspace.done("xl") and len(workspace.done("xlinpaint")) == 2, timeout=120)
    info = parse_infotext((workspace.outbox / "xl/a.txt").read_text())
    assert info.params["Model"] == "builtin-tiny-sdxl"
    result = np.asarray(Image.open(workspace.outbox / "xlinpaint/b.png").convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(result[keep], np.asarray(image)[keep])


def test_edits_and_alternation_with_lora_tags_and_embeddings(webui: Path, state_dir: Path):
    """Tags leave the prompt first, wherever they stand (A1111's order); an embedding named
    inside an edit or an alternation is its vectors there."""
    from daemon.config.profiles import Profile
    from daemon.engines.diffusion import Canvas, DiffusionEngine
    from daemon.render.cache import ModelCache

    engine = DiffusionEngine(ModelCache(models_dir=webui, state_dir=state_dir, device="cpu"))
    image = Image.open(DATA / "chelsea.png").convert("RGB")

    def paint(prompt: str, negative: str) -> np.ndarray:
        settings = Profile(model="builtin:tiny-sd", steps=2, denoising_strength=1.0)
        painting = engine.paint(Canvas(image, None), settings, width=64, height=64, seed=5,
                                prompt=prompt, negative_prompt=negative)  # fmt: skip
        return np.asarray(painting.images[0])

    plain = paint("<lora:korean:0.8> a fox", "(EasyNegative:1.2)")
    # Two calls: the alternation gives its first option to both, the edit its `to`.
    edited = paint("[<lora:korean:0.8> a cat:a fox:0]", "[(EasyNegative:1.2)|lowres]")
    assert np.array_equal(edited, plain)
    assert not np.array_equal(paint("[a cat:a fox:0]", "[(EasyNegative:1.2)|lowres]"), plain)
    assert not np.array_equal(paint("[<lora:korean:0.8> a cat:a fox:0]", "[lowres|x]"), plain)
