"""Interrogation as a hot-folder task, as a prompt source, and on the command line.

Everything goes through the real daemon (watcher, worker, journal) and the real model code
with the tiny built-ins: a random BLIP + CLIP and a random ONNX WD14-style tagger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace, wait_for

CLIP = {"task": "interrogate", "interrogator": "clip", "model": "builtin:tiny-interrogator"}
TAGS = {"task": "interrogate", "interrogator": "deepbooru", "model": "builtin:tiny-tagger"}
FAST_CLIP = {**CLIP, "caption_min_length": 4, "caption_max_length": 8, "dict_limit": 50}


def interrogate_directly(models: ModelCache, path: Path, **keys: object) -> str:
    """The line the engines give for a file, outside the daemon, to compare with."""
    from daemon.a1111.imaging import flatten_on_white, load_image
    from daemon.config.profiles import Profile

    settings = Profile.model_validate(keys)
    image = flatten_on_white(load_image(path, max_pixels=2**26))
    kind = settings.interrogator
    found = models.interrogators.interrogate(
        image, settings, kind, settings.interrogation_model(kind)
    )
    return found.line


def test_tags_are_written_as_a_caption_file_and_details(workspace: Workspace, running, models):
    workspace.profile("tags", **TAGS, threshold=0.2)
    running()
    workspace.drop("chelsea.png", "tags/cats/chelsea.png")
    wait_for(lambda: workspace.done("tags"))

    out = workspace.outbox / "tags/cats"
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.json", "chelsea.txt"]
    line = (out / "chelsea.txt").read_text()
    assert line.endswith("\n") and line.count("\n") == 1  # one line, as training tools read
    details = json.loads((out / "chelsea.json").read_text())
    assert details["prompt"] == line.strip()
    assert details["image"] == "chelsea.png"
    assert details["interrogator"] == "deepbooru"
    assert details["model"] == "builtin:tiny-tagger"
    assert details["settings"]["threshold"] == 0.2 and details["settings"]["format"] == "wd14"
    assert [t["tag"] for t in details["tags"]] == line.strip().split(", ")
    assert all(t["score"] >= 0.2 for t in details["tags"])
    assert set(details["ratings"]) == {"general", "sensitive", "questionable", "explicit"}
    assert line.strip() == interrogate_directly(models, DATA / "chelsea.png", **TAGS, threshold=0.2)
    assert workspace.done("tags") == [workspace.inbox / "_done/tags/cats/chelsea.png"]


def test_clip_caption_with_the_image_copied_beside_it(workspace: Workspace, running, models):
    workspace.profile("caption", **FAST_CLIP, copy_image=True, return_ranks=True)
    running()
    workspace.drop("astronaut.png", "caption/astronaut.png")
    wait_for(lambda: workspace.done("caption"))

    out = workspace.outbox / "caption"
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.json", "astronaut.png", "astronaut.txt",
    ]  # fmt: skip
    assert (out / "astronaut.png").read_bytes() == (DATA / "astronaut.png").read_bytes()
    details = json.loads((out / "astronaut.json").read_text())
    line = (out / "astronaut.txt").read_text().strip()
    assert line == details["prompt"]
    assert line.startswith(details["caption"] + ", ")
    categories = [t["category"] for t in details["terms"]]
    assert categories == ["mediums", "artists", "movements", "flavors", "flavors", "flavors"]
    assert all(f"({t['term']}:{t['score']:.3f})" in line for t in details["terms"])
    assert details["settings"]["mode"] == "classic"
    assert line == interrogate_directly(
        models, DATA / "astronaut.png", **FAST_CLIP, return_ranks=True
    )


def test_a_taken_name_gets_a_suffix_for_the_whole_group(workspace: Workspace, running):
    workspace.profile("tags", **TAGS)
    (workspace.outbox / "tags").mkdir(parents=True)
    (workspace.outbox / "tags/chelsea.json").write_text("{}")  # someone else's
    running()
    workspace.drop("chelsea.png", "tags/chelsea.png")
    wait_for(lambda: workspace.done("tags"))
    names = sorted(p.name for p in (workspace.outbox / "tags").iterdir())
    assert names == ["chelsea-1.json", "chelsea-1.txt", "chelsea.json"]


def test_tags_and_caption_fill_an_img2img_prompt(workspace: Workspace, running, models):
    workspace.profile(
        "redraw",
        prompt="{tags}, watercolor",
        negative_prompt="{interrogate}",
        tagger_model="builtin:tiny-tagger",
        interrogate_model="builtin:tiny-interrogator",
        caption_min_length=4,
        caption_max_length=8,
        dict_limit=20,
    )
    running()
    workspace.drop("chelsea.png", "redraw/chelsea.png")
    wait_for(lambda: workspace.done("redraw"))

    infotext = parse_infotext((workspace.outbox / "redraw/chelsea.txt").read_text())
    tags = interrogate_directly(models, DATA / "chelsea.png", **TAGS)
    caption = interrogate_directly(
        models, DATA / "chelsea.png", **CLIP, caption_min_length=4, caption_max_length=8,
        dict_limit=20,
    )  # fmt: skip
    assert infotext.prompt == f"{tags}, watercolor"
    assert infotext.negative_prompt == caption
    png = Image.open(workspace.outbox / "redraw/chelsea.png")
    assert png.info["parameters"].startswith(f"{tags}, watercolor\n")


def test_a_truncated_or_non_image_input_fails_and_the_next_succeeds(workspace: Workspace, running):
    workspace.profile("tags", **TAGS)
    data = (DATA / "chelsea.png").read_bytes()
    (workspace.inbox / "tags/cut.png").write_bytes(data[: len(data) // 3])
    (workspace.inbox / "tags/notes.png").write_text("not an image")
    running(stability_delay=0.05)
    wait_for(lambda: len([p for p in workspace.failed("tags") if p.suffix == ".txt"]) == 2)
    report = (workspace.inbox / "_failed/tags/cut.error.txt").read_text()
    assert "cut.png" in report.splitlines()[0]
    workspace.drop("chelsea.png", "tags/good.png")
    wait_for(lambda: (workspace.outbox / "tags/good.txt").exists())
    assert not (workspace.outbox / "tags/cut.txt").exists()


def test_a_missing_interrogation_model_leaves_the_input_waiting(
    workspace: Workspace, running, logs
):
    workspace.profile("tags", **{**TAGS, "model": str(workspace.root / "no-such-tagger")})
    daemon = running(retry_delay=30)
    workspace.drop("chelsea.png", "tags/chelsea.png")
    wait_for(lambda: any("profile tags: tagger" in line and "not found" in line for line in logs))
    assert (workspace.inbox / "tags/chelsea.png").exists()
    assert not workspace.failed("tags") and daemon.tally.done == 0


def test_idle_interrogators_are_unloaded(models: ModelCache):
    interrogate_directly(models, DATA / "chelsea.png", **TAGS)
    assert "builtin:tiny-tagger" in models.interrogators.loaded
    assert "builtin:tiny-tagger" in models.unload_idle(0.0)
    assert "builtin:tiny-tagger" not in models.interrogators.loaded


def test_check_finds_interrogation_problems(workspace: Workspace):
    from daemon.cli import check_problems

    workspace.profile("tags", **TAGS)
    workspace.profile("caption", **CLIP, labels_dir=str(workspace.root / "missing"))
    workspace.profile("wrong", **{**CLIP, "model": "builtin:tiny-tagger"})
    workspace.profile("redraw", prompt="{tags}", tagger_model="nowhere-local")
    workspace.profile("sd", model="builtin:tiny-interrogator")
    problems = "\n".join(check_problems(workspace.settings()))
    assert "tags.yaml" not in problems
    assert "caption.yaml" in problems and "labels_dir" in problems
    assert "wrong.yaml" in problems and "builtin:tiny-interrogator" in problems
    assert "redraw.yaml" in problems and "tagger 'nowhere-local' not found" in problems
    assert "sd.yaml" in problems and "interrogation model" in problems


def test_the_interrogate_command_prints_one_line_per_file(workspace: Workspace, tmp_path):
    workspace.profile("tags", **TAGS, threshold=0.2)
    config = tmp_path / "img2imgd.yaml"
    settings = workspace.settings()
    config.write_text(
        f"inbox: {settings.inbox}\noutbox: {settings.outbox}\nprofiles: {settings.profiles}\n"
        f"state_dir: {settings.state_dir}\ndevice: cpu\n"
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes((DATA / "chelsea.png").read_bytes()[:500])
    command = [sys.executable, "-m", "daemon", "--config", str(config), "interrogate"]
    files = [str(DATA / "chelsea.png"), str(broken), str(DATA / "astronaut.png")]
    result = subprocess.run(
        [*command, "--profile", "tags", *files], capture_output=True, text=True, timeout=300
    )
    lines = result.stdout.split("\n")
    assert result.returncode == 1, result.stderr
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one line per file
    assert lines[0] and lines[2] and lines[0] != lines[2]
    assert "broken.png" in result.stderr
    # The CLIP interrogator, with the model given on the command line.
    clip = subprocess.run(
        [*command, "--interrogator", "clip", "--model", "builtin:tiny-interrogator",
         str(DATA / "chelsea.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert clip.returncode == 0, clip.stderr
    assert clip.stdout.count("\n") == 1 and len(clip.stdout.strip().split(", ")) >= 5


@pytest.mark.parametrize("key", ["interrogate_model", "tagger_model", "labels_dir"])
def test_per_image_yaml_cannot_choose_interrogation_files(workspace: Workspace, running, key):
    workspace.profile("tags", **TAGS)
    running()
    (workspace.inbox / "tags/a.yaml").write_text(f"{key}: /etc\n")
    workspace.drop("chelsea.png", "tags/a.png")
    wait_for(lambda: (workspace.inbox / "_failed/tags/a.error.txt").exists())
    assert key in (workspace.inbox / "_failed/tags/a.error.txt").read_text().splitlines()[0]
