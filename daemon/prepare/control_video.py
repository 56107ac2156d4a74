"""A video's control videos: ``<stem>.control.mp4`` (unit 0's) or ``<stem>.control-<n>.mp4``
(unit n's) beside it.

Frame i of the video is steered by frame i of its control video, so the two must have as
many frames: a control video of another length fails its input with a report naming both
counts (the video and its companions go to ``_failed`` together: nothing is lost). The
control frames are decoded in step with the video's, one at a time, never all at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from daemon.a1111.imaging import flatten_on_white
from daemon.config.profiles import Profile
from daemon.errors import InputError, TransientError
from daemon.intake.jobs import Job
from daemon.intake.names import is_video
from daemon.media.video import VideoInfo, read_frames

ControlVideos = tuple[tuple[int, Path], ...]
"""(unit, its control video), by unit."""


def control_videos(
    job: Job, settings: Profile, info: VideoInfo, *, probe: Callable[[Path], VideoInfo]
) -> ControlVideos:
    """The control videos of `job` (a video of `info`) for enabled units, each checked to
    have one frame per frame of the video. (One for a unit the profile lacks is said by
    :func:`daemon.prepare.controls.read_controls` and archived with the video.)"""
    units = settings.controlnet
    found = []
    for unit, path in job.companions.controls:
        if not is_video(path) or unit >= len(units) or not units[unit].enabled:
            continue
        frames = probe(path).frames
        if frames != info.frames:
            raise InputError(
                f"{path.name} has {frames} frames but {job.image.name} has {info.frames}: a "
                "control video steers the frame of the same number, so it needs as many"
            )
        found.append((unit, path))
    return tuple(found)


def frame_controls(
    still: tuple[Image.Image | None, ...], videos: ControlVideos
) -> Iterator[tuple[Image.Image | None, ...]]:
    """Frame after frame, each unit's control image: its control video's frame of that
    number, else its still image (``<stem>.control.png``: every frame's), else None."""
    if not videos:
        yield from itertools.repeat(still)
        return
    width = max(len(still), 1 + max(unit for unit, _ in videos))
    streams = [(unit, read_frames(path)) for unit, path in videos]
    try:
        while True:
            controls = [*still, *[None] * (width - len(still))]
            for unit, frames in streams:
                frame = next(frames, None)
                if frame is None:  # (as long as the video: checked when planned)
                    return
                controls[unit] = flatten_on_white(frame)
            yield tuple(controls)
    except OSError as exc:
        names = ", ".join(path.name for _, path in videos)
        raise TransientError(f"could not read {names}: {exc.strerror or exc}") from exc
