"""ControlNet preprocessors that need annotator weights (lineart, HED, and controlnet_aux's).

Where their files are looked for, what ``img2imgd check`` and the log say when one is
missing (the input waits, nothing is lost, nothing is downloaded), and lineart through the
real daemon once its file is there, its map in ``save_control``. The lineart and HED
networks are img2imgd's own copies, so all of this runs without controlnet_aux; the weight
files are the real networks with seeded random weights, saved where the table says."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.controlnet.annotators import (
    ANNOTATORS,
    AnnotatorMissing,
    annotator_folder,
    annotator_roots,
    library_installed,
)
from daemon.controlnet.images import fit_control
from daemon.controlnet.units import ControlResize
from daemon.engines import annotator_nets
from daemon.engines.annotator_models import Annotators
from daemon.errors import TransientError
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace
from tests.support.workspace import wait_for
from tests.test_cli import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LINEART = {
    "enabled": True, "module": "lineart_realistic", "model": "builtin:tiny-controlnet",
    "processor_res": 64,
}  # fmt: skip
FIXED = {"width": 64, "height": 64, "save_control": True, "denoising_strength": 1.0, "steps": 2}


def save_random_weights(models_dir: Path, module: str, *, seed: int = 0) -> Path:
    """The module's real network with seeded random weights, saved where img2imgd looks
    first (``models_dir/annotators/<folder>/<file>``), half precision to keep it small."""
    import torch

    annotator = ANNOTATORS[module]
    torch.manual_seed(seed)
    network = annotator_nets.NETWORKS[annotator.folder]()
    path = models_dir / "annotators" / annotator.folder / annotator.files[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in network.state_dict().items()}, path)
    return path


def picture(seed: int = 0, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


# ------------------------------------------------------------------ where the files are


def test_the_files_are_found_in_models_dir_then_in_the_extensions_folders(tmp_path):
    models_dir = tmp_path / "webui" / "models"
    roots = annotator_roots(models_dir)
    extension = tmp_path / "webui/extensions/sd-webui-controlnet/annotator"
    assert roots == (models_dir / "annotators", extension / "downloads", extension)
    for root in reversed(roots):  # each one found; the earlier ones win
        (root / "hed").mkdir(parents=True)
        (root / "hed/ControlNetHED.pth").write_bytes(b"")
        assert annotator_folder("hed_safe", roots) == root / "hed"


def test_a_missing_file_is_named_with_the_folder_to_put_it_in(tmp_path):
    roots = annotator_roots(tmp_path / "models")
    with pytest.raises(AnnotatorMissing) as caught:
        annotator_folder("lineart_coarse", roots)
    assert str(caught.value).startswith(
        "ControlNet preprocessor lineart_coarse needs the annotator file sk_model2.pth, found "
        f"in none of {tmp_path / 'models/annotators/lineart'}, "
    )
    assert f"put it in {tmp_path / 'models/annotators/lineart'}/ (img2imgd never downloads" in (
        str(caught.value)
    )
    with pytest.raises(AnnotatorMissing, match=r"depth_midas needs .* set models_dir in the"):
        annotator_folder("depth", annotator_roots(None))


def test_check_lists_each_missing_annotator_file_and_where_to_put_it(tmp_path, state_dir):
    workspace = Workspace(tmp_path, state_dir).create()
    (tmp_path / "models").mkdir()
    units = [{**LINEART, "module": module} for module in ("softedge_hed", "canny", "hed_safe")]
    workspace.profile("p", controlnet=[*units, {**LINEART, "module": "lineart_coarse"}])
    workspace.config_file(models_dir=tmp_path / "models")
    result = cli(tmp_path, "check")
    assert result.returncode == 2, result.stdout
    home = tmp_path / "models/annotators"
    assert "preprocessor softedge_hed needs the annotator file ControlNetHED.pth" in result.stdout
    assert f"put it in {home / 'hed'}/" in result.stdout
    assert "preprocessor lineart_coarse needs the annotator file sk_model2.pth" in result.stdout
    assert "2 problem(s) found" in result.stdout  # hed once for both of its modules


def test_check_says_whether_a_library_preprocessor_can_run(tmp_path, state_dir):
    """softedge_pidinet runs through controlnet_aux: with its file there, ``check`` is
    content when the library is installed and names the extra to install otherwise."""
    workspace = Workspace(tmp_path, state_dir).create()
    weights = tmp_path / "models/annotators/pidinet/table5_pidinet.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    workspace.profile("p", controlnet=[{**LINEART, "module": "softedge_pidinet"}])
    workspace.config_file(models_dir=tmp_path / "models")
    result = cli(tmp_path, "check")
    if library_installed():
        assert result.returncode == 0, result.stdout
    else:
        assert result.returncode == 2, result.stdout
        assert "pip install 'img2imgd[annotators]'" in result.stdout


# ------------------------------------------------------------- running them


def test_at_render_time_a_missing_or_broken_file_is_not_the_inputs_fault(tmp_path):
    annotators = Annotators(tmp_path / "models", device=lambda: "cpu")
    with pytest.raises(TransientError, match=r"ControlNetHED\.pth.*the input waits in the inbox"):
        annotators.detect("hed", picture(), 64, 0.5, 0.5)
    broken = tmp_path / "models/annotators/hed/ControlNetHED.pth"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a weight file")
    with pytest.raises(TransientError, match=r"could not load .* replace the file"):
        annotators.detect("hed", picture(), 64, 0.5, 0.5)
    assert annotators.loaded == []


def test_hed_and_hed_safe_share_one_network_and_safe_quantises_the_edges(tmp_path):
    models_dir = tmp_path / "models"
    save_random_weights(models_dir, "hed")
    annotators = Annotators(models_dir, device=lambda: "cpu")
    soft = annotators.detect("hed", picture(), 64, 0.5, 0.5)
    safe = annotators.detect("hed_safe", picture(), 64, 0.5, 0.5)
    assert soft.shape == safe.shape == (64, 85, 3)  # short side at 64, the input's aspect
    assert len(np.unique(soft)) > 3
    assert set(np.unique(safe)) <= {0, 127, 255}
    assert annotators.loaded == ["annotator hed/ControlNetHED.pth"]


@contextmanager
def daemon_with(settings: Any, models: ModelCache) -> Iterator[Daemon]:
    """The real daemon (watcher, scheduler, worker) in a thread, on its own model cache."""
    daemon = Daemon(settings, models=models)
    thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the daemon did not stop"


MISSING = "lineart_realistic needs the annotator file sk_model.pth"


def test_an_input_waits_for_a_missing_annotator_then_its_map_steers_and_is_saved(
    workspace: Workspace, state_dir: Path, logs: list[str]
):
    models_dir = workspace.root / "models"
    models_dir.mkdir()
    workspace.profile("lines", controlnet=[LINEART], **FIXED)
    models = ModelCache(models_dir=models_dir, state_dir=state_dir, device="cpu")
    # Made before the daemon starts: a module built while diffusers loads a model on another
    # thread gets meta tensors (accelerate's init_empty_weights patches every module), and the
    # file appears whole when renamed in, as a finished download does.
    made = save_random_weights(workspace.root / "made", "lineart")
    weights = models_dir / made.relative_to(workspace.root / "made")
    with daemon_with(workspace.settings(models_dir=models_dir), models):
        image = workspace.drop(DATA / "chelsea.png", "lines/cat.png")
        wait_for(lambda: any(MISSING in line for line in logs))
        assert image.exists(), "the input waits in the inbox"
        assert not workspace.outputs("lines") and not workspace.failed("lines")
        weights.parent.mkdir(parents=True)
        made.replace(weights)
        wait_for(lambda: len(workspace.done("lines")) == 1, timeout=60)
    assert not workspace.failed("lines")
    with Image.open(workspace.outbox / "lines/cat.control.png") as saved:
        shown = np.asarray(saved.convert("RGB"))
    # What the extension's lineart makes of the input, from the same file, fitted as the
    # input is (Just Resize): the saved control image is exactly that.
    network = annotator_nets.load_network("lineart", weights, "cpu")
    with Image.open(DATA / "chelsea.png") as source:
        raw = np.asarray(source.convert("RGB"))
    expected = fit_control(annotator_nets.run_lineart(network, raw, 64), ControlResize.RESIZE,
                           (64, 64))  # fmt: skip
    assert np.array_equal(shown, expected)
    assert shown.std() > 1.0
    with Image.open(workspace.outbox / "lines/cat.png") as painted:
        assert 'ControlNet 0: "Module: lineart_realistic, ' in painted.info["parameters"]


def library_or_skip() -> None:
    """controlnet_aux, when it imports (a torchvision built for another torch does not)."""
    try:
        import controlnet_aux  # noqa: F401
    except Exception as exc:
        pytest.skip(f"controlnet_aux does not import here: {type(exc).__name__}")


def test_a_library_annotator_runs_from_its_local_file(tmp_path):
    library_or_skip()
    import torch
    from controlnet_aux.pidi.model import pidinet

    torch.manual_seed(0)
    weights = tmp_path / "models/annotators/pidinet/table5_pidinet.pth"
    weights.parent.mkdir(parents=True)
    state = {f"module.{k}": v for k, v in pidinet().state_dict().items()}
    torch.save({"state_dict": state}, weights)  # the layout of the published file
    annotators = Annotators(tmp_path / "models", device=lambda: "cpu")
    detected = annotators.detect("pidinet", picture(), 64, 0.5, 0.5)
    assert detected.shape == (64, 85, 3) and detected.dtype == np.uint8
