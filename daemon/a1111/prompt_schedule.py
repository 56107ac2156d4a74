"""A1111's prompt editing and alternation: which text a prompt means at each sampling step.

``[from:to:when]``, ``[to:when]`` and ``[from::when]`` switch text at a step; ``[a|b|…]``
alternates every step (empty options allowed: ``[fe|]male``). ``when`` written with a ``.``
is a fraction of the steps (``int(when × steps)``), without one a step number; boundaries
are capped at ``steps`` and those below 1 are dropped, so ``[cat:dog:0]`` is ``dog`` from the
start. The schedule is every boundary plus ``steps`` (and every step when anything
alternates); at entry ``t`` a switch gives ``from`` while ``t ≤ when``, an alternation its
option ``(t − 1) mod n``. A prompt that does not parse means its whole text, unchanged.

This is a parser of its own for the grammar A1111 accepts (``modules/prompt_parser.py``),
checked against A1111's doctest examples and, while it was written, against A1111's parser
itself over thousands of generated prompts. Outside any construct a bracket that opens none,
and a colon, are text, and a ``|`` makes the prompt unparseable. Inside a construct only
text, escapes and valid constructs may stand, so a bad one there makes the construct around
it text. Emphasis brackets ``( )`` ``[ ]`` and escapes ``\\(`` stay in the text for the
attention parser. Well-formed prompts gave no difference. Malformed ones next to stray
brackets rarely do, where A1111's result depends on its parsing library's version (lark 1.1.2
and 1.3.1 disagree on 2.5 % of them). Pure functions; the encoder and the sampler hooks use
the schedule.
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
        nodes = _parse(prompt, notes)
    except Unparseable as exc:
        return PromptSchedule(((steps, prompt),), f"{exc}, so the prompt is used as written")
    resolved = tuple(_resolve(node, steps) for node in nodes)
    boundaries = {steps}
    _collect(resolved, steps, boundaries)
    entries = tuple((t, _text(resolved, t)) for t in sorted(boundaries))
    return PromptSchedule(entries, "; ".join(notes))


# ----------------------------------------------------------------- parsing


def _parse(text: str, notes: list[str], *, inside: bool = False) -> tuple[_Node, ...]:
    """The whole prompt, or (`inside`) a part of a construct.

    In the whole prompt, as in A1111's grammar, a bracket that opens no construct and a
    ``:`` are text, and a ``|`` makes the prompt unparseable; a ``[…]`` that looks like an
    edit but is not one is described in `notes`. Inside a construct only text, escapes and
    valid constructs may stand: anything else makes the construct around it text too."""
    nodes: list[_Node] = []
    plain: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            plain.append(_escape(text, i))
            i += 2
            continue
        if char in _CLOSING:
            end = _matching(text, i)
            try:
                node = _construct(text, i, end, notes)
            except _Invalid as exc:
                if inside:
                    raise
                if char == "[" and end is not None and ":" in text[i:end]:
                    notes.append(f"{text[i : end + 1]} {exc}, so it is text")
            else:
                nodes.extend(["".join(plain)] if plain else [])
                plain = []
                nodes.append(node)
                i = end + 1  # type: ignore[operator]
                continue
        elif char in ":|)]" and inside:
            raise _Invalid(f"has a stray '{char}' inside")
        elif char == "|":
            raise Unparseable("it has a '|' outside of an [a|b] alternation")
        plain.append(char)  # outside a construct, a stray bracket or colon is text
        i += 1
    if plain:
        nodes.append("".join(plain))
    return tuple(nodes)


class _Invalid(ValueError):
    """Brackets that hold no construct of the grammar (the reason is the message)."""


def _escape(text: str, at: int) -> str:
    """``\\x``: x as text; a backslash at the end (or before a line break) matches nothing."""
    if at + 1 >= len(text) or text[at + 1] == "\n":
        raise Unparseable("it has a '\\' that escapes nothing")
    return text[at : at + 2]


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


def _construct(text: str, opening: int, closing: int | None, notes: list[str]) -> _Node:
    """What the brackets from `opening` to `closing` hold, by A1111's grammar:
    ``(p)``, ``(p:p)``, ``[p]``, ``[p:when]``, ``[p:p:when]``, ``[p|p|…]``. _Invalid if
    none (the caller decides what that means)."""
    if closing is None:
        raise _Invalid("is not closed")
    inner = text[opening + 1 : closing]

    def part(piece: str) -> tuple[_Node, ...]:
        return _parse(piece, notes, inside=True)

    cuts = _cuts(inner)
    colons = [cut for cut in cuts if inner[cut] == ":"]
    bars = [cut for cut in cuts if inner[cut] == "|"]
    if text[opening] == "(":
        if bars or len(colons) > 1:
            raise _Invalid("is not (text) or (text:weight)")
        if not colons:
            return _Group("(", part(inner), ")")
        cut = colons[0]
        return _Group("(", (*part(inner[:cut]), ":", *part(inner[cut + 1 :])), ")")
    if bars:
        if colons:
            raise _Invalid("mixes ':' and '|'")
        edges = [-1, *bars, len(inner)]
        return _Alternation(tuple(part(inner[a + 1 : b]) for a, b in pairwise(edges)))
    if not colons:
        return _Group("[", part(inner), "]")
    when = inner[colons[-1] + 1 :]
    number = _NUMBER.fullmatch(when)
    if number is None:
        raise _Invalid(f"ends in '{when.strip()}', not a number of steps or a fraction")
    if len(colons) > 2:
        raise _Invalid("has more ':' than [from:to:when]")
    if len(colons) == 1:
        return _Switch(None, part(inner[: colons[0]]), number[1])
    middle = colons[0]
    return _Switch(part(inner[:middle]), part(inner[middle + 1 : colons[-1]]), number[1])


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
