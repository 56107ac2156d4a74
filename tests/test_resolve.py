"""One resolver for every kind of model: one search, one pickle rule, one error type, and a
table of kinds that a new kind joins with one row. Real files in real folders throughout."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from daemon.config.profiles import load_profile
from daemon.engines.taggers import load_tagger
from daemon.errors import ConfigError
from daemon.models.resolve import (
    KINDS,
    Kind,
    ModelNotFound,
    PickleRefused,
    Search,
    find,
    kind_folders,
    resolve_clip,
    resolve_model,
    resolve_tagger,
    resolve_vae,
)
from daemon.render.availability import missing_models
from daemon.render.cache import ModelCache
from tests.conftest import Workspace

PICKLE = b"\x80\x04K\x01."  # a pickle; never loaded
SUB_FOLDER = "(an A1111 sub-folder of models_dir)"


def put(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """An A1111 ``models`` folder holding only pickles, one of each kind, all named "old"."""
    models = tmp_path / "webui" / "models"
    for where in (
        "Stable-diffusion/old.ckpt",
        "VAE/old.pt",
        "Lora/styles/old.pt",
        "embeddings/old.pt",
        "torch_deepdanbooru/old.pt",
    ):
        put(models / where, PICKLE)
    return models


def refusal(call: Callable[[], object]) -> str:
    with pytest.raises(PickleRefused) as caught:
        call()
    assert isinstance(caught.value, ConfigError)
    return str(caught.value)


def test_every_kind_refuses_a_pickle_with_the_same_text(models: Path, state_dir: Path) -> None:
    tagger_file = models / "torch_deepdanbooru" / "old.pt"
    said = {
        "model": refusal(lambda: resolve_model("old", Search(models, state_dir))),
        "vae": refusal(lambda: resolve_vae("old", Search(models))),
        "LoRA": refusal(lambda: find("lora", "old", Search(models))),
        "embedding": refusal(lambda: find("embedding", "old", Search(models))),
        "tagger": refusal(lambda: resolve_tagger("old", Search(models, state_dir))),
        "tagger ": refusal(lambda: load_tagger(tagger_file)),  # the loader asks the same rule
    }
    texts = set()
    for kind, message in said.items():
        assert message.startswith(f"{kind.strip()} '"), message
        assert "old." in message  # the file it found
        texts.add(re.sub(r"^\S+ '[^']*' is a pickled file \([^)]*\)", "<kind> <file>", message))
    assert texts == {
        "<kind> <file>: loading a pickle can run arbitrary code. Convert it to .safetensors, "
        "or set `allow_pickle: true` in the daemon's configuration if you trust the file"
    }
    # Allowed, every kind gives the pickle.
    assert resolve_vae("old", Search(models, allow_pickle=True)).name == "old.pt"
    assert find("lora", "old", Search(models, allow_pickle=True)).name == "old.pt"
    assert find("embedding", "OLD", Search(models, allow_pickle=True)).name == "old.pt"
    allowed = resolve_model("old", Search(models, state_dir, allow_pickle=True))
    assert allowed.kind == "single_file" and allowed.name == "old"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_not_found_is_one_error_saying_where_it_belongs(
    kind: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    row = KINDS[kind]
    with pytest.raises(ModelNotFound) as caught:
        find(kind, "absent", Search(models), build=False)
    error = caught.value
    assert isinstance(error, ConfigError)
    message = str(error)
    assert message.startswith(f"{row.name} 'absent' not found: looked for {row.expected} named")
    assert error.what == row.name and error.by_name and error.models_dir == models
    assert error.home == next(f for f in kind_folders(kind, models) if f != models)
    assert f"{error.home} {SUB_FOLDER}" in message
    assert re.search(rf"; [^;]*{re.escape(str(error.home))}[^;]* not exist", message), message


def test_the_entry_points_raise_the_same_error(tmp_path: Path, state_dir: Path) -> None:
    models, state = tmp_path, state_dir
    calls: list[Callable[[], object]] = [
        lambda: resolve_model("absent", Search(models, state), build=False),
        lambda: resolve_vae("absent", Search(models), build=False),
        lambda: resolve_clip("absent", Search(models, state), build=False),
        lambda: resolve_clip("absent + x", Search(models, state), build=False),
        lambda: resolve_tagger("absent", Search(models, state), build=False),
    ]
    for call in calls:
        with pytest.raises(ModelNotFound, match="'absent' not found: looked for"):
            call()


def test_a_new_kind_is_one_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What ControlNet will be tomorrow: a row, and every rule works for it."""
    monkeypatch.setitem(
        KINDS,
        "controlnet",
        Kind(
            "ControlNet",
            "a ControlNet file or folder",
            ("ControlNet",),
            hub="model",
            accepts=lambda path: path.is_file() or (path / "config.json").is_file(),
        ),
    )
    models = tmp_path / "models"
    canny = put(models / "ControlNet" / "control_canny.safetensors")
    put(models / "ControlNet" / "control_depth.pth", PICKLE)
    assert kind_folders("controlnet", models) == [models / "ControlNet"]
    assert find("controlnet", "control_canny", Search(models)) == canny
    hub_id = "lllyasviel/sd-controlnet-canny"
    assert find("controlnet", hub_id, Search(models), build=False) == Path(hub_id)
    message = refusal(lambda: find("controlnet", "control_depth", Search(models)))
    assert message.startswith("ControlNet 'control_depth' is a pickled file (")
    with pytest.raises(ModelNotFound) as caught:
        find("controlnet", "control_seg", Search(models))
    assert str(caught.value).startswith(
        "ControlNet 'control_seg' not found: looked for a ControlNet file or folder named "
        "control_seg, control_seg.safetensors, .ckpt, .pt, .pth or .bin in "
    )
    assert f"{models / 'ControlNet'} {SUB_FOLDER}" in str(caught.value)
    assert caught.value.home == models / "ControlNet"


