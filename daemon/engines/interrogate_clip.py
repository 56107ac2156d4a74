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

The terms (options, results, label texts, how each mode picks from scores) live in
:mod:`daemon.engines.clip_terms`, the loading in :mod:`daemon.engines.clip_loading`; this
module runs the loaded models: the caption, the embeddings and the four modes, which share the
models, the embedding tables and the chain's prompt encoding. torch and transformers are
imported inside the functions that use them, so that importing this module (for its option
and result types) is instant.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.engines.clip_loading import load_pair
from daemon.engines.clip_terms import (
    FLAVORS,
    NEGATIVE,
    ClipOptions,
    ClipResult,
    Table,
    Term,
    classic_terms,
    format_line,
    join_prompt,
    merge_lists,
    normalised,
    one_line,
    pooled_features,
    top_terms,
    unique_terms,
)
from daemon.engines.clip_terms import (
    MODES as MODES,
)
from daemon.engines.clip_terms import (
    label_texts as label_texts,
)
from daemon.engines.label_cache import LabelCache, cache_key, model_identity

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from daemon.engines.labels import LabelList

TEXT_BATCH = 256
"""Texts per text-encoder call: large enough to keep a CPU busy, small enough for any GPU."""
CHAIN_CANDIDATES = 256
"""Terms a chain chooses from (the closest, or least similar, ones). Every step of a chain
re-encodes one prompt per remaining candidate, so this bounds the cost of best/negative."""
PROGRESS_SECONDS = 5.0
"""How often a long label-embedding run reports progress."""
MEMORY_LISTS = 16
"""Label lists whose embeddings stay in memory (least recently used ones are dropped)."""

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
        blip_pair = load_pair(
            "BLIP caption model",
            blip,
            "blip",
            BlipForConditionalGeneration,
            BlipProcessor,
            **common,
        )
        clip_pair = load_pair("CLIP model", clip, "clip", CLIPModel, CLIPProcessor, **common)
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
            classic = classic_terms(tables, scores, options.top_n)
            if options.mode == "classic":
                return ClipResult(
                    format_line(caption, classic, ranks=options.return_ranks),
                    caption,
                    tuple(classic),
                )
            entries, merged = merge_lists(
                [(t, s) for t, s in zip(tables, scores, strict=True) if t.name != NEGATIVE]
            )
            fast = top_terms(entries, merged, options.max_flavors)
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
        pool = top_terms(entries, merged, CHAIN_CANDIDATES)
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
        tables: list[Table],
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
                entries, merged = merge_lists(group)
                pool += top_terms(entries, merged, CHAIN_CANDIDATES, least=True)
        pool = unique_terms(pool)  # a term in both lists once
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
        return normalised(pooled_features(output))[0]

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
        return normalised(pooled_features(output))

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

    def _table(self, labels: LabelList) -> Table | None:
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
        return Table(labels.name, texts, labels.top_n, embeddings)
