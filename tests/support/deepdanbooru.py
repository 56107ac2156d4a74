"""A DeepDanbooru state dict with the real file's key names and layout, random and narrow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from daemon.engines.deepdanbooru import BLOCKS, HEAD, STEM
from daemon.engines.deepdanbooru import _key as key


def random_state_dict(tags: Sequence[str], *, width: int = 2, seed: int = 0) -> dict[str, Any]:
    """A state dict with the real file's key names and layout, ``width`` stem channels.

    The real file has width 64 (bottlenecks of 64/128/256/256/512/1024 channels, expansion 4);
    width 2 gives a 30 KB model that runs 512x512 in a fraction of a second. Residual branches
    start small and the head is scaled so the scores spread over (0, 1) instead of saturating.
    """
    generator = torch.Generator().manual_seed(seed)
    bottleneck = {0: width, 1: 2 * width, 2: 4 * width, 3: 4 * width, 4: 8 * width, 5: 16 * width}
    state: dict[str, Any] = {}

    def add(index: int, given: int, out: int, kernel: int, scale: float, bias: bool = True) -> None:
        fan_in = given * kernel * kernel
        weight = torch.randn(out, given, kernel, kernel, generator=generator)
        state[key(index)] = weight * scale * (2 / fan_in) ** 0.5
        if bias:
            state[key(index, "bias")] = torch.randn(out, generator=generator) * 0.05

    add(STEM, 3, width, 7, 1.0)
    channels = width
    group = -1
    for block in BLOCKS:
        if block.projection is not None:
            group += 1
        inner = bottleneck[group]
        a, b, c = block.convs
        add(a, channels, inner, 1, 1.0)
        add(b, inner, inner, 3, 1.0)
        add(c, inner, 4 * inner, 1, 0.2)  # a small residual branch keeps activations tame
        if block.projection is not None:
            add(block.projection, channels, 4 * inner, 1, 1.0)
        channels = 4 * inner
    add(HEAD, channels, len(tags), 1, 3.0, bias=False)
    state["tags"] = list(tags)
    return state
