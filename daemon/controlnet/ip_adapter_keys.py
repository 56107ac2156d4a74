"""The ``ip_adapter:`` key group of a painting task: a reference image steering the painting
through an IP-Adapter (diffusers' ``load_ip_adapter`` weights, our CLIP vision encoder).

``model`` is the adapter's weight file (``ip-adapter_sd15.safetensors`` as h94/IP-Adapter
publishes it; a ``.bin`` only with ``allow_pickle``), found by path or by stem in
``models_dir/ipadapter`` (ComfyUI), ``models_dir/ControlNet`` and the extension's own
``extensions/sd-webui-controlnet/models``; or ``builtin:tiny-ip-adapter``.
``image_encoder`` is the CLIP vision model's folder (``config.json`` + weights, as
h94/IP-Adapter's ``models/image_encoder``), by path or by name in ``models_dir/clip_vision``;
left out, the folder ``image_encoder/`` beside the adapter's file (the built-in's own).
``scale`` is diffusers' and the extension's weight (1.0). The reference image, in order:
``<stem>.reference.png`` beside the input, the image in a clip folder's ``reference/``, else the
profile's ``reference:`` path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class IPAdapterSettings(BaseModel):
    """One IP-Adapter and where its reference image comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # a weight file, a name in the adapter folders, or builtin:tiny-ip-adapter
    image_encoder: str | None = None  # a CLIP vision folder; None: image_encoder/ beside model
    scale: float = Field(1.0, ge=0.0, le=2.0)  # diffusers' set_ip_adapter_scale default
    reference: str | None = None  # the reference image when none comes with the input

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("ip_adapter needs a `model` (e.g. builtin:tiny-ip-adapter)")
        return value.strip()


class IPAdapterKeys(BaseModel):
    """``ip_adapter:``: none by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ip_adapter: IPAdapterSettings | None = None

    @property
    def awaits_reference(self) -> bool:
        """Whether an input waits (up to ``pairing_window``) for its own reference image:
        an adapter with no ``reference:`` in the profile has nothing else to go by."""
        return self.ip_adapter is not None and self.ip_adapter.reference is None
