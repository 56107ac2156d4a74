"""IP-Adapter reference images through the real daemon: real folders, the real watcher and
pairing, the real tiny pipeline and the built-in tiny IP-Adapter (random weights, loaded
through diffusers' IP-Adapter conversion, with its tiny CLIP vision encoder).

The batch cases are painted by one daemon run (one inbox folder per profile, the same
picture and seed in each), so that tests compare outputs pixel for pixel."""

from __future__ import annotations

import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.infotext import parse_infotext
from daemon.cli import check_problems
from daemon.config.profiles import Profile
from daemon.controlnet.units import ControlNetUnit
from daemon.errors import ConfigError, Fault, TransientError, classify
from daemon.models.resolve import Search, resolve_ip_adapter, resolve_model
from daemon.ops.service import Daemon
from daemon.paths import shown
from daemon.render.cache import ModelCache
from daemon.render.render import render
from daemon.render.values import RenderRequest
from tests.conftest import DATA, Workspace
from tests.support.workspace import drop as copy
from tests.support.workspace import wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"model": "builtin:tiny-ip-adapter"}
REF = {"enabled": True, "module": "reference_only"}
FIXED = {"width": 64, "height": 64, "denoising_strength": 1.0, "steps": 4}
ASTRONAUT = DATA / "astronaut.png"

