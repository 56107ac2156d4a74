"""``python -m daemon check | once | run`` as a user runs them: a subprocess in a workspace.

Each process that runs a job imports torch (several seconds on a small CPU), so those are
few: the ``once`` runs with jobs start together. A daemon locks its state folder and keeps
its journal there, so each workspace has its own ``state/``; its ``state/builtin`` links to
the session's shared folder so that the built-in model is generated once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.support.workspace import Workspace
from tests.support.workspace import drop as drop_file

REPO = Path(__file__).resolve().parent.parent
SHIPPED_PROFILES = REPO / "profiles"
FAST = {
    "model": "builtin:tiny-sd",
    "steps": 2,
    "max_pixels": 4096,
    "seed": 7,
    "sampler_name": "Euler",
}
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
QUICK = 60  # s; a run that starts no model finishes in about one
JOBS = 240  # s; a run that loads torch and the model (generous for a loaded CI machine)


def workspace(
    root: Path, state_dir: Path, profiles: dict[str, dict[str, Any]], **config: Any
) -> Path:
    """A folder with img2imgd.yaml and profiles/ and nothing else: the config names no inbox,
    outbox or profiles folder and a relative state folder, so they resolve inside it, and the
    daemon makes the inbox folders itself."""
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    for name, keys in profiles.items():
        (root / "profiles" / f"{name}.yaml").write_text(yaml.safe_dump(keys))
    defaults = {"inbox": None, "outbox": None, "profiles": None, "state_dir": "state"}
    Workspace(root, state_dir).config_file(**{**defaults, **config})
    return root


def line_of(path: Path, key: str) -> int:
    """The line (from 1) where a YAML file sets `key`."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.startswith(f"{key}:"))


def drop(root: Path, sample: str, relative: str) -> Path:
    """Copy a sample into the inbox with a temporary name, then rename it into place."""
    return drop_file(sample, root / "inbox" / relative)


