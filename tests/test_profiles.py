"""Profiles: A1111 defaults, ``extends``, validation messages, reloading and hostile YAML.

Every profile here is a real YAML file in a temporary ``profiles/`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import (
    MAX_EXTENDS_DEPTH,
    ProfileStore,
    check_all,
    load_profile,
    profile_names,
)
from daemon.config.yamlsafe import MAX_SETTINGS_BYTES, YamlProblem, parse_mapping
from daemon.errors import ConfigError, InputError

SHIPPED = Path(__file__).resolve().parent.parent / "profiles"
SAMPLER_LABELS = ("Euler a", "Euler", "LMS", "Heun", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "profiles"
    path.mkdir()
    return path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def load(folder: Path, text: str, name: str = "p"):
    write(folder, name, text)
    return load_profile(folder, name).settings


def problems_of(folder: Path, text: str, name: str = "p") -> list[str]:
    path = write(folder, name, text)
    with pytest.raises(ConfigError) as caught:
        load_profile(folder, name)
    assert all(str(path) in problem for problem in caught.value.problems)
    return caught.value.problems


def rewrite(path: Path, text: str) -> None:
    """Replace a file's content and make sure its mtime moves (coarse clocks)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


# ----------------------------------------------------------------- defaults


def test_a_profile_with_only_a_model_has_a1111_img2img_defaults(folder):
    profile = load(folder, "model: builtin:tiny-sd\n")
    assert profile.task == "img2img"
    assert profile.model == "builtin:tiny-sd"
    assert profile.prompt == "" and profile.negative_prompt == ""
    assert profile.steps == 20
    assert profile.cfg_scale == 7.0
    assert profile.denoising_strength == 0.75
    assert profile.mask_blur == 4
    assert profile.inpainting_fill == "original"
    assert profile.inpaint_full_res is False
    assert profile.inpaint_full_res_padding == 32
    assert profile.inpainting_mask_invert is False
    assert profile.sampler_name == "DPM++ 2M"
    assert profile.scheduler == "Automatic"
    assert profile.seed == -1
    assert profile.width is None and profile.height is None and profile.scale is None
    assert profile.resize_mode is ResizeMode.JUST_RESIZE
    assert profile.batch_size == 1 and profile.n_iter == 1
    assert profile.output_format == "png"
    assert profile.overwrite is False
    assert profile.sampler.sampler == "DPM++ 2M"


def test_a_profile_without_a_model_is_an_error_naming_the_key(folder):
    (problem,) = problems_of(folder, "prompt: x\n")
    assert "model: Field required" in problem


def test_an_empty_profile_file_is_an_empty_mapping_missing_its_model(folder):
    (problem,) = problems_of(folder, "")
    assert "model" in problem


# ----------------------------------------------------------------- extends


def test_extends_merges_and_the_child_wins(folder):
    base = write(folder, "_base", "model: m\nsteps: 10\ncfg_scale: 5\nprompt: from base\n")
    child = write(folder, "child", "extends: _base\nsteps: 30\nprompt: from child\n")
    loaded = load_profile(folder, "child")
    assert loaded.settings.steps == 30
    assert loaded.settings.prompt == "from child"
    assert loaded.settings.cfg_scale == 5.0
    assert loaded.settings.model == "m"
    assert loaded.files == (child, base)
    assert "extends" not in loaded.raw


def test_extends_chains_over_several_levels_nearest_wins(folder):
    write(folder, "_a", "model: m\nsteps: 1\ncfg_scale: 1\nseed: 1\n")
    write(folder, "_b", "extends: _a\nsteps: 2\ncfg_scale: 2\n")
    write(folder, "c", "extends: _b\nsteps: 3\n")
    profile = load_profile(folder, "c").settings
    assert (profile.steps, profile.cfg_scale, profile.seed) == (3, 2.0, 1)


def test_extends_loop_is_an_error(folder):
    write(folder, "a", "model: m\nextends: b\n")
    write(folder, "b", "extends: a\n")
    with pytest.raises(ConfigError, match="makes a loop"):
        load_profile(folder, "a")


def test_extends_itself_is_a_loop(folder):
    write(folder, "a", "model: m\nextends: a\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: extends: 'a' makes a loop"):
        load_profile(folder, "a")


