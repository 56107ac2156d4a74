"""A tiny Stable Diffusion that has *learned* a little of what photos look like, for benches.

``builtin:tiny-sd`` has random weights: its VAE decodes noise, so img2img returns a picture
unrelated to its input and no flicker measure means anything. No trained weights can be
downloaded here and there is no GPU, so this trains the same tiny classes for a few CPU
minutes on random crops of the sample photos (and the colour photos scikit-image ships):

1. the VAE (AutoencoderKL, 4 latent channels, scale factor 8 as SD's: the ControlNet
   conditioning and the daemon's sizes assume 8) for reconstruction, L1 + a tiny KL; its
   ``scaling_factor`` is then measured so that scaled latents have unit std, as SD's 0.18215;
2. the UNet (``builtin:tiny-sd``'s layout) for epsilon prediction on those latents, with the
   pipeline's own DDPM schedule and random timesteps. The text condition is the empty prompt
   or the bench's prompt at random, so classifier-free guidance has nothing to amplify.

The text encoder, tokenizer and scheduler are ``builtin:tiny-sd``'s (built by its own
builder). A proxy for a real checkpoint, not one: it knows a few photos, blurrily.

The folder is built once and reused while its recipe stamp matches (``RECIPE``, `minutes`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from daemon.models.tiny_sd import build_tiny_sd

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = (ROOT / "tests" / "data" / "astronaut.png", ROOT / "tests" / "data" / "chelsea.png")
"""The real photos among the samples (the masks and sketches are not photos)."""
EXTRA_PHOTOS = ("coffee.png", "rocket.jpg", "motorcycle_left.png")
"""More colour photos, from scikit-image's bundled sample data (no download), so that the
model does not learn only the two pictures the benches paint."""
PROMPTS = ("", "an astronaut, oil painting")
"""Text conditions seen in training: the empty prompt (CFG's negative) and the bench's."""
RECIPE = "trained-tiny-sd/2"
SEED = 0
THREADS = 1
"""Threads for training: on a busy 2-core machine torch's spinning worker threads slow each
step several times over (tests/conftest.py's one_torch_thread), so one."""
REPORT_EVERY_S = 15.0


def trained_tiny_sd(folder: Path, *, minutes: float = 4.0) -> Path:
    """The trained tiny SD folder at `folder`, trained now unless one with this recipe is there.

    `minutes` of wall-clock time on one CPU thread, half for each model (a busy machine
    trains fewer steps in them)."""
    stamp = {"recipe": RECIPE, "minutes": minutes, "seed": SEED}
    stamp_file = folder / "trained-tiny.json"
    if (folder / "model_index.json").exists() and _read_json(stamp_file) == stamp:
        return folder
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        StableDiffusionImg2ImgPipeline,
    )

    shutil.rmtree(folder, ignore_errors=True)
    build_tiny_sd(folder)  # text encoder, tokenizer, scheduler: builtin:tiny-sd's own
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
            photos = [_as_tensor(photo) for photo in _photos()]
            vae = _train_vae(photos, seconds=minutes * 30)
            unet = _train_unet(pipe, vae, photos, seconds=minutes * 30)
    finally:
        torch.set_num_threads(threads)
    pipe.register_modules(vae=vae, unet=unet)
    pipe.save_pretrained(folder, safe_serialization=True)
    stamp_file.write_text(json.dumps(stamp), encoding="utf-8")
    return folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _photos() -> list[Image.Image]:
    from skimage import data

    found = [*PHOTOS, *(Path(data.data_dir) / name for name in EXTRA_PHOTOS)]
    photos = []
    for path in found:
        if path.exists():
            with Image.open(path) as image:
                photos.append(image.convert("RGB"))
    return photos


def _as_tensor(photo: Image.Image) -> Any:
    """(3, H, W) in [-1, 1], as the pipeline's image processor gives the VAE."""
    import torch

    pixels = np.asarray(photo, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _crops(photos: list[Any], *, batch: int, sides: tuple[int, ...]) -> Iterator[Any]:
    """Endless batches of random crops: a random scale (the benches paint whole photos
    shrunk to 128 px, so the shrunk photos matter most), one of `sides`, flips. Small crops
    because a step's cost grows with the pixels, and both models are convolutional."""
    import torch
    import torch.nn.functional as F

    while True:
        side = sides[int(torch.randint(len(sides), ()).item())]
        pieces = []
        for _ in range(batch):
            photo = photos[int(torch.randint(len(photos), ()).item())]
            shortest = min(photo.shape[1:])
            scale = float(torch.empty(()).uniform_(max(side / shortest, 0.2), 1.0))
            size = [max(side, round(n * scale)) for n in photo.shape[1:]]
            shrunk = F.interpolate(photo[None], size=size, mode="area")[0]
            top = int(torch.randint(size[0] - side + 1, ()).item())
            left = int(torch.randint(size[1] - side + 1, ()).item())
            crop = shrunk[:, top : top + side, left : left + side]
            pieces.append(crop.flip(2) if torch.rand(()) < 0.5 else crop)
        yield torch.stack(pieces)


def _train_vae(photos: list[Any], *, seconds: float) -> Any:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)

    def step(batch: Any) -> float:
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        loss = (decoded - batch).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    _loop("vae", step, _crops(photos, batch=8, sides=(32, 48, 64)), seconds)
    vae.eval()
    with torch.no_grad():
        sample = next(_crops(photos, batch=32, sides=(64,)))
        std = float(vae.encode(sample).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    print(f"trained-tiny vae: latent std {std:.3f}, scaling_factor {1 / std:.5f}", flush=True)
    return vae


def _train_unet(pipe: Any, vae: Any, photos: list[Any], *, seconds: float) -> Any:
    import torch
    from diffusers import DDPMScheduler

    from daemon.models.tiny_sd import tiny_unet

    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        texts = [pipe.encode_prompt(p, "cpu", 1, False)[0] for p in PROMPTS]
    unet = tiny_unet()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-4, weight_decay=0.0)
    factor = vae.config.scaling_factor

    def step(batch: Any) -> float:
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.sample() * factor
        noise = torch.randn_like(latents)
        steps = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),))
        noisy = schedule.add_noise(latents, noise, steps)
        which = torch.randint(len(texts), (len(latents),)).tolist()
        text = torch.cat([texts[n] for n in which])
        predicted = unet(noisy, steps, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    _loop("unet", step, _crops(photos, batch=16, sides=(64,)), seconds)
    unet.eval()
    return unet


def _loop(name: str, step: Any, batches: Iterator[Any], seconds: float) -> None:
    """Train `step` on `batches` for `seconds`, printing the mean loss every ~15 s."""
    started = reported = time.monotonic()
    losses: list[float] = []
    steps = 0
    while time.monotonic() - started < seconds:
        losses.append(step(next(batches)))
        steps += 1
        now = time.monotonic()
        if now - reported >= REPORT_EVERY_S or now - started >= seconds:
            print(f"trained-tiny {name}: step {steps}, {now - started:5.0f} s, "
                  f"loss {np.mean(losses):.4f}", flush=True)  # fmt: skip
            reported, losses = now, []
