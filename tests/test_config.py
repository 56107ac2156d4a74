"""img2imgd.yaml: defaults, path resolution and error messages, read from real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.config.settings import DEFAULT_CONFIG_NAME, Settings, load_settings
from daemon.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write_config(folder: Path, text: str, name: str = DEFAULT_CONFIG_NAME) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def config_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == caught.value.problems[0]
    return caught.value.problems


# ----------------------------------------------------------------- defaults and paths


def test_without_a_config_file_the_defaults_are_relative_to_the_working_directory(tmp_path):
    settings = load_settings(None, cwd=tmp_path)
    assert settings.inbox == tmp_path / "inbox"
    assert settings.outbox == tmp_path / "outbox"
    assert settings.profiles == tmp_path / "profiles"
    assert settings.state_dir == tmp_path / "state"
    assert settings.models_dir is None
    assert settings.stability_delay == 2.0
    assert settings.pairing_window == 30.0
    assert settings.rescan_interval == 60.0
    assert settings.polling is False
    assert settings.device == "auto"
    assert settings.log_level == "INFO"


def test_without_cwd_argument_the_process_working_directory_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings.inbox == tmp_path.resolve() / "inbox"
    assert settings.inbox.is_absolute()


def test_img2imgd_yaml_in_the_working_directory_is_read_when_no_config_is_given(tmp_path):
    write_config(tmp_path, "inbox: drop\nstability_delay: 0.5\n")
    settings = load_settings(None, cwd=tmp_path)
    assert settings.inbox == tmp_path.resolve() / "drop"
    assert settings.outbox == tmp_path.resolve() / "outbox"
    assert settings.stability_delay == 0.5


def test_relative_paths_are_resolved_against_the_config_files_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = write_config(
        tmp_path / "etc" / "img2imgd",
        "inbox: data/in\noutbox: ../out\nprofiles: profiles\n"
        "state_dir: .state\nmodels_dir: models\n",
        name="custom.yaml",
    )
    settings = load_settings(config, cwd=elsewhere)
    base = (tmp_path / "etc" / "img2imgd").resolve()
    assert settings.inbox == base / "data" / "in"
    assert settings.outbox == (tmp_path / "etc" / "out").resolve()  # '..' normalised away
    assert ".." not in settings.outbox.parts
    assert settings.profiles == base / "profiles"
    assert settings.state_dir == base / ".state"
    assert settings.models_dir == base / "models"


def test_a_relative_config_path_still_resolves_against_its_own_folder(tmp_path, monkeypatch):
    write_config(tmp_path / "conf", "inbox: in\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("conf") / DEFAULT_CONFIG_NAME)
    assert settings.inbox == (tmp_path / "conf" / "in").resolve()


def test_absolute_paths_are_kept(tmp_path):
    target = tmp_path / "absolute" / "inbox"
    config = write_config(tmp_path / "conf", f"inbox: {target}\n")
    assert load_settings(config).inbox == target


def test_tilde_is_expanded_to_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    config = write_config(
        tmp_path / "conf",
        "inbox: ~/hot/inbox\nmodels_dir: ~/sd/models\nstate_dir: '~'\n",  # bare ~ is YAML null
    )
    settings = load_settings(config)
    assert settings.inbox == home / "hot" / "inbox"
    assert settings.models_dir == home / "sd" / "models"
    assert settings.state_dir == home
    assert "~" not in str(settings.inbox)


def test_an_empty_config_file_means_the_defaults_beside_it(tmp_path):
    config = write_config(tmp_path / "conf", "# nothing set\n")
    settings = load_settings(config)
    assert settings.inbox == (tmp_path / "conf" / "inbox").resolve()
    assert settings.stability_delay == 2.0


def test_the_shipped_example_config_is_valid(tmp_path):
    settings = load_settings(REPO / "img2imgd.example.yaml")
    assert settings.inbox == REPO / "inbox"
    assert settings.profiles == (REPO / "profiles").resolve()  # a link to daemon/data/profiles
    assert settings.state_dir == REPO / "state"
    assert settings.stability_delay == 2.0
    assert settings.max_input_bytes == 536870912


def test_settings_are_immutable():
    with pytest.raises(ValidationError):
        Settings().inbox = Path("/x")  # type: ignore[misc]


# ----------------------------------------------------------------- errors


def test_a_missing_config_file_given_explicitly_is_an_error(tmp_path):
    missing = tmp_path / "nope" / "img2imgd.yaml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_settings(missing, cwd=tmp_path)
    assert str(missing) in str(caught.value)


def test_a_config_folder_instead_of_a_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path)


def test_an_unknown_key_names_the_file_and_the_key(tmp_path):
    config = write_config(tmp_path, "inbx: somewhere\n")
    (problem,) = config_problems(config)
    assert str(config) in problem
    assert f"{config}:1: unknown key 'inbx'; did you mean 'inbox'?" in problem


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("stability_delay: soon\n", "stability_delay", "valid number"),
        ("polling: sometimes\n", "polling", "valid boolean"),
        ("max_image_pixels: lots\n", "max_image_pixels", "valid integer"),
        ("inbox: [a, b]\n", "inbox", "path"),
        ("log_level: LOUD\n", "log_level", "'INFO'"),
    ],
)
def test_a_wrong_type_names_the_file_the_key_and_the_value(tmp_path, text, key, words):
    config = write_config(tmp_path, text)
    (problem,) = config_problems(config)
    assert problem.startswith(f"{config}:1: {key}: ")  # the file, its line, the key
    assert words.lower() in problem.lower()


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("stability_delay: -1\n", "stability_delay", "-1"),
        ("stability_delay: 3601\n", "stability_delay", "3601"),
        ("rescan_interval: 0\n", "rescan_interval", "0"),
        ("poll_interval: 601\n", "poll_interval", "601"),
        ("retry_delay: 0\n", "retry_delay", "0"),
        ("max_image_pixels: 0\n", "max_image_pixels", "0"),
        ("max_input_bytes: -5\n", "max_input_bytes", "-5"),
        ("pairing_window: 86401\n", "pairing_window", "86401"),
    ],
)
def test_an_out_of_range_value_names_the_file_the_key_and_the_value(tmp_path, text, key, value):
    config = write_config(tmp_path, text)
    (problem,) = config_problems(config)
    assert problem.startswith(f"{config}:1: {key}: ")
    assert f"(got {value})" in problem
    assert "greater than" in problem or "less than" in problem


def test_every_problem_of_the_config_is_listed(tmp_path):
    config = write_config(tmp_path, "inbx: a\nstability_delay: -1\nlog_level: LOUD\n")
    problems = config_problems(config)
    assert len(problems) == 3
    # Each points at its line, as a compiler does: `img2imgd.yaml:2: stability_delay: …`.
    assert sorted(p.split(": ")[0] for p in problems) == [f"{config}:{n}" for n in (1, 2, 3)]
    joined = "\n".join(problems)
    assert "inbx" in joined and "stability_delay" in joined and "log_level" in joined


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- inbox\n- outbox\n", "must be a mapping"),
        ("inbox: [unclosed\n", "not valid YAML"),
        ("base: &a x\ninbox: *a\n", "aliases"),
        ("1: x\n", "keys must be names"),
    ],
)
def test_a_config_that_is_not_a_mapping_of_names_is_refused(tmp_path, text, words):
    config = write_config(tmp_path, text)
    (problem,) = config_problems(config)
    assert problem.startswith(f"{config}:")  # and the line, when the YAML parser knows it
    assert words in problem


def test_an_oversized_config_file_is_refused_before_parsing(tmp_path):
    config = write_config(tmp_path, "# padding\n" * 30_000 + "inbox: in\n")
    (problem,) = config_problems(config)
    assert str(config) in problem and "larger than" in problem


@pytest.mark.parametrize("outbox", ["inbox", "inbox/results"])
def test_an_outbox_inside_the_inbox_is_refused(tmp_path, outbox):
    config = write_config(tmp_path, f"inbox: inbox\noutbox: {outbox}\n")
    problems = config_problems(config)
    assert any("outbox" in problem for problem in problems)