def test_extends_a_missing_parent_names_the_child_and_the_parent(folder):
    child = write(folder, "child", "model: m\nextends: _gone\n")
    with pytest.raises(ConfigError) as caught:
        load_profile(folder, "child")
    message = str(caught.value)
    assert message.startswith(f"{child}: extends: ")
    assert str(folder / "_gone.yaml") in message and "does not exist" in message


def test_extends_depth_is_limited(folder):
    # p0 extends p1 ... : MAX_EXTENDS_DEPTH files in a chain are fine, one more is not.
    for index in range(MAX_EXTENDS_DEPTH + 1):
        parent = f"extends: p{index + 1}\n" if index < MAX_EXTENDS_DEPTH else ""
        write(folder, f"p{index}", f"model: m\nsteps: {index + 1}\n{parent}")
    assert load_profile(folder, "p1").settings.steps == 2  # 8 files
    with pytest.raises(ConfigError, match=f"more than {MAX_EXTENDS_DEPTH} levels"):
        load_profile(folder, "p0")  # 9 files


@pytest.mark.parametrize("parent", ["../outside", "sub/dir", ".hidden"])
def test_extends_must_name_a_profile_not_a_path(folder, parent):
    write(folder, "p", f"model: m\nextends: {parent}\n")
    with pytest.raises(ConfigError, match="must be a profile name"):
        load_profile(folder, "p")


def test_extends_must_be_a_string(folder):
    write(folder, "p", "model: m\nextends: [a, b]\n")
    with pytest.raises(ConfigError, match="must be a profile name"):
        load_profile(folder, "p")


def test_underscore_and_hidden_files_are_not_profiles(folder):
    for name in ("_base", "img2img", "inpaint", ".hidden"):
        write(folder, name, "model: m\n")
    (folder / "notes.txt").write_text("x")
    (folder / "other.yml").write_text("model: m\n")
    assert profile_names(folder) == ["img2img", "inpaint"]
    assert profile_names(folder / "missing") == []


# ----------------------------------------------------------------- values


@pytest.mark.parametrize("value", ["auto", "Auto", " AUTO "])
def test_width_and_height_auto_mean_keep_the_aspect_ratio(folder, value):
    profile = load(folder, f"model: m\nwidth: '{value}'\nheight: {value.strip()}\n")
    assert profile.width is None and profile.height is None


def test_width_and_height_set_explicitly(folder):
    profile = load(folder, "model: m\nwidth: 768\nheight: 512\n")
    assert (profile.width, profile.height) == (768, 512)


@pytest.mark.parametrize(("key", "value", "hint"), [("width", 513, 512), ("height", 12, 8)])
def test_size_must_be_a_multiple_of_8_and_the_message_suggests_one(folder, key, value, hint):
    (problem,) = problems_of(folder, f"model: m\n{key}: {value}\n")
    assert f"{key}: must be a multiple of 8, such as {hint} (got {value})" in problem


def test_scale_together_with_width_is_an_error(folder):
    (problem,) = problems_of(folder, "model: m\nscale: 2\nwidth: 512\n")
    assert "set either scale or width/height, not both" in problem


def test_scale_alone_is_fine(folder):
    assert load(folder, "model: m\nscale: 1.5\nwidth: auto\n").scale == 1.5


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (0, ResizeMode.JUST_RESIZE),
        (1, ResizeMode.CROP_AND_RESIZE),
        (2, ResizeMode.RESIZE_AND_FILL),
        (3, ResizeMode.LATENT_UPSCALE),
        ("'2'", ResizeMode.RESIZE_AND_FILL),
        ("Just resize", ResizeMode.JUST_RESIZE),
        ("Crop and resize", ResizeMode.CROP_AND_RESIZE),
        ("resize_and_fill", ResizeMode.RESIZE_AND_FILL),
        ("Just resize (latent upscale)", ResizeMode.LATENT_UPSCALE),
        ("latent upscale", ResizeMode.LATENT_UPSCALE),
    ],
)
def test_resize_mode_accepts_a1111_integers_and_labels(folder, value, mode):
    assert load(folder, f"model: m\nresize_mode: {value}\n").resize_mode is mode


