"""LoRA and textual-inversion embeddings: found in A1111's folders, applied to a warm pipeline.

Folders, as in an A1111 install: LoRAs in ``models_dir/Lora`` (and ``models_dir/LyCORIS``),
embeddings in ``embeddings`` (``models_dir/embeddings``, and the webui's own ``embeddings``
folder beside ``models``). Every folder is searched recursively (symlinked folders too); a
file is named by its stem, matched case-sensitively first, then case-insensitively.
``.safetensors`` is always accepted; ``.pt`` ``.ckpt`` ``.bin`` ``.pth`` are pickles, which
can run code when loaded, and are refused unless the configuration allows pickles.

What a job gets, as in A1111:

* ``<lora:name:w>`` / ``<lora:name:te:unet>`` (parsed elsewhere into refs with ``name``,
  ``te_weight``, ``unet_weight``) activates that LoRA with those weights for this job only.
  A job without LoRAs runs with every LoRA disabled: pixel for pixel what a pipeline that
  never saw one makes. The same LoRA named twice is applied once with the weights summed.
* An embedding is used wherever its file stem appears as a word in the prompt or the
  negative prompt (case-insensitively, as A1111's lower-casing tokenizer matches it).
* A LoRA or embedding that is missing, refused (pickle) or does not fit the model is
  skipped with a note and the job goes on, as A1111 warns and goes on. Nothing is recorded
  in the infotext for it.

Loading: each file is loaded once per pipeline and kept for later jobs (the base model is
never reloaded; the img2img and inpaint pipelines made by ``from_pipe`` share the state,
because they share the modules). Up to ``max_loras`` LoRAs stay loaded; the least recently
used beyond that are deleted. A file that changes on disk is loaded afresh.

Embeddings are loaded under private, lower-case token names (one per vector), and
:meth:`AdapterManager.apply` returns the prompts with each embedding name replaced by its
tokens: **encode** ``applied.prompt`` / ``applied.negative_prompt``, but **record** the original
text in the infotext. Why not the file stem as the token: with transformers 5 the CLIP
tokenizer matches an added token case-insensitively and inside longer words, and returns it
lower-cased, so diffusers' multi-vector expansion (which looks the returned token up
case-sensitively) silently drops every vector but the first for names such as
``EasyNegative``; a loaded stem would also keep firing in later prompts that merely contain
it. Private names avoid both.

Finding the files is the resolver's, as for every kind of model (:mod:`daemon.models.resolve`:
a missing or refused LoRA is its ModelNotFound or PickleRefused, turned into a note here);
reading them is :mod:`daemon.engines.adapter_files`; what a job got is
:mod:`daemon.engines.adapter_values`. What stays here is one job: keeping a pipeline's
loaded adapters in step with each job's wishes (load, activate with weights, evict, embed),
all under one lock.

torch, diffusers and safetensors are imported lazily.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.engines.adapter_files import (
    adapter_name,
    embedding_tokens,
    embeddings_in,
    file_stamp,
    infotext_name,
    read_embedding,
    torch_load,
)
from daemon.engines.adapter_values import (
    AppliedAdapters,
    AppliedEmbedding,
    AppliedLora,
    LoraRefLike,
)
from daemon.errors import is_out_of_memory
from daemon.models.checkpoints import is_pickle
from daemon.models.hashes import HashCache
from daemon.models.resolve import (
    KINDS,
    ModelNotFound,
    PickleRefused,
    Search,
    check_pickle,
    files_by_stem,
    find,
    walk_weight_files,
)
from daemon.paths import shown

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_LORAS = 8


# --- the per-pipeline state --------------------------------------------------------------


@dataclass
class _LoadedLora:
    path: Path
    components: tuple[str, ...]
    last_used: int = 0


@dataclass
class AdapterState:
    """Adapters loaded into one set of modules (shared by pipelines made with from_pipe)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    loras: dict[str, _LoadedLora] = field(default_factory=dict)  # by adapter name
    # by real path: (the file's stamp when loaded, its tokens)
    embeddings: dict[Path, tuple[tuple[str, int, int], tuple[str, ...]]] = field(
        default_factory=dict
    )
    clock: Iterator[int] = field(default_factory=itertools.count)