CASES: dict[str, tuple[dict[str, Any] | None, dict[str, Path | bytes]]] = {
    "plain": (None, {}),
    "beside": (TINY, {"cat.reference.png": ASTRONAUT}),
    "in_profile": ({**TINY, "reference": str(ASTRONAUT)}, {}),
    "beside_wins": (
        {**TINY, "reference": str(DATA / "chelsea.png")},
        {"cat.reference.png": ASTRONAUT},
    ),
    "scale0": ({**TINY, "scale": 0}, {"cat.reference.png": ASTRONAUT}),
    "half": ({**TINY, "scale": 0.5}, {"cat.reference.png": ASTRONAUT}),
    "broken": (TINY, {"cat.reference.png": b"\x89PNG\r\n\x1a\n this is not a picture"}),
    "unused": (None, {"cat.reference.png": ASTRONAUT}),
}
"""Profile name → its ``ip_adapter`` and the companions dropped beside ``cat.png``."""


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def noise(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def inbox_run(tmp_path_factory: pytest.TempPathFactory, models: ModelCache) -> Workspace:
    """Every case painted by one daemon run (companions dropped before their inputs)."""
    workspace = Workspace(tmp_path_factory.mktemp("ip-adapter"), models.state_dir).create()
    for name, (adapter, _) in CASES.items():
        workspace.profile(name, ip_adapter=adapter, **FIXED)
    dropped = [
        (workspace.inbox / name / companion, content)
        for name, (_, companions) in CASES.items()
        for companion, content in companions.items()
    ]
    for target, content in dropped:  # the companions first: nothing waits for them
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            copy(content, target)
    for name in CASES:
        workspace.drop(DATA / "chelsea.png", f"{name}/cat.png")
    # The broken one was written long ago: not one whose writer may only have paused.
    os.utime(workspace.inbox / "broken/cat.png", (time.time() - 60, time.time() - 60))
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    return workspace


def output(workspace: Workspace, profile: str) -> np.ndarray:
    return read(workspace.outbox / profile / "cat.png")


def test_a_reference_image_changes_the_pixels_by_its_scale(inbox_run):
    plain, steered = output(inbox_run, "plain"), output(inbox_run, "beside")
    assert not np.array_equal(plain, steered)
    half = output(inbox_run, "half")
    assert not np.array_equal(half, plain) and not np.array_equal(half, steered)
    for name in ("cat.png", "cat.reference.png"):
        assert (inbox_run.inbox / "_done/beside" / name).exists(), name


def test_scale_0_paints_exactly_as_no_adapter(inbox_run):
    assert np.array_equal(output(inbox_run, "scale0"), output(inbox_run, "plain"))


def test_the_profiles_reference_serves_when_none_comes_with_the_input(inbox_run):
    assert np.array_equal(output(inbox_run, "in_profile"), output(inbox_run, "beside"))
    assert np.array_equal(output(inbox_run, "beside_wins"), output(inbox_run, "beside"))


def test_the_infotext_names_the_adapter_as_the_extension_writes_an_ip_adapter_unit(inbox_run):
    with Image.open(inbox_run.outbox / "half/cat.png") as image:
        params = parse_infotext(image.info["parameters"]).params
    assert params["ControlNet 0"] == (
        "Module: ip-adapter_clip_sd15, Model: tiny-ip-adapter [e3b0c442], Weight: 0.5, "
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, "
        "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"
    )


def test_a_reference_that_does_not_decode_fails_its_input_with_a_report(inbox_run):
    failed = inbox_run.inbox / "_failed/broken"
    report = (failed / "cat.error.txt").read_text()
    assert "IP-Adapter reference image" in report and "cat.reference.png" in report
    assert (failed / "cat.png").exists() and (failed / "cat.reference.png").exists()


def test_a_reference_without_an_adapter_is_archived_with_its_input_and_unused(inbox_run):
    assert (inbox_run.inbox / "_done/unused/cat.reference.png").exists()
    assert np.array_equal(output(inbox_run, "unused"), output(inbox_run, "plain"))


def test_a_late_reference_is_paired_and_a_missing_one_fails_after_the_window(
    workspace: Workspace, running
):
    workspace.profile("late", ip_adapter=TINY, **FIXED)
    workspace.profile("never", ip_adapter=TINY, **FIXED)
    daemon = running(pairing_window=3.0)
    image = workspace.drop(DATA / "chelsea.png", "late/cat.png")
    workspace.drop(DATA / "chelsea.png", "never/cat.png")
    wait_for(lambda: image in daemon.admission.waiting())
    assert not workspace.outputs("late"), "it waits for its reference"
    noise(1).save(workspace.inbox / "late/cat.reference.png")
    wait_for(lambda: len(workspace.done("late")) == 2)
    wait_for(lambda: (workspace.inbox / "_failed/never/cat.png").exists())
    report = (workspace.inbox / "_failed/never/cat.error.txt").read_text()
    assert report.startswith("no reference image for cat.png"), report
    assert "cat.reference.png" in report


def test_a_clips_reference_folder_is_encoded_once_and_archived_at_its_end(
    workspace: Workspace, models: ModelCache
):
    workspace.profile("clip", ip_adapter=TINY, **FIXED)
    (workspace.inbox / "clip/shot/reference").mkdir(parents=True)
    noise(2).save(workspace.inbox / "clip/shot/reference/key_frame.png")
    for number in (1, 2, 3):
        workspace.drop(DATA / "chelsea.png", f"clip/shot/frame_{number:04d}.png")
    before = models.ip_adapters.encoded
    Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    assert len([p for p in workspace.outputs("clip") if p.suffix == ".png"]) == 3
    assert models.ip_adapters.encoded - before == 1, "one reference, encoded once"
    assert (workspace.inbox / "_done/clip/shot/reference/key_frame.png").exists()


def test_a_profile_without_ip_adapter_after_one_with_it_paints_as_before(
    workspace: Workspace, running
):
    workspace.profile("plain", **FIXED)
    workspace.profile("steered", ip_adapter=TINY, **FIXED)
    running()
    steps = [("plain", "first"), ("steered", "cat"), ("plain", "second")]
    for count, (profile, stem) in enumerate(steps, start=1):
        if profile == "steered":
            noise(3).save(workspace.inbox / f"steered/{stem}.reference.png")
        workspace.drop(DATA / "chelsea.png", f"{profile}/{stem}.png")
        wait_for(lambda c=count: len(painted(workspace)) >= c)
    first, second = (read(workspace.outbox / f"plain/{stem}.png") for stem in ("first", "second"))
    assert np.array_equal(first, second)
    assert not np.array_equal(first, read(workspace.outbox / "steered/cat.png"))


def painted(workspace: Workspace) -> list[Path]:
    found = workspace.outputs("plain") + workspace.outputs("steered")
    return [path for path in found if path.suffix == ".png"]


def request(model: str, adapter: dict[str, Any] | None) -> RenderRequest:
    settings = Profile(model=model, ip_adapter=adapter, prompt="a cat", **FIXED)
    image = Image.open(DATA / "chelsea.png").convert("RGB")
    reference = Image.open(ASTRONAUT).convert("RGB")
    return RenderRequest("cat.png", settings, image, size=(64, 64), seed=7, reference=reference)


def test_the_sdxl_variant_steers_the_sdxl_model(models):
    plain = render(request("builtin:tiny-sdxl", None), models).images[0]
    adapter = {"model": "builtin:tiny-ip-adapter-sdxl"}
    steered = render(request("builtin:tiny-sdxl", adapter), models).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(steered))