@pytest.mark.parametrize("value", [4, -1, "stretch", "true"])
def test_an_unknown_resize_mode_lists_the_valid_ones(folder, value):
    (problem,) = problems_of(folder, f"model: m\nresize_mode: {value}\n")
    assert "resize_mode: unknown resize mode" in problem
    assert "0 or 'just resize'" in problem and "3 or 'just resize (latent upscale)'" in problem


@pytest.mark.parametrize(
    ("value", "fill"),
    [
        (0, "fill"),
        (1, "original"),
        (2, "latent noise"),
        (3, "latent nothing"),
        ("Latent Noise", "latent noise"),
        ("FILL", "fill"),
    ],
)
def test_inpainting_fill_accepts_a1111_integers_and_labels(folder, value, fill):
    assert load(folder, f"model: m\ninpainting_fill: {value}\n").inpainting_fill == fill


@pytest.mark.parametrize("value", [4, -1, "blur", "true"])
def test_an_unknown_inpainting_fill_is_an_error(folder, value):
    (problem,) = problems_of(folder, f"model: m\ninpainting_fill: {value}\n")
    assert "inpainting_fill:" in problem


@pytest.mark.parametrize(
    ("value", "fmt"),
    [("jpeg", "jpg"), ("JPEG", "jpg"), (".jpg", "jpg"), ("PNG", "png"), ("webp", "webp")],
)
def test_output_format_is_normalised(folder, value, fmt):
    assert load(folder, f"model: m\noutput_format: '{value}'\n").output_format == fmt


def test_an_unsupported_output_format_is_an_error(folder):
    (problem,) = problems_of(folder, "model: m\noutput_format: gif\n")
    assert "output_format:" in problem and "'gif'" in problem


@pytest.mark.parametrize(
    ("value", "inverted"),
    [
        ("Inpaint not masked", True),
        ("inpaint masked", False),
        (1, True),
        (0, False),
        ("true", True),
    ],
)
def test_inpainting_mask_invert_accepts_a1111_labels(folder, value, inverted):
    assert (
        load(folder, f"model: m\ninpainting_mask_invert: {value}\n").inpainting_mask_invert
        is inverted
    )


def test_an_unknown_sampler_lists_the_valid_labels(folder):
    (problem,) = problems_of(folder, "model: m\nsampler_name: Eulerish\n")
    assert "unknown sampler 'Eulerish'" in problem
    for label in SAMPLER_LABELS:
        assert label in problem


def test_an_unknown_sampler_message_names_the_key(folder):
    (problem,) = problems_of(folder, "model: m\nsampler_name: Eulerish\n")
    assert "sampler_name" in problem


def test_a1111_combined_sampler_labels_carry_their_schedule(folder):
    profile = load(folder, "model: m\nsampler_name: DPM++ 2M Karras\n")
    assert (profile.sampler.sampler, profile.sampler.schedule) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("steps: 0", "steps"),
        ("steps: 151", "steps"),
        ("cfg_scale: 31", "cfg_scale"),
        ("denoising_strength: 1.5", "denoising_strength"),
        ("seed: -2", "seed"),
        ("mask_blur: 65", "mask_blur"),
        ("batch_size: 0", "batch_size"),
        ("output_quality: 101", "output_quality"),
        ("task: outpaint", "task"),
        ("stpes: 20", "stpes"),
    ],
)
def test_each_bad_value_names_the_file_and_the_key(folder, text, key):
    (problem,) = problems_of(folder, f"model: m\n{text}\n")
    assert f"{key}" in problem
    assert problem.startswith(str(folder / "p.yaml") + ":2: ")  # the file and the line


# ----------------------------------------------------------------- check_all


def test_check_all_reports_every_problem_of_every_profile_at_once(folder):
    write(folder, "_base", "model: m\n")
    write(folder, "good", "extends: _base\n")
    write(folder, "typo", "extends: _base\nstpes: 20\n")
    write(folder, "sizes", "extends: _base\nwidth: 513\nsteps: 0\n")
    write(folder, "orphan", "extends: _nothing\n")
    write(folder, "notyaml", "model: [unclosed\n")
    write(folder, "sampler", "extends: _base\nsampler_name: Nope\n")
    loaded, problems = check_all(folder)
    assert sorted(loaded) == ["good"]
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert f"{folder / 'typo.yaml'}:2: unknown key 'stpes'; did you mean 'steps'?" in text
    assert f"{folder / 'sizes.yaml'}:2: width: must be a multiple of 8" in text
    assert f"{folder / 'sizes.yaml'}:3: steps:" in text
    assert f"{folder / 'orphan.yaml'}: extends:" in text
    assert f"{folder / 'notyaml.yaml'}:2: it is not valid YAML" in text
    assert f"{folder / 'sampler.yaml'}: sampler_name / scheduler: unknown sampler 'Nope'" in text


