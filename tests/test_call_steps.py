"""The guidance seam: a per-call step defined here, in the test, goes through img2img and a
batch on the real tiny pipeline without any change to ``paint`` or ``paint_batch``; its hooks
are on for each pipeline call and gone after it, also when the call fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.config.profiles import Profile
from daemon.engines.call_steps import CallContext, removed_after, with_step_end
from daemon.engines.diffusion import Canvas, DiffusionEngine
from daemon.render.cache import ModelCache
from tests.conftest import DATA

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IMAGE = Image.open(DATA / "chelsea.png").convert("RGB")
STEPS = 4  # at full denoising: 4 model calls a pipeline call


class CountingStep:
    """Counts the UNet's calls through a forward pre-hook and records what it was given."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at  # raise inside the pipeline call at this model call
        self.prepared: list[dict[str, Any]] = []
        self.contexts: list[CallContext] = []
        self.batches: list[int] = []
        self.step_ends = 0

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        self.prepared.append(dict(call))
        self.contexts.append(context)
        return with_step_end(call, self._step_end)

    def _step_end(self, _pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.step_ends += 1
        return kwargs

    @contextmanager
    def hooked(self, pipe: Any, context: CallContext) -> Iterator[None]:
        def count(_module: Any, args: tuple[Any, ...]) -> None:
            self.calls += 1
            self.batches.append(args[0].shape[0])
            if self.calls == self.fail_at:
                raise RuntimeError("a step failed inside the call")

        with removed_after(pipe.unet.register_forward_pre_hook(count)):
            yield


def settings(**keys: Any) -> Profile:
    return Profile(**{"model": "builtin:tiny-sd", "steps": STEPS, "denoising_strength": 1.0,
                      "sampler_name": "Euler", "cfg_scale": 6, **keys})  # fmt: skip


def paint(engine: DiffusionEngine, profile: Profile, prompt: str = "a fox") -> np.ndarray:
    painting = engine.paint(Canvas(IMAGE, None), profile, width=64, height=64, seed=5,
                            prompt=prompt, negative_prompt="")  # fmt: skip
    return np.asarray(painting.images[0])


def hooks(models: ModelCache) -> tuple[int, int]:
    unet = models.pipeline("builtin:tiny-sd", "img2img").unet
    return len(unet._forward_pre_hooks), len(unet._forward_hooks)


def test_a_step_hooks_every_model_call_of_img2img_and_changes_nothing(models: ModelCache):
    before = hooks(models)
    step = CountingStep()
    plain = paint(DiffusionEngine(models), settings(n_iter=2))
    observed = paint(DiffusionEngine(models, steps=[step]), settings(n_iter=2))
    assert np.array_equal(plain, observed)  # an observer changes no pixel
    assert step.calls == step.step_ends == 2 * STEPS  # two pipeline calls, 4 steps each
    assert step.batches == [2] * 2 * STEPS  # guided: negative and positive rows
    assert step.contexts == [CallContext(images=1, per_prompt=1)] * 2
    # It runs after the prompts' step: the call it sees already holds the embeddings.
    assert all("prompt_embeds" in call for call in step.prepared)
    assert hooks(models) == before


def test_a_step_hooks_a_batch_with_one_prompt_row_per_image(models: ModelCache):
    before = hooks(models)
    step = CountingStep()
    profile = settings()
    images = [IMAGE.resize((64, 64)), IMAGE.rotate(90).resize((64, 64))]
    DiffusionEngine(models, steps=[step]).paint_batch(
        images, profile, width=64, height=64, seeds=[1, 2], prompt="a fox",
        negative_prompt="",
    )  # fmt: skip
    assert step.calls == STEPS and step.batches == [4] * STEPS  # 2 images, guided
    assert step.contexts == [CallContext(images=2, per_prompt=1)]
    assert step.prepared[0]["prompt_embeds"].shape[0] == 2
    assert hooks(models) == before


@pytest.mark.parametrize("prompt", ["a fox", "[a fox:a car:2] AND a tree"])
def test_every_hook_is_removed_when_the_call_fails(models: ModelCache, prompt: str):
    """Also the prompts' own hooks (prompt editing and AND steer the UNet)."""
    before = hooks(models)
    plain = paint(DiffusionEngine(models), settings(), prompt)
    step = CountingStep(fail_at=2)
    with pytest.raises(RuntimeError, match="a step failed"):
        paint(DiffusionEngine(models, steps=[step]), settings(), prompt)
    assert step.calls == 2
    assert hooks(models) == before
    # The pipeline is as it was: the same job paints as if nothing had happened.
    assert np.array_equal(paint(DiffusionEngine(models), settings(), prompt), plain)


def test_a_stop_from_the_progress_callback_removes_the_hooks(models: ModelCache):
    """A live render stopped for a newer version leaves the call from `on_step`."""
    before = hooks(models)
    step = CountingStep()

    def stop(done: int, _total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        DiffusionEngine(models, steps=[step]).paint(
            Canvas(IMAGE, None), settings(), width=64, height=64, seed=5,
            prompt="[a fox:a car:1]", negative_prompt="", on_step=stop,
        )  # fmt: skip
    assert step.calls == 2 and step.step_ends == 2  # the step's callback ran before the stop
    assert hooks(models) == before
