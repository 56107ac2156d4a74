"""Model references, VAE overrides and checkpoint checks, through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.config.profiles import load_profile
from daemon.errors import ConfigError
from daemon.models.builtin import ensure_builtin
from daemon.models.resolve import Search, resolve_model, resolve_vae
from daemon.render.availability import missing_models
from tests.conftest import Workspace, wait_for


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory, state_dir):
    """The tiny model's VAE with different weights, saved as a diffusers VAE folder."""
    import torch
    from diffusers import AutoencoderKL

    folder = ensure_builtin("tiny-sd", state_dir / "builtin")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    with torch.no_grad():
        for parameter in vae.decoder.parameters():
            parameter.mul_(0.5)
    target = tmp_path_factory.mktemp("vae") / "my-vae"
    vae.save_pretrained(target)
    return target


def test_vae_override_changes_the_decoder_and_is_recorded(workspace: Workspace, running, other_vae):
    workspace.profile("plain", seed=3)
    workspace.profile("withvae", seed=3, vae=str(other_vae))
    running()
    workspace.drop("chelsea.png", "plain/a.png")
    workspace.drop("chelsea.png", "withvae/a.png")
    wait_for(lambda: workspace.done("plain") and workspace.done("withvae"))
    plain = np.asarray(Image.open(workspace.outbox / "plain/a.png"))
    other = np.asarray(Image.open(workspace.outbox / "withvae/a.png"))
    assert not np.array_equal(plain, other)
    params = parse_infotext((workspace.outbox / "withvae/a.txt").read_text()).params
    assert params["VAE"] == "my-vae"


def test_vae_names_resolve_in_the_a1111_vae_folder(tmp_path):
    (tmp_path / "VAE").mkdir()
    (tmp_path / "VAE/kl-f8.safetensors").write_bytes(b"{}")
    assert resolve_vae("kl-f8", Search(tmp_path)) == tmp_path / "VAE/kl-f8.safetensors"
    (tmp_path / "VAE/old.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"pickled.*allow_pickle: true"):
        resolve_vae(str(tmp_path / "VAE/old.pt"), Search(tmp_path))
    assert resolve_vae("old", Search(tmp_path, allow_pickle=True)) == tmp_path / "VAE/old.pt"
    with pytest.raises(ConfigError, match="not found"):
        resolve_vae("missing", Search(tmp_path))


def test_checkpoint_names_resolve_in_an_a1111_models_folder(tmp_path, state_dir):
    sd = tmp_path / "Stable-diffusion"
    sd.mkdir()
    (sd / "dream.safetensors").write_bytes(b"x")
    (sd / "old.ckpt").write_bytes(b"x")
    source = resolve_model("dream", Search(tmp_path, state_dir))
    assert source.kind == "single_file" and source.name == "dream"
    assert resolve_model("dream.safetensors", Search(tmp_path, state_dir)).name == "dream"
    with pytest.raises(ConfigError, match=r"pickled file.*allow_pickle: true"):
        resolve_model("old", Search(tmp_path, state_dir))
    allowed = resolve_model("old", Search(tmp_path, state_dir, allow_pickle=True))
    assert allowed.kind == "single_file" and allowed.name == "old"
    assert allowed.hash_file == sd / "old.ckpt"  # A1111 hashes the file as it is
    # A hub id's shape is enough for check (build=False); the cache: tests/test_hub.py.
    hub = resolve_model("org/model", Search(tmp_path, state_dir), build=False)
    assert hub.kind == "hub" and hub.location == "org/model"


def test_check_reports_a_checkpoint_of_unknown_layout(workspace: Workspace, tmp_path):
    import torch
    from safetensors.torch import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"something.else": torch.zeros(1)}, str(odd))
    workspace.profile("img2img", model=str(odd))
    problems = missing_models(load_profile(workspace.profiles, "img2img").settings,
                              workspace.settings())  # fmt: skip
    assert any("odd.safetensors" in p for p in problems), problems


def test_check_reads_a_pickled_checkpoint_only_when_allowed(workspace: Workspace, tmp_path):
    import torch

    ckpt = tmp_path / "old-sd15.ckpt"
    torch.save(
        {
            "state_dict": {
                "cond_stage_model.transformer.x": torch.zeros(1),
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
            }
        },
        ckpt,
    )
    workspace.profile("img2img", model=str(ckpt))
    profile = load_profile(workspace.profiles, "img2img").settings
    refused = missing_models(profile, workspace.settings())
    assert any("pickled file" in p and "allow_pickle" in p for p in refused), refused
    assert missing_models(profile, workspace.settings(allow_pickle=True)) == []
