"""The warm ControlNets: loaded once per model, kept while they are used.

A ControlNet is small beside its checkpoint (a third of the UNet) and the same one serves any
checkpoint of its architecture, so it has its own cache entry, keyed by its reference, and the
model cache's idle unloading. Its label in the infotext is the extension's ``name [hash]``,
the hash being A1111's old short hash (:func:`legacy_hash`), which the extension shows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.errors import ConfigError, TransientError, is_out_of_memory
from daemon.models.builtin import BUILTIN_PREFIX
from daemon.models.resolve import Search, resolve_controlnet

if TYPE_CHECKING:
    import torch

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)


def legacy_hash(file: Path) -> str:
    """A1111's old model hash (``sd_models.model_hash``), which the extension writes after a
    ControlNet's name: sha256 of the 64 KiB at 1 MiB, 8 hex digits (a file under 1 MiB
    hashes nothing: ``e3b0c442``)."""
    with file.open("rb") as stream:
        stream.seek(0x100000)
        return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


def model_label(ref: str, folder: Path) -> str:
    """``name [hash]`` as the infotext shows it; a built-in by its name (a ``:`` would make
    the entry unreadable)."""
    name = ref[len(BUILTIN_PREFIX) :] if ref.startswith(BUILTIN_PREFIX) else folder.name
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    return f"{name} [{legacy_hash(weights)}]" if weights else name


@dataclass
class LoadedControlNet:
    net: Any  # diffusers' ControlNetModel, on the device
    label: str
    last_used: float = 0.0


def _not_timed(_name: str, _seconds: float) -> None:
    return None


@dataclass
class ControlNets:
    """Loaded ControlNets by reference. Used by the thread that renders. `device` is asked
    on the first load (picking it imports torch); `on_load` hears each load's time."""

    search: Search
    device: Callable[[], tuple[str, torch.dtype]]
    on_load: Callable[[str, float], None] = _not_timed
    _loaded: dict[str, LoadedControlNet] = field(default_factory=dict)

    def get(self, ref: str) -> LoadedControlNet:
        """ControlNet `ref`, loaded on first use. One that cannot be found or loaded is not
        the input's fault (TransientError: the input waits)."""
        loaded = self._loaded.get(ref)
        if loaded is None:
            loaded = self._loaded[ref] = self._load(ref)
        loaded.last_used = time.monotonic()
        return loaded

    def _load(self, ref: str) -> LoadedControlNet:
        from diffusers.models.controlnets.controlnet import ControlNetModel

        try:
            folder = resolve_controlnet(ref, self.search)
        except ConfigError as exc:
            raise TransientError(f"{exc}; the input waits in the inbox") from exc
        device, dtype = self.device()
        started = time.monotonic()
        try:
            net = ControlNetModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise TransientError(
                f"could not load ControlNet {ref} ({folder}): {type(exc).__name__}: {exc}"
            ) from exc
        net = net.to(device).eval()
        seconds = time.monotonic() - started
        logger.info("loaded ControlNet {} in {:.1f} s", ref, seconds)
        self.on_load(ref, seconds)
        return LoadedControlNet(net, model_label(ref, folder))

    def unload_idle(self, max_idle: float, *, now: float) -> list[str]:
        idle = [ref for ref, item in self._loaded.items() if now - item.last_used >= max_idle]
        for ref in idle:
            del self._loaded[ref]
        return idle

    def unload_all(self) -> None:
        self._loaded.clear()

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)
