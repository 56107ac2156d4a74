"""What crosses the seam between the daemon and the renderer: plain, frozen, picklable values.

*prepare* turns a job into a :class:`RenderRequest` holding the decoded inputs and every
resolved setting; *render* turns requests into :class:`RenderResult` values; *deliver* writes
them. Neither value holds a path to read, an open file or a clock reading, so the same render
call can run in this process, in another one, or on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from daemon.a1111.color import ColorReference, apply_color_correction
from daemon.config.profiles import Profile
from daemon.engines.interrogators import Interrogation


@dataclass(frozen=True)
class TemporalInputs:
    """What a frame of a clip takes from the frames before it (``temporal:``, ControlNet
    loopback; :mod:`daemon.prepare.temporal`), as values: no clip state travels."""

    index: int  # the frame's number in its clip
    source: Image.Image  # the source frame at the processing size: the next frame's flow
    key: bool = False  # the frame is (or becomes) the clip's key frame
    init: Image.Image | None = None  # flow_init: the init image, the warped result blended in
    noise: np.ndarray | None = None  # warped_noise: the initial noise, (C, h, w) float32
    record_noise: bool = False  # warped_noise: return the initial noise used, for the next
    attend_to: tuple[Image.Image, ...] = ()  # key_frame_attention: key and previous results


@dataclass(frozen=True)
class RenderRequest:
    """One input, ready to render: its task (``settings.task``) says whether to paint or to
    interrogate."""

    label: str  # the input, as people read it (for log lines and notes)
    settings: Profile  # profile + the input's parameters + its YAML, merged
    image: Image.Image  # RGB at the input's own size, sketch already laid on
    mask: Image.Image | None = None  # L at the image's size; white = repaint
    size: tuple[int, int] = (0, 0)  # the processing size (A1111's "Size")
    seed: int = 0  # drawn already (never -1)
    colors: ColorReference | None = None  # colour correction towards these (a clip's reference)
    # Per unit of ``settings.controlnet``, its own control image (RGB, any size); None or
    # past the end: the unit uses the input.
    controls: tuple[Image.Image | None, ...] = ()
    reference: Image.Image | None = None  # ``ip_adapter``'s reference image (RGB, any size)
    references: tuple[Image.Image, ...] = ()  # the edit task's reference images, in order
    prompt_image: Image.Image | None = None  # what {interrogate}/{tags} describe (None: image)
    parameters_model_hash: str | None = None  # use_png_info: the model the parameters name
    alone: bool = False  # never in a batch: a live input, which a newer version may stop
    notes: tuple[str, ...] = ()  # what preparing found that the user should know
    temporal: TemporalInputs | None = None  # a clip's frame with temporal methods
    alpha: Image.Image | None = None  # keep_alpha: the input's alpha (L, the input's size)


@dataclass(frozen=True)
class RenderResult:
    """What a request gave: images with their parameter text, or an interrogation; with
    the request's settings and notes, which is all *deliver* needs besides its job."""

    settings: Profile  # the request's (its task says what the result delivers)
    images: tuple[Image.Image, ...] = ()
    infotexts: tuple[str, ...] = ()  # A1111's parameters, one per image
    controls: tuple[Image.Image, ...] = ()  # save_control: each enabled unit's control image
    seeds: tuple[int, ...] = ()
    prompt: str = ""  # the prompts as painted ({interrogate}/{tags} filled in)
    negative_prompt: str = ""
    interrogation: Interrogation | None = None
    notes: tuple[str, ...] = ()  # the request's notes, then the render's: for the log
    # Colour correction still to do, towards this reference: deliver does it (on the writer's
    # thread), so that the renderer paints the next frame meanwhile.
    colors: ColorReference | None = None
    noise: np.ndarray | None = None  # warped_noise: the initial noise used, (C, h, w)
    alpha: Image.Image | None = None  # keep_alpha: the results' alpha (L, at their size)


def colors_corrected(result: RenderResult) -> RenderResult:
    """`result` with its colour correction done, if it has one to do."""
    if result.colors is None:
        return result
    images = tuple(apply_color_correction(result.colors, image) for image in result.images)
    return replace(result, images=images, colors=None)
