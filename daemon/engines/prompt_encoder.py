"""A prompt and its negative → the embeddings a diffusers SD/SDXL pipeline call takes, the way
A1111 encodes them (see :mod:`daemon.a1111.prompts` for the rules and why not compel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.a1111.prompts import PromptChunk, build_chunks, parse_prompt_attention

if TYPE_CHECKING:
    import torch


_OPENCLIP_WIDTH = 1024
"""SD-2's text encoder (OpenCLIP ViT-H) width: A1111 has no clip skip for it."""


@dataclass(frozen=True)
class _Tower:
    """One tokenizer + text encoder pair and the facts about it that encoding needs."""

    tokenizer: Any
    model: Any
    bos: int
    eos: int
    pad: int  # OpenCLIP tokenizers (SD-2, SDXL's second) pad with "!" (0), not with EOS
    comma: int | None
    layers: int
    penultimate: bool  # SDXL: the hidden state before the last layer, not normalized
    clip_skip: bool  # whether A1111's "Clip skip" applies to this encoder
    pooled: bool  # the pooled (projected) output is wanted: SDXL's second encoder


@dataclass(frozen=True)
class Embedded:
    """One text's conditioning: the token embeddings and, for SDXL, the pooled embedding."""

    z: torch.Tensor  # (1, 77·chunks, width)
    pooled: torch.Tensor | None  # (1, dim): SDXL only


