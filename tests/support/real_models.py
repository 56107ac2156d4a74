"""Full-size Stable Diffusion checkpoints with random weights, built from the shipped configs.

Why: real weights cannot be downloaded where this project is developed, but a full-size model
with random weights has exactly the real layout, the real memory footprint and the real
compute cost; only its pictures are noise. So the GPU benchmark (``bench/gpu.py``) and the
real-size checks build one from the configs the daemon ships (``daemon/data/configs``),
offline, and write it as users' files are: one fp16 ``.safetensors`` in the original (LDM)
layout. SD 1.5 is 1,066,235,307 parameters (2.13 GB); SDXL base about 3.5 billion (7 GB).

Each checkpoint is built once into ``<folder>/Stable-diffusion/<name>.safetensors`` (so the
folder works as the daemon's ``models_dir``) and reused afterwards; bump
:data:`BUILD_VERSION` when the recipe changes, so an old file is never taken for the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from daemon.models.single_file import CONFIGS_DIR
from tests.support.ldm import write_ldm_checkpoint

BUILD_VERSION = 1
_SEED = 0


@dataclass(frozen=True)
class RealModel:
    stem: str  # the file's name without version and suffix: what a profile's `model:` names
    architecture: str  # its shipped config folder in daemon/data/configs
    size: int  # the side of the square images it is made for


REAL_MODELS = {
    "sd15": RealModel("random-sd15", "sd1", 512),
    "sdxl": RealModel("random-sdxl-base", "sdxl", 1024),
}


def checkpoint_path(name: str, folder: Path) -> Path:
    """Where :func:`ensure_random_checkpoint` puts model `name` (a key of REAL_MODELS)."""
    model = REAL_MODELS[name]
    return Path(folder) / "Stable-diffusion" / f"{model.stem}-v{BUILD_VERSION}.safetensors"


def ensure_random_checkpoint(name: str, folder: Path) -> Path:
    """The random full-size checkpoint `name`, built on first use (minutes, several GB of RAM).

    Written under a hidden temporary name and renamed into place, so the file exists only
    when complete (the daemon's model lookup skips dot names).
    """
    path = checkpoint_path(name, folder)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        build_random_checkpoint(CONFIGS_DIR / REAL_MODELS[name].architecture, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def build_random_checkpoint(config_dir: Path, path: Path) -> Path:
    """Write a random-weight fp16 single-file checkpoint of the architecture in `config_dir`
    (a diffusers folder's configs: ``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``
    for SDXL). Same seed, same bytes. SD 2.x's OpenCLIP text encoder is written as such."""
    open_clip = "sd2" in Path(config_dir).name
    return write_ldm_checkpoint(random_modules(Path(config_dir)), path, open_clip=open_clip)


def random_modules(config_dir: Path) -> SimpleNamespace:
    """The UNet, VAE and text encoder(s) of `config_dir`'s architecture with random weights,
    in fp16. Each is halved as soon as it is built, so the peak is one fp32 module at a time."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def half(module: Any) -> Any:
        return module.to(torch.float16).eval()

    parts: dict[str, Any] = {}
    # fork_rng: seeding must not disturb the random state of the process that asked for it.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(_SEED)
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        parts["unet"] = half(UNet2DConditionModel.from_config(unet_config))
        parts["vae"] = half(
            AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        )
        text = CLIPTextConfig.from_pretrained(config_dir / "text_encoder")
        parts["text_encoder"] = half(CLIPTextModel(text))
        if (config_dir / "text_encoder_2").is_dir():
            text_2 = CLIPTextConfig.from_pretrained(config_dir / "text_encoder_2")
            parts["text_encoder_2"] = half(CLIPTextModelWithProjection(text_2))
    return SimpleNamespace(**parts)
