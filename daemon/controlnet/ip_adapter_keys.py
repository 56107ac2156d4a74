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

``reference: key_frame`` (a reserved value; a file of that name is ``./key_frame``) refers every
frame of a clip folder or a video to the clip's key frame as painted (the image its colour
correction matches to, kept by the clip's state): the key frame itself paints without the
adapter (there is nothing to refer to yet), every frame after it with the key frame as its
reference, encoded once. A reference image that comes with the input still wins, for every
frame. A single image (not in a clip) has no key frame: it paints without the adapter, with
a note saying why (the input is not at fault, and failing it would lose nothing but time).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_FRAME = "key_frame"  # `reference:`'s reserved value: a clip's key frame, as painted


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

    @field_validator("reference")
    @classmethod
    def _key_frame_spelled_right(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("ip_adapter.reference is empty: give an image's path or key_frame")
        # `key-frame`, `KeyFrame`, `keyframe`: meant as the reserved value, not as a file name
        if value != KEY_FRAME and re.fullmatch(r"key[-_ ]?frame", value.strip(), re.IGNORECASE):
            raise ValueError(
                f"ip_adapter.reference {value!r}: write {KEY_FRAME} for the clip's key frame "
                f"(or ./{value} for a file of that name)"
            )
        return value

    @property
    def refers_to_key_frame(self) -> bool:
        """Whether a clip's frames take the clip's key frame, as painted, as their reference."""
        return self.reference == KEY_FRAME


class IPAdapterKeys(BaseModel):
    """``ip_adapter:``: none by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ip_adapter: IPAdapterSettings | None = None

    @property
    def awaits_reference(self) -> bool:
        """Whether an input waits (up to ``pairing_window``) for its own reference image:
        an adapter with no ``reference:`` in the profile has nothing else to go by."""
        return self.ip_adapter is not None and self.ip_adapter.reference is None
