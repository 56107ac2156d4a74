"""What applying LoRAs and embeddings did for one job (:class:`AppliedAdapters`), and what it
asks for (:class:`LoraRefLike`): the values :mod:`daemon.engines.adapters` hands the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class LoraRefLike(Protocol):
    """What a parsed ``<lora:name:te:unet>`` tag provides: ``daemon.a1111.prompts.LoraRef``, or
    anything else with these three attributes."""

    @property
    def name(self) -> str: ...

    @property
    def te_weight(self) -> float: ...

    @property
    def unet_weight(self) -> float: ...


@dataclass(frozen=True)
class AppliedLora:
    name: str  # as the prompt wrote it
    path: Path
    adapter: str  # the adapter name inside the pipeline
    te_weight: float
    unet_weight: float


@dataclass(frozen=True)
class AppliedEmbedding:
    name: str  # the file stem
    path: Path
    tokens: tuple[str, ...]  # what the name is replaced by in the prompts


@dataclass(frozen=True)
class AppliedAdapters:
    """What :meth:`AdapterManager.apply` did for one job.

    ``prompt`` and ``negative_prompt`` are the texts to encode (embedding names replaced by
    their tokens); the infotext keeps the original texts and adds :meth:`infotext_params`.
    """

    prompt: str
    negative_prompt: str
    loras: tuple[AppliedLora, ...] = ()
    embeddings: tuple[AppliedEmbedding, ...] = ()
    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def infotext_params(self) -> dict[str, object]:
        """``{"Lora hashes": {...}, "TI hashes": {...}}``, leaving out empty ones."""
        params: dict[str, object] = {}
        if self.lora_hashes:
            params["Lora hashes"] = dict(self.lora_hashes)
        if self.ti_hashes:
            params["TI hashes"] = dict(self.ti_hashes)
        return params
