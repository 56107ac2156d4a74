"""The render side of temporal consistency (issue 25): two per-call steps for a clip's frame.

* :class:`CrossFrameStep` (``key_frame_attention``): at every model call the frame's
  self-attention also attends to earlier frames' results (the key frame's, the previous
  frame's), Rerender-A-Video's pattern on the bank ``reference_only`` uses
  (:mod:`daemon.engines.attention_bank`). Each earlier result is VAE-encoded once per job,
  noised to the call's timestep with generators seeded by the images' seeds and run through
  the UNet once, its self-attention inputs stored in the chosen parts (weight 1, fidelity
  0); the real pass then attends to ``[own, key, previous]``, mixed with plain
  self-attention by the strength. Rerender records the earlier frames' own states while
  painting them instead: re-noised results need no per-step state kept between frames
  (a resumed clip rebuilds them from the PNGs on disk, and they travel as values).
* :class:`InitialNoise` (``warped_noise``): the call's initial noise replaced, image by
  image, by given noise (and the noise actually used kept when asked), by wrapping
  ``scheduler.add_noise`` for the call: diffusers' img2img and inpaint pipelines draw the
  noise from the images' generators and pass it to ``add_noise`` (the inpaint pipeline
  again at every step, with the same noise, which then stays the substituted one).

Batches (:meth:`~daemon.engines.diffusion.DiffusionEngine.paint_batch`): ``InitialNoise``
takes one noise per image of the batch, in the batch's order. Every image of a
``CrossFrameStep``'s call attends to the same earlier frames (each noised with its own
seed), so frames may share a call when they attend to the key frame only; a frame that
attends to its own previous frame is painted alone (and after that frame).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
from PIL import Image

from daemon.engines.attention_bank import UNET_PARTS, banked
from daemon.engines.bank_writes import (
    encoded,
    image_seeds,
    noise_generators,
    write_pass,
)
from daemon.engines.call_steps import CallContext, removed_after


class CrossFrameStep:
    """Key-frame attention for one frame: `frames` are earlier frames' results at the
    painting's size; `parts` the UNet's parts whose self-attention sees them ("down",
    "mid", "up"); `strength` 0..1 how much (0, or no frames: exactly the call without it)."""

    def __init__(
        self, frames: Sequence[Image.Image], *, parts: frozenset[str], strength: float
    ) -> None:
        if unknown := parts - UNET_PARTS:
            raise ValueError(
                f"unknown UNet parts {sorted(unknown)}: name some of {sorted(UNET_PARTS)}"
            )
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"cross-frame attention strength {strength} is not within 0..1")
        self.frames = tuple(frames)
        self.parts = parts
        self.strength = strength
        self.seeds: list[int] = []
        self.latents: list[Any] = []  # the frames' latents, encoded at the job's first call

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        self.seeds = image_seeds(call, context)
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        if not self.frames or not self.parts or self.strength == 0:
            return nullcontext()  # nothing installed: exactly the call without the step
        return self._hooked(pipe)

    @contextmanager
    def _hooked(self, pipe: Any) -> Iterator[None]:
        unet = pipe.unet
        noise = noise_generators(self.seeds)
        if not self.latents:
            self.latents = [encoded(pipe, frame) for frame in self.frames]
        with banked(unet, owner="key_frame_attention") as bank:
            bank.strength = self.strength

            def write_frames(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                bank.clear()
                for latent in self.latents:  # one write each: [own, key, previous] at read
                    with bank.writing(1.0, 0.0, parts=self.parts):
                        write_pass(pipe, latent, args, kwargs, noise)

            handle = unet.register_forward_pre_hook(write_frames, with_kwargs=True)
            with removed_after(handle):
                yield


class InitialNoise:
    """The initial noise of the job's images: image ``k`` (counted over the job's calls, as
    its seeds count) gets ``noises[k]``, float32 ``(channels, height/8, width/8)``; a None
    entry, or an image past the list, keeps the noise its generator drew. With `record`,
    :attr:`recorded` holds the noise each image was painted with, in the same form: painted
    again with it, the image is the same, pixel for pixel."""

    def __init__(self, noises: Sequence[np.ndarray | None], *, record: bool = False) -> None:
        self.noises = tuple(noises)
        self.record = record
        self.recorded: list[np.ndarray] = []
        self.painted = 0  # images of the job's earlier calls

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        first = self.painted
        self.painted += context.images
        images = range(first, first + context.images)
        given = [self.noises[k] if k < len(self.noises) else None for k in images]
        if not self.record and all(noise is None for noise in given):
            return nullcontext()
        return self._hooked(pipe, given)

    @contextmanager
    def _hooked(self, pipe: Any, given: list[np.ndarray | None]) -> Iterator[None]:
        scheduler = pipe.scheduler
        if hasattr(scheduler, "scale_noise"):  # a flow-matching model's
            with self._flow_hooked(pipe, given):
                yield
            return
        original_add_noise = scheduler.add_noise
        original_prepare = pipe.prepare_latents
        seen = False  # whether the call's initial noise went by (recorded once)

        def used(noise: Any) -> Any:
            nonlocal seen
            noise = _substituted(noise, given)
            if self.record and not seen:
                self._remember(noise)
            seen = True
            return noise

        def add_noise(original_samples: Any, noise: Any, *args: Any, **kwargs: Any) -> Any:
            return original_add_noise(original_samples, used(noise), *args, **kwargs)

        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            outputs = original_prepare(*args, **kwargs)
            # The inpaint pipelines at full strength start from the noise itself, with no
            # add_noise; they return it (return_noise) for the steps' add_noise.
            if not (kwargs.get("is_strength_max") and kwargs.get("return_noise")):
                return outputs
            noise = used(outputs[1])
            return (noise * scheduler.init_noise_sigma, noise, *outputs[2:])

        with (
            _replaced(scheduler, "add_noise", add_noise),
            _replaced(pipe, "prepare_latents", prepare_latents),
        ):
            yield

    def _remember(self, noise: Any) -> None:
        self.recorded += [row.detach().float().cpu().numpy().copy() for row in noise]

    @contextmanager
    def _flow_hooked(self, pipe: Any, given: list[np.ndarray | None]) -> Iterator[None]:
        """Flow-matching pipelines (SD 3.5, Flux, Qwen-Image) mix noise with
        ``scheduler.scale_noise``: first the whole initial noise, as (B, C, h, w) (Qwen's
        video VAE: (B, 1, C, h, w)); then, inpainting, every step re-noises the original
        with the same noise, as it was or *packed* into tokens (B, h/2·w/2, 4C). SD 3.5's
        inpainting at full strength starts from the noise itself (``prepare_latents``
        returns it, as SD's does). The first noise is substituted and recorded; every later
        call gets the same noise, in its own layout."""
        scheduler = pipe.scheduler
        original_scale_noise = scheduler.scale_noise
        original_prepare = pipe.prepare_latents
        first: Any = None  # the call's initial noise as painted, (B, C, h, w)

        def initial(noise: Any) -> Any:
            nonlocal first
            first = _substituted(noise, given)
            if self.record:
                self._remember(first)
            return first

        def in_layout(noise: Any) -> Any:
            if noise.ndim == 3:  # packed tokens
                b, c, h, w = first.shape
                return pipe._pack_latents(first, b, c, h, w).to(noise)
            return (first.unsqueeze(1) if noise.ndim == 5 else first).to(noise)

        def scale_noise(sample: Any, timestep: Any, noise: Any = None, **kwargs: Any) -> Any:
            if noise is not None and first is None and noise.ndim != 3:
                frames = noise.ndim == 5  # (B, 1, C, h, w): one frame of a video VAE
                initial(noise[:, 0] if frames else noise)
            if noise is not None and first is not None:
                noise = in_layout(noise)
            return original_scale_noise(sample, timestep, noise, **kwargs)

        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            outputs = original_prepare(*args, **kwargs)
            if first is not None or not (
                kwargs.get("is_strength_max") and kwargs.get("return_noise")
            ):
                return outputs
            noise = initial(outputs[1])  # σ = 1 at full strength: the latents are the noise
            return (noise, noise, *outputs[2:])

        with (
            _replaced(scheduler, "scale_noise", scale_noise),
            _replaced(pipe, "prepare_latents", prepare_latents),
        ):
            yield


def _substituted(noise: Any, given: list[np.ndarray | None]) -> Any:
    """`noise` (rows = the call's images) with each given entry in its image's row."""
    import torch

    if noise.shape[0] != len(given):
        raise ValueError(
            f"the call's noise has {noise.shape[0]} rows for {len(given)} images: "
            "InitialNoise takes one noise per image"
        )
    if all(entry is None for entry in given):
        return noise
    out = noise.clone()
    for row, entry in enumerate(given):
        if entry is None:
            continue
        if tuple(entry.shape) != tuple(noise.shape[1:]):
            raise ValueError(
                f"the given noise for image {row} has shape {tuple(entry.shape)}, but the "
                f"call's latents are {tuple(noise.shape[1:])}: make it at the painting's "
                "size / 8 with the model's latent channels"
            )
        out[row] = torch.from_numpy(np.ascontiguousarray(entry)).to(noise.device, noise.dtype)
    return out


@contextmanager
def _replaced(owner: Any, name: str, value: Callable[..., Any]) -> Iterator[None]:
    """`owner.name` is `value` for the ``with`` block, then what it was (an attribute of
    the class again, where it was one), however the block is left."""
    own = owner.__dict__.get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if own is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, own)


_MISSING = object()
