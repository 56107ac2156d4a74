"""Tasks are modules found through one table: each validates its own keys, a key only other
tasks use is reported where the user wrote it, and ``task: tags`` is the tagger.

The registry's promises are checked over every row, so a new task is held to them by its
registration line alone; the daemon runs are the real thing (watcher, worker, journal, the
tiny built-in tagger).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from daemon.config.profiles import Profile, check_all, load_profile
from daemon.deliver.results import Deliverer
from daemon.engines.interrogators import Interrogation
from daemon.errors import ConfigError, InputError
from daemon.intake.jobs import Job
from daemon.intake.pairing import Companions, Kind
from daemon.render.values import RenderResult
from daemon.tasks.keys import CommonKeys
from daemon.tasks.registry import DEFAULT_TASK, TASKS
from daemon.tasks.task import Describing, Painting
from tests.conftest import DATA, Workspace, wait_for

TAGGER = {"model": "builtin:tiny-tagger", "threshold": 0.2}  # several tags pass on random weights


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "profiles"
    path.mkdir()
    return path


def write(folder: Path, name: str, data: dict[str, Any] | str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def problems(folder: Path, name: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_profile(folder, name)
    return caught.value.problems


def own_defaults(name: str) -> dict[str, Any]:
    """Every key the task accepts, at the task's own default, as YAML writes it."""
    keys = TASKS[name].keys(task=name, model="m").model_dump(mode="json")
    return {key: value for key, value in keys.items() if key != "task"}


# --------------------------------------------------------------------------- the table


def test_the_table_holds_every_kind_of_work_once_by_name():
    assert list(TASKS) == [
        "img2img", "sketch", "inpaint", "inpaint_sketch", "edit", "interrogate", "tags",
    ]  # fmt: skip
    assert all(task.name == name for name, task in TASKS.items())
    assert DEFAULT_TASK == "img2img"


@pytest.mark.parametrize("name", list(TASKS))
def test_a_task_declares_keys_companions_and_what_the_model_works_on(name):
    task = TASKS[name]
    assert issubclass(task.keys, CommonKeys)
    assert set(task.keys.model_fields) <= set(Profile.model_fields)  # one effective type
    assert not task.companions.required & task.companions.optional
    if isinstance(task, Painting):
        assert task.pipeline in ("img2img", "inpaint", "edit")
        assert task.interrogator("clip") is None
    else:
        assert isinstance(task, Describing)
        assert task.pipeline is None and not task.takes_video and not task.companions.required
        assert task.interrogator("clip") in ("clip", "deepbooru")


def test_every_key_of_the_effective_settings_is_some_tasks():
    used = set().union(*(task.keys.model_fields for task in TASKS.values()))
    assert used == set(Profile.model_fields)


# --------------------------------------------------------------------------- each task's keys


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_accepts_every_key_of_its_own(folder, name):
    own = own_defaults(name)
    write(folder, "p", {"task": name, **own})
    settings = load_profile(folder, "p").settings
    assert settings.task == name
    assert settings.model_dump(mode="json", include=set(own)) == own


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_reports_every_key_only_other_tasks_use_on_its_line(folder, name):
    others = [key for key in Profile.model_fields if key not in TASKS[name].keys.model_fields]
    defaults = Profile(model="m").model_dump(mode="json")
    path = write(folder, "p", {"task": name, "model": "m", **{k: defaults[k] for k in others}})
    lines = path.read_text().splitlines()  # a mapping's default spans several lines
    starts = {line.split(":")[0]: number for number, line in enumerate(lines, start=1)}
    expected = [f"{path}:{starts[key]}: `{key}` is not used by task `{name}`" for key in others]
    assert problems(folder, "p") == expected


def test_the_unused_key_message_names_the_file_the_line_and_the_task(folder):
    path = write(folder, "x", "task: tags\nmodel: t\nthreshold: 0.3\ndenoising_strength: 0.5\n")
    assert problems(folder, "x") == [f"{path}:4: `denoising_strength` is not used by task `tags`"]


