"""The render-side steps of temporal consistency on the real tiny pipeline, through
:class:`DiffusionEngine`: :class:`InitialNoise` (a frame's initial noise given, or recorded
and replayed pixel for pixel) and :class:`CrossFrameStep` (key-frame attention on the bank
``reference_only`` uses)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from daemon.config.profiles import Profile
from daemon.engines.attention_bank import (
    AttentionBank,
    BankedSelfAttention,
    banked,
    self_attention_parts,
)
from daemon.engines.bank_writes import encoded, noise_generators, write_pass
from daemon.engines.call_steps import CallStep, removed_after
from daemon.engines.controlnet_step import ControlNetStep, ready_units
from daemon.engines.diffusion import Canvas, DiffusionEngine
from daemon.engines.reference_step import ReferenceStep
from daemon.engines.temporal_steps import CrossFrameStep, InitialNoise
from daemon.errors import ConfigError
from daemon.render.cache import ModelCache
from tests.conftest import DATA
from tests.test_call_steps import CountingStep
from tests.test_controlnet_reference_rules import attention_layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64
IMAGE = Image.open(DATA / "chelsea.png").convert("RGB")
KEY = Image.open(DATA / "astronaut.png").convert("RGB").resize((SIZE, SIZE))
PREVIOUS = IMAGE.rotate(90).resize((SIZE, SIZE))
MASK = Image.open(DATA / "astronaut.mask.png").convert("L")
LATENT = (4, SIZE // 8, SIZE // 8)
UP = frozenset({"up"})


def settings(**keys: Any) -> Profile:
    return Profile(**{"model": "builtin:tiny-sd", "steps": 6, "denoising_strength": 0.5,
                      "sampler_name": "Euler", "cfg_scale": 6, **keys})  # fmt: skip


def paint(
    models: ModelCache,
    *steps: CallStep,
    mask: Image.Image | None = None,
    seed: int = 5,
    **keys: Any,
) -> np.ndarray:
    engine = DiffusionEngine(models, steps=steps)
    painting = engine.paint(Canvas(IMAGE, mask), settings(**keys), width=SIZE, height=SIZE,
                            seed=seed, prompt="a fox", negative_prompt="")  # fmt: skip
    return np.asarray(painting.images[0])


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(LATENT, dtype=np.float32)


def untouched(models: ModelCache, task: str = "img2img", model: str = "builtin:tiny-sd") -> bool:
    """Whether the pipeline is as it was: no hook, no bank, no wrapped method left."""
    pipe = models.pipeline(model, task)  # type: ignore[arg-type]
    unet = pipe.unet
    banks = [p for p in unet.attn_processors.values() if isinstance(p, BankedSelfAttention)]
    return (
        not unet._forward_pre_hooks
        and not banks
        and "add_noise" not in pipe.scheduler.__dict__
        and "prepare_latents" not in pipe.__dict__
    )


# The bank: parts and strength


def test_a_write_naming_parts_stores_in_those_parts_only():
    layer = attention_layer()
    bank = AttentionBank()
    up = BankedSelfAttention(bank, layer.processor, attn_weight=0.5, part="up")
    down = BankedSelfAttention(bank, layer.processor, attn_weight=0.5, part="down")
    states = torch.randn(1, 6, 8)
    with bank.writing(1.0, 0.0, parts=UP):
        up(layer, states), down(layer, states)
    assert len(up.stored) == 1 and not down.stored
    with bank.writing(1.0, 0.0):  # no parts named: every block the weight reaches
        up(layer, states), down(layer, states)
    assert len(up.stored) == 2 and len(down.stored) == 1


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_the_strength_mixes_every_row_with_plain_self_attention(strength):
    layer = attention_layer()
    original = layer.processor
    bank = AttentionBank(strength=strength)
    processor = BankedSelfAttention(bank, original, attn_weight=0.0, part="up")
    layer.set_processor(processor)
    states, frame = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    with bank.writing(1.0, 0.0, parts=UP):
        layer(frame)
    read = layer(states)
    plain = original(layer, states)
    with_bank = original(layer, states, torch.cat([states, frame], dim=1))
    expected = strength * with_bank + (1 - strength) * plain
    assert torch.allclose(read, expected, atol=1e-6)


def test_the_tiny_unet_has_self_attention_down_and_up(models):
    unet = models.pipeline("builtin:tiny-sd", "img2img").unet
    assert {part for part, _block in self_attention_parts(unet)} >= {"down", "up"}


# InitialNoise


@pytest.mark.parametrize(
    ("mask", "strength"),
    [(None, 0.5), (MASK, 0.75), (MASK, 1.0)],  # full strength: the inpaint starts from noise
    ids=["img2img", "inpaint", "inpaint-full-strength"],
)
def test_recorded_noise_replayed_paints_the_same_pixels(models, mask, strength):
    plain = paint(models, mask=mask, denoising_strength=strength)
    recorder = InitialNoise([None], record=True)
    recorded = paint(models, recorder, mask=mask, denoising_strength=strength)
    assert np.array_equal(recorded, plain)  # recording changes nothing
    [kept] = recorder.recorded
    assert kept.shape == LATENT and kept.dtype == np.float32
    replayed = paint(models, InitialNoise([kept]), mask=mask, denoising_strength=strength)
    assert np.array_equal(replayed, plain)
    other = paint(models, InitialNoise([-kept]), mask=mask, denoising_strength=strength)
    assert not np.array_equal(other, plain)  # the noise given is the noise used
    assert untouched(models, "img2img" if mask is None else "inpaint")


@pytest.mark.parametrize(
    "model", ["builtin:tiny-flux", "builtin:tiny-sd3", "builtin:tiny-qwen-image"]
)
@pytest.mark.parametrize(
    ("mask", "strength"),
    [(None, 0.5), (MASK, 0.75), (MASK, 1.0)],
    ids=["img2img", "inpaint", "inpaint-full-strength"],
)
def test_a_flow_models_noise_is_recorded_and_replayed_packed_or_not(models, model, mask, strength):
    """scale_noise instead of add_noise; packed tokens in the inpaint loop; Qwen's 5-D
    video latents; SD 3.5's full-strength inpaint starting from the noise itself."""
    keys = {"model": model, "mask": mask, "denoising_strength": strength}
    plain = paint(models, **keys)
    recorder = InitialNoise([None], record=True)
    assert np.array_equal(paint(models, recorder, **keys), plain)
    [kept] = recorder.recorded
    assert kept.shape == (16, SIZE // 8, SIZE // 8) and kept.dtype == np.float32
    assert np.array_equal(paint(models, InitialNoise([kept]), **keys), plain)
    assert not np.array_equal(paint(models, InitialNoise([-kept]), **keys), plain)
    pipe = models.pipeline(model, "img2img" if mask is None else "inpaint")
    assert "scale_noise" not in pipe.scheduler.__dict__ and "prepare_latents" not in pipe.__dict__


def test_given_noise_changes_the_image_and_none_keeps_the_drawn_one(models):
    plain = paint(models)
    assert np.array_equal(paint(models, InitialNoise([None])), plain)
    given = paint(models, InitialNoise([noise(1)]))
    assert not np.array_equal(given, plain)
    assert np.array_equal(paint(models, InitialNoise([noise(1)])), given)
    masked = paint(models, InitialNoise([noise(1)]), mask=MASK, denoising_strength=1.0)
    assert not np.array_equal(masked, paint(models, mask=MASK, denoising_strength=1.0))


class FirstSample(CountingStep):
    """Keeps the UNet's input at the first model call."""

    def __init__(self) -> None:
        super().__init__()
        self.first: torch.Tensor | None = None

    def prepare(self, call: dict[str, Any], context: Any) -> dict[str, Any]:
        def keep(_module: Any, args: tuple[Any, ...]) -> None:
            if self.first is None:
                self.first = args[0].clone()

        self.keep = keep
        return call

    def hooked(self, pipe: Any, context: Any) -> Any:
        return removed_after(pipe.unet.register_forward_pre_hook(self.keep))


def test_a_full_strength_inpainting_starts_from_the_given_noise(models):
    """No add_noise at full strength: the pipeline's latents are the noise itself."""
    given, first = noise(1), FirstSample()
    paint(models, InitialNoise([given]), first, mask=MASK, denoising_strength=1.0)
    assert first.first is not None
    scheduler = models.scheduler("builtin:tiny-sd", settings().sampler)
    # Euler's input: the latents (noise × init_noise_sigma) divided by √(σ₀² + 1)
    scaled = first.first[:, :4] * (scheduler.sigmas[0] ** 2 + 1) ** 0.5 / scheduler.init_noise_sigma
    for row in scaled:
        assert torch.allclose(row, torch.from_numpy(given), atol=1e-5)


def test_a_batch_takes_one_noise_per_image_as_each_alone(models):
    images = [IMAGE.resize((SIZE, SIZE)), PREVIOUS]
    noises = [noise(1), noise(2)]
    step = InitialNoise(noises, record=True)
    batch = DiffusionEngine(models, steps=[step]).paint_batch(
        images, settings(), width=SIZE, height=SIZE, seeds=[3, 4], prompt="a fox",
        negative_prompt="",
    )  # fmt: skip
    assert [r.tobytes() for r in step.recorded] == [n.tobytes() for n in noises]
    for image, given, seed, painted in zip(images, noises, [3, 4], batch, strict=True):
        alone = DiffusionEngine(models, steps=[InitialNoise([given])]).paint(
            Canvas(image, None), settings(), width=SIZE, height=SIZE, seed=seed,
            prompt="a fox", negative_prompt="",
        )  # fmt: skip
        a = np.asarray(alone.images[0], dtype=np.int16)
        b = np.asarray(painted.images[0], dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # the batch sums in another order


def test_noise_of_the_wrong_shape_is_refused_and_the_pipeline_left_as_it_was(models):
    plain = paint(models)
    with pytest.raises(
        ValueError, match=r"shape \(4, 4, 4\), but the call's latents are \(4, 8, 8\)"
    ):
        paint(models, InitialNoise([np.zeros((4, 4, 4), np.float32)]))
    assert untouched(models)
    with pytest.raises(RuntimeError, match="a step failed"):
        paint(models, InitialNoise([noise(1)], record=True), CountingStep(fail_at=2))
    assert untouched(models)
    assert np.array_equal(paint(models), plain)


# CrossFrameStep


def test_no_frames_or_strength_zero_paint_exactly_as_without(models):
    plain = paint(models)
    assert np.array_equal(paint(models, CrossFrameStep([], parts=UP, strength=1.0)), plain)
    assert np.array_equal(paint(models, CrossFrameStep([KEY], parts=UP, strength=0.0)), plain)


def test_attending_to_earlier_frames_changes_the_frame_the_same_way_every_time(models):
    plain = paint(models)
    key = paint(models, CrossFrameStep([KEY], parts=UP, strength=1.0))
    assert not np.array_equal(key, plain)
    assert np.array_equal(paint(models, CrossFrameStep([KEY], parts=UP, strength=1.0)), key)
    both = paint(models, CrossFrameStep([KEY, PREVIOUS], parts=UP, strength=1.0))
    half = paint(models, CrossFrameStep([KEY, PREVIOUS], parts=UP, strength=0.5))
    assert len({plain.tobytes(), key.tobytes(), both.tobytes(), half.tobytes()}) == 4
    assert untouched(models)


def test_the_parts_of_the_unet_that_attend_are_chosen(models):
    up = paint(models, CrossFrameStep([KEY], parts=UP, strength=1.0))
    down = paint(models, CrossFrameStep([KEY], parts=frozenset({"down"}), strength=1.0))
    assert not np.array_equal(up, down)
    assert not np.array_equal(down, paint(models))
    with pytest.raises(ValueError, match=r"unknown UNet parts \['middle'\]"):
        CrossFrameStep([KEY], parts=frozenset({"middle"}), strength=1.0)


def test_an_inpainting_attends_to_earlier_frames(models):
    plain = paint(models, mask=MASK)
    step = CrossFrameStep([KEY, PREVIOUS], parts=UP, strength=1.0)
    assert not np.array_equal(paint(models, step, mask=MASK), plain)
    assert untouched(models, "inpaint")


def unit_steps(models: ModelCache, unit: dict[str, Any]) -> list[CallStep]:
    profile = settings(controlnet=[{"enabled": True, **unit}])
    units = ready_units(profile, IMAGE, (SIZE, SIZE), models.controlnets, unet_width=32)
    return [ControlNetStep(units), ReferenceStep(units)]


def test_cross_frame_attention_paints_with_a_controlnet_unit(models):
    canny = {"module": "canny", "model": "builtin:tiny-controlnet"}
    alone = paint(models, *unit_steps(models, canny))
    both = paint(models, *unit_steps(models, canny), CrossFrameStep([KEY], parts=UP, strength=1.0))
    assert not np.array_equal(both, alone)
    assert untouched(models)


def test_cross_frame_attention_and_reference_only_are_refused_together(models):
    reference = {"module": "reference_only"}
    step = CrossFrameStep([KEY], parts=UP, strength=1.0)
    with pytest.raises(ConfigError, match="key_frame_attention and reference_only both steer"):
        paint(models, *unit_steps(models, reference), step)
    assert untouched(models)
    unet = models.pipeline("builtin:tiny-sd", "img2img").unet
    refused = pytest.raises(ConfigError, match="reference_only and key_frame_attention")
    second = banked(unet, owner="key_frame_attention")
    with banked(unet, owner="reference_only"), refused, second:  # the other way round
        pass
    assert untouched(models)


def test_an_inpainting_unet_takes_the_frames_with_an_empty_mask(models):
    """A 9-channel UNet (latents, mask, masked latents): the write pass fills the mask with
    0 and the masked latents with the frame's own, as for a reference."""
    pipe = models.pipeline("builtin:tiny-sd", "img2img")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    nine = SimpleNamespace(unet=unet, vae=pipe.vae, scheduler=pipe.scheduler,
                           image_processor=pipe.image_processor)  # fmt: skip
    latent = encoded(nine, KEY)
    sample = torch.randn(2, 9, *LATENT[1:])
    context = torch.randn(2, 7, unet.config.cross_attention_dim)
    with torch.inference_mode(), banked(unet, owner="key_frame_attention") as bank:
        with bank.writing(1.0, 0.0, parts=UP):
            write_pass(nine, latent, (sample, 500), {"encoder_hidden_states": context},
                       noise_generators([1]))  # fmt: skip
        up = [p for p in bank.processors if p.part == "up"]
        assert up and all(len(p.stored) == 1 for p in up)
        assert not any(p.stored for p in bank.processors if p.part != "up")


def test_the_sdxl_model_takes_both_steps(models):
    sdxl = {"model": "builtin:tiny-sdxl"}
    plain = paint(models, **sdxl)
    recorder = InitialNoise([None], record=True)
    assert np.array_equal(paint(models, recorder, **sdxl), plain)
    assert np.array_equal(paint(models, InitialNoise(recorder.recorded), **sdxl), plain)
    assert not np.array_equal(paint(models, InitialNoise([-recorder.recorded[0]]), **sdxl), plain)
    attending = paint(models, CrossFrameStep([KEY, PREVIOUS], parts=UP, strength=1.0), **sdxl)
    assert not np.array_equal(attending, plain)
    assert untouched(models, model="builtin:tiny-sdxl")


def test_frames_that_attend_to_the_same_key_frame_can_share_a_call(models):
    images, seeds = [IMAGE.resize((SIZE, SIZE)), PREVIOUS], [3, 4]
    batch = DiffusionEngine(models, steps=[CrossFrameStep([KEY], parts=UP, strength=1.0)])
    painted = batch.paint_batch(images, settings(), width=SIZE, height=SIZE, seeds=seeds,
                                prompt="a fox", negative_prompt="")  # fmt: skip
    for image, seed, together in zip(images, seeds, painted, strict=True):
        alone = DiffusionEngine(models, steps=[CrossFrameStep([KEY], parts=UP, strength=1.0)])
        own = alone.paint(Canvas(image, None), settings(), width=SIZE, height=SIZE, seed=seed,
                          prompt="a fox", negative_prompt="")  # fmt: skip
        a = np.asarray(own.images[0], dtype=np.int16)
        b = np.asarray(together.images[0], dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # the batch sums in another order
    assert untouched(models)
