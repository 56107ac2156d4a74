"""Prompt editing, alternation and ``AND`` while sampling: the UNet gets, at each model call,
the conditioning A1111 would give it (REFERENCE-A1111.md, "Prompt editing, alternation and
AND").

A diffusers pipeline conditions every step on the one embedding it was called with. Two
forward hooks on its UNet change that for one pipeline call, without touching the pipeline:

* before each call, the texts of that step (the plan's schedule at A1111's counter) replace
  ``encoder_hidden_states`` (and SDXL's pooled ``text_embeds``);
* with ``AND`` (or a part's weight), the call runs the negative and every part in one batch,
  and the hook after it hands the pipeline ``uncond`` and ``uncond + Σ wᵢ·(condᵢ − uncond)``,
  so that the pipeline's own guidance gives ``uncond + Σ wᵢ·cfg·(condᵢ − uncond)``:
  composable diffusion, which no per-step callback can do.

A1111's counter counts model calls from 0 on the first step that runs; a diffusers stand-in
that calls the model once a step for a sampler A1111 counts twice advances it by two.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from daemon.a1111.prompt_plan import PromptPlan
from daemon.engines.call_steps import CallContext, removed_after
from daemon.engines.prompt_encoder import Embedded, pad_to

if TYPE_CHECKING:
    import torch


class PromptConditioning:
    """The first per-call step (:mod:`daemon.engines.call_steps`): the prompts' embeddings
    in the call and, for prompt editing, alternation and AND, the UNet steered at every
    model call."""

    def __init__(
        self, embeddings: Mapping[str, torch.Tensor], scheduled: ScheduledConditioning | None
    ) -> None:
        self.embeddings = embeddings  # the call's prompt kwargs, one row each
        self.scheduled = scheduled

    def prepare(self, call: dict[str, Any], context: CallContext) -> dict[str, Any]:
        # One row per prompt: a batch of several images of one prompt each repeats it.
        copies = context.images // context.per_prompt
        embeddings = dict(self.embeddings)
        if copies > 1:
            embeddings = {key: _rows([value], copies) for key, value in embeddings.items()}
        return {**call, **embeddings}

    def hooked(self, pipe: Any, context: CallContext) -> AbstractContextManager[None]:
        if self.scheduled is None:
            return nullcontext()
        return self.scheduled.steering(pipe.unet, context.images)


class ScheduledConditioning:
    """A planned prompt's embeddings, handed to the UNet step by step."""

    def __init__(
        self,
        plan: PromptPlan,
        positive: Mapping[str, Embedded],
        negative: Mapping[str, Embedded],
        *,
        empty: torch.Tensor | None,
        counter_scale: float,
        guidance: float,
    ) -> None:
        self.plan = plan
        self.positive = positive
        self.negative = negative
        # The empty prompt's chunk, to pad negative and parts alike (None: one length).
        self.empty = empty
        self.counter_scale = counter_scale  # A1111 model calls per diffusers model call
        self.guidance = guidance

    def call_kwargs(self) -> dict[str, torch.Tensor]:
        """The embedding kwargs of the pipeline call: the first step's, for the pipeline's own
        checks and set-up (the hooks replace them at every model call)."""
        uncond, parts = self._at(0)
        first = parts[0]
        uncond_z, (cond_z,) = self._aligned(uncond, [first])
        kwargs = {"prompt_embeds": cond_z, "negative_prompt_embeds": uncond_z}
        if first.pooled is not None and uncond.pooled is not None:
            kwargs["pooled_prompt_embeds"] = first.pooled
            kwargs["negative_pooled_prompt_embeds"] = uncond.pooled
        return kwargs

    @contextmanager
    def steering(self, unet: Any, batch: int) -> Iterator[None]:
        """Hook `unet` for one pipeline call painting `batch` images (the counter starts at
        0): a guided call gets ``2 × batch`` latents (negative half first), an unguided one
        ``batch``."""
        import torch

        composable = self.plan.composable
        calls = 0
        guided_calls: list[bool] = []  # what `combine` needs to know of the call it follows

        def condition(
            _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            nonlocal calls
            uncond, parts = self._at(int(calls * self.counter_scale))
            calls += 1
            sample, rest = args[0], args[1:]
            guided = sample.shape[0] == 2 * batch
            uncond_z, conds_z = self._aligned(uncond, parts)
            # Which conditionings the batch holds, in order: [uncond, cond] is the pipeline's
            # own guided layout, [uncond, cond₁ … condₖ] the composable one.
            if composable:
                pooled = [embedded.pooled for embedded in parts]
                rows = [(uncond_z, uncond.pooled), *zip(conds_z, pooled, strict=True)]
                latents = sample[:batch]
                sample = latents.repeat(len(rows), *[1] * (latents.dim() - 1))
                guided_calls.append(guided)
            elif guided:
                rows = [(uncond_z, uncond.pooled), (conds_z[0], parts[0].pooled)]
            else:
                rows = [(conds_z[0], parts[0].pooled)]
            kwargs = {**kwargs, "encoder_hidden_states": _rows([z for z, _ in rows], batch)}
            added = kwargs.get("added_cond_kwargs")
            if added is not None and "text_embeds" in added:  # SDXL
                added = {**added, "text_embeds": _rows([pooled for _, pooled in rows], batch)}
                if composable:
                    time_ids = added["time_ids"]
                    positive = time_ids[batch:] if guided else time_ids
                    added["time_ids"] = torch.cat([time_ids[:batch], *[positive] * len(parts)])
                kwargs["added_cond_kwargs"] = added
            return (sample, *rest), kwargs

        def combine(_module: Any, _args: Any, _kwargs: Any, output: Any) -> Any:
            guided = guided_calls.pop()
            noise = output[0] if isinstance(output, tuple) else output.sample
            uncond, *conds = noise.split(batch)
            difference = sum(
                part.weight * (cond - uncond)
                for part, cond in zip(self.plan.parts, conds, strict=True)
            )
            if guided:  # the pipeline adds cfg × (second half − first half) to the first
                noise = torch.cat([uncond, uncond + difference])
            else:
                noise = uncond + self.guidance * difference
            return (noise, *output[1:]) if isinstance(output, tuple) else type(output)(noise)

        handles = [unet.register_forward_pre_hook(condition, with_kwargs=True)]
        if composable:
            handles.append(unet.register_forward_hook(combine, with_kwargs=True))
        with removed_after(*handles):
            yield

    def _at(self, counter: int) -> tuple[Embedded, list[Embedded]]:
        """The negative's and each part's embedding at A1111's step `counter`."""
        uncond = self.negative[self.plan.negative.text_at(counter)]
        parts = [self.positive[part.schedule.text_at(counter)] for part in self.plan.parts]
        return uncond, parts

    def _aligned(
        self, uncond: Embedded, conds: list[Embedded]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embeddings of one length: parts of a composable prompt padded by repeating their
        last vector (A1111's ``stack_conds``), then negative and parts with the empty
        chunk (as for any prompt and negative of different lengths)."""
        longest = max(cond.z.shape[1] for cond in conds)
        padded = [_repeat_last(cond.z, longest) for cond in conds]
        length = max(longest, uncond.z.shape[1])
        return self._padded(uncond.z, length), [self._padded(z, length) for z in padded]

    def _padded(self, z: torch.Tensor, length: int) -> torch.Tensor:
        if z.shape[1] == length:
            return z
        if self.empty is None:
            raise ValueError("embeddings of different lengths, but no empty chunk to pad with")
        return pad_to(z, length, self.empty)


def _rows(tensors: list[Any], batch: int) -> torch.Tensor:
    """Each (1, …) tensor repeated for the batch, one block after another."""
    import torch

    return torch.cat([t.repeat(batch, *[1] * (t.dim() - 1)) for t in tensors])


def _repeat_last(z: torch.Tensor, length: int) -> torch.Tensor:
    import torch

    missing = length - z.shape[1]
    if missing <= 0:
        return z
    return torch.cat([z, z[:, -1:].repeat(1, missing, 1)], dim=1)