def test_a_key_used_by_no_task_is_still_an_unknown_key(folder):
    path = write(folder, "x", "task: tags\nmodel: t\nstepz: 3\n")
    (problem,) = problems(folder, "x")
    assert problem.startswith(f"{path}:3: unknown key 'stepz'")


def test_unused_keys_are_reported_with_every_other_problem_at_once(folder):
    write(folder, "x", "task: interrogate\nmodel: t\nsteps: 20\nnum_beams: 99\n")
    loaded, found = check_all(folder)
    assert loaded == {}
    assert [line.split(": ", 1)[1] for line in found] == [
        "`steps` is not used by task `interrogate`",
        "num_beams: Input should be less than or equal to 16 (got 99)",
    ]


def test_a_key_inherited_from_a_shared_base_is_not_reported(folder):
    write(folder, "_base", "model: builtin:tiny-sd\ndenoising_strength: 0.4\nsteps: 8\n")
    write(folder, "paint", "extends: _base\n")
    write(folder, "tags", "extends: _base\ntask: tags\nmodel: builtin:tiny-tagger\n")
    loaded, found = check_all(folder)
    assert found == []
    paint, tags = loaded["paint"].settings, loaded["tags"].settings
    assert (paint.steps, paint.denoising_strength) == (8, 0.4)
    assert (tags.task, tags.interrogating, tags.model) == (
        "tags",
        "deepbooru",
        "builtin:tiny-tagger",
    )
    assert tags.steps == Profile(model="m").steps  # the base's value is dropped, not used


def test_an_unknown_key_in_a_base_is_still_reported_there(folder):
    base = write(folder, "_base", "model: m\nstpes: 8\n")
    write(folder, "tags", "extends: _base\ntask: tags\n")
    (problem,) = problems(folder, "tags")
    assert problem.startswith(f"{base}:2: unknown key 'stpes'")


def test_tags_takes_only_its_own_interrogator(folder):
    write(folder, "same", "task: tags\nmodel: t\ninterrogator: deepbooru\n")
    assert load_profile(folder, "same").settings.interrogating == "deepbooru"
    path = write(folder, "other", "task: tags\nmodel: t\ninterrogator: clip\n")
    (problem,) = problems(folder, "other")
    assert problem.startswith(f"{path}:3: interrogator: Input should be 'deepbooru'")


def test_tags_means_what_interrogate_with_deepbooru_means(folder):
    write(folder, "tags", {"task": "tags", **TAGGER})
    write(folder, "old", {"task": "interrogate", "interrogator": "deepbooru", **TAGGER})
    tags, old = (load_profile(folder, name).settings for name in ("tags", "old"))
    assert tags.model_dump(exclude={"task"}) == old.model_dump(exclude={"task"})
    for settings in (tags, old):
        assert settings.interrogating == "deepbooru" and not settings.prompt_sources
        assert settings.interrogation_model("deepbooru") == "builtin:tiny-tagger"
        assert settings.model_key("deepbooru") == "model"


# --------------------------------------------------------------------------- per-image settings


@pytest.fixture
def tags(folder):
    write(folder, "_base", "model: builtin:tiny-sd\nsteps: 8\n")
    write(folder, "tags", "extends: _base\ntask: tags\nmodel: builtin:tiny-tagger\n")
    return load_profile(folder, "tags")


def test_a_per_image_yaml_key_the_task_does_not_use_is_the_files_fault(tags, tmp_path):
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("threshold: 0.3\ndenoising_strength: 0.5\n")
    with pytest.raises(InputError) as caught:
        tags.with_overrides(yaml.safe_load(yaml_file.read_text()), yaml_file, yaml=yaml_file)
    assert str(caught.value) == "a.yaml:2: `denoising_strength` is not used by task `tags`"


def test_png_parameters_the_task_does_not_use_are_dropped(tags, tmp_path):
    found = {"steps": 30, "denoising_strength": 0.6, "prompt": "a fox", "cfg_scale": 5.5}
    settings = tags.with_overrides({"threshold": 0.3}, tmp_path / "a.png", parameters=found)
    assert settings == tags.settings.model_copy(update={"threshold": 0.3})


