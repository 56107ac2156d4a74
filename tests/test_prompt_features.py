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
