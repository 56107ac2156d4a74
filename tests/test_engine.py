"""The diffusion engine on the real tiny pipeline: sizes, resize modes, steps, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daemon.a1111.sizes import ResizeMode
from daemon.config.profiles import Profile
from daemon.engines.diffusion import Canvas, DiffusionEngine, inference_steps
from daemon.prepare.canvas import aspect_note, processing_size


def profile(**keys) -> Profile:
    return Profile(**{"model": "builtin:tiny-sd", "steps": 4, "denoising_strength": 0.5, **keys})


def stripes(size=(96, 48)) -> Image.Image:
    """Left half red, right half blue: placement is visible after any resize."""
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (size[0] // 2, 0, size[0], size[1]))
    return image


@pytest.mark.parametrize(
    ("keys", "source", "expected"),
    [
        ({}, (451, 300), (624, 416)),  # auto keeps the aspect ratio at 512x512 pixels
        ({"max_pixels": 64 * 64}, (300, 451), (48, 72)),
        ({"width": 512, "height": 768}, (451, 300), (512, 768)),
        ({"width": 256}, (451, 300), (256, 168)),
        ({"height": 256}, (451, 300), (384, 256)),
        ({"scale": 0.5}, (451, 300), (224, 150 // 8 * 8)),
        ({"width": "auto", "height": "auto", "max_pixels": 128 * 128}, (64, 64), (128, 128)),
    ],
)
def test_processing_size(keys, source, expected):
    assert processing_size(profile(**keys), *source) == expected


def test_aspect_note_only_for_fixed_sizes_that_distort():
    assert aspect_note(profile(), (451, 300), (624, 416)) is None
    note = aspect_note(profile(width=512, height=512), (451, 300), (512, 512))
    assert note is not None and "just resize" in note


def test_inference_steps_follow_a1111():
    assert inference_steps(20, 0.5, fix_steps=False) == (20, 0.5)  # runs 10 steps
    assert inference_steps(20, 0.5, fix_steps=True) == (40, 0.5)  # runs exactly 20
    steps, strength = inference_steps(20, 0.0, fix_steps=False)
    assert int(steps * strength) == 1  # at least one step, never a diffusers error


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_each_resize_mode_gives_the_processing_size(models, mode):
    engine = DiffusionEngine(models)
    painting = engine.paint(
        Canvas(stripes(), None), profile(resize_mode=mode, denoising_strength=0.05, steps=20),
        width=64, height=64, seed=3, prompt="x", negative_prompt="",
    )  # fmt: skip
    assert painting.images[0].size == (64, 64)
    assert (painting.width, painting.height) == (64, 64)


def test_resize_modes_feed_the_pipeline_the_a1111_resized_image(models):
    """The tiny model's random VAE scrambles colours, so placement is checked by identity:
    painting the raw input in mode M gives exactly the pixels of painting the input already
    resized by A1111's rule for M (tested pixel by pixel in test_imaging)."""
    from daemon.a1111.imaging import resize_image

    engine = DiffusionEngine(models)
    common = dict(width=64, height=64, seed=3, prompt="x", negative_prompt="")

    def run(image: Image.Image, mode: ResizeMode) -> np.ndarray:
        painting = engine.paint(Canvas(image, None), profile(resize_mode=mode), **common)
        return np.asarray(painting.images[0])

    for mode in (ResizeMode.CROP_AND_RESIZE, ResizeMode.RESIZE_AND_FILL, ResizeMode.JUST_RESIZE):
        direct = run(stripes(), mode)
        prepared = run(resize_image(stripes(), mode, 64, 64), ResizeMode.JUST_RESIZE)
        assert np.array_equal(direct, prepared), mode
    crop, fill = (
        run(stripes(), ResizeMode.CROP_AND_RESIZE),
        run(stripes(), ResizeMode.RESIZE_AND_FILL),
    )
    assert not np.array_equal(crop, fill)
    # Latent upscale encodes at the input's own size and resizes the latents instead.
    latent = run(stripes(), ResizeMode.LATENT_UPSCALE)
    assert latent.shape == (64, 64, 3)
    assert not np.array_equal(latent, run(stripes(), ResizeMode.JUST_RESIZE))


def test_same_seed_same_pixels_and_other_seed_differs(models):
    engine = DiffusionEngine(models)
    common = dict(width=64, height=64, prompt="x", negative_prompt="")
    a = engine.paint(Canvas(stripes(), None), profile(), seed=5, **common).images[0]
    b = engine.paint(Canvas(stripes(), None), profile(), seed=5, **common).images[0]
    c = engine.paint(Canvas(stripes(), None), profile(), seed=6, **common).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_every_sampler_label_runs_in_the_pipeline(models):
    engine = DiffusionEngine(models)
    for label in ("Euler a", "Euler", "Heun", "DPM2", "DPM2 a", "DPM++ 2M Karras", "DPM++ SDE",
                  "DPM++ 2M SDE", "DDIM", "PLMS", "UniPC", "LMS"):  # fmt: skip
        painting = engine.paint(
            Canvas(stripes((64, 64)), None), profile(sampler_name=label), width=64, height=64,
            seed=1, prompt="x", negative_prompt="",
        )  # fmt: skip
        assert painting.images[0].size == (64, 64), label
        assert np.asarray(painting.images[0]).std() > 0, f"{label} produced a blank (NaN) image"


def test_progress_is_reported_per_step(models):
    engine = DiffusionEngine(models)
    seen: list[tuple[int, int]] = []
    engine.paint(
        Canvas(stripes((64, 64)), None), profile(steps=10, denoising_strength=0.5),
        width=64, height=64, seed=1, prompt="x", negative_prompt="",
        on_step=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen[-1] == (5, 5)


def test_transparent_input_is_flattened_on_white():
    from daemon.a1111.imaging import flatten_on_white

    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert flatten_on_white(clear).getpixel((0, 0)) == (255, 255, 255)


def test_vae_tiling_only_for_large_outputs_on_a_gpu_and_kept_in_low_memory_mode(models):
    from daemon.engines.latents import VAE_TILING_ABOVE, vae_tiling

    pipe = models.pipeline("builtin:tiny-sd", "img2img")
    vae_tiling(pipe, VAE_TILING_ABOVE * 4, low_memory=False)
    assert not pipe.vae.use_tiling, "a CPU never tiles: its memory is the machine's"
    pipe.vae.enable_tiling()
    vae_tiling(pipe, 64 * 64, low_memory=True)
    assert pipe.vae.use_tiling, "low-memory mode keeps tiling on"
    pipe.vae.disable_tiling()