def test_check_all_on_an_empty_or_missing_folder_says_so(folder):
    assert check_all(folder) == ({}, [f"profiles folder {folder} holds no profile (<name>.yaml)"])
    missing = folder / "nope"
    assert check_all(missing) == ({}, [f"profiles folder {missing} does not exist"])


def test_check_all_reports_a_profile_named_with_a_backslash(folder):
    write(folder, "good", "model: m\n")
    write(folder, "a\\b", "model: m\n")
    loaded, problems = check_all(folder)
    assert sorted(loaded) == ["good"]
    assert len(problems) == 1 and "a\\b" in problems[0]


def test_every_shipped_profile_validates():
    loaded, problems = check_all(SHIPPED)
    assert problems == []
    assert sorted(loaded) == [
        "edit",
        "img2img",
        "inpaint",
        "inpaint_sketch",
        "interrogate",
        "live",
        "sketch",
        "tags",
    ]
    assert "_base" not in loaded
    live = loaded.pop("live").settings
    assert (live.task, live.live, live.seed) == ("img2img", True, 1234), "a kept seed"
    assert live.denoising_strength <= 0.4
    assert loaded.pop("interrogate").settings.model == "builtin:tiny-interrogator"
    edit = loaded.pop("edit").settings
    assert (edit.task, edit.model) == ("edit", "builtin:tiny-flux-kontext")
    tags = loaded.pop("tags").settings
    assert (tags.task, tags.interrogator, tags.model) == (
        "interrogate",
        "deepbooru",
        "builtin:tiny-tagger",
    )
    for name, profile in loaded.items():
        assert profile.settings.task == name
        assert profile.files[-1] == SHIPPED / "_base.yaml"
        assert profile.settings.model == "builtin:tiny-sd"
    assert loaded["inpaint"].settings.needs_mask
    assert loaded["sketch"].settings.needs_sketch
    assert loaded["inpaint_sketch"].settings.needs_sketch


# ----------------------------------------------------------------- reloading


def test_profile_store_reloads_after_the_file_changes(folder):
    path = write(folder, "p", "model: m\nsteps: 20\n")
    store = ProfileStore(folder)
    first = store.get("p")
    assert first.settings.steps == 20
    assert store.get("p") is first  # unchanged: cached
    rewrite(path, "model: m\nsteps: 35\nprompt: edited\n")
    second = store.get("p")
    assert second.settings.steps == 35 and second.settings.prompt == "edited"
    assert store.get("p") is second


def test_profile_store_reloads_when_a_parent_changes(folder):
    base = write(folder, "_base", "model: m\ncfg_scale: 7\n")
    write(folder, "_mid", "extends: _base\nsteps: 10\n")
    write(folder, "p", "extends: _mid\n")
    store = ProfileStore(folder)
    assert store.get("p").settings.cfg_scale == 7.0
    rewrite(base, "model: m\ncfg_scale: 3.5\n")
    assert store.get("p").settings.cfg_scale == 3.5


def test_profile_store_reports_a_broken_edit_and_recovers_when_fixed(folder):
    path = write(folder, "p", "model: m\n")
    store = ProfileStore(folder)
    assert store.get("p").settings.steps == 20
    rewrite(path, "model: m\nsteps: lots\n")
    with pytest.raises(ConfigError, match="steps"):
        store.get("p")
    rewrite(path, "model: m\nsteps: 12\n")
    assert store.get("p").settings.steps == 12


def test_profile_store_reports_a_deleted_profile(folder):
    path = write(folder, "p", "model: m\n")
    store = ProfileStore(folder)
    store.get("p")
    path.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        store.get("p")
    assert not store.exists("p")


