"""The ``temporal:`` key group: how a clip's frames are kept consistent with each other.

``temporal:`` lists methods that combine; ``[]`` (the default) paints every frame on its own,
as A1111's batch tab does:

* ``key_frame_attention``: each frame's self-attention also attends to the key frame's and
  the previous frame's (Rerender-A-Video's cross-frame attention), in the UNet ``blocks``
  chosen, with a ``strength`` between plain self-attention (0) and full (1); a new key frame
  every ``interval`` frames (0: the first frame only);
* ``flow_init``: the previous result, warped by the optical flow of the source frames, is
  blended into the frame's init image by ``temporal_blend`` where the flow is reliable;
* ``warped_noise``: the initial noise follows the content by the same flow, kept Gaussian
  ("How I Warped Your Noise").

A ControlNet unit with ``loopback: true`` takes the previous result as its image (the
extension's "[Batch Loopback]", TemporalNet's way): that is the fourth method, set on the
unit. Every method needs the previous frame's result, so a clip that uses one is painted a
frame at a time, in order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

TemporalMethod = Literal["key_frame_attention", "flow_init", "warped_noise"]
METHODS: tuple[TemporalMethod, ...] = ("key_frame_attention", "flow_init", "warped_noise")
Blocks = Literal["up", "down", "mid", "all"]
PARTS: dict[str, frozenset[str]] = {
    "up": frozenset({"up"}),
    "down": frozenset({"down"}),
    "mid": frozenset({"mid"}),
    "all": frozenset({"down", "mid", "up"}),
}
"""The UNet parts each ``blocks`` value names."""


def _method_list(value: Any) -> Any:
    if isinstance(value, str):  # "flow_init, warped_noise" or "flow_init+warped_noise"
        value = [part for part in value.replace("+", ",").split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        seen = [str(part).strip().lower() if isinstance(part, str) else part for part in value]
        return tuple(dict.fromkeys(seen))  # order kept, repeats dropped
    return value


class KeyFrameAttention(BaseModel):
    """``key_frame_attention``'s options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocks: Blocks = "up"  # Rerender-A-Video's choice: the up blocks carry the texture
    interval: int = Field(0, ge=0, le=10_000)  # a new key frame every N frames; 0: the first
    strength: float = Field(1.0, ge=0.0, le=1.0)  # 0: plain self-attention; 1: full

    def text(self) -> str:
        """As the infotext writes it (read back by :func:`from_text`)."""
        return f"blocks {self.blocks} interval {self.interval} strength {self.strength:g}"

    @classmethod
    def from_text(cls, text: str) -> KeyFrameAttention:
        words = text.replace('"', "").split()
        return cls.model_validate(dict(zip(words[::2], words[1::2], strict=False)))


class TemporalKeys(BaseModel):
    """``temporal:`` and its options (clip folders and videos only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temporal: Annotated[tuple[TemporalMethod, ...], BeforeValidator(_method_list)] = ()
    key_frame_attention: KeyFrameAttention = KeyFrameAttention()
    temporal_blend: float = Field(0.5, ge=0.0, le=1.0)  # flow_init: the warped result's share

    def uses(self, method: TemporalMethod) -> bool:
        return method in self.temporal
