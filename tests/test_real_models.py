"""Full-size checkpoints, in every layout users have, through ``img2imgd once`` (issue 23).

Marker ``real`` (``make test-real``; left out of ``make test``): random-weight models of the
real size (tests/support/real_models.py) are built once into ``state/real-models`` (or
``IMG2IMGD_REAL_MODELS``), then each goes through ``img2imgd once`` as a whole process,
offline and behind the network guard: one 64-pixel image, its infotext, hashes, sidecar and
archived input checked. Printed per case: size on disk, build time, load time, peak RSS.
SDXL cases run last, one process at a time, and only with 20 GiB of memory available.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.engines.controlnet_models import legacy_hash
from tests.support.real_models import REAL_MODELS, default_folder
from tests.support.real_runs import GIB, LOAD_SECONDS, Built, build, enough_memory_for, run_once

pytestmark = [pytest.mark.real, pytest.mark.timeout(3600)]
CONTROLNET_SECONDS = r"loaded ControlNet \S+ \(.*?\) in ([\d.]+) s"


@dataclass(frozen=True)
class Case:
    model: str  # a key of REAL_MODELS
    lora: str | None = None
    vae: str | None = None
    controlnet: str | None = None


CASES = {
    "sd15 single file": Case("sd15"),
    "sd21-v single file + yaml": Case("sd21v"),
    "sd15 + LoRA r128": Case("sd15", lora="lora"),
    "sd15 + VAE file": Case("sd15", vae="vae"),
    "sd15 + ControlNet 1.1 file": Case("sd15", controlnet="controlnet-sd15"),
    "sdxl single file": Case("sdxl"),
    "sdxl diffusers folder": Case("sdxl-folder"),
}


@pytest.fixture(scope="module")
def models() -> Path:
    return default_folder()


@pytest.fixture(scope="module")
def built(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    """Each real model, built on first use in this module (in a child process)."""
    work = tmp_path_factory.mktemp("builds")

    class Builds(dict[str, Built]):
        def __missing__(self, name: str) -> Built:
            self[name] = made = build(name, models, work)
            return made

    yield Builds()


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-state")


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_real_size_model_paints_offline(
    case: Case, built: dict[str, Built], models: Path, shared_state: Path, tmp_path: Path
) -> None:
    for name in filter(None, (case.model, case.lora, case.vae, case.controlnet)):
        if reason := enough_memory_for(name):
            pytest.skip(reason)
    checkpoint = built[case.model]
    profile: dict[str, object] = {"model": checkpoint.path.stem}
    if case.lora:
        profile["prompt"] = f"a test <lora:{built[case.lora].path.stem}:0.8>"
    if case.vae:
        profile["vae"] = built[case.vae].path.name
    if case.controlnet:
        net = built[case.controlnet].path.stem
        profile["controlnet"] = [{"enabled": True, "module": "canny", "model": net}]
    run = run_once(tmp_path, models, shared_state, **profile)
    measured, workspace = run.measured, run.workspace
    assert measured.returncode == 0, measured.output[-4000:]
    assert run.network == [], run.network  # nothing even tried to reach the network

    (output,) = [p for p in workspace.outputs("p") if p.suffix == ".png"]
    with Image.open(output) as image:
        infotext = image.info["parameters"]
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 0  # painted, not a blank (a NaN model decodes to one colour)
    sidecar = output.with_suffix(".txt")
    assert sidecar.read_text().strip() == infotext.strip()
    assert [p.name for p in workspace.done("p")] == ["a.png"]  # the input was archived
    assert not (workspace.inbox / "p" / "a.png").exists()

    fields = _fields(infotext)
    assert fields["Model"] == checkpoint.path.stem
    assert fields["Model hash"] == _sha256(_hashed_file(checkpoint.path))[:10]
    if case.vae:
        vae = built[case.vae].path
        assert fields["VAE"] == vae.name
        assert fields["VAE hash"] == _sha256(vae)[:10]
    if case.lora:
        lora = built[case.lora].path
        assert fields["Lora hashes"] == f'"{lora.stem}: {_addnet_hash(lora)}"'
    if case.controlnet:
        net_file = built[case.controlnet].path
        assert f"Model: {net_file.stem} [{legacy_hash(net_file)}]," in fields["ControlNet 0"]
        print(f"\nREAL ControlNet loaded in {measured.seconds_in(CONTROLNET_SECONDS):.1f} s")
    loaded = re.search(r"loaded model \S+ in [\d.]+ s \(([\w-]+)\)", measured.output)
    assert loaded, measured.output[-3000:]
    expected = "v-prediction" if REAL_MODELS[case.model].architecture == "sd2-v" else "epsilon"
    assert loaded[1] == expected

    extra = case.lora or case.vae or case.controlnet
    extras = [built[extra]] if extra else []
    size = sum(b.size for b in [checkpoint, *extras])
    build_seconds = sum(b.seconds for b in [checkpoint, *extras])
    print(
        f"\nREAL {case.model}{' + ' + extra if extra else ''}: "
        f"{size / 1e9:.2f} GB on disk, built in {build_seconds:.0f} s "
        f"(build peak {max(b.peak_rss for b in [checkpoint, *extras]) / GIB:.1f} GiB; 0 s: "
        f"cached), loaded in {measured.seconds_in(LOAD_SECONDS):.1f} s, whole run "
        f"{measured.seconds:.1f} s, peak RSS {measured.peak_rss / GIB:.2f} GiB"
    )


def _fields(infotext: str) -> dict[str, str]:
    """The "Key: value" pairs of an infotext's last line (quoted values kept whole)."""
    last = infotext.strip().splitlines()[-1]
    pairs = re.findall(r'\s*([\w ]+): ("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)', last)
    return {key.strip(): value.strip() for key, value in pairs}


def _hashed_file(path: Path) -> Path:
    """A1111's "Model hash" file: the checkpoint, or a diffusers folder's UNet weights."""
    return next(path.glob("unet/*.safetensors")) if path.is_dir() else path


def _sha256(path: Path, offset: int = 0) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        file.seek(offset)
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _addnet_hash(path: Path) -> str:
    """kohya's addnet hash (A1111's "Lora hashes", civitai's AutoV3): sha256 of the tensor
    data after the safetensors header, 12 hex digits."""
    with path.open("rb") as file:
        header = int.from_bytes(file.read(8), "little")
    return _sha256(path, 8 + header)[:12]