def test_an_adapter_for_another_architecture_is_a_configuration_error(models):
    with pytest.raises(ConfigError) as caught:
        render(request("builtin:tiny-sd", {"model": "builtin:tiny-ip-adapter-sdxl"}), models)
    assert str(caught.value) == (
        "IP-Adapter builtin:tiny-ip-adapter-sdxl is for cross-attention width 96, but model "
        "builtin:tiny-sd is cross-attention width 32: use an IP-Adapter made for it"
    )
    assert classify(caught.value).fault is Fault.CONFIG  # the input waits; it is not failed


def test_a_missing_adapter_or_encoder_names_the_file_and_is_not_the_inputs_fault(
    tmp_path, models, state_dir
):
    missing = tmp_path / "ip-adapter_sd15.safetensors"
    with pytest.raises(TransientError, match="ip-adapter_sd15") as caught:
        render(request("builtin:tiny-sd", {"model": str(missing)}), models)
    assert classify(caught.value).fault is not Fault.INPUT
    lone = tmp_path / "alone" / "ip-adapter_sd15.safetensors"
    lone.parent.mkdir()
    shutil.copy(resolve_ip_adapter("builtin:tiny-ip-adapter", Search(None, state_dir)), lone)
    with pytest.raises(TransientError) as caught:
        render(request("builtin:tiny-sd", {"model": str(lone)}), models)
    assert f"no {lone.parent / 'image_encoder'} with a config.json" in str(caught.value)
    assert classify(caught.value).fault is not Fault.INPUT


def test_check_names_an_adapter_and_an_encoder_that_are_not_there(tmp_path, state_dir):
    workspace = Workspace(tmp_path, state_dir).create()
    missing = tmp_path / "no-such-encoder"
    workspace.profile("p", ip_adapter={**TINY, "image_encoder": str(missing)})
    [problem] = check_problems(workspace.settings())
    assert problem.startswith(f"{shown(workspace.profiles / 'p.yaml')}:"), problem
    assert "image encoder" in problem and str(missing) in problem


def test_an_ip_adapter_is_not_a_checkpoint_and_interrogation_refuses_it(tmp_path, state_dir):
    with pytest.raises(ConfigError, match="is an IP-Adapter: use it as `ip_adapter: model:`"):
        resolve_model("builtin:tiny-ip-adapter", Search(None, state_dir))
    workspace = Workspace(tmp_path, state_dir).create()
    workspace.profile("p", task="interrogate", model="builtin:tiny-interrogator", ip_adapter=TINY)
    [problem] = check_problems(workspace.settings())
    assert "`ip_adapter` is not used by task `interrogate`" in problem, problem


