"""ControlNet units that come with an input, through the real daemon: a per-image YAML's
``controlnet:`` replaces the profile's units, and ``use_png_info`` reads each ``ControlNet N``
infotext entry back into unit N, so that an output painted with two units, fed back, is
painted with the same units (and, its seed read back too, the same pixels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from daemon.a1111.infotext import parse_infotext, png_info
from daemon.config.profiles import Profile, load_profile
from daemon.controlnet.per_image import model_ref, units_from_infotext
from daemon.errors import Fault, InputError, TransientError, classify
from daemon.models.builtin import CONTROLNET_BUILTINS
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from daemon.render.render import render
from daemon.render.values import RenderRequest
from tests.conftest import DATA, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CANNY = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet", "weight": 0.8}
LINES = {
    "enabled": True, "module": "lineart_standard", "model": "builtin:tiny-controlnet",
    "guidance_end": 0.5, "control_mode": "ControlNet is more important",
}  # fmt: skip
FIXED = {"width": 64, "height": 64, "denoising_strength": 0.9, "seed": 77}


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def entries(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        text = png_info(image)
    assert text is not None
    params = parse_infotext(text).params
    return {key: value for key, value in params.items() if key.startswith("ControlNet")}


@pytest.fixture(scope="module")
def round_trip(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path, models: ModelCache
) -> Workspace:
    """Run 1: chelsea painted with two units by the profile, by a per-image YAML on a profile
    without units, and with a YAML naming a ControlNet by path. Run 2: run 1's output fed
    back to a profile without units that reads PNG info, and to the two-unit profile."""
    workspace = Workspace(tmp_path_factory.mktemp("per-image"), state_dir).create()
    workspace.profile("two", controlnet=[CANNY, LINES], **FIXED)
    workspace.profile("plain", **FIXED)
    workspace.profile("reads", use_png_info=True, **FIXED)
    workspace.drop(DATA / "chelsea.png", "two/cat.png")
    workspace.drop(DATA / "chelsea.png", "plain/cat.png")
    (workspace.inbox / "plain/cat.yaml").write_text(
        yaml.safe_dump({"controlnet": [CANNY, {**LINES}]})
    )
    workspace.drop(DATA / "chelsea.png", "plain/path.png")
    (workspace.inbox / "plain/path.yaml").write_text(
        "steps: 4\ncontrolnet:\n  - enabled: true\n    model: /somewhere/else\n"
    )
    daemon_run(workspace, models)
    painted = workspace.outbox / "two/cat.png"
    workspace.drop(painted, "reads/cat.png")
    workspace.drop(painted, "two/again.png")
    daemon_run(workspace, models)
    return workspace


def daemon_run(workspace: Workspace, models: ModelCache) -> None:
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)


def test_a_per_image_yaml_replaces_the_profiles_units(round_trip):
    by_profile = round_trip.outbox / "two/cat.png"
    by_yaml = round_trip.outbox / "plain/cat.png"
    assert np.array_equal(read(by_yaml), read(by_profile))
    assert entries(by_yaml) == entries(by_profile) and len(entries(by_yaml)) == 2


def test_a_per_image_unit_may_not_name_a_controlnet_by_path(round_trip):
    report = (round_trip.inbox / "_failed/plain/path.error.txt").read_text()
    assert report.startswith("path.yaml:2: controlnet.0.model: '/somewhere/else' is a path"), report
    assert (round_trip.inbox / "_failed/plain/path.png").exists()


def test_use_png_info_reads_the_units_back_and_paints_the_same(round_trip):
    original = entries(round_trip.outbox / "two/cat.png")
    read_back = round_trip.outbox / "reads/cat.png"
    assert entries(read_back) == original
    assert original["ControlNet 1"].startswith("Module: lineart_standard, Model: tiny-controlnet [")
    assert "Guidance End: 0.5" in original["ControlNet 1"]
    # the seed and every other setting read back: the same pixels as the profile's own units
    assert np.array_equal(read(read_back), read(round_trip.outbox / "two/again.png"))


def test_a_per_image_yaml_is_validated_as_a_profile_is(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"model": "builtin:tiny-sd"}))
    loaded = load_profile(tmp_path, "p")
    yaml_file = tmp_path / "cat.yaml"
    yaml_file.write_text("steps: 4\ncontrolnet:\n  - {enabled: true, weight: 3}\n")
    with pytest.raises(InputError) as caught:
        loaded.with_overrides(yaml.safe_load(yaml_file.read_text()), yaml_file, yaml=yaml_file)
    assert str(caught.value).startswith("cat.yaml:2: controlnet.0.weight: Input should be less")


def test_a_per_image_unit_may_use_the_profiles_own_controlnet_path(tmp_path):
    own = {**CANNY, "model": str(tmp_path / "nets/mine")}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"model": "builtin:tiny-sd",
                                                    "controlnet": [own]}))  # fmt: skip
    loaded = load_profile(tmp_path, "p")
    settings = loaded.with_overrides({"controlnet": [{**own, "weight": 0.3}]}, Path("cat.yaml"))
    assert settings.controlnet[0].weight == 0.3


def test_an_interrogation_task_refuses_a_per_image_controlnet(tmp_path):
    profile = {"task": "interrogate", "model": "builtin:tiny-interrogator"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    loaded = load_profile(tmp_path, "p")
    yaml_file = tmp_path / "cat.yaml"
    yaml_file.write_text(yaml.safe_dump({"controlnet": [CANNY]}))
    with pytest.raises(InputError, match=r"^cat\.yaml:1: `controlnet` is not used by task `inter"):
        loaded.with_overrides({"controlnet": [CANNY]}, yaml_file, yaml=yaml_file)


def test_an_infotext_names_its_models_without_hash_and_builtins_without_prefix():
    assert model_ref("tiny-controlnet [0123abcd]", CONTROLNET_BUILTINS) == "builtin:tiny-controlnet"
    assert model_ref("control_v11p_sd15_canny [d14c016b]", ()) == "control_v11p_sd15_canny"
    text = 'a cat\nSteps: 4, ControlNet 0: "Module: canny, Model: x", ControlNet 1: "legacy"'
    units, notes = units_from_infotext(text, ())
    assert units == [{"enabled": True, "module": "canny", "model": "x"}]
    assert notes == ["ignored ControlNet 1: not a ControlNet entry ('Key: value, …'): 'legacy'"]


def test_an_ip_adapter_entry_is_not_read_back_as_a_controlnet_unit():
    """The extension writes an IP-Adapter as a ``ControlNet N`` entry; img2imgd's adapter is
    the profile's ``ip_adapter:``, so use_png_info leaves the entry out, and says so."""
    text = (
        'a cat\nSteps: 4, ControlNet 0: "Module: canny, Model: x", ControlNet 1: "Module: '
        'ip-adapter_clip_sd15, Model: ip-adapter_sd15 [0123abcd], Weight: 0.8"'
    )
    units, notes = units_from_infotext(text, ())
    assert units == [{"enabled": True, "module": "canny", "model": "x"}]
    assert notes == ["ignored ControlNet 1: an IP-Adapter is set by the profile's ip_adapter:"]


def test_a_unit_read_back_naming_a_missing_controlnet_is_not_the_inputs_fault(models):
    units: list[dict[str, Any]] = [{**CANNY, "model": "control_v11p_sd15_canny"}]
    settings = Profile(model="builtin:tiny-sd", steps=4, prompt="a cat", controlnet=units)
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    with pytest.raises(TransientError, match="ControlNet 'control_v11p_sd15_canny'") as caught:
        render(RenderRequest("cat.png", settings, image, size=(64, 64), seed=7), models)
    assert classify(caught.value).fault is not Fault.INPUT
