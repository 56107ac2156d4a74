"""A1111 prompts: attention syntax, extra-network tags and 75-token chunks (pure text work;
the text encoder that turns the chunks into embeddings is :mod:`daemon.engines.prompt_encoder`).

A1111's prompt handling is reproduced here step by step, so that a prompt copied from an A1111
infotext conditions the model the way it did there:

* :func:`extract_extra_networks` removes ``<lora:…>``-style tags first, as A1111 does before
  anything else sees the prompt (``modules/extra_networks.py``);
* :func:`parse_prompt_attention` is A1111's parser (``modules/prompt_parser.py``), same regex,
  same quirks, same float arithmetic;
* the encoder (:mod:`daemon.engines.prompt_encoder`) is A1111's
  ``FrozenCLIPEmbedderWithCustomWords``: 75-token chunks (a chunk breaks after a comma when one
  is within the last 20 tokens), ``BREAK`` pads the chunk, each chunk is ``BOS + 75 + EOS``
  through the text encoder, "Clip skip" takes the hidden state N layers from the end through the
  final layer norm, and emphasis is A1111's default ("Original"): multiply each token's vector
  by its weight, then rescale the chunk so that its mean is what it was before.

Where diffusers needs something A1111 does not do, the nearest A1111 behaviour is chosen. A
pipeline needs prompt and negative of one length, so the shorter is padded with the empty
prompt's chunk: A1111's "Pad prompt/negative prompt" option (by default A1111 runs the two
through the UNet separately instead). Clip skip is done here, not by the pipeline: diffusers
0.42's ``clip_skip`` reads ``text_encoder.text_model``, gone from transformers 5's
``CLIPTextModel``, and crashes. An unweighted prompt of up to 75 tokens gives exactly
diffusers' own ``encode_prompt`` embedding (the tests check it, for SD and for SDXL).

Prompt editing ``[a:b:step]``, alternation ``[a|b]`` and composable ``AND`` are resolved
before this point (:mod:`daemon.a1111.prompt_plan`): each text that reaches these functions
is one step's text of one part.

Why not compel, although it is installed: compel was tried against this stack and it does
not reproduce A1111. Its weighting is a different formula (``empty + (z - empty) * w`` above
1, and masking the tokens out below 1; its author says so: damian0815/compel#71); its syntax
cannot carry every A1111 text (a bare ``+``, ``-`` or ``=`` makes its parser give up and read
the whole prompt as unweighted text; ``a+++`` becomes a weight); it splits long prompts at
sentence ends rather than A1111's commas; and its clip-skip mode reads
``text_encoder.text_model``, which transformers 5's ``CLIPTextModel`` no longer has. A1111's
algorithm is short, so it is written out here against the tokenizer and text encoder.
:func:`to_compel` remains, for showing a parsed prompt in compel's notation; the encoder does
not use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

# --------------------------------------------------------------------------------------------
# Attention syntax
# --------------------------------------------------------------------------------------------

# A1111's `re_attention`, unchanged (its newer form, which allows spaces around the weight).
_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1.0
"""A1111 marks a BREAK with the pair ("BREAK", -1): text and weight together make the marker."""

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (text, weight) runs exactly as A1111's ``parse_prompt_attention``.

    ``(x)`` multiplies by 1.1 (nested brackets multiply), ``(x:1.3)`` by 1.3, ``[x]`` divides
    by 1.1; ``\\( \\) \\[ \\] \\\\`` are the literal characters (a backslash before anything
    else is dropped); a bracket left open applies to the end of the prompt; a close without an
    open is text. ``BREAK`` (a whole word) yields the marker ``("BREAK", -1.0)``. Adjacent runs
    of equal weight are merged; an empty prompt gives ``[("", 1.0)]``.

    A1111's quirks are kept on purpose: a BREAK inside brackets gets multiplied like any run
    (``(a BREAK b)`` gives ``("BREAK", -1.1)``, which the encoder then treats as text, as
    A1111 does), and weights are computed in the same order, so they are the same floats
    (``1.5730000000000004``, not ``1.573``).
    """
    res: list[list[Any]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start_position: int, multiplier: float) -> None:
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append([BREAK_TEXT, BREAK_WEIGHT])
                res.append([part, 1.0])

    # Unclosed brackets apply to the end, in the order they were opened (as A1111).
    for pos in round_brackets:
        multiply_range(pos, _ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, _SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(str(t), float(w)) for t, w in res]


