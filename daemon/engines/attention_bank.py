"""A bank of self-attention inputs: what one UNet pass stores, the next pass attends to.

:func:`banked` wraps the self-attention (``attn1``) of every transformer block of a UNet
with a :class:`BankedSelfAttention` processor for the length of a ``with`` block, and puts
the original processors back on leaving it. The bank has two modes:

* **write**: a pass over other latents (a reference image noised to the step's timestep)
  stores each block's ``attn1`` input, where the writer's weight reaches the block;
* **read**: the real pass's ``attn1`` attends to its own tokens and the stored ones (keys and
  values ``[own, *stored]``), the unconditional rows mixed back towards plain self-attention
  by the stored style fidelity; the store is then emptied, ready for the next model call.

A block with nothing stored runs its original processor unchanged, so a call on which no
writer acts paints exactly as without the bank.

The bank knows nothing of where the stored states come from. ``reference_only``
(:mod:`daemon.engines.reference_step`) writes a reference image's latent; cross-frame
attention for video (issue 25) is the same bank written from another frame: write the
first (or previous) frame's latents at the same timestep, noised as the reference is, or
the states recorded while that frame was painted (rerender-a-video's way), with fidelity 0
and weight 1, then let the current frame's pass read them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from daemon.controlnet.reference import (
    FIDELITY_FLOOR,
    attention_weights,
    mean_fidelity,
    writes_to,
)


class BankMode(Enum):
    READ = "read"
    WRITE = "write"


@dataclass
class AttentionBank:
    """The bank's mode and what a write stores with: shared by every block's processor."""

    mode: BankMode = BankMode.READ
    weight: float = 0.0  # the writer's weight: the blocks it reaches (reference.writes_to)
    fidelity: float = 0.0  # the writer's style fidelity, stored with its states
    unconditional: int = 0  # the first rows of a pass that are unconditional (0: none)
    processors: list[BankedSelfAttention] = field(default_factory=list)

    @contextmanager
    def writing(self, weight: float, fidelity: float) -> Iterator[None]:
        """Write mode for the ``with`` block (one pass over the bank's source)."""
        self.mode, self.weight, self.fidelity = BankMode.WRITE, weight, fidelity
        try:
            yield
        finally:
            self.mode = BankMode.READ

    def clear(self) -> None:
        for processor in self.processors:
            processor.clear()


class BankedSelfAttention:
    """One block's ``attn1`` processor: the original one, with the bank around it."""

    def __init__(self, bank: AttentionBank, original: Any, attn_weight: float) -> None:
        self.bank = bank
        self.original = original
        self.attn_weight = attn_weight
        self.stored: list[Any] = []  # (rows, tokens, channels) per write
        self.fidelities: list[float] = []

    def clear(self) -> None:
        self.stored, self.fidelities = [], []

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
    ) -> Any:
        # temb only when given: SlicedAttnProcessor (low-memory mode) does not take it.
        extra = {} if temb is None else {"temb": temb}

        def attend(states: Any, context: Any) -> Any:
            return self.original(
                attn, states, encoder_hidden_states=context, attention_mask=attention_mask, **extra
            )

        bank = self.bank
        if bank.mode is BankMode.WRITE:
            if writes_to(bank.weight, self.attn_weight):
                self.stored.append(hidden_states.detach().clone())
                self.fidelities.append(bank.fidelity)
            return attend(hidden_states, encoder_hidden_states)
        if not self.stored:
            return attend(hidden_states, encoder_hidden_states)
        import torch

        with_bank = attend(hidden_states, torch.cat([hidden_states, *self.stored], dim=1))
        fidelity = mean_fidelity(self.fidelities)
        self.clear()
        rows = bank.unconditional
        if rows == 0 or fidelity <= FIDELITY_FLOOR:
            return with_bank
        # The unconditional rows attend to themselves only, by the fidelity's share.
        own = with_bank.clone()
        own[:rows] = attend(hidden_states[:rows], None)
        return fidelity * own + (1.0 - fidelity) * with_bank


def self_attention_blocks(unet: Any) -> list[Any]:
    """The UNet's transformer blocks that have a self-attention, in the original (LDM)
    order: down blocks, middle block, up blocks (diffusers registers the up blocks before
    the middle one, so ``unet.modules()`` would list them first)."""
    from diffusers.models.attention import BasicTransformerBlock

    parts: Sequence[Any] = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [
        module
        for part in parts
        if part is not None
        for module in part.modules()
        if isinstance(module, BasicTransformerBlock) and not module.only_cross_attention
    ]


@contextmanager
def banked(unet: Any) -> Iterator[AttentionBank]:
    """Every self-attention of `unet` reading and writing one bank, for the ``with`` block;
    the original processors are put back on leaving it in any way."""
    blocks = self_attention_blocks(unet)
    weights = attention_weights([block.dim for block in blocks])  # norm1's width
    bank = AttentionBank()
    originals = [block.attn1.processor for block in blocks]
    try:
        for block, original, weight in zip(blocks, originals, weights, strict=True):
            processor = BankedSelfAttention(bank, original, weight)
            bank.processors.append(processor)
            block.attn1.set_processor(processor)
        yield bank
    finally:
        for block, original in zip(blocks, originals, strict=False):
            block.attn1.set_processor(original)