def test_profile_store_exists(folder):
    write(folder, "p", "model: m\n")
    store = ProfileStore(folder)
    assert store.exists("p") and not store.exists("q")


# ----------------------------------------------------------------- per-image overrides


@pytest.fixture
def loaded(folder):
    write(folder, "_base", "model: m\nsteps: 10\nprompt: base\n")
    write(folder, "p", "extends: _base\ncfg_scale: 5\n")
    return load_profile(folder, "p")


def test_per_image_overrides_are_laid_over_the_profile(loaded, tmp_path):
    profile = loaded.with_overrides({"steps": 3, "prompt": "mine"}, tmp_path / "a.yaml")
    assert (profile.steps, profile.prompt, profile.cfg_scale, profile.model) == (
        3,
        "mine",
        5.0,
        "m",
    )
    assert loaded.settings.steps == 10 and loaded.raw["steps"] == 10  # the profile is untouched


@pytest.mark.parametrize("key", ["model", "extends"])
def test_per_image_yaml_may_not_choose_the_model_or_a_base(loaded, tmp_path, key):
    with pytest.raises(InputError) as caught:
        loaded.with_overrides({key: "/etc/passwd", "steps": 3}, tmp_path / "shots" / "a.yaml")
    message = str(caught.value)
    assert message.startswith("a.yaml sets ")
    assert f"'{key}'" in message and "profiles/p.yaml" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"steps": 0}, "a.yaml: steps: "),
        ({"denoising_strength": "lots"}, "a.yaml: denoising_strength: "),
        ({"width": 100}, "a.yaml: width: must be a multiple of 8"),
        ({"stepz": 3}, "a.yaml: unknown key 'stepz'; did you mean 'steps'?"),
    ],
)
def test_invalid_per_image_values_are_the_files_fault(loaded, tmp_path, overrides, expected):
    with pytest.raises(InputError) as caught:
        loaded.with_overrides(overrides, tmp_path / "a.yaml")
    assert str(caught.value).startswith(expected)
    assert str(tmp_path) not in str(caught.value)  # only the name: reports go next to it


def test_a_per_image_yaml_problem_points_at_its_line(loaded, tmp_path):
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("prompt: mine\nsteps: 0\n")
    with pytest.raises(InputError) as caught:
        loaded.with_overrides({"prompt": "mine", "steps": 0}, yaml_file, yaml=yaml_file)
    assert str(caught.value).startswith("a.yaml:2: steps: ")


# ----------------------------------------------------------------- hostile YAML


def test_yaml_aliases_are_refused(folder):
    text = 'model: m\na: &a ["x", "x", "x"]\nb: &b [*a, *a, *a]\nprompt: *b\n'
    (problem,) = problems_of(folder, text)
    assert "aliases" in problem


def test_an_oversized_yaml_file_is_refused(folder):
    text = "model: m\n" + "# " + "x" * MAX_SETTINGS_BYTES + "\n"
    (problem,) = problems_of(folder, text)
    assert "larger than 256 KiB" in problem


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- model: m\n", "must be a mapping of key: value lines, not a list"),
        ("just text\n", "not a str"),
        ("model: m\n1: one\n", "keys must be names"),
        ("model: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_yaml_that_is_not_a_plain_mapping_is_refused(folder, text, words):
    (problem,) = problems_of(folder, text)
    assert words in problem


def test_parse_mapping_accepts_an_anchor_without_an_alias():
    assert parse_mapping("a: &x 1\nb: 2\n") == {"a": 1, "b": 2}
    with pytest.raises(YamlProblem, match="aliases"):
        parse_mapping("a: &x 1\nb: *x\n")


def test_a_settings_fingerprint_is_sorted_and_follows_every_value():
    """Live inputs and video work folders are known by this fingerprint: it must not change
    when the key groups are declared in another order, and must change with any value."""
    import json

    from daemon.config.profiles import Profile

    base = Profile(model="builtin:tiny-sd")
    keys = list(json.loads(base.fingerprint()))
    assert keys == sorted(keys) and "denoising_strength" in keys
    assert base.fingerprint() == Profile(model="builtin:tiny-sd").fingerprint()
    assert base.fingerprint() != base.model_copy(update={"steps": 21}).fingerprint()
