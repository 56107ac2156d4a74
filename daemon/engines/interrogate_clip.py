"""CLIP interrogation: a BLIP caption, then CLIP ranks label lists against the image.

The engine behind A1111's "Interrogate CLIP" and pharmapsychotic's clip-interrogator. BLIP
writes a caption; CLIP embeds the image and every term of the label lists (mediums, artists,
movements, flavors, the user's own, and the ``negative`` list) and scores them. The modes
(``ClipOptions.mode``) differ in how terms are chosen:

``classic`` (A1111's output)
    ``caption, <best terms of each list, in the lists' order>``. A list contributes its
    ``top_n`` best terms by A1111's score, ``softmax(100 * image · terms)`` over that list.
    Artists read ``by <name>``. The ``negative`` list is not used.
``fast`` (clip-interrogator)
    The caption plus the ``max_flavors`` terms closest to the image (cosine similarity) over
    all lists merged, ``negative`` excepted.
``best`` (clip-interrogator)
    A greedy chain: starting from the caption, repeatedly append the term (out of the
    :data:`CHAIN_CANDIDATES` closest ones) that makes the whole prompt most similar to the
    image, until nothing improves it or ``max_flavors`` terms were added. The answer is
    whichever of caption, classic, fast and chained prompt is most similar to the image.
``negative`` (clip-interrogator)
    No caption: the same chain run backwards over the least similar flavors and the
    ``negative`` list, each step choosing the term that makes the prompt least similar.

The text embeddings of a label list are computed once per (model, list), kept in memory, and
stored on disk (:mod:`daemon.engines.label_cache`); a second image only costs the image side.

This module stays whole although it is long: the caption, the ranking and the four modes
share the loaded models, the embedding tables and the chain's prompt encoding, and each mode
is a few lines on top of them. torch and transformers are imported inside the functions that
use them, so that importing this module (for its option and result types) is instant.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.engines.label_cache import LabelCache, cache_key, model_identity
from daemon.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from daemon.engines.labels import LabelList

MODES = ("classic", "fast", "best", "negative")
NEGATIVE = "negative"
"""The list only the negative mode reads."""
ARTISTS = "artists"
"""The list whose terms read ``by <name>``."""
FLAVORS = "flavors"
"""The list the negative mode draws its least similar terms from."""

TEXT_BATCH = 256
"""Texts per text-encoder call: large enough to keep a CPU busy, small enough for any GPU."""
CHAIN_CANDIDATES = 256
"""Terms a chain chooses from (the closest, or least similar, ones). Every step of a chain
re-encodes one prompt per remaining candidate, so this bounds the cost of best/negative."""
PROGRESS_SECONDS = 5.0
"""How often a long label-embedding run reports progress."""
MEMORY_LISTS = 16
"""Label lists whose embeddings stay in memory (least recently used ones are dropped)."""

_SCALE = 100.0
"""A1111's fixed logit scale in ``softmax(100 * image · terms)``."""
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


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
class _Table:
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


def _pooled(output: Any) -> torch.Tensor:
    """The projected features: transformers 5 returns an output object, 4.x a tensor."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _top_terms(
    entries: Sequence[tuple[str, str]], scores: torch.Tensor, count: int, *, least: bool = False
) -> list[Term]:
    """The `count` best (or least similar) entries with their scores, ties in list order."""
    import torch

    order = torch.sort(scores, descending=not least, stable=True).indices[:count]
    return [Term(entries[i][0], entries[i][1], float(scores[i])) for i in order.tolist()]


# ---------------------------------------------------------------------------------------------
# Loading


def _load_problem(what: str, ref: str | Path, exc: BaseException, local_only: bool) -> str:
    """A plain sentence saying which model failed and the likely reason."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    path = Path(ref).expanduser()
    if path.exists():
        return f"the {what} in {ref} could not be loaded: {first}"
    if not _HUB_ID.match(str(ref)):
        return f"the {what} folder {ref} does not exist"
    if local_only:
        return (
            f"the {what} {ref} is neither a folder nor a model in the local Hugging Face "
            "cache (downloads are off)"
        )
    return f"the {what} {ref} could not be loaded or downloaded: {first}"


