"""``task: edit`` through the real daemon: an instruction applied to the input by an
instruction-edit model (the built-in tiny Flux Kontext and Qwen-Image-Edit Plus), from a
``<stem>.prompt.txt`` saved beside it; a mask restricts the edit; Edit Plus takes the
input's reference images; a model that cannot edit holds its files with a plain reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace
from tests.support.painted import Run, painted_with, pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KONTEXT = "builtin:tiny-flux-kontext"
QWEN_EDIT = "builtin:tiny-qwen-image-edit"


@pytest.fixture(scope="module")
def edit_run(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> Iterator[Run]:
    from loguru import logger

    workspace = Workspace(tmp_path_factory.mktemp("edit"), state_dir).create()
    inbox = workspace.inbox
    workspace.profile("kontext", task="edit", model=KONTEXT, prompt="make it watercolor")
    for name in ("cat", "twin"):
        workspace.drop(DATA / "chelsea.png", f"kontext/{name}.png")
        (inbox / f"kontext/{name}.prompt.txt").write_text("make it night\n")
    workspace.drop(DATA / "chelsea.png", "kontext/plain.png")  # the profile's instruction
    for name, seed in (("x", 1), ("y", 2)):
        workspace.drop(DATA / "astronaut.png", f"kontext/{name}.png")
        workspace.drop(DATA / "astronaut.mask.png", f"kontext/{name}.mask.png")
        (inbox / f"kontext/{name}.yaml").write_text(f"seed: {seed}\nmask_blur: 0\n")
    workspace.profile("qwen", task="edit", model=QWEN_EDIT, prompt="put the cat in the hat")
    workspace.drop(DATA / "chelsea.png", "qwen/alone.png")
    workspace.drop(DATA / "chelsea.png", "qwen/with.png")
    workspace.drop(DATA / "astronaut.png", "qwen/with.reference.png")
    workspace.drop(DATA / "astronaut.sketch.png", "qwen/with.reference-2.png")
    workspace.profile("cannot", task="edit", model="builtin:tiny-flux")
    workspace.drop(DATA / "chelsea.png", "cannot/cat.png")
    log: list[str] = []
    handler = logger.add(lambda message: log.append(str(message).rstrip()), level="INFO")
    try:
        Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    finally:
        logger.remove(handler)
    yield Run(workspace, log)


def test_an_instruction_beside_the_image_edits_it_and_is_its_prompt(edit_run):
    workspace = edit_run.workspace
    painted = painted_with(workspace.outbox / "kontext/cat.png")
    assert painted.prompt == "make it night"
    assert "Denoising strength" not in painted.params  # it starts from noise
    assert painted_with(workspace.outbox / "kontext/plain.png").prompt == "make it watercolor"
    done = {p.name for p in workspace.done("kontext")}
    assert {"cat.png", "cat.prompt.txt", "plain.png"} <= done
    assert not workspace.failed("kontext")


def test_the_result_has_the_jobs_size_and_the_same_instruction_paints_the_same(edit_run):
    outbox = edit_run.workspace.outbox / "kontext"
    cat, twin = pixels(outbox / "cat.png"), pixels(outbox / "twin.png")
    size = painted_with(outbox / "cat.png").params["Size"]
    assert f"{cat.shape[1]}x{cat.shape[0]}" == size and cat.shape[0] % 16 == 0
    assert np.array_equal(cat, twin)
    assert not np.array_equal(cat, pixels(outbox / "plain.png"))  # another instruction


def test_a_mask_restricts_the_edit(edit_run):
    outbox = edit_run.workspace.outbox / "kontext"
    x, y = pixels(outbox / "x.png"), pixels(outbox / "y.png")
    with Image.open(DATA / "astronaut.mask.png") as mask:
        small = mask.convert("L").resize(x.shape[1::-1]).filter(ImageFilter.MaxFilter(5))
        repaint = np.asarray(small) > 0
    assert np.array_equal(x[~repaint], y[~repaint])
    assert np.abs(x[repaint] - y[repaint]).mean() > 1
    assert painted_with(outbox / "x.png").params["Mask blur"] == "0"


def test_edit_plus_takes_the_reference_images_which_travel_with_the_input(edit_run):
    workspace = edit_run.workspace
    alone, together = (pixels(workspace.outbox / f"qwen/{n}.png") for n in ("alone", "with"))
    assert alone.shape == together.shape
    assert not np.array_equal(alone, together)
    done = {p.name for p in workspace.done("qwen")}
    assert {"with.png", "with.reference.png", "with.reference-2.png"} <= done
    assert not workspace.outputs("qwen") or all(
        "reference" not in p.name for p in workspace.outputs("qwen")
    )  # references are companions, never jobs of their own


def test_a_model_that_cannot_edit_holds_its_files_and_says_why(edit_run):
    workspace = edit_run.workspace
    assert (workspace.inbox / "cannot/cat.png").exists()
    assert not workspace.failed("cannot") and not workspace.outputs("cannot")
    assert any("is not an instruction-edit model" in line for line in edit_run.log)


def test_check_says_an_edit_profile_needs_an_edit_model(workspace: Workspace):
    from daemon.cli import check_problems

    workspace.profile("cannot", task="edit", model="builtin:tiny-flux")
    workspace.profile("can", task="edit", model=KONTEXT)
    workspace.profile("qwen", task="edit", model=QWEN_EDIT)
    problems = check_problems(workspace.settings())
    assert len(problems) == 1, problems
    assert "cannot.yaml" in problems[0]
    assert "builtin-tiny-flux is not an instruction-edit model" in problems[0]
