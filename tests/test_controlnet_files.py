"""ControlNets as users have them, through the real daemon: single files in A1111's,
ComfyUI's and the extension's folders (lllyasviel's original key layout, ``.safetensors``
and ``.pth``), SDXL ones, and a ControlNet Union, each found by name and loaded offline.

The files hold the tiny built-ins' weights, written out in those layouts
(:mod:`tests.support.controlnet_files`), and load with the built-ins' configs where the
shipped full-size ones would be: so a file must paint exactly as its built-in folder does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from loguru import logger
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.cli import check_problems
from daemon.config.profiles import Profile
from daemon.controlnet.union import union_control_type
from daemon.engines.controlnet_models import legacy_hash
from daemon.errors import ConfigError, Fault, classify
from daemon.models.controlnet_layout import SHIPPED_CONFIGS, controlnet_layout, layout_of
from daemon.models.controlnet_loading import (
    load_controlnet_file,
    load_controlnet_folder,
    net_class,
    read_config,
)
from daemon.models.resolve import (
    ModelNotFound,
    PickleRefused,
    Search,
    resolve_controlnet,
    without_hash,
)
from daemon.ops.service import Daemon
from daemon.paths import shown
from daemon.render.cache import ModelCache
from daemon.render.render import render
from daemon.render.values import RenderRequest
from tests.conftest import DATA, Workspace
from tests.support.controlnet_files import tiny_configs, write_controlnet
from tests.support.netguard_env import guarded_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SD15_FILE = "ControlNet/sd15/control_v11p_sd15_tiny.safetensors"  # under models_dir
PICKLE_FILE = "ControlNet/control_v11p_sd15_old.pth"
XL_FILE = "controlnet/xl_tiny.safetensors"  # ComfyUI's folder
UNION_FILE = "ControlNet/union_promax_tiny.safetensors"
EXTENSION_FILE = "extensions/sd-webui-controlnet/models/control_ext_tiny.safetensors"  # webui


def unit(model: str, **keys: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "canny", "model": model, **keys}


SDXL = {"model": "builtin:tiny-sdxl"}
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "folder": ({}, [unit("builtin:tiny-controlnet")]),
    "file": ({}, [unit("control_v11p_sd15_tiny")]),
    "hashed": ({}, [unit("control_v11p_sd15_tiny [0123abcd]")]),  # as an infotext names it
    "extension": ({}, [unit("control_ext_tiny")]),
    "pickle": ({}, [unit("control_v11p_sd15_old")]),
    "wrong": ({}, [unit("xl_tiny")]),
    "xl_plain": (SDXL, []),
    "xl_folder": (SDXL, [unit("builtin:tiny-controlnet-sdxl")]),
    "xl_file": (SDXL, [unit("xl_tiny")]),
    "union": (SDXL, [unit("union_promax_tiny")]),
    "union_tile": (SDXL, [unit("union_promax_tiny", union_control_type="Tile")]),
}
"""Profile name → its own keys and its units (tiny-sd unless said)."""


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    """An A1111 install holding the tiny nets as files, where users keep theirs."""
    root = tmp_path_factory.mktemp("webui")
    models = root / "models"
    write_controlnet("tiny-controlnet", models / SD15_FILE, state_dir, prefix="control_model.")
    write_controlnet("tiny-controlnet", models / PICKLE_FILE, state_dir, prefix="control_model.")
    write_controlnet("tiny-controlnet", root / EXTENSION_FILE, state_dir)
    write_controlnet("tiny-controlnet-sdxl", models / XL_FILE, state_dir)
    write_controlnet("tiny-controlnet-union", models / UNION_FILE, state_dir, ldm=False)
    return root


def cache(webui: Path, state_dir: Path, *, allow_pickle: bool = False) -> ModelCache:
    return ModelCache(
        models_dir=webui / "models",
        state_dir=state_dir,
        device="cpu",
        allow_pickle=allow_pickle,
        controlnet_configs=tiny_configs(state_dir),
    )


@pytest.fixture(scope="module")
def painted(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, webui: Path
) -> Iterator[tuple[Workspace, list[str]]]:
    """Every case painted by one daemon run without pickles, then a second one allowing
    them; and what the daemon logged."""
    workspace = Workspace(tmp_path_factory.mktemp("controlnet-files"), state_dir).create()
    for name, (keys, units) in CASES.items():
        workspace.profile(name, controlnet=units, width=64, height=64, denoising_strength=1.0,
                          **keys)  # fmt: skip
        workspace.drop(DATA / "chelsea.png", f"{name}/cat.png")
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message).rstrip()), level="DEBUG")
    try:
        settings = workspace.settings(models_dir=webui / "models")
        Daemon(settings, models=cache(webui, state_dir), watch=False).run_once(tick=0.01)
        assert not workspace.outputs("pickle"), "a pickle waits until pickles are allowed"
        lines.append("--- pickles allowed ---")
        settings = workspace.settings(models_dir=webui / "models", allow_pickle=True)
        models = cache(webui, state_dir, allow_pickle=True)
        Daemon(settings, models=models, watch=False).run_once(tick=0.01)
    finally:
        logger.remove(handler)
    yield workspace, lines


def result(workspace: Workspace, name: str) -> tuple[np.ndarray, dict[str, str]]:
    with Image.open(workspace.outbox / name / "cat.png") as image:
        return np.asarray(image), parse_infotext(image.info["parameters"]).params


def test_a_single_file_by_name_paints_as_its_folder_does_and_says_name_and_hash(painted, webui):
    workspace, _ = painted
    folder, _ = result(workspace, "folder")
    for name in ("file", "hashed", "extension"):
        pixels, params = result(workspace, name)
        assert np.array_equal(pixels, folder), name
    _, params = result(workspace, "file")
    digest = legacy_hash(webui / "models" / SD15_FILE)
    assert params["ControlNet 0"].startswith(
        f"Module: canny, Model: control_v11p_sd15_tiny [{digest}], Weight: 1.0, "
    )
    _, params = result(workspace, "hashed")  # the file's own hash, not the one asked for
    assert f"Model: control_v11p_sd15_tiny [{digest}]," in params["ControlNet 0"]


def test_a_pickle_waits_with_a_message_naming_allow_pickle_and_loads_once_allowed(painted):
    workspace, lines = painted
    first_run = lines[: lines.index("--- pickles allowed ---")]
    said = [line for line in first_run if "control_v11p_sd15_old" in line]
    assert any("allow_pickle: true" in line and "pickled file" in line for line in said), said
    assert not (workspace.inbox / "_failed/pickle").exists(), "not the input's fault"
    pixels, params = result(workspace, "pickle")
    assert np.array_equal(pixels, result(workspace, "folder")[0])
    assert "Model: control_v11p_sd15_old [" in params["ControlNet 0"]


def test_sdxl_and_union_files_steer_the_sdxl_model(painted):
    workspace, _ = painted
    plain = result(workspace, "xl_plain")[0]
    assert np.array_equal(result(workspace, "xl_file")[0], result(workspace, "xl_folder")[0])
    union, params = result(workspace, "union")
    assert not np.array_equal(union, plain)
    assert "Model: union_promax_tiny [" in params["ControlNet 0"]
    assert not np.array_equal(result(workspace, "union_tile")[0], union), "another type"


def test_a_net_for_another_architecture_waits_naming_both(painted):
    workspace, lines = painted
    expected = (
        "ControlNet xl_tiny is for cross-attention width 96, but model builtin:tiny-sd is "
        "cross-attention width 32: use a ControlNet made for it"
    )
    assert any(expected in line for line in lines), [line for line in lines if "xl_tiny" in line]
    assert (workspace.inbox / "wrong/cat.png").exists(), "the input waits in the inbox"
    assert not (workspace.inbox / "_failed/wrong").exists()
    assert not workspace.outputs("wrong")


def test_the_architecture_is_read_from_the_header_before_any_weight(webui, state_dir):
    models = cache(webui, state_dir)
    settings = Profile(model="builtin:tiny-sd", steps=4, prompt="a cat",
                       controlnet=[unit("xl_tiny")])  # fmt: skip
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    with pytest.raises(ConfigError, match="is for cross-attention width 96") as caught:
        render(RenderRequest("cat.png", settings, image, size=(64, 64), seed=1), models)
    assert classify(caught.value).fault is Fault.CONFIG
    assert models.controlnets.loaded == [], "the wrong net was never loaded"


def test_a_union_net_needs_a_control_type_the_module_or_the_unit_says(webui, state_dir):
    models = cache(webui, state_dir)
    settings = Profile(model="builtin:tiny-sdxl", steps=2, prompt="a cat",
                       controlnet=[unit("union_promax_tiny", module="none")])  # fmt: skip
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    with pytest.raises(ConfigError, match="is a ControlNet Union: set the unit's union_control"):
        render(RenderRequest("cat.png", settings, image, size=(64, 64), seed=1), models)


# --- finding them -------------------------------------------------------------------------


def test_names_are_found_in_every_controlnet_folder_by_stem_and_paths_as_given(webui):
    models = webui / "models"
    search = Search(models)
    assert resolve_controlnet("control_v11p_sd15_tiny", search) == models / SD15_FILE
    assert resolve_controlnet("CONTROL_V11P_SD15_TINY [d14c016b]", search) == models / SD15_FILE
    assert resolve_controlnet("xl_tiny", search) == models / XL_FILE
    assert resolve_controlnet("control_v11p_sd15_tiny.safetensors", search) == models / SD15_FILE
    assert resolve_controlnet("control_ext_tiny", search) == webui / EXTENSION_FILE
    assert resolve_controlnet(str(models / XL_FILE), search) == models / XL_FILE
    assert without_hash("control_v11p_sd15_canny [d14c016b]") == "control_v11p_sd15_canny"


def test_a_diffusers_folder_is_found_by_its_name_in_the_controlnet_folder(tmp_path, state_dir):
    folder = tiny_configs(state_dir)["controlnet-sd1"]
    target = tmp_path / "models/ControlNet/canny-diffusers"
    target.parent.mkdir(parents=True)
    os.symlink(folder, target)
    assert resolve_controlnet("canny-diffusers", Search(tmp_path / "models")) == folder


def test_a_pickle_is_refused_naming_the_setting_and_found_when_allowed(webui):
    models = webui / "models"
    with pytest.raises(PickleRefused, match=r"ControlNet 'control_v11p_sd15_old' is a pickled"):
        resolve_controlnet("control_v11p_sd15_old", Search(models))
    allowed = Search(models, allow_pickle=True)
    assert resolve_controlnet("control_v11p_sd15_old", allowed) == models / PICKLE_FILE


def test_check_names_a_missing_controlnet_and_every_folder_it_looked_in(tmp_path, state_dir):
    workspace = Workspace(tmp_path, state_dir).create()
    models = tmp_path / "webui" / "models"
    (models / "ControlNet").mkdir(parents=True)
    workspace.profile("p", controlnet=[unit("control_v11p_sd15_canny [d14c016b]")])
    [problem] = check_problems(workspace.settings(models_dir=models))
    assert problem.startswith(
        f"{shown(workspace.profiles / 'p.yaml')}: ControlNet 'control_v11p_sd15_canny' not "
        "found: looked for a ControlNet file"
    ), problem
    for folder in ("ControlNet", "controlnet", "../extensions/sd-webui-controlnet/models"):
        assert shown((models / folder).resolve()) in problem or shown(models / folder) in problem


def test_a_file_that_is_no_controlnet_says_what_it_is(tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "dream.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(checkpoint))
    with pytest.raises(ConfigError, match=r"not a ControlNet \(it is a Stable Diffusion"):
        controlnet_layout(checkpoint)


def test_a_missing_name_is_a_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="ControlNet 'nothing' not found"):
        resolve_controlnet("nothing", Search(tmp_path))


# --- the shipped configs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "width", "parameters"),
    [
        ("controlnet-sd1", 768, 361_279_120),  # lllyasviel's ControlNet 1.1 for SD 1.5
        ("controlnet-sd2", 1024, 364_228_240),
        ("controlnet-sdxl", 2048, 1_251_014_160),  # diffusers' controlnet-*-sdxl-1.0
        ("controlnet-sdxl-union", 2048, 1_256_614_800),  # xinsir's ProMax
    ],
)
def test_the_shipped_configs_build_the_full_size_nets(config, width, parameters):
    settings = read_config(SHIPPED_CONFIGS[config])
    assert settings["cross_attention_dim"] == width
    with torch.device("meta"):  # the architecture only: no memory, no time
        net = net_class(settings["_class_name"]).from_config(settings)
    assert sum(p.numel() for p in net.parameters()) == parameters


def test_an_sdxl_file_loads_with_the_transformer_depths_its_weights_have(webui, state_dir):
    """SDXL ControlNets come "full", "mid" and "small" (10, 1, 0 transformer blocks deep):
    one shipped config serves them all, its depths taken from the weights."""
    config = tiny_configs(state_dir)["controlnet-sdxl"]
    shallower = state_dir / "shallow-sdxl-config"
    shallower.mkdir(exist_ok=True)
    settings = read_config(config) | {"transformer_layers_per_block": [1, 1]}
    (shallower / "config.json").write_text(json.dumps(settings))
    file = webui / "models" / XL_FILE
    net = load_controlnet_file(file, controlnet_layout(file), config_dir=shallower,
                               dtype=torch.float32)  # fmt: skip
    assert list(net.config.transformer_layers_per_block) == [1, 2]
    expected = load_controlnet_folder(config, dtype=torch.float32).state_dict()
    assert all(torch.equal(net.state_dict()[key], value) for key, value in expected.items())


UNION_TYPES: dict[tuple[str, str | int], str] = {
    ("canny", "Unknown"): "Hard Edge",
    ("lineart_standard", "Unknown"): "Hard Edge",
    ("tile_resample", "Unknown"): "Tile",
    ("blur_gaussian", "Unknown"): "Tile",
    ("none", "Unknown"): "Unknown",
    ("canny", "depth"): "Depth",  # the unit's own, in any case, wins
    ("none", 6): "Tile",  # the extension's index
}
"""(module, the unit's union_control_type) → the type the net is told."""


@pytest.mark.parametrize(("case", "expected"), UNION_TYPES.items())
def test_a_union_units_control_type_comes_from_the_unit_or_its_module(case, expected):
    module, own = case
    settings = unit("union", module=module, union_control_type=own)
    parsed = Profile(model="builtin:tiny-sdxl", controlnet=[settings]).controlnet[0]
    assert union_control_type(parsed.union_control_type, parsed.module).value == expected


def header(*keys: tuple[str, list[int]]) -> dict[str, Any]:
    return {key: {"dtype": "F16", "shape": shape} for key, shape in keys}


HINT = ("input_hint_block.0.weight", [16, 3, 3, 3])
LDM_TEXT = "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
TEXT = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(
    ("keys", "config"),
    [
        ([HINT, (LDM_TEXT, [320, 768])], "controlnet-sd1"),  # lllyasviel's 1.1
        ([HINT, (LDM_TEXT, [320, 1024])], "controlnet-sd2"),  # thibaud's SD 2.1
        ([HINT, (LDM_TEXT, [640, 2048]), ("label_emb.0.0.weight", [1280, 2816])],
         "controlnet-sdxl"),
        ([("controlnet_cond_embedding.conv_in.weight", [16, 3, 3, 3]), (TEXT, [640, 2048]),
          ("add_embedding.linear_1.weight", [1280, 2816]), ("task_embedding", [8, 320])],
         "controlnet-sdxl-union"),
    ],
)  # fmt: skip
def test_the_config_a_file_loads_with_is_chosen_from_its_keys_and_shapes(keys, config):
    assert layout_of(Path("x.safetensors"), header(*keys)).config_name == config


def test_a_controlnet_1_0_difference_model_is_refused_saying_so():
    with pytest.raises(ConfigError, match=r"1\.0 'difference' model, which img2imgd cannot"):
        layout_of(Path("old.pth"), header(("difference", [1]), ("control_model.x", [1])))


LOAD_IN_A_CHILD = """
import sys
from pathlib import Path

import torch

from daemon.engines.controlnet_models import ControlNets
from daemon.models.resolve import Search
from tests.support.controlnet_files import tiny_configs

models, state = Path(sys.argv[1]), Path(sys.argv[2])
nets = ControlNets(Search(models, state), device=lambda: ("cpu", torch.float32),
                   configs=tiny_configs(state))
for ref in sys.argv[3:]:
    print(nets.get(ref).label)
"""


def test_loading_single_files_tries_no_network(webui, state_dir, tmp_path):
    """In a process of its own behind the network guard (tests/support/netguard), as the
    real-size runs are: nothing even tries to reach the hub."""
    refs = ["control_v11p_sd15_tiny", "xl_tiny", "union_promax_tiny"]
    log = tmp_path / "network.log"
    done = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_CHILD, str(webui / "models"), str(state_dir), *refs],
        cwd=tmp_path, env=guarded_env(log, base=os.environ), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split(" [")[0] for line in done.stdout.splitlines()] == refs
    assert log.read_text() == ""
