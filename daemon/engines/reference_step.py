"""``reference_only`` units as a per-call step: a reference image steers self-attention.

At every model call on which a reference unit is active (its weight above 0, the call inside
its guidance start and end: :func:`daemon.controlnet.schedule.is_active`), a UNet pre-hook

1. noises the reference's latent to the call's timestep, ``√ᾱ_t·x₀ + √(1-ᾱ_t)·ε``, with ``ε``
   drawn from a generator of the step's own seeded with each image's seed (the extension
   draws it unseeded; here the same seed paints the same picture, and the pipeline's own
   generators are left alone);
2. runs the UNet once on it, rows and prompts as the real call's (the ``AND`` rows of the
   prompts' step included) but without ControlNet residuals, its self-attention writing to
   the :class:`~daemon.engines.attention_bank.AttentionBank` (one pass per unit);
3. lets the real call run: its self-attention reads the bank
   (:mod:`daemon.controlnet.reference` has the weight and style-fidelity rules).

The bank's processors are installed at the first active call and removed after the pipeline
call, so a unit that never acts (weight 0, ``guidance_end: 0``) installs nothing: exactly the
call without it. The reference is the unit's own control image or the input, fitted to the
painting as every unit's (:func:`daemon.engines.controlnet_step.ready_units`), encoded by the
VAE once per job (the latent distribution's mean: A1111 samples it unseeded).

The cost is one more UNet pass per active unit and model call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from PIL import Image

from daemon.controlnet.modules import module_named
from daemon.controlnet.reference import is_reference, style_fidelity
from daemon.controlnet.schedule import is_active
from daemon.engines.attention_bank import AttentionBank, banked
from daemon.engines.call_steps import CallContext, removed_after
from daemon.engines.controlnet_step import ReadyUnit, model_calls

_PASSED_ON = (
    "encoder_hidden_states",
    "timestep_cond",
    "added_cond_kwargs",
    "cross_attention_kwargs",
    "attention_mask",
    "encoder_attention_mask",
)
"""The UNet call's keyword arguments the reference pass takes too (not the residuals)."""


class ReferenceStep:
    """The reference units of a job: their write passes and the bank they fill."""

    def __init__(self, units: Sequence[ReadyUnit]) -> None:
        self.units = tuple(
            ready
            for ready in units
            if is_reference(module_named(ready.unit.module).name) and ready.unit.weight > 0
        )
        self.seeds: list[int] = []
        self.latents: dict[int, Any] = {}  # unit position → its reference's latent (1, c, h, w)

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        generators = call.get("generator")
        if not isinstance(generators, list):
            generators = [generators] * context.images
        self.seeds = [generator.initial_seed() for generator in generators]
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        return self._hooked(pipe, context)

    @contextmanager
    def _hooked(self, pipe: Any, context: CallContext) -> Iterator[None]:
        if not self.units:
            yield
            return
        import torch

        unet, scheduler = pipe.unet, pipe.scheduler
        sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        noise = [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]
        calls = 0
        bank: AttentionBank | None = None

        def write_references(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            nonlocal calls, bank
            call, calls = calls, calls + 1
            total = model_calls(scheduler)
            active = [
                (position, ready.unit)
                for position, ready in enumerate(self.units)
                if is_active(call, total, ready.unit.guidance_start, ready.unit.guidance_end)
            ]
            if not active:
                return
            if bank is None:  # installed at the first call that needs it
                bank = processors.enter_context(banked(unet))
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            rows = sample.shape[0]
            bank.clear()
            bank.unconditional = context.images if rows > context.images else 0
            passed = {key: kwargs[key] for key in _PASSED_ON if key in kwargs}
            for position, unit in active:
                latent = self._latent(pipe, position)
                noisy = _noised(latent, timestep, scheduler, noise, rows)
                if sample.shape[1] > noisy.shape[1]:  # an inpainting UNet: mask 0, latent
                    masked = latent.expand(rows, -1, -1, -1)
                    noisy = torch.cat([noisy, torch.zeros_like(noisy[:, :1]), masked], dim=1)
                fidelity = style_fidelity(unit.threshold_a, unit.control_mode, sdxl=sdxl)
                with bank.writing(unit.weight, fidelity):
                    # forward, not __call__: no hook runs (no ControlNet, no recursion)
                    unet.forward(noisy, timestep, **passed, return_dict=False)

        with ExitStack() as processors:
            handle = unet.register_forward_pre_hook(write_references, with_kwargs=True)
            with removed_after(handle):
                yield

    def _latent(self, pipe: Any, position: int) -> Any:
        """Unit `position`'s reference as the UNet sees it (encoded once per job)."""
        if position not in self.latents:
            latent = _encoded(pipe, Image.fromarray(self.units[position].control))
            self.latents[position] = latent.to(pipe.unet.device, pipe.unet.dtype)
        return self.latents[position]


def _encoded(pipe: Any, image: Image.Image) -> Any:
    """`image`'s latent: the VAE's mean, scaled. A half-precision VAE that asks for it
    (SDXL's ``force_upcast``) encodes in float32, as the SDXL pipelines do, since in half
    precision it overflows to NaN."""
    import torch

    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        pixels = pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
    finally:
        if upcast:
            vae.to(dtype=dtype)
    return mean * vae.config.scaling_factor


def _noised(latent: Any, timestep: Any, scheduler: Any, noise: list[Any], rows: int) -> Any:
    """`latent` noised to `timestep` for `rows` rows: image ``k``'s rows (every ``k``-th of
    each block of ``len(noise)``) share the noise of image ``k``'s generator."""
    import torch

    alphas = scheduler.alphas_cumprod
    index = int(torch.as_tensor(timestep, dtype=torch.float32).flatten()[0].round())
    alpha = alphas[min(max(index, 0), len(alphas) - 1)].to(latent.device, torch.float32)
    drawn = torch.cat([torch.randn(latent.shape, generator=gen) for gen in noise])
    epsilon = drawn.to(latent).repeat(rows // len(noise), 1, 1, 1)
    mixed = alpha.sqrt() * latent.float() + (1 - alpha).sqrt() * epsilon.float()
    return mixed.to(latent.dtype)
