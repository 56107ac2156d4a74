"""A clip's frame with ``temporal:`` (or a ControlNet loopback unit): what it takes from the
frames before it, decided on the daemon's side and handed to the render as values.

From the clip's kept frames (:mod:`daemon.clips.memory`): the previous frame's source and
result, and the key frame's result. The optical flow between the two source frames (OpenCV
DIS, :mod:`daemon.temporal.flow`) warps the previous result onto this frame (``flow_init``)
and carries the previous frame's initial noise along (``warped_noise``); the key frame's and
the previous frame's results are what the frame's self-attention also attends to
(``key_frame_attention``); the previous result is a loopback unit's control image.

The clip's first frame has no predecessor: it is painted exactly as without ``temporal:``
(a loopback unit sits out). A cut, where too little of the frame follows the flow, blends
nothing and draws fresh noise, and a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from daemon.a1111.imaging import resize_image
from daemon.a1111.sizes import ResizeMode
from daemon.clips.memory import Painted
from daemon.clips.state import Clip
from daemon.config.profiles import Profile
from daemon.render.values import RenderRequest, TemporalInputs
from daemon.temporal.flow import Motion, blend_init, is_cut, measure_motion, warp_image
from daemon.temporal.noise import warped_noise


@dataclass(frozen=True)
class TemporalFrame:
    """What a frame's request takes from its clip's earlier frames."""

    inputs: TemporalInputs
    settings: Profile  # without the loopback units on the clip's first frame
    controls: tuple[Image.Image | None, ...]  # per unit of ``controlnet:``, loopbacks filled
    notes: tuple[str, ...] = ()


def with_temporal(
    request: RenderRequest, clip: Clip, index: int, source: Image.Image
) -> RenderRequest:
    """`request` for frame `index` of `clip` with what it takes from the frames before it."""
    found = temporal_frame(
        request.settings, clip, index, source, size=request.size, seed=request.seed,
        controls=request.controls, masked=request.mask is not None,
    )  # fmt: skip
    return replace(
        request, settings=found.settings, controls=found.controls, temporal=found.inputs,
        notes=(*request.notes, *found.notes),
    )  # fmt: skip


def in_order(settings: Profile) -> bool:
    """Whether a clip's frames take the previous frame's result: painted one at a time."""
    return bool(settings.temporal or settings.loopback_units)


def temporal_frame(
    settings: Profile,
    clip: Clip,
    index: int,
    source: Image.Image,
    *,
    size: tuple[int, int],
    seed: int,
    controls: tuple[Image.Image | None, ...],
    masked: bool = False,
) -> TemporalFrame:
    """Frame `index` of `clip` (its `source` image at its own size), once the frame before
    it is written. `seed`: the frame's; its fresh noise (where the flow brings none) is drawn
    from it."""
    clip.settled()
    mode = settings.resize_mode
    fitted = resize_image(source, ResizeMode.JUST_RESIZE if mode is ResizeMode.LATENT_UPSCALE
                          else mode, *size)  # fmt: skip
    memory = clip.memory
    previous = memory.previous(index)
    key = memory.key()
    if key is not None and key.index >= index:
        key = None  # this frame is the key frame, painted again after a crash
    interval = settings.key_frame_attention.interval
    becomes_key = key is None or (interval > 0 and index - key.index >= interval)
    motion = None
    notes = []
    resized = previous is not None and previous.source.size != fitted.size
    if resized:  # frames of another size: no flow between them, as at a cut
        notes.append(f"frame {index} has another size than the frame before it: nothing of "
                     "that frame is blended in")  # fmt: skip
    elif previous is not None and (settings.uses("flow_init") or settings.uses("warped_noise")):
        motion = measure_motion(previous.source, fitted)
    cut = resized or (motion is not None and is_cut(motion))
    if cut and motion is not None:
        notes.append(
            f"frame {index} is a cut ({motion.reliable_share:.0%} of it follows the previous "
            "frame): nothing of the previous frame is blended in"
        )
    if masked and settings.uses("flow_init") and previous is not None:
        # An inpainting keeps the unmasked part as the frame's own: a blended init would
        # show there. The other methods act inside the mask only by nature.
        notes.append("flow_init does not apply to inpainting; the other methods do")
    inputs = TemporalInputs(
        index=index,
        source=fitted,
        key=becomes_key,
        init=None if masked else _flow_init(settings, fitted, previous, motion, cut=cut),
        noise=_noise(settings, previous, motion, seed, index),
        record_noise=settings.uses("warped_noise"),
        attend_to=_attend_to(settings, key, previous, cut=cut, size=fitted.size),
    )
    own, with_units = _loopback(settings, previous, controls)
    return TemporalFrame(inputs, with_units, own, tuple(notes))


def _flow_init(
    settings: Profile,
    fitted: Image.Image,
    previous: Painted | None,
    motion: Motion | None,
    *,
    cut: bool,
) -> Image.Image | None:
    if not settings.uses("flow_init") or previous is None or motion is None or cut:
        return None
    warped = warp_image(_fitted(previous.result, fitted.size), motion.backward)
    return blend_init(fitted, warped, motion.reliable, settings.temporal_blend)


def _noise(
    settings: Profile, previous: Painted | None, motion: Motion | None, seed: int, index: int
) -> np.ndarray | None:
    if not settings.uses("warped_noise") or previous is None or previous.noise is None:
        return None
    if motion is None:  # frames of another size: the frame draws its own noise
        return None
    # Fresh noise (disoccluded, or a cut) from the frame's own seed and number: the same
    # frame draws the same noise in every run.
    return warped_noise(previous.noise, motion, (seed * 1_000_003 + index) % 2**63)


def _attend_to(
    settings: Profile,
    key: Painted | None,
    previous: Painted | None,
    *,
    cut: bool,
    size: tuple[int, int],
) -> tuple[Image.Image, ...]:
    if not settings.uses("key_frame_attention") or settings.key_frame_attention.strength == 0:
        return ()
    frames = [key] if key is not None else []
    if previous is not None and not cut and (key is None or previous.index != key.index):
        frames.append(previous)
    return tuple(_fitted(frame.result, size) for frame in frames)


def _loopback(
    settings: Profile, previous: Painted | None, controls: tuple[Image.Image | None, ...]
) -> tuple[tuple[Image.Image | None, ...], Profile]:
    """The units' own images with the loopback units' filled by the previous result; on the
    clip's first frame, the settings without the loopback units (nothing to loop back yet)."""
    positions = settings.loopback_units
    if not positions:
        return controls, settings
    if previous is None:
        units = tuple(
            unit.model_copy(update={"enabled": False}) if n in positions else unit
            for n, unit in enumerate(settings.controlnet)
        )
        return controls, settings.model_copy(update={"controlnet": units})
    own = list(controls) + [None] * (len(settings.controlnet) - len(controls))
    for position in positions:
        own[position] = previous.result
    return tuple(own), settings


def _fitted(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An earlier result at the painting's size (a clip whose frames change size)."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
