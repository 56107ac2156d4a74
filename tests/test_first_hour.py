"""The first hour with a real model and a real service (issue 21): one bad profile never
stops the daemon, a missing model says where to put it, and the commands a newcomer types
work as the README writes them. Every test runs ``python -m daemon`` in a workspace."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from daemon.models.builtin import ensure_builtin
from tests.test_cli import FAST, JOBS, QUICK, Process, cli, drop, files, line_of, workspace

MISSING = "realisticVision_v51"  # the README's own worked example


def test_run_serves_the_good_profile_while_a_broken_one_and_a_missing_model_wait(
    tmp_path: Path, state_dir: Path
) -> None:
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    profiles = {
        "good": FAST,
        "broken": {**FAST, "stpes": 20},
        "portraits": {**FAST, "model": MISSING},
    }
    root = workspace(tmp_path, state_dir, profiles, models_dir="models", stability_delay=0.2)
    drop(root, "chelsea.png", "broken/a.png")
    drop(root, "chelsea.png", "portraits/a.png")
    drop(root, "astronaut.png", "portraits/b.png")
    process = Process(root, "run")
    try:
        process.wait_for_line("watching", QUICK)
        drop(root, "chelsea.png", "good/a.png")
        process.wait_for_line("done good/a.png", JOBS)
        broken = root / "profiles" / "broken.yaml"
        line = line_of(broken, "stpes")
        assert f"profiles/broken.yaml:{line}: unknown key 'stpes'" in process.output
        process.wait_for_line(f"profile portraits: model '{MISSING}' not found", QUICK)
        assert files(root / "inbox" / "portraits") == ["a.png", "b.png"]
        assert files(root / "inbox" / "broken") == ["a.png"]

        # The model is copied in: its files go, without a restart.
        tiny = ensure_builtin("tiny-sd", state_dir / "builtin")
        shutil.copytree(tiny, models / "Stable-diffusion" / f".{MISSING}.partial")
        (models / "Stable-diffusion" / f".{MISSING}.partial").rename(
            models / "Stable-diffusion" / MISSING
        )
        process.wait_for_line("done portraits/b.png", JOBS)
        process.wait_for_line("done portraits/a.png", JOBS)
        # The profile is fixed: its file goes too. (Saved whole, as editors save: a file
        # truncated and then written may be read empty in between, and said invalid again.)
        fixed = broken.with_name(".broken.yaml.tmp")
        fixed.write_text(yaml.safe_dump(FAST))
        fixed.replace(broken)
        process.wait_for_line("done broken/a.png", JOBS)
        assert process.popen.poll() is None, process.output  # it never stopped
    finally:
        process.kill()
    invalid = [line for line in process.lines if "profile broken is invalid" in line]
    assert len(invalid) == 1, "\n".join(invalid)  # at start-up; its waiting file adds nothing
    assert "its files wait in the inbox until it is fixed" in invalid[0]
    said = [line for line in process.lines if f"model '{MISSING}' not found" in line]
    assert len(said) == 1, "\n".join(said)  # once, for two waiting files
    # What was looked for and where, and what to do.
    assert "realisticVision_v51.safetensors, .ckpt" in said[0]
    # Paths below the working folder are shown relative to it, as the README writes them.
    assert f"{root} (the working folder)" in said[0]
    assert "models/Stable-diffusion (an A1111 sub-folder of models_dir)" in said[0]
    assert "Put the file in models/Stable-diffusion (models_dir is models" in said[0]
    assert "from img2imgd.yaml)" in said[0]
    assert "its models are there now" in process.output
    assert files(root / "outbox") == [
        "broken/a.png", "broken/a.txt", "good/a.png", "good/a.txt",
        "portraits/a.png", "portraits/a.txt", "portraits/b.png", "portraits/b.txt",
    ]  # fmt: skip
    assert files(root / "inbox" / "_failed") == []


def test_check_says_where_to_put_a_model_and_where_models_dir_is_set(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": MISSING}}, models_dir="m")
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    assert f"profiles/p.yaml: model '{MISSING}' not found" in result.stdout
    assert f"{MISSING}, {MISSING}.safetensors, .ckpt, .pt, .pth or .bin" in result.stdout
    assert "m/Stable-diffusion (an A1111 sub-folder of models_dir)" in result.stdout
    assert "(models_dir is m, from img2imgd.yaml)" in result.stdout
    assert "img2imgd check" not in result.stdout  # check never sends the user to check
    assert not (root / "inbox").exists()  # nothing loaded, nothing made


def test_without_a_config_file_a_missing_model_says_how_to_make_one(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": MISSING}})
    (root / "img2imgd.yaml").unlink()
    (root / "state").mkdir(exist_ok=True)
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    assert "no models_dir is set, so no models folder was searched" in result.stdout
    assert f"there is no img2imgd.yaml in {root} yet: create one with `img2imgd init`" in (
        result.stdout
    )
    assert "set `models_dir: /path/to/stable-diffusion-webui/models` in it" in result.stdout


def test_with_a_config_file_but_no_models_dir_it_names_that_file(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": MISSING}})
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    assert "set `models_dir: /path/to/stable-diffusion-webui/models` in img2imgd.yaml" in (
        result.stdout
    )


def test_init_writes_a_config_that_check_accepts_and_global_options_follow_the_command(
    tmp_path, state_dir
):
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": MISSING}})
    (root / "img2imgd.yaml").unlink()
    models = tmp_path / "my models"
    (models / "Stable-diffusion").mkdir(parents=True)
    tiny = ensure_builtin("tiny-sd", state_dir / "builtin")
    shutil.copytree(tiny, models / "Stable-diffusion" / MISSING)

    written = cli(root, "init", "--config", "conf/img2imgd.yaml", "--models-dir", str(models))
    assert written.returncode == 0, written.stdout
    config = root / "conf" / "img2imgd.yaml"
    text = config.read_text()
    assert yaml.safe_load(text)["models_dir"] == str(models)
    assert text.count("  # ") > 20  # the example's comments come along

    again = cli(root, "init", "--config", "conf/img2imgd.yaml")
    assert again.returncode == 0 and "already exists; left as it is" in again.stdout
    assert config.read_text() == text  # never overwritten

    # --config after the command, as before it; the relative folders are the config's.
    shutil.rmtree(root / "conf" / "profiles")  # init's copy of the shipped ones
    shutil.move(root / "profiles", root / "conf" / "profiles")
    checked = cli(root, "check", "--config", "conf/img2imgd.yaml")
    assert checked.returncode == 0, checked.stdout
    assert "1 profile(s) are valid: p" in checked.stdout
    before = cli(root, "--config", "conf/img2imgd.yaml", "check")
    assert before.returncode == 0, before.stdout


def test_the_packaged_example_config_is_the_one_in_the_checkout() -> None:
    """``img2imgd init`` writes the packaged copy; the README points at the checkout's."""
    repo = Path(__file__).resolve().parent.parent
    packaged = repo / "daemon" / "data" / "img2imgd.example.yaml"
    assert packaged.read_text() == (repo / "img2imgd.example.yaml").read_text()


def test_an_invalid_config_file_still_stops_start_up(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": FAST}, inbx="x")
    result = cli(root, "run", timeout=QUICK)
    assert result.returncode == 2, result.stdout
    assert re.search(r"img2imgd\.yaml:\d+: unknown key 'inbx'", result.stdout)