class AdapterManager:
    """Applies LoRAs and embeddings to one loaded pipeline, job after job.

    Cheap to create: what is loaded lives in `state`, which the model cache keeps per loaded
    model, so a new manager for the same (or a ``from_pipe``) pipeline finds it. Without a
    state the manager starts with a fresh one. Use from the worker thread.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        state: AdapterState | None = None,
        lora_dirs: Sequence[Path] = (),
        embedding_dirs: Sequence[Path] = (),
        allow_pickle: bool = False,
        max_loras: int = DEFAULT_MAX_LORAS,
        hashes: HashCache | None = None,
    ) -> None:
        self.pipe = pipe
        self.hashes = hashes or HashCache()
        self.lora_dirs = [Path(d) for d in lora_dirs]
        self.embedding_dirs = [Path(d) for d in embedding_dirs]
        self.search = Search(None, allow_pickle=allow_pickle)  # its own folders: no models_dir
        self.max_loras = max(1, max_loras)
        self.state = state if state is not None else AdapterState()

    # -- public --------------------------------------------------------------------------

    def apply(
        self, loras: Sequence[LoraRefLike], prompt_text: str, negative_text: str = ""
    ) -> AppliedAdapters:
        """Make the pipeline run with exactly these LoRAs and the embeddings the texts name.

        Returns the texts to encode (embedding names replaced by their tokens), the hashes
        for the infotext and notes about what was skipped (also logged as warnings). A
        LoRA or embedding that cannot be used is a note, never an exception; out-of-memory
        errors are re-raised as they are, for the caller's low-memory retry.
        """
        with self.state.lock:
            notes: list[str] = []
            applied_loras = self._apply_loras(loras, notes)
            prompt, negative, applied_embeddings = self._apply_embeddings(
                prompt_text, negative_text, notes
            )
        for note in notes:
            logger.warning(note)
        lora_hashes: dict[str, str] = {}
        for lora in applied_loras:
            lora_hashes.setdefault(infotext_name(lora.name), self.hashes.lora(lora.path))
        ti_hashes = {
            infotext_name(e.name): self.hashes.sha256(e.path)[:12] for e in applied_embeddings
        }
        return AppliedAdapters(
            prompt=prompt,
            negative_prompt=negative,
            loras=tuple(applied_loras),
            embeddings=tuple(applied_embeddings),
            lora_hashes=lora_hashes,
            ti_hashes=ti_hashes,
            notes=tuple(notes),
        )

    @property
    def loaded_loras(self) -> dict[str, Path]:
        """Adapter name → file, for the LoRAs currently loaded into the pipeline."""
        present = self._present_adapters()
        return {a: item.path for a, item in self.state.loras.items() if a in present}

    def reset(self) -> None:
        """Remove every LoRA and embedding this module loaded (the pipeline as it was)."""
        with self.state.lock:
            present = self._present_adapters()
            ours = [a for a in self.state.loras if a in present]
            if ours:
                self.pipe.delete_adapters(ours)
            self.state.loras.clear()
            for _, tokens in self.state.embeddings.values():
                self._unload_tokens(tokens)
            self.state.embeddings.clear()

    def _unload_tokens(self, tokens: Sequence[str]) -> None:
        for tokenizer, encoder in self._text_encoders():
            loaded = [t for t in tokens if t in tokenizer.added_tokens_encoder]
            if loaded:
                self.pipe.unload_textual_inversion(
                    loaded, tokenizer=tokenizer, text_encoder=encoder
                )

    # -- LoRA ----------------------------------------------------------------------------

    def _present_adapters(self) -> set[str]:
        if not hasattr(self.pipe, "get_list_adapters"):
            return set()
        try:
            listed = self.pipe.get_list_adapters()
        except ValueError:  # no PEFT backend
            return set()
        return {name for names in listed.values() for name in names}

    def _apply_loras(self, loras: Sequence[LoraRefLike], notes: list[str]) -> list[AppliedLora]:
        files: list[Path] | None = None
        wanted: dict[str, AppliedLora] = {}  # by adapter name, in order of first mention
        for ref in loras:
            name = str(ref.name).strip()
            if not name:
                notes.append("a LoRA tag without a name was skipped")
                continue
            if files is None:  # walked once per job, whatever the number of LoRAs
                files = list(walk_weight_files(self.lora_dirs, KINDS["lora"].suffixes))
            try:
                path = find("lora", name, self.search, dirs=self.lora_dirs, files=files)
            except (ModelNotFound, PickleRefused) as exc:
                notes.append(f"{exc}; skipped")
                continue
            te, unet = float(ref.te_weight), float(ref.unet_weight)
            adapter = adapter_name(path)
            if adapter in wanted:  # named twice: A1111 applies it twice, i.e. weights add up
                old = wanted[adapter]
                te, unet = old.te_weight + te, old.unet_weight + unet
                wanted[adapter] = AppliedLora(old.name, path, adapter, te, unet)
                continue
            wanted[adapter] = AppliedLora(name, path, adapter, te, unet)

        if wanted and not hasattr(self.pipe, "load_lora_weights"):
            notes.append(
                f"this pipeline ({type(self.pipe).__name__}) cannot load LoRAs; "
                f"skipped {', '.join(lora.name for lora in wanted.values())}"
            )
            wanted = {}

        present = self._present_adapters()
        for adapter, lora in list(wanted.items()):
            if adapter in present and adapter in self.state.loras:
                continue
            try:
                self._load_lora(lora.path, adapter, present)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                notes.append(
                    f"LoRA '{lora.name}' ({lora.path}) could not be loaded into this model: "
                    f"{type(exc).__name__}: {exc}; skipped"
                )
                del wanted[adapter]
            present = self._present_adapters()

        active = [lora for lora in wanted.values() if lora.adapter in present]
        for lora in active:
            self.state.loras[lora.adapter].last_used = next(self.state.clock)
        self._activate(active, present)
        self._evict(keep={lora.adapter for lora in active})
        return active

    def _load_lora(self, path: Path, adapter: str, present: set[str]) -> None:
        # A file that changed on disk gets a new adapter name; drop the old version.
        resolved = path.resolve()
        stale = [
            a for a, item in self.state.loras.items() if a != adapter and item.path == resolved
        ]
        for old in stale:
            self._delete_lora(old, present)
        if adapter in present:  # loaded by someone else under our name: start clean
            self.pipe.delete_adapters([adapter])
        logger.info("loading LoRA {} ({})", path.stem, shown(path))
        try:
            source: Any = str(path)
            if is_pickle(path):
                source = torch_load(path)
                if isinstance(source, Mapping) and isinstance(source.get("state_dict"), Mapping):
                    source = source["state_dict"]
                if not isinstance(source, Mapping):
                    raise ValueError("the file holds no state dict")
                source = dict(source)
            with warnings.catch_warnings():
                # peft's notice for every adapter after the first: several is the point here.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                # use_safetensors=True: never let diffusers fall back to unpickling a file.
                self.pipe.load_lora_weights(source, adapter_name=adapter, use_safetensors=True)
        except BaseException:
            if adapter in self._present_adapters():
                self.pipe.delete_adapters([adapter])
            raise
        listed = self.pipe.get_list_adapters()
        components = tuple(c for c, names in listed.items() if adapter in names)
        if not components:
            raise ValueError("none of its layers matched this model")
        self.state.loras[adapter] = _LoadedLora(resolved, components)

    def _delete_lora(self, adapter: str, present: set[str]) -> None:
        if adapter in present:
            self.pipe.delete_adapters([adapter])
        self.state.loras.pop(adapter, None)
        logger.info("unloaded LoRA adapter {}", adapter)

    def _activate(self, active: list[AppliedLora], present: set[str]) -> None:
        if not active:
            if present:
                self.pipe.disable_lora()  # exact: the base layers alone
            return
        # set_adapters does not undo disable_lora: enable first, then choose.
        self.pipe.enable_lora()
        weights = []
        for lora in active:
            components = self.state.loras[lora.adapter].components
            weights.append(
                {
                    c: lora.te_weight if c.startswith("text_encoder") else lora.unet_weight
                    for c in components
                }
            )
        self.pipe.set_adapters([lora.adapter for lora in active], adapter_weights=weights)

    def _evict(self, keep: set[str]) -> None:
        present = self._present_adapters()
        for adapter in [a for a in list(self.state.loras) if a not in present]:
            del self.state.loras[adapter]  # removed behind our back
        spare = sorted(
            (a for a in self.state.loras if a not in keep),
            key=lambda a: self.state.loras[a].last_used,
        )
        while len(self.state.loras) > self.max_loras and spare:
            self._delete_lora(spare.pop(0), present)

    # -- embeddings ----------------------------------------------------------------------

    def _text_encoders(self) -> list[tuple[Any, Any]]:
        """(tokenizer, text encoder) pairs: SD's one, or SDXL's CLIP-L and OpenCLIP-G."""
        pairs = []
        for suffix in ("", "_2"):
            tokenizer = getattr(self.pipe, f"tokenizer{suffix}", None)
            encoder = getattr(self.pipe, f"text_encoder{suffix}", None)
            if tokenizer is not None and encoder is not None:
                pairs.append((tokenizer, encoder))
        return pairs

    def _vector_keys(self) -> list[str]:
        """Which vectors of an embedding file each of :meth:`_text_encoders` takes."""
        has_1 = getattr(self.pipe, "text_encoder", None) is not None
        has_2 = getattr(self.pipe, "text_encoder_2", None) is not None
        if has_1 and has_2:
            return ["clip_l", "clip_g"]  # SDXL
        return ["clip_g"] if has_2 else ["clip"]  # the SDXL refiner has only the second

    def _apply_embeddings(
        self, prompt: str, negative: str, notes: list[str]
    ) -> tuple[str, str, list[AppliedEmbedding]]:
        if not self.embedding_dirs:
            return prompt, negative, []
        available = files_by_stem("embedding", self.embedding_dirs)
        in_prompt = embeddings_in(prompt, available)
        in_negative = embeddings_in(negative, available)
        used: dict[str, AppliedEmbedding | None] = {}
        for _, _, name in (*in_prompt, *in_negative):
            if name not in used:
                used[name] = self._load_embedding(name, available[name], notes)

        def rewrite(text: str, found: list[tuple[int, int, str]]) -> str:
            out, last = [], 0
            for start, end, name in found:
                embedding = used[name]
                if embedding is not None:
                    out += [text[last:start], " ".join(embedding.tokens)]
                    last = end
            return "".join(out) + text[last:]

        applied = [e for e in used.values() if e is not None]
        return rewrite(prompt, in_prompt), rewrite(negative, in_negative), applied

    def _load_embedding(self, name: str, path: Path, notes: list[str]) -> AppliedEmbedding | None:
        try:  # the prompt named it, so it is only now that the pickle rule applies
            check_pickle("embedding", name, path, allowed=self.search.allow_pickle)
        except PickleRefused as exc:
            notes.append(f"{exc}; skipped")
            return None
        pairs = self._text_encoders()
        stamp = file_stamp(path)
        real = Path(stamp[0])
        known = self.state.embeddings.get(real)
        if known and known[0] != stamp:  # the file changed: drop the old vectors
            self._unload_tokens(known[1])
            del self.state.embeddings[real]
        elif known and pairs and all(known[1][0] in t.added_tokens_encoder for t, _ in pairs):
            return AppliedEmbedding(name, path, known[1])
        if not pairs or not hasattr(self.pipe, "load_textual_inversion"):
            notes.append(f"this pipeline cannot use embeddings; '{name}' skipped")
            return None
        try:
            vectors = read_embedding(path)
            per_encoder = self._match_encoders(vectors, pairs)
            count = per_encoder[0].shape[0]
            tokens = embedding_tokens(path, count)
            logger.info("loading embedding {} ({}, {} vectors)", name, shown(path), count)
            loaded: list[tuple[Any, Any]] = []
            try:
                for (tokenizer, encoder), vecs in zip(pairs, per_encoder, strict=True):
                    if tokens[0] not in tokenizer.added_tokens_encoder:
                        self.pipe.load_textual_inversion(
                            vecs, token=list(tokens), tokenizer=tokenizer, text_encoder=encoder
                        )
                        loaded.append((tokenizer, encoder))
            except BaseException:
                for tokenizer, encoder in loaded:  # all encoders or none
                    self.pipe.unload_textual_inversion(
                        list(tokens), tokenizer=tokenizer, text_encoder=encoder
                    )
                raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            notes.append(f"embedding '{name}' ({path}) cannot be used: {exc}; skipped")
            return None
        self.state.embeddings[real] = (stamp, tokens)
        return AppliedEmbedding(name, path, tokens)

    def _match_encoders(
        self, vectors: dict[str, torch.Tensor], pairs: list[tuple[Any, Any]]
    ) -> list[torch.Tensor]:
        """The vectors for each text encoder, checked against its width."""
        keys = self._vector_keys()
        if any(k not in vectors for k in keys):
            if "clip" in vectors:
                raise ValueError("it is an SD 1.x/2.x embedding, and this is an SDXL model")
            raise ValueError("it is an SDXL embedding, and this is not an SDXL model")
        chosen = [vectors[k] for k in keys]
        if len({v.shape[0] for v in chosen}) != 1:
            raise ValueError("its clip_l and clip_g parts have different vector counts")
        for (_, encoder), vecs in zip(pairs, chosen, strict=True):
            width = encoder.get_input_embeddings().weight.shape[-1]
            if vecs.shape[-1] != width:
                raise ValueError(
                    f"its vectors are {vecs.shape[-1]} wide, this model's text encoder "
                    f"takes {width} (made for another model family)"
                )
        return chosen
