"""The warm ControlNets: loaded once per model, kept while they are used.

A ControlNet is small beside its checkpoint (a third of the UNet) and the same one serves any
checkpoint of its architecture, so it has its own cache entry, keyed by its reference, and the
model cache's idle unloading. Its label in the infotext is the extension's ``name [hash]``
(a single file's stem, a folder's name), the hash being A1111's old short hash
(:func:`legacy_hash`), which the extension shows. The width of the text a net attends to is
known before it loads (:meth:`ControlNets.width`: a config or a file's header), so a net for
another architecture is refused without reading its weights.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.errors import ConfigError, TransientError, is_out_of_memory
from daemon.models.builtin import BUILTIN_PREFIX
from daemon.models.controlnet_layout import SHIPPED_CONFIGS, controlnet_layout
from daemon.models.controlnet_loading import (
    load_controlnet_file,
    load_controlnet_folder,
    read_config,
)
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


def model_label(ref: str, found: Path) -> str:
    """``name [hash]`` as the infotext shows it: a single file's stem and hash, a folder's
    name and its weights' hash; a built-in by its name (a ``:`` would make the entry
    unreadable)."""
    if found.is_file():
        return f"{found.stem} [{legacy_hash(found)}]"
    name = ref[len(BUILTIN_PREFIX) :] if ref.startswith(BUILTIN_PREFIX) else found.name
    weights = next((found / f for f in WEIGHT_FILES if (found / f).is_file()), None)
    return f"{name} [{legacy_hash(weights)}]" if weights else name


@dataclass
class LoadedControlNet:
    net: Any  # diffusers' ControlNetModel or ControlNetUnionModel, on the device
    label: str
    last_used: float = 0.0

    @property
    def control_types(self) -> int | None:
        """A union net's number of control types (None: a plain ControlNet)."""
        return getattr(self.net.config, "num_control_type", None)


def _not_timed(_name: str, _seconds: float) -> None:
    return None


@dataclass
class ControlNets:
    """Loaded ControlNets by reference. Used by the thread that renders. `device` is asked
    on the first load (picking it imports torch); `on_load` hears each load's time.
    `configs`: the config folder a single file of each kind loads with (by
    :attr:`~daemon.models.controlnet_layout.ControlNetLayout.config_name`; the shipped
    ones, or a test's tiny ones)."""

    search: Search
    device: Callable[[], tuple[str, torch.dtype]]
    on_load: Callable[[str, float], None] = _not_timed
    configs: Mapping[str, Path] = field(default_factory=lambda: dict(SHIPPED_CONFIGS))
    _loaded: dict[str, LoadedControlNet] = field(default_factory=dict)
    _widths: dict[str, int] = field(default_factory=dict)

    def width(self, ref: str) -> int:
        """The width of the text ControlNet `ref` attends to (768 SD 1.x, 1024 SD 2.x, 2048
        SDXL), from its config or its file's header: no weights are read. ConfigError (not
        found, not a ControlNet, a pickle not allowed) as :meth:`get`."""
        loaded = self._loaded.get(ref)
        if loaded is not None:
            return int(loaded.net.config.cross_attention_dim)
        if ref not in self._widths:
            found = self._resolve(ref)
            if found.is_file():
                self._widths[ref] = controlnet_layout(found).width
            else:
                self._widths[ref] = int(read_config(found).get("cross_attention_dim") or 0)
        return self._widths[ref]

    def get(self, ref: str) -> LoadedControlNet:
        """ControlNet `ref`, loaded on first use. One that cannot be found or loaded is not
        the input's fault (TransientError: the input waits)."""
        loaded = self._loaded.get(ref)
        if loaded is None:
            loaded = self._loaded[ref] = self._load(ref)
        loaded.last_used = time.monotonic()
        return loaded

    def _resolve(self, ref: str) -> Path:
        try:
            return resolve_controlnet(ref, self.search)
        except ConfigError as exc:
            raise TransientError(f"{exc}; the input waits in the inbox") from exc

    def _load(self, ref: str) -> LoadedControlNet:
        found = self._resolve(ref)
        device, dtype = self.device()
        started = time.monotonic()
        try:
            if found.is_file():
                layout = controlnet_layout(found)
                config = self.configs[layout.config_name]
                net = load_controlnet_file(found, layout, config_dir=config, dtype=dtype)
            else:
                net = load_controlnet_folder(found, dtype=dtype)
        except ConfigError:
            raise  # the file is not what it should be: said as it is, the input waits
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise TransientError(
                f"could not load ControlNet {ref} ({found}): {type(exc).__name__}: {exc}"
            ) from exc
        net = net.to(device).eval()
        seconds = time.monotonic() - started
        logger.info("loaded ControlNet {} ({}) in {:.1f} s", ref, found, seconds)
        self.on_load(ref, seconds)
        return LoadedControlNet(net, model_label(ref, found))

    def unload_idle(self, max_idle: float, *, now: float) -> list[str]:
        idle = [ref for ref, item in self._loaded.items() if now - item.last_used >= max_idle]
        for ref in idle:
            del self._loaded[ref]
        return idle

    def unload_all(self) -> None:
        self._loaded.clear()
        self._widths.clear()

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)
