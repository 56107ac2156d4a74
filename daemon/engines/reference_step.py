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

The cost is one more UNet pass per active unit and model call. The write passes themselves
(:mod:`daemon.engines.bank_writes`) are shared with cross-frame attention.
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
from daemon.engines.bank_writes import (
    encoded,
    image_seeds,
    model_rows,
    noise_generators,
    write_pass,
)
from daemon.engines.call_steps import CallContext, removed_after
from daemon.engines.controlnet_step import ReadyUnit, model_calls


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
        self.seeds = image_seeds(call, context)
        return call

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        return self._hooked(pipe, context)

    @contextmanager
    def _hooked(self, pipe: Any, context: CallContext) -> Iterator[None]:
        if not self.units:
            yield
            return
        unet, scheduler = pipe.unet, pipe.scheduler
        sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        noise = noise_generators(self.seeds)
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
                bank = processors.enter_context(banked(unet, owner="reference_only"))
            bank.clear()
            bank.unconditional = context.images if model_rows(args, kwargs) > context.images else 0
            for position, unit in active:
                latent = self._latent(pipe, position)
                fidelity = style_fidelity(unit.threshold_a, unit.control_mode, sdxl=sdxl)
                with bank.writing(unit.weight, fidelity):
                    write_pass(pipe, latent, args, kwargs, noise)

        with ExitStack() as processors:
            handle = unet.register_forward_pre_hook(write_references, with_kwargs=True)
            with removed_after(handle):
                yield

    def _latent(self, pipe: Any, position: int) -> Any:
        """Unit `position`'s reference as the UNet sees it (encoded once per job)."""
        if position not in self.latents:
            self.latents[position] = encoded(pipe, Image.fromarray(self.units[position].control))
        return self.latents[position]