def test_adapters_and_encoders_are_found_by_name_where_comfyui_and_the_extension_keep_them(
    tmp_path, state_dir, models
):
    """ComfyUI's ``models/ipadapter`` and ``models/clip_vision`` (an encoder as one file),
    the extension's ``annotator/downloads/clip_vision``: the built-in's files, renamed,
    paint what the built-in paints."""
    builtin = resolve_ip_adapter("builtin:tiny-ip-adapter", Search(None, state_dir))
    models_dir = tmp_path / "webui/models"
    copy(builtin, models_dir / "ipadapter/ip-adapter_tiny.safetensors")
    copy(
        builtin.parent / "image_encoder/model.safetensors",
        models_dir / "clip_vision/vit-t.safetensors",
    )
    extension = tmp_path / "webui/extensions/sd-webui-controlnet/annotator/downloads/clip_vision"
    copy(builtin.parent / "image_encoder/model.safetensors", extension / "clip_t.pth")
    named = ModelCache(models_dir=models_dir, state_dir=state_dir, device="cpu")
    expected = render(request("builtin:tiny-sd", TINY), models).images[0]
    for encoder in ("vit-t", "clip_t"):
        adapter = {"model": "ip-adapter_tiny", "image_encoder": encoder}
        with (
            pytest.raises(TransientError, match="is a pickled file")
            if encoder == "clip_t"
            else nullcontext()
        ):
            found = render(request("builtin:tiny-sd", adapter), named).images[0]
            assert np.array_equal(np.asarray(found), np.asarray(expected))


def test_a_reference_beside_a_video_steers_every_frame_encoded_once(
    workspace: Workspace, running, models: ModelCache
):
    from daemon.media.video import read_frames
    from tests.support.media import make_test_clip

    make_test_clip(workspace.root / "v.mp4", frames=3)
    workspace.profile("with", ip_adapter=TINY, **FIXED)
    workspace.profile("without", **FIXED)
    running()
    before = models.ip_adapters.encoded
    noise(4).save(workspace.inbox / "with/v.reference.png")
    for name in ("with", "without"):
        workspace.drop(workspace.root / "v.mp4", f"{name}/v.mp4")
    wait_for(lambda: len(workspace.done("with")) == 2 and len(workspace.done("without")) == 1)
    steered, plain = (
        [np.asarray(frame) for frame in read_frames(workspace.outbox / f"{name}/v.mp4")]
        for name in ("with", "without")
    )
    assert len(steered) == len(plain) == 3
    assert all(not np.array_equal(a, b) for a, b in zip(steered, plain, strict=True))
    assert models.ip_adapters.encoded - before == 1


def test_a_plus_adapter_is_refused_as_configuration_naming_the_file(tmp_path, models, state_dir):
    import torch
    from safetensors.torch import save_file

    plus = tmp_path / "ip-adapter-plus_sd15.safetensors"
    save_file(
        {
            "image_proj.latents": torch.zeros(1, 16, 32),
            "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2),
        },
        str(plus),
    )
    with pytest.raises(ConfigError, match=r"ip-adapter-plus_sd15\.safetensors is a Plus") as caught:
        builtin = resolve_ip_adapter("builtin:tiny-ip-adapter", Search(None, state_dir))
        encoder = str(builtin.parent / "image_encoder")
        render(request("builtin:tiny-sd", {"model": str(plus), "image_encoder": encoder}), models)
    assert classify(caught.value).fault is Fault.CONFIG


def test_only_cross_attention_changes_so_reference_only_and_slicing_keep_theirs(state_dir):
    """The adapter's layers go on the cross-attention layers for the call and come off
    after it; self-attention keeps its processors (sliced ones in low-memory mode), so a
    ``reference_only`` unit steers the same call, and both show in the infotext."""
    cache = ModelCache(models_dir=None, state_dir=state_dir, device="cpu")
    cache.use_low_memory("builtin:tiny-sd")  # sliced attention everywhere
    unet = cache.pipeline("builtin:tiny-sd", "img2img").unet
    before = dict(unet.attn_processors)
    both = request("builtin:tiny-sd", TINY)
    both = replace(
        both, settings=both.settings.model_copy(update={"controlnet": (ControlNetUnit(**REF),)})
    )
    alone = render(request("builtin:tiny-sd", TINY), cache)
    steered = render(both, cache)
    assert not np.array_equal(np.asarray(alone.images[0]), np.asarray(steered.images[0]))
    assert 'ControlNet 0: "Module: reference_only' in steered.infotexts[0]
    assert 'ControlNet 1: "Module: ip-adapter_clip_sd15' in steered.infotexts[0]
    after = dict(unet.attn_processors)
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert unet.encoder_hid_proj is None and "process_encoder_hidden_states" not in vars(unet)
