"""CLIP interrogation's terms: its options and results, the label texts, and how each mode
picks terms from scores (pure tensor code, no model). :mod:`daemon.engines.interrogate_clip`
runs the models and the modes on top of this."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from daemon.engines.labels import LabelList

MODES = ("classic", "fast", "best", "negative")
NEGATIVE = "negative"
"""The list only the negative mode reads."""
ARTISTS = "artists"
"""The list whose terms read ``by <name>``."""
FLAVORS = "flavors"
"""The list the negative mode draws its least similar terms from."""

_SCALE = 100.0
"""A1111's fixed logit scale in ``softmax(100 * image · terms)``."""


@dataclass(frozen=True)
class ClipOptions:
    """What to produce; defaults are A1111's (classic, beams 1, caption 24 to 48 tokens).

    `top_n`, when set, replaces every list's own ``top_n`` in the classic mode.
    `max_flavors` bounds the terms of the fast, best and negative modes.
    `return_ranks` writes each term as ``(term:0.123)`` with its score.
    """

    mode: str = "classic"
    caption_min_length: int = 24
    caption_max_length: int = 48
    num_beams: int = 1
    top_n: int | None = None
    max_flavors: int = 32
    return_ranks: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.caption_min_length < 0:
            problems.append("caption_min_length must be 0 or more")
        if self.caption_max_length < max(1, self.caption_min_length):
            problems.append("caption_max_length must be at least 1 and caption_min_length")
        if self.num_beams < 1:
            problems.append("num_beams must be 1 or more")
        if self.top_n is not None and self.top_n < 1:
            problems.append("top_n must be 1 or more")
        if self.max_flavors < 1:
            problems.append("max_flavors must be 1 or more")
        if problems:
            raise ConfigError("CLIP interrogation: " + "; ".join(problems), problems)


@dataclass(frozen=True)
class Term:
    """A term as it appears in the line: softmax score in classic mode, cosine otherwise."""

    category: str
    text: str
    score: float


@dataclass(frozen=True)
class ClipResult:
    line: str
    """One line: ``caption, term, term`` (or ``(term:0.123)`` with ranks)."""
    caption: str
    """The BLIP caption ("" in the negative mode, which has none)."""
    terms: tuple[Term, ...]


@dataclass(frozen=True)
class Table:
    """A label list ready to rank: its texts as written in prompts, and their embeddings."""

    name: str
    texts: tuple[str, ...]
    top_n: int
    embeddings: torch.Tensor  # (len(texts), dim), normalised, on the model's device/dtype


# ---------------------------------------------------------------------------------------------
# Pure helpers


def one_line(text: str) -> str:
    """Collapse newlines and runs of spaces: a result must stay on one line."""
    return " ".join(text.split())


def label_texts(labels: LabelList) -> tuple[str, ...]:
    """The texts CLIP embeds and the line shows: one line each, artists as ``by <name>``.

    Embedding the prefixed form is what clip-interrogator does: "by X" is how a prompt
    mentions an artist, so that is the text to compare with the image.
    """
    texts: dict[str, None] = {}
    for term in labels.terms:
        text = one_line(term)
        if text and labels.name == ARTISTS and not text.lower().startswith("by "):
            text = f"by {text}"
        if text:
            texts[text] = None
    return tuple(texts)


def format_line(caption: str, terms: Iterable[Term], *, ranks: bool) -> str:
    """``caption, term, …``; with `ranks` each term is ``(term:0.123)``, as A1111 writes it."""
    parts = [caption] if caption else []
    parts += [f"({t.text}:{t.score:.3f})" if ranks else t.text for t in terms]
    return ", ".join(parts)


def join_prompt(prompt: str, text: str) -> str:
    return f"{prompt}, {text}" if prompt else text


def pooled_features(output: Any) -> torch.Tensor:
    """The projected features: transformers 5 returns an output object, 4.x a tensor."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled


def normalised(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def top_terms(
    entries: Sequence[tuple[str, str]], scores: torch.Tensor, count: int, *, least: bool = False
) -> list[Term]:
    """The `count` best (or least similar) entries with their scores, ties in list order."""
    import torch

    order = torch.sort(scores, descending=not least, stable=True).indices[:count]
    return [Term(entries[i][0], entries[i][1], float(scores[i])) for i in order.tolist()]


# ---------------------------------------------------------------------------------------------
# Mode helpers on scores (pure tensor code)


def classic_terms(
    tables: Sequence[Table], scores: Sequence[torch.Tensor], top_n: int | None
) -> list[Term]:
    """A1111: each list's best terms by softmax(100 · cosine) over that list, in list order."""
    terms: list[Term] = []
    for table, cosine in zip(tables, scores, strict=True):
        if table.name == NEGATIVE:
            continue
        count = top_n if top_n is not None else table.top_n
        probs = (_SCALE * cosine).softmax(dim=-1)
        entries = [(table.name, text) for text in table.texts]
        terms += top_terms(entries, probs, max(0, count))
    return terms


def unique_terms(terms: Iterable[Term]) -> list[Term]:
    """The terms with each text once (its first occurrence), in order."""
    unique: dict[str, Term] = {}
    for term in terms:
        unique.setdefault(term.text, term)
    return list(unique.values())


def merge_lists(
    pairs: Sequence[tuple[Table, torch.Tensor]],
) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """All terms of several lists as one, a term in two lists counted once (the first)."""
    import torch

    seen: set[str] = set()
    entries: list[tuple[str, str]] = []
    keep: list[int] = []
    offset = 0
    for table, _ in pairs:
        for i, text in enumerate(table.texts):
            if text not in seen:
                seen.add(text)
                entries.append((table.name, text))
                keep.append(offset + i)
        offset += len(table.texts)
    if not pairs:
        return [], torch.zeros(0)
    merged = torch.cat([scores for _, scores in pairs])[torch.tensor(keep, dtype=torch.long)]
    return entries, merged