def _load_pair(
    what: str,
    ref: str | Path,
    model_type: str,
    model_cls: Any,
    processor_cls: Any,
    *,
    device: str,
    dtype: torch.dtype,
    local_files_only: bool,
) -> tuple[Any, Any]:
    """Model and processor from one folder or hub id, on `device`; ConfigError if it fails."""
    from transformers import PretrainedConfig

    source = str(Path(ref).expanduser()) if Path(ref).expanduser().exists() else str(ref)
    try:
        config, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_files_only)
        found = config.get("model_type")
        if found is not None and found != model_type:
            # from_pretrained would only warn and build a model with random weights.
            raise ConfigError(f"the {what} in {ref} is a {found!r} model, not {model_type!r}")
        model = model_cls.from_pretrained(source, dtype=dtype, local_files_only=local_files_only)
        processor = processor_cls.from_pretrained(source, local_files_only=local_files_only)
        model.to(device).eval()
    except ConfigError:
        raise
    except Exception as exc:  # from_pretrained raises many kinds: OSError, ValueError, …
        raise ConfigError(_load_problem(what, ref, exc, local_files_only)) from exc
    return model, processor


# ---------------------------------------------------------------------------------------------
# The engine


class ClipInterrogator:
    """BLIP + CLIP, loaded once; :meth:`interrogate` is safe to call from several threads."""

    def __init__(
        self,
        blip_model: Any,
        blip_processor: Any,
        clip_model: Any,
        clip_processor: Any,
        *,
        device: str,
        dtype: torch.dtype,
        cache_dir: Path,
    ) -> None:
        self._blip: Any = blip_model
        self._blip_processor: Any = blip_processor
        self._clip: Any = clip_model
        self._clip_processor: Any = clip_processor
        self.device = device
        self.dtype = dtype
        self.model_identity = model_identity(clip_model)
        self.cache = LabelCache(Path(cache_dir), self.model_identity)
        tokenizer = clip_processor.tokenizer
        # Real CLIP: 77. A tokenizer without a limit reports a huge model_max_length.
        self._max_tokens = min(
            int(tokenizer.model_max_length),
            int(clip_model.config.text_config.max_position_embeddings),
        )
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.RLock()

    @classmethod
    def load(
        cls,
        blip: str | Path,
        clip: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: Path,
        local_files_only: bool = True,
    ) -> ClipInterrogator:
        """Load BLIP and CLIP (each a local folder or a hub id); ConfigError naming a failure.

        `dtype` defaults to float16 on CUDA (half the memory, same rankings) and float32
        elsewhere (CPUs are slow or unsupported in half precision).
        """
        import torch
        from transformers import (
            BlipForConditionalGeneration,
            BlipProcessor,
            CLIPModel,
            CLIPProcessor,
        )

        if dtype is None:
            dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        common: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "local_files_only": local_files_only,
        }
        blip_pair = _load_pair(
            "BLIP caption model",
            blip,
            "blip",
            BlipForConditionalGeneration,
            BlipProcessor,
            **common,
        )
        clip_pair = _load_pair("CLIP model", clip, "clip", CLIPModel, CLIPProcessor, **common)
        return cls(*blip_pair, *clip_pair, device=device, dtype=dtype, cache_dir=cache_dir)

    @property
    def clip_model(self) -> Any:
        return self._loaded()[2]

    @property
    def blip_model(self) -> Any:
        return self._loaded()[0]

    def unload(self) -> None:
        """Drop the models and the in-memory embeddings (the disk cache stays)."""
        with self._lock:
            self._blip = self._blip_processor = self._clip = self._clip_processor = None
            self._memory.clear()
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _loaded(self) -> tuple[Any, Any, Any, Any]:
        if self._clip is None:
            raise RuntimeError("the CLIP interrogator was unloaded")
        return self._blip, self._blip_processor, self._clip, self._clip_processor

    # --- the public operations ---------------------------------------------------------------

    def caption(self, image: Image.Image, options: ClipOptions | None = None) -> str:
        """BLIP's caption: greedy or beam search, no sampling, so the same image gives the same
        words. Lengths are in tokens, the leading start token included (as generate counts)."""
        import torch

        options = options or ClipOptions()
        blip, processor, _, _ = self._loaded()
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            ids = blip.generate(
                pixel_values=pixels,
                num_beams=options.num_beams,
                min_length=options.caption_min_length,
                max_length=options.caption_max_length,
                do_sample=False,
            )
        return one_line(processor.decode(ids[0], skip_special_tokens=True))

    def similarities(self, image: Image.Image, texts: Sequence[str]) -> list[float]:
        """CLIP cosine similarity of each whole text (truncated to 77 tokens) to the image."""
        with self._lock:
            return self._prompt_similarities(self._image_features(image), texts)

    def interrogate(
        self,
        image: Image.Image,
        labels: Sequence[LabelList],
        options: ClipOptions | None = None,
    ) -> ClipResult:
        """Describe `image` with a caption and terms of `labels`, as ``options.mode`` says."""
        options = options or ClipOptions()
        with self._lock:
            image = image.convert("RGB")
            features = self._image_features(image)
            tables = [t for t in (self._table(lst) for lst in labels) if t is not None]
            scores = [(t.embeddings @ features).float().cpu() for t in tables]
            if options.mode == "negative":
                return self._negative(features, tables, scores, options)
            caption = self.caption(image, options)
            classic = _classic_terms(tables, scores, options.top_n)
            if options.mode == "classic":
                return ClipResult(
                    format_line(caption, classic, ranks=options.return_ranks),
                    caption,
                    tuple(classic),
                )
            entries, merged = _merge(
                [(t, s) for t, s in zip(tables, scores, strict=True) if t.name != NEGATIVE]
            )
            fast = _top_terms(entries, merged, options.max_flavors)
            if options.mode == "fast":
                line = format_line(caption, fast, ranks=options.return_ranks)
                return ClipResult(line, caption, tuple(fast))
            return self._best(features, caption, classic, fast, entries, merged, options)

    # --- modes -------------------------------------------------------------------------------

    def _best(
        self,
        features: torch.Tensor,
        caption: str,
        classic: list[Term],
        fast: list[Term],
        entries: list[tuple[str, str]],
        merged: torch.Tensor,
        options: ClipOptions,
    ) -> ClipResult:
        pool = _top_terms(entries, merged, CHAIN_CANDIDATES)
        chained = self._chain(features, caption, pool, options.max_flavors, reverse=False)
        # Scores in this mode are cosines, also for the terms the classic prompt chose.
        cosine = {text: score for (_, text), score in zip(entries, merged.tolist(), strict=True)}
        classic = [Term(t.category, t.text, cosine[t.text]) for t in classic]
        candidates = [[], classic, fast, chained]
        lines = [format_line(caption, terms, ranks=False) for terms in candidates]
        sims = self._prompt_similarities(features, lines)
        best = max(range(len(sims)), key=sims.__getitem__)  # ties: the earlier, simpler prompt
        terms = candidates[best]
        return ClipResult(
            format_line(caption, terms, ranks=options.return_ranks), caption, tuple(terms)
        )

    def _negative(
        self,
        features: torch.Tensor,
        tables: list[_Table],
        scores: list[torch.Tensor],
        options: ClipOptions,
    ) -> ClipResult:
        pairs = list(zip(tables, scores, strict=True))
        # Without a flavors list, the other lists stand in for it (a user's own categories).
        flavors = [p for p in pairs if p[0].name == FLAVORS] or [
            p for p in pairs if p[0].name != NEGATIVE
        ]
        pool: list[Term] = []
        for group in (flavors, [p for p in pairs if p[0].name == NEGATIVE]):
            if group:
                entries, merged = _merge(group)
                pool += _top_terms(entries, merged, CHAIN_CANDIDATES, least=True)
        pool = _unique(pool)  # a term in both lists once
        chained = self._chain(features, "", pool, options.max_flavors, reverse=True)
        return ClipResult(format_line("", chained, ranks=options.return_ranks), "", tuple(chained))

    def _chain(
        self,
        features: torch.Tensor,
        start: str,
        pool: Sequence[Term],
        limit: int,
        *,
        reverse: bool,
    ) -> list[Term]:
        """Greedily append the pool term that moves the prompt's similarity most.

        Up (or down, with `reverse`); stops when no term moves it further, after `limit`
        terms, or once the prompt fills CLIP's 77 tokens (more text would be cut off).
        """
        sign = -1.0 if reverse else 1.0
        prompt = start
        best = sign * self._prompt_similarities(features, [start])[0] if start else -math.inf
        remaining = list(pool)
        chosen: list[Term] = []
        while remaining and len(chosen) < limit and not self._fills_context(prompt):
            texts = [join_prompt(prompt, t.text) for t in remaining]
            sims = [sign * s for s in self._prompt_similarities(features, texts)]
            pick = max(range(len(sims)), key=sims.__getitem__)
            if sims[pick] <= best:
                break
            best, prompt = sims[pick], texts[pick]
            chosen.append(remaining.pop(pick))
        return chosen

    # --- CLIP ----------------------------------------------------------------------------------

    def _image_features(self, image: Image.Image) -> torch.Tensor:
        """The normalised CLIP embedding of the image, shape (dim,)."""
        import torch

        _, _, clip, processor = self._loaded()
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            output = clip.get_image_features(
                pixel_values=inputs["pixel_values"].to(self.device, self.dtype)
            )
        return _normalised(_pooled(output))[0]

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised CLIP text embeddings, (len(texts), dim); long texts are truncated."""
        import torch

        _, _, clip, processor = self._loaded()
        tokens = processor.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self._max_tokens,
            return_tensors="pt",
        )
        with torch.inference_mode():
            output = clip.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        return _normalised(_pooled(output))

    def _encode_batched(self, texts: Sequence[str], *, what: str = "") -> torch.Tensor:
        """:meth:`_encode` in TEXT_BATCH chunks; with `what`, progress every few seconds."""
        import torch

        started = last = time.monotonic()
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            chunks.append(self._encode(texts[start : start + TEXT_BATCH]))
            now = time.monotonic()
            if what and now - last >= PROGRESS_SECONDS:
                done = min(start + TEXT_BATCH, len(texts))
                logger.info(
                    "CLIP: embedding {}: {}/{} terms ({:.0f}%)",
                    what,
                    done,
                    len(texts),
                    100 * done / len(texts),
                )
                last = now
        if what and last != started:
            logger.info(
                "CLIP: embedded {} ({} terms) in {:.0f} s",
                what,
                len(texts),
                time.monotonic() - started,
            )
        return torch.cat(chunks)

    def _prompt_similarities(self, features: torch.Tensor, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        sims: list[float] = (self._encode_batched(texts) @ features).float().cpu().tolist()
        return sims

    def _fills_context(self, prompt: str) -> bool:
        """True when the prompt already uses all of CLIP's tokens (start and end included)."""
        if not prompt:
            return False
        tokenizer = self._loaded()[3].tokenizer
        ids = tokenizer(prompt, truncation=True, max_length=self._max_tokens)["input_ids"]
        return len(ids) >= self._max_tokens

    # --- label embeddings: memory, then disk, then the text encoder ---------------------------

    def _table(self, labels: LabelList) -> _Table | None:
        texts = label_texts(labels)
        if not texts:
            return None
        key = cache_key(self.model_identity, labels.name, texts)
        embeddings = self._memory.get(key)
        if embeddings is None:
            embeddings = self.cache.read(
                key, len(texts), int(self._loaded()[2].config.projection_dim)
            )
            if embeddings is None:
                if len(texts) > TEXT_BATCH:
                    logger.info(
                        "CLIP: embedding the {} terms of '{}' (first use with this "
                        "model; stored for later)",
                        len(texts),
                        labels.name,
                    )
                embeddings = self._encode_batched(texts, what=f"'{labels.name}'")
                self.cache.write(key, embeddings, labels.name)
            embeddings = embeddings.to(self.device, self.dtype)
            self._memory[key] = embeddings
            while len(self._memory) > MEMORY_LISTS:
                self._memory.popitem(last=False)
        self._memory.move_to_end(key)
        return _Table(labels.name, texts, labels.top_n, embeddings)


# ---------------------------------------------------------------------------------------------
# Mode helpers on scores (pure tensor code)


def _classic_terms(
    tables: Sequence[_Table], scores: Sequence[torch.Tensor], top_n: int | None
) -> list[Term]:
    """A1111: each list's best terms by softmax(100 · cosine) over that list, in list order."""
    terms: list[Term] = []
    for table, cosine in zip(tables, scores, strict=True):
        if table.name == NEGATIVE:
            continue
        count = top_n if top_n is not None else table.top_n
        probs = (_SCALE * cosine).softmax(dim=-1)
        entries = [(table.name, text) for text in table.texts]
        terms += _top_terms(entries, probs, max(0, count))
    return terms


def _unique(terms: Iterable[Term]) -> list[Term]:
    """The terms with each text once (its first occurrence), in order."""
    unique: dict[str, Term] = {}
    for term in terms:
        unique.setdefault(term.text, term)
    return list(unique.values())


def _merge(
    pairs: Sequence[tuple[_Table, torch.Tensor]],
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
