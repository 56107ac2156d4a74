"""``reference_only``'s rules, as the extension's ``hook.py`` has them: pure numbers.

A reference unit needs no ControlNet: the UNet runs once more per model call on the
reference's latent noised to the call's timestep, every self-attention (``attn1``) of that
pass stores its input in a bank, and the real pass attends to its own tokens and the bank's.

* **Which blocks.** The transformer blocks are sorted widest first (a stable sort of the
  UNet's blocks in the original order: input, middle, output blocks) and block ``i`` of ``n``
  gets ``attn_weight = i/n``; a unit writes to the blocks whose ``attn_weight`` is below its
  weight. So weight 1 (or more) reaches every block, 0.5 the wider half, 0 none.
* **Style fidelity.** ``threshold_a`` (0..1, default 0.5) in Balanced mode, cubed on SDXL
  (0.5 → 0.125: the extension finds SDXL's attention "highly unstable"); "ControlNet is more
  important" is 1, "My prompt is more important" 0. Fidelity ``f`` keeps the reference out of
  the unconditional rows by that share (``f·own + (1-f)·with reference``), so CFG pushes
  towards the reference more as ``f`` grows. Several units on one block average theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.controlnet.units import ControlMode

REFERENCE_MODULES = frozenset({"reference_only"})
"""The preprocessors that steer self-attention with a reference image."""

FIDELITY_FLOOR = 1e-5
"""A fidelity at or below this leaves the unconditional rows with the reference too."""


def is_reference(module: str) -> bool:
    return module in REFERENCE_MODULES


def style_fidelity(threshold_a: float, mode: ControlMode, *, sdxl: bool) -> float:
    """The share of the unconditional rows' self-attention kept free of the reference."""
    if mode is ControlMode.CONTROL:
        return 1.0
    if mode is ControlMode.PROMPT:
        return 0.0
    fidelity = min(1.0, max(0.0, threshold_a))
    return fidelity**3 if sdxl else fidelity


def attention_weights(widths: Sequence[int]) -> list[float]:
    """Each block's ``attn_weight``, the blocks given in the original UNet order (input,
    middle, output) by their channel width: ``i/n`` by rank, widest first, ties in order."""
    ranked = sorted(range(len(widths)), key=lambda block: -widths[block])
    weights = [0.0] * len(widths)
    for rank, block in enumerate(ranked):
        weights[block] = rank / len(widths)
    return weights


def writes_to(unit_weight: float, attn_weight: float) -> bool:
    """Whether a unit of `unit_weight` stores its reference in a block of `attn_weight`."""
    return unit_weight > attn_weight


def mean_fidelity(fidelities: Sequence[float]) -> float:
    """The fidelity of a block several units wrote to (the extension averages them)."""
    return sum(fidelities) / len(fidelities)