def test_a_new_recursive_kind_is_one_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Found by file stem through sub-folders, as LoRAs are (A1111's hypernetworks)."""
    monkeypatch.setitem(
        KINDS, "hypernetwork", Kind("hypernetwork", "a hypernetwork file", ("hypernetworks",),
                                    recursive=True)
    )  # fmt: skip
    models = tmp_path / "models"
    anime = put(models / "hypernetworks" / "styles" / "deep" / "Anime.safetensors")
    put(models / "hypernetworks" / "Anime.pt", PICKLE)  # the safetensors file wins
    assert find("hypernetwork", "anime", Search(models)) == anime
    with pytest.raises(ModelNotFound) as caught:
        find("hypernetwork", "Gone", Search(models))
    assert str(caught.value) == (
        "hypernetwork 'Gone' not found: looked for a hypernetwork file named Gone.safetensors, "
        f".ckpt, .pt, .pth or .bin (any case) in {models / 'hypernetworks'} {SUB_FOLDER}, "
        "with their sub-folders"
    )


def test_a_lora_in_the_profiles_prompt_says_where_to_put_it(
    workspace: Workspace, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    workspace.profile("img2img", prompt="<lora:gone:0.8> a cat")
    profile = load_profile(workspace.profiles, "img2img").settings
    (problem,) = missing_models(profile, workspace.settings(models_dir=models))
    assert problem.startswith(
        "LoRA 'gone' (named in the profile's prompt) not found: looked for a LoRA file named "
        "gone.safetensors, .ckpt, .pt, .pth or .bin (any case) in "
    )
    assert f"Put the file in {models / 'Lora'} (models_dir is {models}" in problem
    own = tmp_path / "my-loras"
    (problem,) = missing_models(profile, workspace.settings(lora_dirs=[own]))
    assert problem.endswith(f"{own} does not exist. Put the file in {own}"), problem
    (problem,) = missing_models(profile, workspace.settings())
    assert "nowhere (no folder configured)" in problem and "To find LoRAs by name" in problem


def test_one_search_carries_the_configuration_to_every_lookup(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Where a lookup looks and what it may take is one frozen value made from the settings:
    the model cache and its interrogators look with it, so its pickle rule holds for both."""
    models = tmp_path / "models"
    put(models / "VAE" / "old.pt", PICKLE)
    put(models / "torch_deepdanbooru" / "old.pt", PICKLE)
    settings = workspace.settings(models_dir=models, allow_pickle=True, download_models=True)
    search = Search.of(settings)
    assert search == Search(
        settings.models_dir, settings.state_dir, allow_pickle=True, download=True
    )
    with pytest.raises(FrozenInstanceError):
        search.allow_pickle = False  # type: ignore[misc]
    trusting = ModelCache.from_settings(settings, device="cpu")
    assert trusting.search == search and trusting.interrogators.search == search
    assert trusting.vae_source("old") == models / "VAE" / "old.pt"
    strict = ModelCache.from_settings(workspace.settings(models_dir=models), device="cpu")
    assert strict.search == Search(settings.models_dir, settings.state_dir)
    with pytest.raises(PickleRefused):
        strict.vae_source("old")
    with pytest.raises(PickleRefused):
        resolve_tagger("old", strict.interrogators.search)


def test_a_search_without_a_state_folder_names_no_built_in_model(tmp_path: Path) -> None:
    """A LoRA or embedding search has no state folder: a built-in model is refused plainly."""
    with pytest.raises(ConfigError, match="no state folder to generate built-in models in"):
        resolve_model("builtin:tiny-sd", Search(tmp_path))
    state = tmp_path / "state"
    source = resolve_model("builtin:tiny-sd", Search(tmp_path, state), build=False)
    assert source.location == str(state / "builtin" / "tiny-sd")