def cli(
    root: Path, *args: str, timeout: float = QUICK, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=root,
        env=ENV if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


class Process:
    """A running ``python -m daemon``; its merged output is collected line by line."""

    def __init__(self, root: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            cwd=root,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="cli-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.popen.poll() is not None:
                self._reader.join(5)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(
                    f"exited {self.popen.returncode} before {text!r}:\n{self.output}"
                )
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output}")

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout``."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(30)
        self._reader.join(10)


def files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def hidden(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")] if folder.exists() else []


# ----------------------------------------------------------------- check


def test_check_passes_on_the_shipped_profiles(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {})
    shutil.copytree(SHIPPED_PROFILES, root / "profiles", dirs_exist_ok=True)
    result = cli(root, "check")
    assert result.returncode == 0, result.stdout
    assert (
        "8 profile(s) are valid: edit, img2img, inpaint, inpaint_sketch, interrogate, live, "
        "sketch, tags" in result.stdout
    )
    assert not (root / "inbox").exists()  # check only reads


def test_check_lists_every_problem_of_every_broken_profile(tmp_path, state_dir):
    root = workspace(
        tmp_path,
        state_dir,
        {
            "good": FAST,
            "typo": {**FAST, "stpes": 20},
            "sizes": {**FAST, "width": 513, "denoising_strength": 2},
        },
    )
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    profiles = root / "profiles"
    # Each names its file (relative to the working folder, as the README writes it) and line,
    # and a misspelt key the nearest valid one.
    typo, sizes = profiles / "typo.yaml", profiles / "sizes.yaml"
    said = result.stdout
    assert f"profiles/typo.yaml:{line_of(typo, 'stpes')}: unknown key 'stpes'; did you mean" in said
    assert f"profiles/sizes.yaml:{line_of(sizes, 'width')}: width: must be a multiple of 8" in said
    assert f"profiles/sizes.yaml:{line_of(sizes, 'denoising_strength')}: denoising_str" in said
    assert "3 problem(s) found" in result.stdout


def test_check_warns_of_prompts_that_are_text_to_a1111(tmp_path, state_dir):
    keys = {**FAST, "prompt": "a [cat:dog:soon]", "negative_prompt": "ugly | bad"}
    root = workspace(tmp_path, state_dir, {"p": keys})
    result = cli(root, "check")
    assert result.returncode == 0, result.stdout  # A1111 takes them too: said, not refused
    path = root / "profiles" / "p.yaml"
    prompt, negative = line_of(path, "prompt"), line_of(path, "negative_prompt")
    assert f"profiles/p.yaml:{prompt}: prompt: [cat:dog:soon] ends in 'soon', not a number" in (
        result.stdout
    )
    assert f"profiles/p.yaml:{negative}: negative_prompt: it has a '|' outside" in result.stdout


@pytest.mark.parametrize("model", ["nope.safetensors", "/no/such/folder/model.safetensors"])
def test_check_reports_a_missing_model_path(tmp_path, state_dir, model):
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": model}})
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    assert f"profiles/p.yaml: model '{model}' not found" in result.stdout
    assert "1 problem(s) found" in result.stdout


def test_check_reports_a_missing_relative_checkpoint_path(tmp_path, state_dir):
    model = "Stable-diffusion/v1-5-typo.safetensors"
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": model}})
    result = cli(root, "check")
    assert result.returncode == 2, result.stdout
    assert f"model '{model}' not found" in result.stdout


def test_a_missing_config_file_exits_2(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": FAST})
    result = cli(root, "--config", "elsewhere.yaml", "check")
    assert result.returncode == 2, result.stdout
    assert "config file elsewhere.yaml does not exist" in result.stdout


# ----------------------------------------------------------------- once


def test_once_with_an_invalid_config_exits_2_naming_file_and_key(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": FAST}, stability_delay=-1, inbx="x")
    drop(root, "chelsea.png", "p/a.png")
    result = cli(root, "once")
    assert result.returncode == 2, result.stdout
    said = result.stdout  # the config file as the user named it: relative to the working folder
    assert re.search(r" img2imgd\.yaml:\d+: unknown key 'inbx'; did you mean 'inbox'", said)
    assert re.search(r" img2imgd\.yaml:\d+: stability_delay:", said)
    assert files(root / "inbox") == ["p/a.png"] and not (root / "outbox").exists()


def test_once_with_a_missing_model_leaves_its_files_exits_3_and_says_why(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"p": {**FAST, "model": str(tmp_path / "no-such-model")}})
    drop(root, "chelsea.png", "p/a.png")
    result = cli(root, "once")
    assert result.returncode == 3, result.stdout
    assert "0 done, 0 failed, 1 left in the inbox" in result.stdout
    assert re.search(r"inbox/p/: files left waiting: model '.*no-such-model' not found", (
        result.stdout
    ))  # fmt: skip
    assert files(root / "inbox") == ["p/a.png"]
    assert files(root / "outbox") == []


@pytest.fixture(scope="module")
def once_runs(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[dict]:
    """Three `once` runs started together; each test reads its own result."""
    good = workspace(tmp_path_factory.mktemp("good"), state_dir, {"img2img": FAST})
    drop(good, "chelsea.png", "img2img/a.png")
    drop(good, "astronaut.png", "img2img/shoot/day 1/b.png")

    mixed = workspace(tmp_path_factory.mktemp("mixed"), state_dir, {"img2img": FAST})
    drop(mixed, "chelsea.png", "img2img/good.png")
    (mixed / "inbox" / "img2img" / "broken.png").write_text("this is not an image")
    (mixed / "inbox" / "img2img" / "notes.doc").write_text("not for img2imgd")

    orphan = workspace(tmp_path_factory.mktemp("orphan"), state_dir, {"img2img": FAST})
    drop(orphan, "chelsea.png", "typo/a.png")  # a folder without a profile

    started = time.monotonic()
    runs = {name: (root, Process(root, "once")) for name, root in
            (("good", good), ("mixed", mixed), ("orphan", orphan))}  # fmt: skip
    results = {}
    try:
        for name in ("good", "mixed", "orphan"):
            root, process = runs[name]
            # The orphan run loads no model: by the time the others are done it is long done.
            timeout = JOBS if name != "orphan" else max(2.0, 15 - (time.monotonic() - started))
            results[name] = (root, process.wait(timeout), process)
    finally:
        for _, process in runs.values():
            process.kill()
    yield results


def test_once_on_two_good_images_exits_0_with_outputs_and_archived_inputs(once_runs):
    root, code, process = once_runs["good"]
    assert code == 0, process.output
    assert files(root / "outbox") == [
        "img2img/a.png",
        "img2img/a.txt",
        "img2img/shoot/day 1/b.png",
        "img2img/shoot/day 1/b.txt",
    ]
    assert files(root / "inbox" / "_done") == ["img2img/a.png", "img2img/shoot/day 1/b.png"]
    assert files(root / "inbox" / "img2img") == []
    assert hidden(root / "outbox") == [] and hidden(root / "inbox") == []
    assert "2 done, 0 failed, 0 left in the inbox" in process.output


def test_once_with_a_bad_file_exits_1_and_the_bad_file_is_failed_with_a_report(once_runs):
    root, code, process = once_runs["mixed"]
    assert code == 1, process.output
    assert files(root / "outbox") == ["img2img/good.png", "img2img/good.txt"], process.output
    assert files(root / "inbox" / "_done") == ["img2img/good.png"]
    failed = root / "inbox" / "_failed" / "img2img"
    assert files(failed) == ["broken.error.txt", "broken.png", "notes.doc", "notes.error.txt"]
    assert (failed / "broken.png").read_text() == "this is not an image"
    broken = (failed / "broken.error.txt").read_text().splitlines()
    assert "broken.png" in broken[0]
    notes = (failed / "notes.error.txt").read_text().splitlines()
    assert notes[0].startswith("notes.doc is not a file type img2imgd handles")
    assert files(root / "inbox" / "img2img") == []
    assert "1 done, 2 failed, 0 left in the inbox" in process.output


def test_once_with_files_in_a_folder_without_profile_leaves_them_and_exits_3(once_runs):
    root, code, process = once_runs["orphan"]
    assert code == 3, f"exit code {code} (None: still running after 15 s)\n{process.output}"
    assert files(root / "inbox") == ["typo/a.png"]
    assert "inbox/typo/: files left waiting: there is no profile of that name" in process.output


# ----------------------------------------------------------------- run and SIGTERM


def test_run_exits_0_promptly_on_sigterm_when_idle(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"img2img": FAST})
    process = Process(root, "run")
    try:
        process.wait_for_line("watching", QUICK)
        assert (root / "inbox" / "img2img").is_dir()  # created for the profile
        started = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        code = process.wait(20)
        assert code == 0, process.output
        assert time.monotonic() - started < 20
        assert "SIGTERM received" in process.output and "stopped" in process.output
    finally:
        process.kill()


def test_run_sigterm_during_a_job_loses_nothing_and_leaves_no_partial_output(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"img2img": FAST})
    process = Process(root, "run")
    try:
        process.wait_for_line("watching", QUICK)
        drop(root, "chelsea.png", "img2img/shot/a.png")
        process.wait_for_line("loading model", JOBS)
        process.popen.send_signal(signal.SIGTERM)
        code = process.wait(JOBS)
        assert code == 0, process.output
    finally:
        process.kill()
    inbox, outbox = root / "inbox", root / "outbox"
    if files(outbox):  # the job in hand was finished: output complete, input archived
        assert files(outbox) == ["img2img/shot/a.png", "img2img/shot/a.txt"]
        assert files(inbox / "_done") == ["img2img/shot/a.png"]
        assert files(inbox / "img2img") == []
        with Image.open(outbox / "img2img" / "shot" / "a.png") as image:
            image.load()  # complete, not truncated
    else:  # or it was not started: the input waits for the next run
        assert files(inbox / "img2img") == ["shot/a.png"]
    assert hidden(outbox) == [] and hidden(inbox) == []
    assert files(inbox / "_failed") == []


def test_a_second_daemon_on_the_same_state_folder_exits_2_without_a_traceback(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"img2img": FAST})
    process = Process(root, "run")
    try:
        process.wait_for_line("watching", QUICK)
        second = cli(root, "once")
    finally:
        process.popen.send_signal(signal.SIGTERM)
        first_code = process.wait(20)
        process.kill()
    assert first_code == 0, process.output
    assert "another img2imgd" in second.stdout and "already running" in second.stdout
    assert "Traceback" not in second.stdout, second.stdout
    assert second.returncode == 2, second.stdout
