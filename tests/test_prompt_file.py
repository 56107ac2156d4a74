"""``<stem>.prompt.txt``: the prompt saved beside an input replaces the profile's for that
input, in every task, through the real daemon; it travels with its input to ``_done`` or
``_failed``, and wins over the PNG info / ``<stem>.txt`` parameters and the per-image YAML."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from daemon.a1111.infotext import Infotext, parse_infotext, png_info
from daemon.intake.pairing import Kind, Route, classify, find_companions, image_of_companion
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace, wait_for
from tests.support.media import make_test_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROFILE_PROMPT = "a test"  # the workspace's profile base
TAGGER = {"task": "interrogate", "interrogator": "deepbooru", "model": "builtin:tiny-tagger"}
OLD_PARAMETERS = (
    "old prompt\nNegative prompt: ugly\n"
    "Steps: 3, Sampler: Euler, CFG scale: 5, Seed: 55, Size: 64x64, Denoising strength: 0.5"
)


def painted_with(path: Path) -> Infotext:
    with Image.open(path) as image:
        text = png_info(image)
    assert text is not None, path
    return parse_infotext(text)


@dataclass(frozen=True)
class Run:
    workspace: Workspace
    log: list[str]


@pytest.fixture(scope="module")
def inbox_run(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> Iterator[Run]:
    """Every case in one daemon run: each input with its prompt file (or without one)."""
    from loguru import logger

    workspace = Workspace(tmp_path_factory.mktemp("prompt-file"), state_dir).create()
    inbox = workspace.inbox
    workspace.profile("paint")
    workspace.drop(DATA / "chelsea.png", "paint/cat.png")
    (inbox / "paint/cat.prompt.txt").write_bytes("\ufeffa red house at night  \n\n".encode())
    workspace.drop(DATA / "chelsea.png", "paint/other.png")
    workspace.drop(DATA / "chelsea.png", "paint/blank.png")
    (inbox / "paint/blank.prompt.txt").write_bytes(b"")
    workspace.drop(DATA / "chelsea.png", "paint/shot/frame_0001.png")
    (inbox / "paint/shot/frame_0001.prompt.txt").write_text("the first frame's own")
    workspace.drop(DATA / "chelsea.png", "paint/shot/frame_0002.png")
    workspace.profile("bad")
    workspace.drop(DATA / "chelsea.png", "bad/cat.png")
    (inbox / "bad/cat.prompt.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    workspace.drop(DATA / "chelsea.png", "bad/huge.png")
    (inbox / "bad/huge.prompt.txt").write_text("a cat, " * 10_000)
    workspace.profile("reads", use_png_info=True)
    workspace.drop(DATA / "chelsea.png", "reads/cat.png")
    (inbox / "reads/cat.txt").write_text(OLD_PARAMETERS)
    (inbox / "reads/cat.yaml").write_text("prompt: the yaml's\nsteps: 2\n")
    (inbox / "reads/cat.prompt.txt").write_text("new prompt")
    workspace.profile("filled", tagger_model="builtin:tiny-tagger")
    workspace.drop(DATA / "chelsea.png", "filled/cat.png")
    (inbox / "filled/cat.prompt.txt").write_text("{tags}, watercolor")
    workspace.profile("video")
    make_test_clip(inbox / "video/v.mp4", frames=2)
    (inbox / "video/v.prompt.txt").write_text("a lighthouse at dusk")
    workspace.profile("tags", **TAGGER)
    workspace.drop(DATA / "chelsea.png", "tags/cat.png")
    (inbox / "tags/cat.prompt.txt").write_text("make it night")
    log: list[str] = []
    handler = logger.add(lambda message: log.append(str(message).rstrip()), level="INFO")
    try:
        Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    finally:
        logger.remove(handler)
    yield Run(workspace, log)


def test_a_prompt_file_replaces_the_profiles_prompt_for_its_input_only(inbox_run):
    outbox, inbox = inbox_run.workspace.outbox, inbox_run.workspace.inbox
    assert painted_with(outbox / "paint/cat.png").prompt == "a red house at night"
    assert painted_with(outbox / "paint/other.png").prompt == PROFILE_PROMPT
    for name in ("cat.png", "cat.prompt.txt", "other.png"):
        assert (inbox / "_done/paint" / name).exists(), name
    assert not (inbox / "paint/cat.prompt.txt").exists()


def test_an_empty_prompt_file_paints_with_the_empty_prompt_and_says_so(inbox_run):
    painted = painted_with(inbox_run.workspace.outbox / "paint/blank.png")
    assert painted.prompt == "" and painted.params["Seed"] == "1234"
    assert any("blank.prompt.txt is empty: painted with an empty prompt" in line
               for line in inbox_run.log)  # fmt: skip
    assert (inbox_run.workspace.inbox / "_done/paint/blank.prompt.txt").exists()


def test_a_clip_frame_takes_its_own_prompt_file_and_the_others_the_profiles(inbox_run):
    shot = inbox_run.workspace.outbox / "paint/shot"
    assert painted_with(shot / "frame_0001.png").prompt == "the first frame's own"
    assert painted_with(shot / "frame_0002.png").prompt == PROFILE_PROMPT


def test_a_prompt_file_that_is_not_utf8_fails_its_input_with_both_files(inbox_run):
    failed = inbox_run.workspace.inbox / "_failed/bad"
    report = (failed / "cat.error.txt").read_text()
    assert report.startswith("cat.prompt.txt is not UTF-8 text (byte 3 cannot be read)"), report
    assert (failed / "cat.png").exists() and (failed / "cat.prompt.txt").exists()
    assert not inbox_run.workspace.outputs("bad")


def test_a_prompt_file_over_the_size_limit_fails_its_input(inbox_run):
    failed = inbox_run.workspace.inbox / "_failed/bad"
    report = (failed / "huge.error.txt").read_text()
    assert report.startswith("huge.prompt.txt is larger than 64 KiB"), report
    assert (failed / "huge.png").exists() and (failed / "huge.prompt.txt").exists()


def test_it_wins_over_the_parameters_and_the_yaml_which_still_apply(inbox_run):
    painted = painted_with(inbox_run.workspace.outbox / "reads/cat.png")
    assert painted.prompt == "new prompt"
    assert painted.negative_prompt == "ugly"  # from cat.txt (use_png_info)
    assert painted.params["Seed"] == "55" and painted.params["Steps"] == "2"  # .txt, .yaml
    done = inbox_run.workspace.inbox / "_done/reads"
    assert sorted(p.name for p in done.iterdir()) == [
        "cat.png", "cat.prompt.txt", "cat.txt", "cat.yaml",
    ]  # fmt: skip


def test_its_placeholders_are_filled_as_the_profiles_are(inbox_run):
    prompt = painted_with(inbox_run.workspace.outbox / "filled/cat.png").prompt
    assert prompt.endswith(", watercolor") and "{tags}" not in prompt
    assert len(prompt) > len(", watercolor")


def test_a_video_is_painted_with_its_prompt_file(inbox_run):
    params = (inbox_run.workspace.outbox / "video/v.txt").read_text()
    assert params.splitlines()[0] == "a lighthouse at dusk"
    assert "\nFrames: 2, " in params
    assert (inbox_run.workspace.inbox / "_done/video/v.prompt.txt").exists()


def test_an_interrogation_ignores_it_says_so_and_archives_it(inbox_run):
    workspace = inbox_run.workspace
    assert (workspace.outbox / "tags/cat.txt").read_text().strip()  # the tags, as ever
    assert (workspace.inbox / "_done/tags/cat.prompt.txt").exists()
    assert any("cat.prompt.txt ignored: task interrogate has no prompt" in line
               for line in inbox_run.log), inbox_run.log  # fmt: skip


def test_an_image_waits_while_its_prompt_file_is_still_being_written(workspace: Workspace, running):
    workspace.profile("late")
    # (a long quiet time: the open prompt file is complete only when its writer closes it)
    daemon = running(stability_delay=30.0)
    with (workspace.inbox / "late/cat.prompt.txt").open("w") as prompt:
        prompt.write("late but ")
        prompt.flush()
        image = workspace.drop(DATA / "chelsea.png", "late/cat.png")  # complete: renamed in
        wait_for(lambda: image in daemon.admission.waiting())
        assert not workspace.outputs("late")
        prompt.write("in time")
    wait_for(lambda: len(workspace.done("late")) == 2)
    assert painted_with(workspace.outbox / "late/cat.png").prompt == "late but in time"


def test_a_live_input_renders_again_when_its_prompt_file_changes(workspace: Workspace, running):
    workspace.profile("live", live=True)
    daemon = running(rescan_interval=3600.0)  # the prompt file's own event, not a rescan
    prompt = workspace.inbox / "live/photo.prompt.txt"
    prompt.write_text("first words")
    workspace.drop(DATA / "chelsea.png", "live/photo.png")
    wait_for(lambda: daemon.tally.done >= 1, timeout=60)
    wait_for(daemon.idle, timeout=30)
    assert painted_with(workspace.outbox / "live/photo.png").prompt == "first words"
    done = daemon.tally.done
    prompt.write_text("second thoughts")  # the prompt alone, as an artist edits it
    wait_for(lambda: daemon.tally.done == done + 1, timeout=60)
    assert painted_with(workspace.outbox / "live/photo.png").prompt == "second thoughts"
    assert prompt.exists(), "a live input's companions stay with it in the inbox"


def test_names_a_prompt_file_is_the_companion_of_its_input_not_parameters(tmp_path):
    def kind(name: str) -> Kind:
        return classify(Route("p", PurePosixPath("."), name))

    assert kind("a.prompt.txt") is Kind.PROMPT and kind("A.Prompt.TXT") is Kind.PROMPT
    assert kind("a.txt") is Kind.PARAMETERS and kind("prompt.txt") is Kind.PARAMETERS
    found = find_companions(tmp_path / "a.png", {"a.prompt.txt", "a.txt", "b.prompt.txt"}, set())
    assert (found.prompt, found.parameters) == (tmp_path / "a.prompt.txt", tmp_path / "a.txt")
    assert found.has(Kind.PROMPT) and tmp_path / "a.prompt.txt" in found.paths()
    (tmp_path / "a.png").write_bytes(b"")
    assert image_of_companion(tmp_path / "a.prompt.txt") == tmp_path / "a.png"
