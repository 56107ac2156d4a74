"""A bank of self-attention inputs: what one UNet pass stores, the next pass attends to.

:func:`banked` wraps the self-attention (``attn1``) of every transformer block of a UNet
with a :class:`BankedSelfAttention` processor for the length of a ``with`` block, and puts
the original processors back on leaving it. The bank has two modes:

* **write**: a pass over other latents (a reference image noised to the step's timestep)
  stores each block's ``attn1`` input, where the writer's weight reaches the block and, when
  the writer names parts of the UNet (``down``, ``mid``, ``up``), in those parts only;
* **read**: the real pass's ``attn1`` attends to its own tokens and the stored ones (keys and
  values ``[own, *stored]``), the unconditional rows mixed back towards plain self-attention
  by the stored style fidelity, then every row by the bank's ``strength``
  (``s·with bank + (1-s)·own``); the store is then emptied, ready for the next model call.

A block with nothing stored runs its original processor unchanged, so a call on which no
writer acts paints exactly as without the bank.

The bank knows nothing of where the stored states come from. ``reference_only``
(:mod:`daemon.engines.reference_step`) writes a reference image's latent; cross-frame
attention for video (:mod:`daemon.engines.temporal_steps`) is the same bank written from
other frames: the key and previous frames' latents at the same timestep, noised as the
reference is, with fidelity 0 and weight 1 in the chosen parts, read with a strength.

One bank per UNet at a time: a second :func:`banked` on a UNet whose self-attention is
already banked raises a :class:`~daemon.errors.ConfigError` naming both owners (their
stored states would mix, each under the other's rules).
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
from daemon.errors import ConfigError

UNET_PARTS = frozenset({"down", "mid", "up"})
"""The parts of a UNet a writer may name: its input, middle and output blocks."""


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
    strength: float = 1.0  # at read: s·with bank + (1-s)·own, every row
    parts: frozenset[str] | None = None  # the parts a write stores in (None: all)
    owner: str = ""  # who installed the bank, named when another asks for one
    processors: list[BankedSelfAttention] = field(default_factory=list)

    @contextmanager
    def writing(
        self, weight: float, fidelity: float, *, parts: frozenset[str] | None = None
    ) -> Iterator[None]:
        """Write mode for the ``with`` block (one pass over the bank's source); with
        `parts`, only the blocks of those parts of the UNet store."""
        self.mode, self.weight, self.fidelity = BankMode.WRITE, weight, fidelity
        self.parts = parts
        try:
            yield
        finally:
            self.mode, self.parts = BankMode.READ, None

    def clear(self) -> None:
        for processor in self.processors:
            processor.clear()


class BankedSelfAttention:
    """One block's ``attn1`` processor: the original one, with the bank around it."""

    def __init__(
        self, bank: AttentionBank, original: Any, attn_weight: float, part: str | None = None
    ) -> None:
        self.bank = bank
        self.original = original
        self.attn_weight = attn_weight
        self.part = part  # "down", "mid" or "up" (None: unknown, stores only for all parts)
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
            if writes_to(bank.weight, self.attn_weight) and self._in(bank.parts):
                self.stored.append(hidden_states.detach().clone())
                self.fidelities.append(bank.fidelity)
            return attend(hidden_states, encoder_hidden_states)
        if not self.stored:
            return attend(hidden_states, encoder_hidden_states)
        import torch

        with_bank = attend(hidden_states, torch.cat([hidden_states, *self.stored], dim=1))
        fidelity = mean_fidelity(self.fidelities)
        self.clear()
        strength, rows = bank.strength, bank.unconditional
        # Plain self-attention of every row, only when the strength asks for it.
        plain = attend(hidden_states, None) if strength < 1.0 else None
        if rows > 0 and fidelity > FIDELITY_FLOOR:
            # The unconditional rows attend to themselves only, by the fidelity's share.
            own = with_bank.clone()
            own[:rows] = plain[:rows] if plain is not None else attend(hidden_states[:rows], None)
            with_bank = fidelity * own + (1.0 - fidelity) * with_bank
        if plain is None:
            return with_bank
        return strength * with_bank + (1.0 - strength) * plain

    def _in(self, parts: frozenset[str] | None) -> bool:
        return parts is None or self.part in parts


def self_attention_blocks(unet: Any) -> list[Any]:
    """The UNet's transformer blocks that have a self-attention, in the original (LDM)
    order: down blocks, middle block, up blocks (diffusers registers the up blocks before
    the middle one, so ``unet.modules()`` would list them first)."""
    return [block for _part, block in self_attention_parts(unet)]


def self_attention_parts(unet: Any) -> list[tuple[str, Any]]:
    """:func:`self_attention_blocks`, each with its part of the UNet: down, mid or up."""
    from diffusers.models.attention import BasicTransformerBlock

    parts: Sequence[tuple[str, Any]] = [
        *(("down", block) for block in unet.down_blocks),
        ("mid", unet.mid_block),
        *(("up", block) for block in unet.up_blocks),
    ]
    return [
        (name, module)
        for name, part in parts
        if part is not None
        for module in part.modules()
        if isinstance(module, BasicTransformerBlock) and not module.only_cross_attention
    ]


@contextmanager
def banked(unet: Any, *, owner: str = "reference_only") -> Iterator[AttentionBank]:
    """Every self-attention of `unet` reading and writing one bank, for the ``with`` block;
    the original processors are put back on leaving it in any way. `owner` names what the
    bank is for, in the error a second bank on the same UNet raises."""
    named = self_attention_parts(unet)
    blocks = [block for _part, block in named]
    taken = next(
        (b.attn1.processor for b in blocks if isinstance(b.attn1.processor, BankedSelfAttention)),
        None,
    )
    if taken is not None:
        raise ConfigError(
            f"{taken.bank.owner} and {owner} both steer the UNet's self-attention and cannot "
            f"paint together: remove one of them from the profile (or the clip's YAML)"
        )
    weights = attention_weights([block.dim for block in blocks])  # norm1's width
    bank = AttentionBank(owner=owner)
    originals = [block.attn1.processor for block in blocks]
    try:
        for (part, block), original, weight in zip(named, originals, weights, strict=True):
            processor = BankedSelfAttention(bank, original, weight, part)
            bank.processors.append(processor)
            block.attn1.set_processor(processor)
        yield bank
    finally:
        for block, original in zip(blocks, originals, strict=False):
            block.attn1.set_processor(original)