def without_emphasis(text: str) -> tuple[str, bool]:
    """`text` with A1111's emphasis brackets and ``BREAK`` taken out, for encoders that take
    plain text (T5, Qwen), and whether any weight other than 1 was dropped."""
    runs = parse_prompt_attention(text)
    plain = "".join(" " if weight == -1 and run == "BREAK" else run for run, weight in runs)
    weighted = any(weight not in (1.0, -1.0) for _, weight in runs)
    return " ".join(plain.split()), weighted


def is_break(chunk: tuple[str, float]) -> bool:
    """True for the BREAK marker of :func:`parse_prompt_attention` (text and weight both)."""
    return chunk[0] == BREAK_TEXT and chunk[1] == BREAK_WEIGHT


# --------------------------------------------------------------------------------------------
# Extra networks: <lora:…>
# --------------------------------------------------------------------------------------------

# A1111's `re_extra_net`: any <word:args> tag is an extra network, known or not, and is removed.
_RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")
LORA_NETWORKS = ("lora", "lyco")
"""Tag names that mean a LoRA: A1111 registers ``lyco`` as an alias of ``lora``."""


@dataclass(frozen=True)
class LoraRef:
    """One ``<lora:name:te_weight:unet_weight>`` tag: a LoRA file stem and its two strengths."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


def extract_extra_networks(text: str) -> tuple[str, list[LoraRef], list[str]]:
    """Remove extra-network tags from a prompt: ``(prompt, loras, ignored_tags)``.

    As A1111: every ``<word:args>`` tag is cut out and the rest of the text is left exactly as
    it is (commas and spaces around a tag stay). ``lora`` and ``lyco`` tags become
    :class:`LoraRef` in prompt order; args are split on ``:``, an ``a=b`` arg is named:
    ``<lora:name>`` is weight 1.0, ``<lora:name:w>`` uses w for both the text encoder and the
    UNet, ``<lora:name:te:unet>`` sets both, and named ``te=``/``unet=`` override (A1111's
    ``dyn`` and any further args are not used). Any other tag (``<hypernet:…>``, unknown names)
    is returned whole in ``ignored_tags``, for the caller to report: hypernetworks are not
    supported.

    Raises ValueError for a LoRA tag without a name or with a weight that is not a finite
    number (A1111 would print an error and silently skip all LoRAs of the prompt).
    """
    loras: list[LoraRef] = []
    ignored: list[str] = []

    def found(m: re.Match[str]) -> str:
        kind, args = m.group(1), m.group(2)
        if kind in LORA_NETWORKS:
            loras.append(_lora_ref(m.group(0), args.split(":")))
        else:
            ignored.append(m.group(0))
        return ""

    return _RE_EXTRA_NET.sub(found, text), loras, ignored


def _lora_ref(tag: str, items: list[str]) -> LoraRef:
    """A1111's ExtraNetworkParams + ExtraNetworkLora.activate, for one tag's args."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        parts = item.split("=", 2)  # as A1111: exactly one '=' makes a named arg
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    if not positional or not positional[0]:
        raise ValueError(f"LoRA tag {tag} has no LoRA name")

    def number(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"LoRA tag {tag}: weight {value!r} is not a number") from None
        if not math.isfinite(result):
            raise ValueError(f"LoRA tag {tag}: weight {value!r} is not a finite number")
        return result

    te = number(positional[1]) if len(positional) > 1 else 1.0
    te = number(named["te"]) if "te" in named else te
    unet = number(positional[2]) if len(positional) > 2 else te
    unet = number(named["unet"]) if "unet" in named else unet
    return LoraRef(positional[0], te, unet)


# --------------------------------------------------------------------------------------------
# compel notation (display / interop only)
# --------------------------------------------------------------------------------------------

_COMPEL_ESCAPES = str.maketrans({"(": "\\(", ")": "\\)", '"': '\\"'})


