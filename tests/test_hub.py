"""Hugging Face ids: explicit downloads (``img2imgd pull``, or ``download_models``), the local
cache only at run time, and a missing id said in one line, at once.

The hub is a stand-in on 127.0.0.1 (tests/support/hub.py) serving the built-in tiny models as
repos; ``python -m daemon`` runs with ``HF_ENDPOINT`` pointing at it and ``HF_HOME`` in the
test's folder, so the real hub and the user's cache are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.models.builtin import ensure_builtin
from daemon.models.hub_cache import HubRef, is_hub_id, pull_command, select_files
from daemon.models.resolve import looks_like_repo_id
from tests.support.hub import StandInHub
from tests.support.workspace import Workspace
from tests.test_cli import cli

REPO = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL) ")
QUICK = 60  # s; a run that loads no model
JOBS = 240  # s; one that imports torch and paints (generous for a loaded machine)
SD = "acme/tiny-sd"
VAE = "acme/tiny-vae"
TAGGER = "acme/tiny-tagger"
BLIP, CLIP = "acme/tiny-blip", "acme/tiny-clip"
# Files a pipeline never reads: the stand-in serves them, `pull` must not fetch them.
DECOYS = {
    "tiny.ckpt": b"a single-file copy of the model",
    "unet/diffusion_pytorch_model.bin": b"the same weights, pickled",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"the same weights, in fp16",
    "text_encoder/flax_model.msgpack": b"Flax weights",
    "safety_checker/model.safetensors": b"a safety checker, never loaded",
    "safety_checker/config.json": b"{}",
    "vae_1_0/diffusion_pytorch_model.safetensors": b"a folder model_index.json does not name",
}


# -- which files, which ids (pure) -----------------------------------------------------------


def test_a_pipeline_repo_gives_one_copy_of_each_weight():
    files = [
        "model_index.json", "README.md", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.bin", "unet/diffusion_pytorch_model.msgpack",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder/pytorch_model.bin", "text_encoder/flax_model.msgpack",
        "text_encoder/model.fp16.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "vae/config.json", "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
        "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors.index.json",
        "vae/diffusion_pytorch_model.bin.index.json", "vae/diffusion_pytorch_model.onnx",
        "vae/diffusion_pytorch_model.safetensors.index.fp16.json",
        "safety_checker/config.json", "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
        "sample.png", "vae_1_0/config.json", "vae_1_0/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    components = {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor",
                  "safety_checker"}  # fmt: skip
    assert select_files(files, components) == [
        "feature_extractor/preprocessor_config.json",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
        "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors.index.json",
    ]
    assert "vae_1_0/config.json" in select_files(files)  # the index not read: every folder


def test_a_model_repo_gives_its_top_files_and_a_tagger_its_two():
    clip = ["config.json", "pytorch_model.bin", "model.safetensors", "tf_model.h5",
            "flax_model.msgpack", "tokenizer.json", "onnx/model.onnx", "README.md"]  # fmt: skip
    assert select_files(clip) == ["README.md", "config.json", "model.safetensors",
                                  "tokenizer.json"]  # fmt: skip
    # No safetensors: the pickle is the only copy (transformers reads it weights-only).
    assert select_files(["config.json", "pytorch_model.bin"]) == [
        "config.json",
        "pytorch_model.bin",
    ]
    tagger = ["model.onnx", "selected_tags.csv", "model.safetensors", "config.json", "README.md"]
    assert select_files(tagger) == ["model.onnx", "selected_tags.csv"]


def test_hub_ids_may_name_a_revision():
    assert HubRef.parse("org/name@v2.0") == HubRef("org/name", "v2.0")
    assert str(HubRef.parse(" org/name ")) == "org/name"
    assert is_hub_id("org/name@refs/pr/1") and looks_like_repo_id("org/name@main")
    assert not looks_like_repo_id("org/model.safetensors")
    assert not is_hub_id("just-a-name") and not is_hub_id("org/name@")


def test_the_pull_command_carries_the_cache_the_daemon_reads(monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    assert pull_command("org/name") == "img2imgd pull org/name"
    monkeypatch.setenv("HF_HOME", "/srv/img2imgd/state/huggingface")  # as the unit sets it
    assert pull_command("org/name") == (
        "HF_HOME=/srv/img2imgd/state/huggingface img2imgd pull org/name"
    )


def test_a_missing_id_is_known_from_the_cache_alone_in_well_under_a_second(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from daemon.models.hub import locate

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        locate(SD, "pipeline", what="model")
    seconds = time.monotonic() - started
    assert seconds < 1.0, seconds
    message = str(caught.value)
    assert "\n" not in message
    assert f"model '{SD}' is not in the local Hugging Face cache ({tmp_path / 'hub'})" in message
    assert f"img2imgd pull {SD}" in message


# -- the daemon against a stand-in hub ------------------------------------------------------


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> dict[str, Path]:
    """The built-in tiny-sd as a hub repo (with files a pipeline never reads beside its own),
    its VAE as another, and the built-in tagger, BLIP and CLIP as three more."""
    root = tmp_path_factory.mktemp("repos")
    sd = root / "tiny-sd"
    shutil.copytree(ensure_builtin("tiny-sd", state_dir / "builtin"), sd)
    for name, data in DECOYS.items():
        (sd / name).parent.mkdir(parents=True, exist_ok=True)
        (sd / name).write_bytes(data)
    tagger = ensure_builtin("tiny-tagger", state_dir / "builtin")
    interrogator = ensure_builtin("tiny-interrogator", state_dir / "builtin")
    return {SD: sd, VAE: sd / "vae", TAGGER: tagger, BLIP: interrogator / "blip",
            CLIP: interrogator / "clip"}  # fmt: skip


def _env(home: Path, endpoint: str, *, offline: bool = False) -> dict[str, str]:
    """The daemon's environment: our HF_HOME and endpoint; downloads on unless `offline`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}  # fmt: skip
    env.update(
        HF_HOME=str(home),
        HF_ENDPOINT=endpoint,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _cli(
    root: Path, env: dict[str, str], *args: str, timeout: float = QUICK
) -> subprocess.CompletedProcess[str]:
    return cli(root, *args, timeout=timeout, env=env)


def _seconds_between(first: str, last: str) -> int:
    """Seconds between two log lines' HH:MM:SS (across midnight too)."""

    def seconds(line: str) -> int:
        hours, minutes, secs = (int(part) for part in line[:8].split(":"))
        return hours * 3600 + minutes * 60 + secs

    return (seconds(last) - seconds(first)) % 86400


def _closed_port() -> str:
    """An endpoint on loopback where nothing listens: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def space(tmp_path: Path, state_dir: Path) -> Workspace:
    space = Workspace(tmp_path / "ws", state_dir).create()
    space.profile("paint", model=SD, max_pixels=64 * 64)
    return space


def test_pull_fetches_what_the_profiles_name_and_once_paints_offline(
    space: Workspace, repos: dict[str, Path], tmp_path: Path
):
    space.profile("paint", model=SD, vae=VAE)
    space.profile("tags", task="interrogate", interrogator="deepbooru", model=TAGGER)
    space.profile("caption", task="interrogate", model=f"{BLIP} + {CLIP}")
    space.config_file()
    home = tmp_path / "hf"
    cache = home / "hub"
    with StandInHub(repos) as hub:
        env = _env(home, hub.endpoint)
        before = _cli(space.root, env, "check")
        assert before.returncode == 2, before.stdout
        named = ((SD, "model"), (VAE, "vae"), (TAGGER, "tagger"),
                 (BLIP, "interrogation model"), (CLIP, "interrogation model"))  # fmt: skip
        for ref, what in named:
            assert f"{what} '{ref}' is not in the local Hugging Face cache ({cache})" in (
                before.stdout
            )
            assert f"img2imgd pull {ref}`" in before.stdout

        pulled = _cli(space.root, env, "pull")  # no id: every hub id the profiles name
        assert pulled.returncode == 0, pulled.stdout
        fetched = hub.downloads(SD)
    assert sorted(fetched) == sorted(set(fetched)), "a file was downloaded twice"
    assert set(fetched) == {
        p.relative_to(repos[SD]).as_posix()
        for p in repos[SD].rglob("*")
        if p.is_file() and p.parent != repos[SD]
        and p.relative_to(repos[SD]).as_posix() not in DECOYS
    } | {"model_index.json"}  # fmt: skip
    assert set(hub.downloads(TAGGER)) == {"model.onnx", "selected_tags.csv"}
    assert f"{SD}: 12 files, " in pulled.stdout and "downloaded in" in pulled.stdout

    # The hub is gone: from now on everything comes from the local cache.
    offline = _env(home, _closed_port(), offline=True)
    after = _cli(space.root, offline, "check")
    assert after.returncode == 0, after.stdout
    assert f"model '{SD}' is in the local Hugging Face cache ({cache}" in after.stdout
    for profile in ("paint", "tags", "caption"):
        space.drop("chelsea.png", f"{profile}/cat.png")
    once = _cli(space.root, offline, "once", timeout=JOBS)
    assert once.returncode == 0, once.stdout
    assert [p.name for p in space.outputs("paint")] == ["cat.png", "cat.txt"]
    assert (space.outbox / "tags" / "cat.txt").is_file()
    assert (space.outbox / "caption" / "cat.txt").is_file()
    parameters = (space.outbox / "paint" / "cat.txt").read_text()
    assert "Model: tiny-sd," in parameters and "VAE: tiny-vae" in parameters


def test_a_snapshot_missing_a_file_is_not_in_the_cache(
    space: Workspace, repos: dict[str, Path], tmp_path: Path, monkeypatch
):
    """An interrupted pull leaves a snapshot without some of its files: it is not taken for
    the model (the hub client would load it and fail, or worse, fetch the rest on its own)."""
    from huggingface_hub import constants

    from daemon.models.hub_cache import cached_folder

    space.config_file()
    home = tmp_path / "hf"
    with StandInHub({SD: repos[SD]}) as hub:
        pulled = _cli(space.root, _env(home, hub.endpoint), "pull", SD)
    assert pulled.returncode == 0, pulled.stdout
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    folder = cached_folder(SD)
    assert folder is not None and (folder / "model_index.json").is_file()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert cached_folder(SD) is None
    check = _cli(space.root, _env(home, _closed_port(), offline=True), "check")
    assert check.returncode == 2, check.stdout
    assert f"model '{SD}' is not in the local Hugging Face cache" in check.stdout


def test_a_missing_id_leaves_the_file_waiting_in_one_line_without_retries(
    space: Workspace, tmp_path: Path
):
    space.config_file()
    space.drop("chelsea.png", "paint/cat.png")
    home = tmp_path / "hf"
    env = _env(home, _closed_port())  # downloads allowed, but nothing answers
    once = _cli(space.root, env, "once")
    assert once.returncode == 3, once.stdout
    lines = once.stdout.splitlines()
    assert all(LOG_LINE.match(line) for line in lines if line.strip()), once.stdout
    # Said once when the file is looked at; `once`'s closing summary repeats why it waits.
    about = [line for line in lines if SD in line and "files left waiting" not in line]
    assert len(about) == 1, once.stdout
    assert any("inbox/paint/: files left waiting: model" in line for line in lines)
    assert f"is not in the local Hugging Face cache ({home / 'hub'})" in about[0]
    assert f"img2imgd pull {SD}" in about[0]
    assert "Retry" not in once.stdout and "model_index.json" not in once.stdout
    # From the start of watching to the file left waiting: the hub client's retries alone
    # took 23 s per try (1+2+4+8+8 s), twice per file.
    assert _seconds_between(lines[0], about[0]) < 15, once.stdout
    assert (space.inbox / "paint" / "cat.png").is_file()

    # With downloads on, a hub that cannot be reached defers the file too: not its fault.
    space.config_file(download_models=True)
    once = _cli(space.root, env, "once")
    assert once.returncode == 3, once.stdout
    assert all(LOG_LINE.match(line) for line in once.stdout.splitlines() if line.strip())
    assert f"model '{SD}' could not be downloaded: {env['HF_ENDPOINT']} cannot be reached" in (
        once.stdout
    )
    assert (space.inbox / "paint" / "cat.png").is_file() and not space.failed("paint")

    pull = _cli(space.root, env, "pull", SD)
    assert pull.returncode == 1, pull.stdout
    assert f"{SD}: {env['HF_ENDPOINT']} cannot be reached" in pull.stdout
    assert len(pull.stdout.splitlines()) == 2, pull.stdout  # the reason, and the count


def test_download_models_fetches_an_id_once_on_first_use_with_progress(
    space: Workspace, repos: dict[str, Path], tmp_path: Path
):
    space.config_file(download_models=True)
    space.drop("chelsea.png", "paint/a.png")
    space.drop("chelsea.png", "paint/b.png")
    # Slow enough (about 7 s for the UNet) that the log shows progress on the way.
    with StandInHub(repos, rate=800_000) as hub:
        once = _cli(space.root, _env(tmp_path / "hf", hub.endpoint), "once", timeout=JOBS)
        fetched = hub.downloads(SD)
    assert once.returncode == 0, once.stdout
    assert sorted(p.name for p in space.outputs("paint")) == ["a.png", "a.txt", "b.png", "b.txt"]
    assert len(fetched) == len(set(fetched)) == 12, fetched
    assert f"model '{SD}' is not in the local cache: downloading it" in once.stdout
    assert re.search(rf"downloading {SD}: [\d.]+ [kMG]?B of 7.\d MB \(\d+%\)", once.stdout)
    assert f"{SD}: 7." in once.stdout and "downloaded in" in once.stdout
