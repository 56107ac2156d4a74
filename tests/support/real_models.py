"""Full-size Stable Diffusion files with random weights, in the layouts users really have.

Why: real weights cannot be downloaded where this project is developed, but a full-size model
with random weights has exactly the real layout, the real memory footprint and the real
compute cost; only its pictures are noise. So ``make test-real`` and ``make bench-gpu`` build
them from the configs the daemon ships (``daemon/data/configs``), offline
(:mod:`tests.support.real_weights` makes the weights):

* ``sd15``: SD 1.5, one fp16 ``.safetensors`` in the original (LDM) layout (2.13 GB);
* ``sd21v``: SD 2.1 768-v, the same, with A1111's ``v2-inference-v.yaml`` beside it;
* ``sdxl``: SDXL base, one fp16 file (about 7 GB);
* ``sdxl-folder``: SDXL base as a diffusers folder of fp16 files (the hub's fp16 download);
* ``lora``: a kohya LoRA of rank 128 for SD 1.5 (about 150 MB), as civitai ships them;
* ``vae``: SD's VAE as one fp32 file in the original layout (335 MB);
* ``controlnet-sd15``: a ControlNet 1.1 for SD 1.5 as lllyasviel's files, one fp16 file in
  the original layout (723 MB), in ``ControlNet/``;
* ``flux``: FLUX.1-dev as a diffusers folder of bf16 files (33.7 GB, built by
  :mod:`tests.support.real_flux`); ``flux-shallow``: every width of it, 2 + 4 of its 19 + 38
  blocks (12.6 GB, three quarters of it T5).

Each is built once into ``<folder>/<A1111 sub-folder>/<name>`` (so the folder works as the
daemon's ``models_dir``) and reused; bump :data:`BUILD_VERSION` when a recipe changes, so an
old file is never taken for the new one. The folder is ``state/real-models`` in the
repository unless ``IMG2IMGD_REAL_MODELS`` names another. A build needs up to 12 GB of RAM
(SDXL), so callers that go on to load large models build in a child process:
``python -m tests.support.real_models NAME [FOLDER]`` prints what it made as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.models.single_file import CONFIGS_DIR, ensure_config_dir
from tests.support import real_flux, real_weights
from tests.support.real_flux import FLUX_DEV, FLUX_SHALLOW

BUILD_VERSION = 2
ROOT = Path(__file__).resolve().parent.parent.parent
Kind = Literal["checkpoint", "folder", "lora", "vae", "controlnet"]
_SUBFOLDER: dict[Kind, str] = {
    "checkpoint": "Stable-diffusion",
    "folder": "Stable-diffusion",
    "lora": "Lora",
    "vae": "VAE",
    "controlnet": "ControlNet",
}


@dataclass(frozen=True)
class RealModel:
    stem: str  # the file's name without version and suffix
    architecture: str  # its shipped config folder in daemon/data/configs (flux: real_flux's)
    size: int  # the side of the square images it is made for
    kind: Kind = "checkpoint"


REAL_MODELS = {
    "sd15": RealModel("random-sd15", "sd1", 512),
    "sd21v": RealModel("random-sd21-v", "sd2-v", 768),
    "sdxl": RealModel("random-sdxl-base", "sdxl", 1024),
    "sdxl-folder": RealModel("random-sdxl-base-diffusers", "sdxl", 1024, kind="folder"),
    "lora": RealModel("random-sd15-lora-r128", "sd1", 512, kind="lora"),
    "vae": RealModel("random-vae-ft-mse", "sd1", 512, kind="vae"),
    "controlnet-sd15": RealModel(
        "random-control_v11p_sd15", "controlnet-sd1", 512, kind="controlnet"
    ),
    "flux": RealModel("random-flux1-dev-diffusers", "flux", 1024, kind="folder"),
    "flux-shallow": RealModel("random-flux1-dev-width3072-2x4-blocks", "flux", 1024, kind="folder"),
}
FLUX_SHAPES = {"flux": FLUX_DEV, "flux-shallow": FLUX_SHALLOW}
CHECKPOINTS = [name for name, model in REAL_MODELS.items() if model.kind == "checkpoint"]


def default_folder() -> Path:
    """``IMG2IMGD_REAL_MODELS``, else ``state/real-models`` in the repository."""
    return Path(os.environ.get("IMG2IMGD_REAL_MODELS") or ROOT / "state" / "real-models")


def checkpoint_path(name: str, folder: Path) -> Path:
    """Where :func:`ensure_random_checkpoint` puts `name` (a key of REAL_MODELS); what a
    profile names is its ``.stem`` (a folder's name)."""
    model = REAL_MODELS[name]
    suffix = "" if model.kind == "folder" else ".safetensors"
    return Path(folder) / _SUBFOLDER[model.kind] / f"{model.stem}-v{BUILD_VERSION}{suffix}"


def ensure_random_checkpoint(name: str, folder: Path) -> Path:
    """The random full-size file (or folder) `name`, built on first use (minutes, GBs of RAM).

    Built under a hidden temporary name and renamed into place, so it exists only when
    complete (the daemon's model lookup skips dot names).
    """
    path = checkpoint_path(name, folder)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        _build(name, Path(folder), partial)
        os.replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial)
        partial.unlink(missing_ok=True)
    return path


def _build(name: str, folder: Path, target: Path) -> None:
    model = REAL_MODELS[name]
    configs = CONFIGS_DIR / model.architecture
    if model.kind == "checkpoint":
        real_weights.build_random_checkpoint(configs, target)
        if model.architecture in real_weights.V_SIDECAR_ARCHITECTURES:
            # Beside the final name, before the file appears: never a v-model without it.
            real_weights.write_v_sidecar(checkpoint_path(name, folder))
    elif name in FLUX_SHAPES:
        real_flux.build_flux_folder(target, FLUX_SHAPES[name])
    elif model.kind == "folder":
        complete = ensure_config_dir(model.architecture, folder)  # type: ignore[arg-type]
        real_weights.build_diffusers_folder(complete, target)
    elif model.kind == "lora":
        real_weights.build_lora_file(configs, target)
    elif model.kind == "controlnet":
        real_weights.build_controlnet_file(configs, target)
    else:
        real_weights.build_vae_file(configs, target)


def main(argv: list[str]) -> int:
    """Build `argv[0]` into `argv[1]` (default :func:`default_folder`); print it as JSON."""
    name, folder = argv[0], Path(argv[1]) if len(argv) > 1 else default_folder()
    started = time.monotonic()
    existed = checkpoint_path(name, folder).exists()
    path = ensure_random_checkpoint(name, folder)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    report = {
        "path": str(path),
        "bytes": sum(p.stat().st_size for p in files),
        "built": not existed,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