def to_compel(chunks: Sequence[tuple[str, float]]) -> str:
    """Write parsed chunks in compel's notation: ``(text)1.3`` for a weight, plain text for 1.0.

    ``(``, ``)`` and ``"`` are backslash-escaped, the only escapes compel 2.5 turns back into
    the character. Weights are written in fixed notation (compel reads ``1e-05`` as text).

    For display and for feeding compel, never for encoding here (see the module docstring):
    compel's grammar cannot carry every text. A bare ``+``, ``-`` or ``=`` between spaces makes
    it give up and read the whole prompt as unweighted text, ``word+`` becomes a weight, and
    ``withLora(…)`` is taken as a command; compel also has no BREAK (``.and()`` concatenates
    separately encoded prompts, but is not a 75-token chunk boundary), so a BREAK marker raises
    ValueError: split the chunks at :func:`is_break` first.
    """
    out = ""
    need_space = False  # a weighted group was just written without whitespace after it
    for chunk in chunks:
        if is_break(chunk):
            raise ValueError("compel has no BREAK: split the chunks at BREAK markers first")
        text, weight = chunk
        if weight != 1.0 and not text.strip():
            continue  # a weighted run of nothing weights nothing
        if need_space and text and not text[0].isspace():
            out += " "
        escaped = text.translate(_COMPEL_ESCAPES)
        if weight == 1.0:
            out, need_space = out + escaped, False
            continue
        # compel strips a group's inner whitespace: keep the spaces outside the group, and
        # set the group apart from the words around it, as compel's grammar needs.
        lead = text[: len(text) - len(text.lstrip())]
        if not lead and out and not out[-1].isspace():
            lead = " "
        trail = text[len(text.rstrip()) :]
        out += f"{lead}({escaped.strip()}){_format_weight(weight)}{trail}"
        need_space = not trail
    return out.strip()


def _format_weight(weight: float) -> str:
    """Fixed notation, at most 6 decimals, no trailing zeros: 1.2100000000000002 -> 1.21."""
    return f"{weight:.6f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------------------------
# Chunking (A1111's tokenize_line)
# --------------------------------------------------------------------------------------------

CHUNK_LENGTH = 75
"""Prompt tokens per chunk; with BOS and EOS a chunk is the text encoder's 77."""

COMMA_PADDING_BACKTRACK = 20
"""A1111's default ``comma_padding_backtrack``: a full chunk breaks after a comma this close."""


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75, EOS) and one weight per token, as A1111's PromptChunk."""

    tokens: list[int]
    multipliers: list[float]


def build_chunks(
    tokenized: Sequence[Sequence[int]],
    parsed: Sequence[tuple[str, float]],
    *,
    bos: int,
    eos: int,
    comma: int | None,
) -> list[PromptChunk]:
    """Lay out a parsed, tokenized prompt in 77-token chunks, as A1111's ``tokenize_line``.

    `tokenized[i]` holds the token ids (no BOS/EOS) of `parsed[i]`'s text. Each run's tokens
    are appended with its weight; when a chunk holds 75 tokens it is closed, except that if a
    comma lies within the last :data:`COMMA_PADDING_BACKTRACK` tokens, the tokens after the
    comma move to the next chunk. A BREAK marker closes the chunk at once. A closed chunk is
    padded to 75 with EOS, then wrapped in BOS/EOS (weight 1.0 for all of those). An empty
    prompt is one chunk of padding.
    """
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    mults: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, mults, last_comma
        to_add = CHUNK_LENGTH - len(tokens)
        if to_add > 0:
            tokens += [eos] * to_add
            mults += [1.0] * to_add
        chunks.append(PromptChunk([bos, *tokens, eos], [1.0, *mults, 1.0]))
        tokens, mults, last_comma = [], [], -1

    for run_tokens, run in zip(tokenized, parsed, strict=True):
        if is_break(run):
            next_chunk()
            continue
        weight = run[1]
        for token in run_tokens:
            if comma is not None and token == comma:
                last_comma = len(tokens)
            elif (
                len(tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(tokens) - last_comma <= COMMA_PADDING_BACKTRACK
            ):
                break_location = last_comma + 1
                moved_tokens, moved_mults = tokens[break_location:], mults[break_location:]
                tokens, mults = tokens[:break_location], mults[:break_location]
                next_chunk()
                tokens, mults = moved_tokens, moved_mults
            if len(tokens) == CHUNK_LENGTH:
                next_chunk()
            tokens.append(token)
            mults.append(weight)

    if tokens or not chunks:
        next_chunk()
    return chunks
