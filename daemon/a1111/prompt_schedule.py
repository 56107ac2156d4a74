"""A1111's prompt editing and alternation: which text a prompt means at each sampling step.

``[from:to:when]``, ``[to:when]`` and ``[from::when]`` switch text at a step; ``[a|b|…]``
alternates every step (empty options allowed: ``[fe|]male``). ``when`` written with a ``.``
is a fraction of the steps (``int(when × steps)``), without one a step number; boundaries
are capped at ``steps`` and those below 1 are dropped, so ``[cat:dog:0]`` is ``dog`` from the
start. The schedule is every boundary plus ``steps`` (and every step when anything
alternates); at entry ``t`` a switch gives ``from`` while ``t ≤ when``, an alternation its
option ``(t − 1) mod n``. A prompt that does not parse means its whole text, unchanged.

This is a parser of its own for the grammar A1111 accepts (``modules/prompt_parser.py``),
checked against A1111's own doctest examples: brackets that open no construct are text,
emphasis brackets ``( )`` ``[ ]`` and escapes ``\\(`` stay in the text for the attention
parser, a ``|`` outside any bracket makes the prompt unparseable (as it does in A1111).
Pure functions; the encoder and the sampler hooks use the schedule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")
_CLOSING = {"(": ")", "[": "]"}


class Unparseable(ValueError):
    """The prompt is not A1111 prompt-editing syntax: it is used as one fixed text."""


@dataclass(frozen=True)
class _Switch:
    before: tuple[_Node, ...] | None  # None: `[to:when]`
    after: tuple[_Node, ...]
    when: str  # as written: a "." makes it a fraction


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple[_Node, ...], ...]


@dataclass(frozen=True)
class _Group:
    """Emphasis brackets, kept in the text: ``(a)``, ``(a:1.2)``, ``[a]``."""

    opening: str
    inner: tuple[_Node, ...]
    closing: str


_Node = str | _Switch | _Alternation | _Group


@dataclass(frozen=True)
class PromptSchedule:
    """(end_at_step, text) pairs: the text applies while the step counter ≤ end_at_step.

    `note` says why a prompt that looks like prompt editing is used (partly) as written."""

    entries: tuple[tuple[int, str], ...]
    note: str = ""

    @property
    def fixed(self) -> bool:
        return len({text for _, text in self.entries}) == 1

    def text_at(self, counter: int) -> str:
        """The text for a step counter (A1111's counts from 0, one per model call)."""
        for end, text in self.entries:
            if counter <= end:
                return text
        return self.entries[-1][1]


def prompt_schedule(prompt: str, steps: int) -> PromptSchedule:
    """The schedule of `prompt` over `steps` (the sampler's step count, doubled by the
    caller for second-order samplers, which call the model twice a step)."""
    notes: list[str] = []
    try:
        nodes = _parse(prompt, 0, top=True, notes=notes)[0]
    except Unparseable as exc:
        return PromptSchedule(((steps, prompt),), f"{exc}, so the prompt is used as written")
    resolved = tuple(_resolve(node, steps) for node in nodes)
    boundaries = {steps}
    _collect(resolved, steps, boundaries)
    entries = tuple((t, _text(resolved, t)) for t in sorted(boundaries))
    return PromptSchedule(entries, "; ".join(notes))


def has_schedule(prompt: str) -> bool:
    """Whether `prompt` changes over the steps (cheap: most prompts have no ``[``)."""
    return "[" in prompt and not prompt_schedule(prompt, 100).fixed


# ----------------------------------------------------------------- parsing


def _parse(
    text: str, start: int, *, top: bool, notes: list[str], stop: str = ""
) -> tuple[list[_Node], int]:
    """Nodes from `start` up to an unmatched `stop` character (not consumed); what reads as
    text although it looks like a construct is described in `notes`."""
    nodes: list[_Node] = []
    plain: list[str] = []
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            plain.append(text[i : i + 2])
            i += 2
            continue
        if char in stop:
            break
        if char in _CLOSING:
            end = _matching(text, i)
            node = _construct(text, i, end, notes) if end is not None else None
            if node is not None:
                nodes.extend(["".join(plain)] if plain else [])
                plain = []
                nodes.append(node)
                i = end + 1  # type: ignore[operator]
                continue
        elif char == "|" and top:
            raise Unparseable("it has a '|' outside of an [a|b] alternation")
        plain.append(char)  # a stray bracket or colon is text
        i += 1
    if plain:
        nodes.append("".join(plain))
    return nodes, i


def _matching(text: str, opening: int) -> int | None:
    """The index of the bracket closing the one at `opening`, nesting and escapes counted."""
    stack = [_CLOSING[text[opening]]]
    i = opening + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char in _CLOSING:
            stack.append(_CLOSING[char])
        elif char in ")]":
            if char != stack[-1]:
                return None
            stack.pop()
            if not stack:
                return i
        i += 1
    return None


def _construct(text: str, opening: int, closing: int, notes: list[str]) -> _Node | None:
    """What the brackets from `opening` to `closing` hold; None when they hold no
    construct (then the opening bracket is text)."""
    inner = text[opening + 1 : closing]

    def nested(part: str, *, bar: bool) -> tuple[_Node, ...]:
        return tuple(_parse(part, 0, top=not bar, notes=notes)[0])

    if text[opening] == "(":
        return _Group("(", nested(inner, bar=True), ")")
    cuts = _cuts(inner)
    last = cuts[-1] if cuts else None
    if last is not None and inner[last] == ":":
        number = _NUMBER.fullmatch(inner[last + 1 :])
        if number is not None:  # [to:when] or [from:to:when]; a '|' in a text is text
            colons = [cut for cut in cuts[:-1] if inner[cut] == ":"]
            if not colons:
                return _Switch(None, nested(inner[:last], bar=True), number[1])
            if len(colons) == 1:
                middle = colons[0]
                before = nested(inner[:middle], bar=True)
                return _Switch(before, nested(inner[middle + 1 : last], bar=True), number[1])
            notes.append(f"[{inner}] has too many ':' for [from:to:when], so it is text")
            return None
        notes.append(
            f"[{inner}] ends in '{inner[last + 1 :].strip()}', not a number of steps or a "
            "fraction, so it is text"
        )
    if cuts and all(inner[cut] == "|" for cut in cuts):
        edges = [-1, *cuts, len(inner)]
        options = (inner[a + 1 : b] for a, b in pairwise(edges))
        return _Alternation(tuple(nested(option, bar=False) for option in options))
    if not cuts:
        return _Group("[", nested(inner, bar=False), "]")
    return None


def _cuts(inner: str) -> list[int]:
    """Where `inner` has a ':' or '|' of its own (not inside nested brackets, not escaped)."""
    cuts = []
    depth, i = 0, 0
    while i < len(inner):
        char = inner[i]
        if char == "\\":
            i += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char in ":|" and depth == 0:
            cuts.append(i)
        i += 1
    return cuts


# ----------------------------------------------------------------- the schedule


def _boundary(when: str, steps: int) -> int:
    value = float(when)
    if "." in when:
        value *= steps
    return min(steps, int(value))


def _resolve(node: _Node, steps: int) -> _Node:
    """Each switch's `when` turned into its boundary step (still as text, for the dataclass)."""
    if isinstance(node, _Switch):
        before = tuple(_resolve(n, steps) for n in node.before) if node.before else None
        after = tuple(_resolve(n, steps) for n in node.after)
        return _Switch(before, after, str(_boundary(node.when, steps)))
    if isinstance(node, _Alternation):
        return _Alternation(
            tuple(tuple(_resolve(n, steps) for n in option) for option in node.options)
        )
    if isinstance(node, _Group):
        return _Group(node.opening, tuple(_resolve(n, steps) for n in node.inner), node.closing)
    return node


def _collect(nodes: tuple[_Node, ...], steps: int, into: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Switch):
            if int(node.when) >= 1:
                into.add(int(node.when))
            _collect(node.before or (), steps, into)
            _collect(node.after, steps, into)
        elif isinstance(node, _Alternation):
            into.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, into)
        elif isinstance(node, _Group):
            _collect(node.inner, steps, into)


def _text(nodes: tuple[_Node, ...], step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Switch):
            part = (node.before or ()) if step <= int(node.when) else node.after
            out.append(_text(part, step))
        elif isinstance(node, _Alternation):
            out.append(_text(node.options[(step - 1) % len(node.options)], step))
        else:
            out.append(node.opening + _text(node.inner, step) + node.closing)
    return "".join(out)
