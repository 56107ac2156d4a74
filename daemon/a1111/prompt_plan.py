"""A prompt and its negative → the texts that condition each model call, as A1111 plans them.

The positive prompt is split on the case-sensitive word ``AND`` (composable diffusion); a
trailing ``:number`` on a part is its weight (signed, 1 when absent), also when there is no
``AND`` at all, as in A1111 (``cat:1.2`` is ``cat`` guided 1.2 times as hard). Each part, and
the negative prompt (never split), then gets its own prompt-editing schedule
(:mod:`daemon.a1111.prompt_schedule`) over the sampler's timeline.

Pure: the engine encodes each distinct text once and steers the UNet with the result
(:mod:`daemon.engines.conditioning`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daemon.a1111.prompt_schedule import PromptSchedule, prompt_schedule

# A1111's `re_AND` and `re_weight` (modules/prompt_parser.py), unchanged.
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


@dataclass(frozen=True)
class Part:
    """One ``AND`` part of the positive prompt: its weight and what it says at each step."""

    weight: float
    schedule: PromptSchedule


@dataclass(frozen=True)
class PromptPlan:
    parts: tuple[Part, ...]
    negative: PromptSchedule

    @property
    def plain(self) -> bool:
        """Nothing changes while sampling and nothing is weighted: the pipeline's own
        conditioning does it, exactly as for any prompt without these features."""
        return not self.composable and self.parts[0].schedule.fixed and self.negative.fixed

    @property
    def fixed_texts(self) -> tuple[str, str]:
        """(prompt, negative) of a :attr:`plain` plan: the prompt without a trailing space,
        which the tokenizer ignores anyway."""
        return self.parts[0].schedule.entries[0][1], self.negative.entries[0][1]

    @property
    def composable(self) -> bool:
        """Whether the noise predictions must be combined (several parts, or a weight)."""
        return len(self.parts) > 1 or self.parts[0].weight != 1.0

    @property
    def texts(self) -> tuple[str, ...]:
        """Every distinct positive text, in order of appearance (each is encoded once)."""
        found = (text for part in self.parts for _, text in part.schedule.entries)
        return tuple(dict.fromkeys(found))

    @property
    def negative_texts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(text for _, text in self.negative.entries))

    @property
    def notes(self) -> tuple[str, ...]:
        schedules = [*(part.schedule for part in self.parts), self.negative]
        return tuple(dict.fromkeys(s.note for s in schedules if s.note))


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's composable parts: (text, weight) for each ``AND``-separated part."""
    parts = []
    for part in _AND.split(prompt):
        match = _WEIGHT.search(part)
        if match is None:  # the pattern matches any text; kept for A1111's fallback
            parts.append((part, 1.0))
            continue
        text, weight = match.groups()
        parts.append((text, 1.0 if weight is None else float(weight)))
    return parts


def timeline_steps(steps: int, *, second_order: bool) -> int:
    """The step count schedules are built on: A1111 counts model calls, two a step for the
    second-order samplers (Heun, DPM2, DPM2 a, DPM++ SDE)."""
    return steps * 2 if second_order else steps


def plan_prompts(prompt: str, negative: str, steps: int) -> PromptPlan:
    """The plan of `prompt` and `negative` over a timeline of `steps` (:func:`timeline_steps`).

    For img2img the timeline is the profile's ``steps`` although fewer run (the counter starts
    at 0 on the first step that runs), so late edits may never happen; with
    ``img2img_fix_steps`` all of it runs."""
    parts = tuple(Part(weight, prompt_schedule(text, steps)) for text, weight in split_and(prompt))
    return PromptPlan(parts, prompt_schedule(negative, steps))