def test_a_per_image_yaml_may_respell_the_same_work_but_not_change_it(tags, tmp_path):
    same = tags.with_overrides({"task": "interrogate", "interrogator": "deepbooru"}, tmp_path)
    assert same.interrogating == "deepbooru"
    with pytest.raises(InputError) as caught:
        tags.with_overrides({"task": "interrogate"}, tmp_path / "a.yaml")  # clip: another model
    assert "only a profile may" in str(caught.value)


def test_the_daemon_fails_an_input_whose_yaml_sets_a_key_its_task_does_not_use(
    workspace: Workspace, running
):
    workspace.profile("tags", task="tags", **TAGGER)
    running()
    (workspace.inbox / "tags/a.yaml").write_text("threshold: 0.3\nsteps: 12\n")
    workspace.drop("chelsea.png", "tags/a.png")
    report = workspace.inbox / "_failed/tags/a.error.txt"
    wait_for(report.exists)
    assert report.read_text().splitlines()[0] == "a.yaml:2: `steps` is not used by task `tags`"
    assert workspace.outputs("tags") == []


# --------------------------------------------------------------------------- task: tags, run


def test_task_tags_tags_a_sample_exactly_as_interrogate_with_deepbooru(
    workspace: Workspace, running
):
    workspace.profile("tags", task="tags", copy_image=True, **TAGGER)
    workspace.profile(
        "old", task="interrogate", interrogator="deepbooru", copy_image=True, **TAGGER
    )
    running()
    workspace.drop("chelsea.png", "tags/chelsea.png")
    workspace.drop("chelsea.png", "old/chelsea.png")
    wait_for(lambda: workspace.done("tags") and workspace.done("old"))
    new, old = (
        {p.name: p.read_bytes() for p in workspace.outputs(name)} for name in ("tags", "old")
    )
    assert sorted(new) == ["chelsea.json", "chelsea.png", "chelsea.txt"]
    assert new == old  # caption, details and the copied image, byte for byte
    details = json.loads(new["chelsea.json"])
    assert details["interrogator"] == "deepbooru" and details["prompt"]
    assert new["chelsea.png"] == (DATA / "chelsea.png").read_bytes()


def test_task_tags_takes_no_video_and_waits_for_no_companion():
    assert not TASKS["tags"].takes_video
    assert TASKS["tags"].companions.missing(Companions()) is None
    assert TASKS["inpaint"].companions.missing(Companions()) is Kind.MASK


# --------------------------------------------------------------------------- deliver


def test_deliver_writes_what_the_results_task_delivers(tmp_path):
    """A render result and its job are all deliver needs: the result's task (here tags)
    chooses a caption group, and the journal hears of every file before the first is
    written."""
    image = tmp_path / "inbox/tags/cats/a.png"
    image.parent.mkdir(parents=True)
    image.write_bytes((DATA / "chelsea.png").read_bytes())
    settings = Profile.model_validate({"task": "tags", "model": "t", "copy_image": True})
    found = Interrogation("cat, whiskers", "deepbooru", "t", {"tags": []}, {"threshold": 0.2})
    result = RenderResult(settings, interrogation=found, notes=("a note",))
    job = Job(profile="tags", image=image, sub_dir=PurePosixPath("cats"))
    planned: list[list[Path]] = []
    outbox = tmp_path / "outbox"
    deliverer = Deliverer(outbox)

    delivered = deliverer.deliver(job, result, on_planned=planned.append)

    folder = outbox / "tags/cats"
    assert planned == [[folder / "a.txt", folder / "a.json", folder / "a.png"]]
    assert delivered.outputs == planned[0] and delivered.notes == ("a note",)
    assert (folder / "a.txt").read_text() == "cat, whiskers\n"
    assert json.loads((folder / "a.json").read_text())["image"] == "a.png"
    assert (folder / "a.png").read_bytes() == image.read_bytes()
