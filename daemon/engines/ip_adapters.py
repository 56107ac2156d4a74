"""The warm IP-Adapters: weights and image encoders loaded once, reference embeddings
computed once per reference image.

An adapter is loaded as diffusers' ``load_ip_adapter`` reads it (a ``.safetensors`` split
into ``image_proj`` and ``ip_adapter``; a pickle only with ``allow_pickle``) and made into
diffusers' layers once per UNet it serves: the image projection by diffusers' own
``_convert_ip_adapter_image_proj_to_diffusers``, an ``IPAdapterAttnProcessor2_0`` per
cross-attention layer as ``_convert_ip_adapter_attn_to_diffusers`` makes them (that one
remakes the self-attention processors too, which we must leave alone). It is never loaded
*into* the warm pipeline: :mod:`daemon.engines.ip_adapter_step` puts its layers in for one
call and takes them out after, so a profile without ``ip_adapter`` on the same warm model
paints as if no adapter had ever been there.

The reference's embedding (the CLIP vision encoder's projected image embedding) is kept by
the image's content hash, so the frames of a clip, which share their reference, encode it
once: :attr:`IPAdapters.encoded` counts the encodings.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from PIL import Image

from daemon.engines.clip_vision_file import load_clip_vision_file
from daemon.engines.controlnet_models import legacy_hash
from daemon.errors import ConfigError, TransientError, is_out_of_memory
from daemon.models.builtin import BUILTIN_PREFIX
from daemon.models.checkpoints import is_pickle
from daemon.models.ip_adapter_layout import cross_attention_layers
from daemon.models.resolve import Search, resolve_image_encoder, resolve_ip_adapter

if TYPE_CHECKING:
    import torch

EMBEDDINGS_KEPT = 64
"""Reference embeddings kept (a few KB each): one per clip or reference in use."""


@dataclass(frozen=True)
class Converted:
    """An adapter's layers made for one UNet: its attention processors, by the name of the
    cross-attention layer each goes on, and its image projection."""

    processors: dict[str, Any]
    projection: Any  # diffusers' MultiIPAdapterImageProjection


@dataclass
class LoadedIPAdapter:
    ref: str
    state: dict[str, dict[str, Any]]  # {"image_proj": …, "ip_adapter": …}, as diffusers loads
    encoder: Any  # transformers' CLIPVisionModelWithProjection, on the device
    encoder_ref: str
    label: str  # ``name [hash]``, as the extension shows a model
    module: str  # the extension's preprocessor name for this encoder
    converted: weakref.WeakKeyDictionary[Any, Converted] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    last_used: float = 0.0

    @property
    def width(self) -> int:
        """The cross-attention width the adapter was made for (its 4 image tokens')."""
        width: int = self.state["image_proj"]["proj.weight"].shape[0] // 4
        return width

    def for_unet(self, unet: Any) -> Converted:
        """The adapter's layers for `unet`, converted on first use (by diffusers' code)."""
        found = self.converted.get(unet)
        if found is None:
            from diffusers.models.embeddings import MultiIPAdapterImageProjection

            processors = _attention_processors(unet, self.state["ip_adapter"])
            projection = MultiIPAdapterImageProjection(
                [
                    unet._convert_ip_adapter_image_proj_to_diffusers(
                        self.state["image_proj"], low_cpu_mem_usage=False
                    )
                ]
            )
            for layer in (*processors.values(), projection):
                layer.to(device=unet.device, dtype=unet.dtype)
            found = self.converted[unet] = Converted(processors, projection)
        return found


def _attention_processors(unet: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """diffusers' IP-Adapter attention processors for `unet`'s cross-attention layers, with
    the file's weights, as ``_convert_ip_adapter_attn_to_diffusers`` makes them; the
    self-attention processors are left alone (diffusers' conversion remakes them too, which
    fails on a sliced one and would drop ``reference_only``'s)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    tokens = 4  # a plain IP-Adapter's image tokens (the only kind run: see _adapter_state)
    processors = {}
    for name, hidden, key in cross_attention_layers(unet):
        processor = IPAdapterAttnProcessor2_0(
            hidden, unet.config.cross_attention_dim, scale=1.0, num_tokens=(tokens,)
        )
        processor.load_state_dict(
            {"to_k_ip.0.weight": weights[f"{key}.to_k_ip.weight"],
             "to_v_ip.0.weight": weights[f"{key}.to_v_ip.weight"]}
        )  # fmt: skip
        processors[name] = processor
    return processors


def extension_module(encoder: Any) -> str:
    """The extension's preprocessor for this encoder: ``ip-adapter_clip_sdxl`` for
    OpenCLIP bigG (1280-wide projection), ``ip-adapter_clip_sd15`` (ViT-H) otherwise."""
    width = encoder.config.projection_dim
    return "ip-adapter_clip_sdxl" if width == 1280 else "ip-adapter_clip_sd15"


def _not_timed(_name: str, _seconds: float) -> None:
    return None


@dataclass
class IPAdapters:
    """Loaded IP-Adapters by reference, and reference embeddings by image. Used by the thread
    that renders; `device` is asked on the first load."""

    search: Search
    device: Callable[[], tuple[str, torch.dtype]]
    on_load: Callable[[str, float], None] = _not_timed
    encoded: int = 0  # reference images encoded so far (the rest came from the cache)
    _loaded: dict[tuple[str, str | None], LoadedIPAdapter] = field(default_factory=dict)
    _embeddings: dict[tuple[str, str], Any] = field(default_factory=dict)

    def get(self, ref: str, encoder: str | None) -> LoadedIPAdapter:
        """Adapter `ref` with image encoder `encoder`, loaded on first use. A file that
        cannot be found or loaded is not the input's fault (TransientError: it waits)."""
        key = (ref, encoder)
        loaded = self._loaded.get(key)
        if loaded is None:
            loaded = self._loaded[key] = self._load(ref, encoder)
        loaded.last_used = time.monotonic()
        return loaded

    def embedding(self, adapter: LoadedIPAdapter, image: Image.Image) -> Any:
        """The projected CLIP image embedding of `image`, (1, width), computed once per
        image content and encoder."""
        digest = hashlib.sha256(image.tobytes() + repr((image.mode, image.size)).encode())
        key = (adapter.encoder_ref, digest.hexdigest())
        found = self._embeddings.get(key)
        if found is None:
            found = self._embeddings[key] = _encode(adapter.encoder, image)
            self.encoded += 1
            while len(self._embeddings) > EMBEDDINGS_KEPT:
                del self._embeddings[next(iter(self._embeddings))]
        return found

    def _load(self, ref: str, encoder_ref: str | None) -> LoadedIPAdapter:
        from transformers import CLIPVisionModelWithProjection

        try:
            file = resolve_ip_adapter(ref, self.search)
            encoder_folder = resolve_image_encoder(encoder_ref, file, self.search)
        except ConfigError as exc:
            raise TransientError(f"{exc}; the input waits in the inbox") from exc
        device, dtype = self.device()
        started = time.monotonic()
        try:
            state = _adapter_state(file)
            encoder: Any
            if encoder_folder.is_file():
                encoder = load_clip_vision_file(encoder_folder, dtype=dtype)
            else:
                encoder = CLIPVisionModelWithProjection.from_pretrained(
                    encoder_folder, dtype=dtype, local_files_only=True
                )
            encoder = encoder.to(device).eval()
        except Exception as exc:
            if is_out_of_memory(exc) or isinstance(exc, ConfigError):
                raise
            raise TransientError(
                f"could not load IP-Adapter {ref} ({file}, image encoder {encoder_folder}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        seconds = time.monotonic() - started
        logger.info("loaded IP-Adapter {} in {:.1f} s", ref, seconds)
        self.on_load(ref, seconds)
        name = ref[len(BUILTIN_PREFIX) :] if ref.startswith(BUILTIN_PREFIX) else file.stem
        return LoadedIPAdapter(
            ref, state, encoder, str(encoder_folder), f"{name} [{legacy_hash(file)}]",
            extension_module(encoder),
        )  # fmt: skip

    def unload_idle(self, max_idle: float, *, now: float) -> list[str]:
        idle = [key for key, item in self._loaded.items() if now - item.last_used >= max_idle]
        for key in idle:
            del self._loaded[key]
        return [ref for ref, _ in idle]

    def unload_all(self) -> None:
        self._loaded.clear()
        self._embeddings.clear()

    @property
    def loaded(self) -> list[str]:
        return [ref for ref, _ in self._loaded]


def _adapter_state(file: Path) -> dict[str, dict[str, Any]]:
    """The file's weights as diffusers' ``load_ip_adapter`` reads them."""
    if is_pickle(file):  # allowed: the resolver refused it otherwise
        from diffusers.models.model_loading_utils import load_state_dict

        state: dict[str, dict[str, Any]] = load_state_dict(str(file))
    else:
        from safetensors import safe_open

        state = {"image_proj": {}, "ip_adapter": {}}
        with safe_open(str(file), framework="pt", device="cpu") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is no mapping)
                part, _, name = key.partition(".")
                if part in state:
                    state[part][name] = weights.get_tensor(key)
    if not state.get("image_proj") or not state.get("ip_adapter"):
        raise ValueError(f"{file.name} holds no IP-Adapter (no image_proj.* / ip_adapter.* keys)")
    if "proj.weight" not in state["image_proj"]:
        # Plus, full-face and FaceID adapters take the encoder's hidden states (or face
        # embeddings), not its projected embedding: not made here yet.
        raise ConfigError(
            f"IP-Adapter {file.name} is a Plus, full-face or FaceID adapter, which img2imgd "
            "does not run yet: use a plain one (ip-adapter_sd15, ip-adapter_sdxl, "
            "ip-adapter_sdxl_vit-h)"
        )
    return state


def _encode(encoder: Any, image: Image.Image) -> Any:
    """CLIP's preprocessing (resize, centre crop, normalise) at the encoder's size, then its
    projected image embedding, as diffusers' ``encode_image`` computes it."""
    import torch
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    processor = CLIPImageProcessor(size=size, crop_size=size)
    pixels = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
    with torch.inference_mode():
        return encoder(pixels.to(device=encoder.device, dtype=encoder.dtype)).image_embeds
