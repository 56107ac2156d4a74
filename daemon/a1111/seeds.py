"""A1111's seeds: -1 draws one, and the frames of a clip share one (or count up from it)."""

from __future__ import annotations

import random

MAX_SEED = 2**32 - 1


def draw_seed(seed: int, rng: random.Random) -> int:
    """A1111: -1 means a random seed; the drawn value is what gets recorded."""
    return rng.randint(0, MAX_SEED) if seed == -1 else seed


def frame_seed(mode: str, base: int, number: int, rng: random.Random) -> int:
    """The seed of one frame: ``base`` (fixed), ``base + number`` (increment) or a new one."""
    if mode == "random":
        return rng.randint(0, MAX_SEED)
    if mode == "increment":
        return (base + number) % (MAX_SEED + 1)
    return base