class PromptEncoder:
    """Prompt + negative prompt → the embedding kwargs of a diffusers SD/SDXL pipeline call.

    Build one per loaded pipeline (an inpaint pipeline made with ``from_pipe`` shares the text
    encoders, so the same encoder serves it). Construction only reads tokenizer facts; the text
    encoders are run by :meth:`encode`, so LoRA weights set on them in between take effect.

    SDXL is recognised by ``tokenizer_2``/``text_encoder_2``; A1111's SDXL conditioning is
    reproduced: both encoders' penultimate hidden states (not normalized) side by side, the
    pooled embedding of the second encoder's first chunk, clip skip ignored (A1111's default
    for SDXL), and an empty negative prompt encoded as zeros.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        first = (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))
        second = (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))
        self.is_sdxl = second[0] is not None and second[1] is not None
        pairs = [first, second] if self.is_sdxl else [first]
        # An SDXL refiner has only the second encoder.
        present = [(tok, model) for tok, model in pairs if tok is not None and model is not None]
        if not present:
            raise ValueError("pipeline has no tokenizer/text encoder to encode prompts with")
        self._towers = [
            self._tower(tok, model, pooled=self.is_sdxl and model is second[1])
            for tok, model in present
        ]

    def _tower(self, tokenizer: Any, model: Any, *, pooled: bool) -> _Tower:
        config = model.config
        eos = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        return _Tower(
            tokenizer=tokenizer,
            model=model,
            bos=int(tokenizer.bos_token_id),
            eos=eos,
            pad=eos if pad is None else int(pad),
            comma=tokenizer.get_vocab().get(",</w>"),
            layers=int(config.num_hidden_layers),
            penultimate=self.is_sdxl,
            clip_skip=not self.is_sdxl and int(config.hidden_size) != _OPENCLIP_WIDTH,
            pooled=pooled,
        )

    def encode(self, prompt: str, negative: str, *, clip_skip: int = 1) -> dict[str, torch.Tensor]:
        """Embed `prompt` and `negative` (tags already removed) for the pipeline call.

        Returns ``prompt_embeds`` and ``negative_prompt_embeds`` (plus, for SDXL,
        ``pooled_prompt_embeds`` and ``negative_pooled_prompt_embeds``), each with a batch of 1;
        pass them instead of ``prompt``/``negative_prompt``. A prompt is a whole number of
        77-token chunks; when the two differ in length, the shorter is padded with the empty
        prompt's chunk (A1111's "pad prompt/negative prompt" option; A1111 without it runs
        them separately, which diffusers pipelines cannot).

        `clip_skip` is A1111's "Clip skip" (1 = last layer). It must be at least 1 and at most
        the text encoder's layer count (12 for SD-1); it is ignored where A1111 ignores it
        (SDXL, SD-2).
        """
        pos = self.embed(prompt, clip_skip=clip_skip)
        neg = self.embed(negative, clip_skip=clip_skip, negative=True)
        pos_z, neg_z = pos.z, neg.z
        if pos_z.shape[1] != neg_z.shape[1]:
            empty = self.empty(clip_skip=clip_skip)
            length = max(pos_z.shape[1], neg_z.shape[1])
            pos_z, neg_z = (pad_to(z, length, empty) for z in (pos_z, neg_z))

        kwargs = {"prompt_embeds": pos_z, "negative_prompt_embeds": neg_z}
        if self.is_sdxl:
            if pos.pooled is None or neg.pooled is None:
                raise ValueError("SDXL pipeline without a second text encoder (pooled embeds)")
            kwargs["pooled_prompt_embeds"] = pos.pooled
            kwargs["negative_pooled_prompt_embeds"] = neg.pooled
        return kwargs

    def embed(self, text: str, *, clip_skip: int = 1, negative: bool = False) -> Embedded:
        """One text → its ``(1, 77·chunks, width)`` embedding and, for SDXL, the pooled one.

        An empty SDXL `negative` is all zeros, pooled too, as in A1111 (``sd_models_xl``)."""
        import torch

        self._check_clip_skip(clip_skip)
        with torch.no_grad():
            z, pooled = self._encode_text(text, clip_skip, self._device())
            if self.is_sdxl and negative and text == "":
                z = torch.zeros_like(z)
                pooled = None if pooled is None else torch.zeros_like(pooled)
        return Embedded(z, pooled)

    def empty(self, *, clip_skip: int = 1) -> torch.Tensor:
        """The empty prompt's chunk, what a shorter embedding is padded with."""
        return self.embed("", clip_skip=clip_skip).z

    def _device(self) -> torch.device:
        # Where the pipeline runs its text encoder (diffusers' own choice; it walks the
        # modules for offload hooks, so once per text).
        device: torch.device = getattr(self.pipe, "_execution_device", None) or (
            self._towers[0].model.device
        )
        return device

    def _check_clip_skip(self, clip_skip: int) -> None:
        if not isinstance(clip_skip, int) or clip_skip < 1:
            raise ValueError(f"clip skip must be an integer >= 1, got {clip_skip!r}")
        for tower in self._towers:
            if tower.clip_skip and clip_skip > tower.layers:
                raise ValueError(
                    f"clip skip {clip_skip} is more than the text encoder's {tower.layers} layers"
                )

    def _encode_text(
        self, text: str, clip_skip: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One prompt → ``(1, 77·chunks, width)`` and, for SDXL, the ``(1, dim)`` pooled."""
        import torch

        parsed = parse_prompt_attention(text)
        per_tower: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for tower in self._towers:
            chunks = build_chunks(
                self._tokenize(tower, parsed),
                parsed,
                bos=tower.bos,
                eos=tower.eos,
                comma=tower.comma,
            )
            zs = []
            for index, chunk in enumerate(chunks):
                z, chunk_pooled = self._encode_chunk(tower, chunk, clip_skip, device)
                zs.append(z)
                if tower.pooled and index == 0:
                    pooled = chunk_pooled  # A1111 (and SDXL) pool from the first chunk only
            per_tower.append(torch.cat(zs, dim=1))
        longest = max(z.shape[1] for z in per_tower)
        if any(z.shape[1] != longest for z in per_tower):
            # SDXL's two tokenizers share a vocabulary, so the chunk counts agree, unless a
            # textual inversion was loaded into one of them only: pad rather than fail.
            padded = []
            for z, tower in zip(per_tower, self._towers, strict=True):
                empty, _ = self._encode_chunk(tower, _empty_chunk(tower), clip_skip, device)
                padded.append(pad_to(z, longest, empty))
            per_tower = padded
        return torch.cat(per_tower, dim=-1), pooled

    def _tokenize(self, tower: _Tower, parsed: Sequence[tuple[str, float]]) -> list[list[int]]:
        """Each run's token ids, without BOS/EOS, as A1111 (``truncation=False``)."""
        # diffusers' textual inversion: a multi-vector embedding's name becomes its N tokens.
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        texts = [text if convert is None else convert(text, tower.tokenizer) for text, _ in parsed]
        ids = tower.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
        return [list(map(int, run_ids)) for run_ids in ids]

    def _encode_chunk(
        self, tower: _Tower, chunk: PromptChunk, clip_skip: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A1111's process_tokens + encode_with_transformers + EmphasisOriginal, one chunk."""
        import torch

        tokens = list(chunk.tokens)
        if tower.pad != tower.eos:
            # OpenCLIP: everything after the first EOS is the pad token (A1111's SD-2 fix).
            first_eos = tokens.index(tower.eos)
            tokens[first_eos + 1 :] = [tower.pad] * (len(tokens) - first_eos - 1)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)

        skip = clip_skip if tower.clip_skip else 1
        wants_hidden = tower.penultimate or skip > 1
        out = tower.model(ids, output_hidden_states=wants_hidden, return_dict=True)
        if tower.penultimate:
            z = out.hidden_states[-2]
        elif skip > 1:
            z = _final_layer_norm(tower.model)(out.hidden_states[-skip])
        else:
            z = out.last_hidden_state

        pooled = None
        if tower.pooled:
            pooled = getattr(out, "text_embeds", None)
            if pooled is None:
                pooled = out.pooler_output

        return _emphasis(z, chunk.multipliers), pooled


def _emphasis(z: torch.Tensor, multipliers: Sequence[float]) -> torch.Tensor:
    """A1111's default emphasis ("Original"): weight each token's vector, restore the mean.

    The multipliers are float32, as in A1111 (``torch.asarray`` of Python floats), so the
    arithmetic is the same there too; the result goes back to the encoder's dtype, as the
    pipeline would do. Two guards A1111 lacks, neither changing a real model's result: all
    weights 1.0 returns `z` untouched (A1111 multiplies by 1 and by mean/mean, the identity),
    and a zero mean is not divided by (A1111 gives NaN; only an untrained final layer norm,
    like the built-in tiny model's, has a mean of exactly 0).
    """
    import torch

    if all(m == 1.0 for m in multipliers):
        return z
    weights = torch.asarray(list(multipliers), device=z.device)
    original_mean = z.mean()
    weighted = z * weights.reshape((*weights.shape, 1)).expand(z.shape)
    new_mean = weighted.mean()
    if new_mean != 0:
        weighted = weighted * (original_mean / new_mean)
    return weighted.to(z.dtype)


def _empty_chunk(tower: _Tower) -> PromptChunk:
    return build_chunks([[]], [("", 1.0)], bos=tower.bos, eos=tower.eos, comma=tower.comma)[0]


def _final_layer_norm(model: Any) -> Any:
    """The final layer norm: on the model itself in transformers 5's CLIPTextModel, under
    ``text_model`` in CLIPTextModelWithProjection (and in transformers 4's CLIPTextModel)."""
    norm = getattr(model, "final_layer_norm", None)
    return norm if norm is not None else model.text_model.final_layer_norm


def pad_to(z: torch.Tensor, length: int, filler: torch.Tensor) -> torch.Tensor:
    """Append copies of `filler` (one chunk) on the token axis until `z` is `length` long."""
    import torch

    missing = (length - z.shape[1]) // filler.shape[1]
    if missing <= 0:
        return z
    return torch.cat([z, filler.to(z.dtype).repeat(1, missing, 1)], dim=1)
