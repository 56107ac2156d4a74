"""Video in and out: split a clip into RGB frames, join repainted frames back into a clip.

Pure media I/O on PyAV (FFmpeg's libraries, bundled with the wheel: no system ffmpeg). The
daemon probes a dropped clip, repaints the frames :func:`read_frames` yields and hands the
results to :func:`write_video`, which keeps the frame count, the average frame rate and the
original sound.

Reading
    Any container and codec FFmpeg decodes is accepted (the suffix does not matter; the
    content decides). The first video stream is used; cover art (an attached picture) is
    not a video, nor is a still image. Frames come out in display order, every frame once,
    as RGB images, upright: a rotation recorded in the file (phones do this) is applied to
    the pixels in quarter turns (mirroring flags are ignored), and :class:`VideoInfo`
    reports the upright size. Variable frame rate clips keep every frame but are written
    back at their constant average rate. :func:`probe` decodes the whole stream to count
    frames exactly: Matroska stores no count and edit lists make a stored count wrong.
    Decoding costs milliseconds per frame, nothing next to repainting it.

    FFmpeg decodes a file cut short without complaint, so before decoding, the container's
    own record of its length is checked (MP4/MOV box sizes, the Matroska/WebM segment size,
    GIF's block chain): a file still being copied is reported, not taken for a short clip.

Writing (the target's suffix picks the format)
    ========  ===========================  ==================================================
    suffix    video                        audio
    ========  ===========================  ==================================================
    .mp4      H.264 (libx264, crf 18)      AAC or MP3 copied as is, else re-encoded to AAC
    .mov      H.264 (libx264, crf 18)      AAC, MP3 or ALAC copied as is, else AAC
    .mkv      H.264 (libx264, crf 18)      copied as is when Matroska takes the codec (nearly
                                           all), else AAC
    .webm     VP9 (libvpx-vp9, crf 24)     Opus or Vorbis copied as is, else Opus
    .gif      GIF, a median-cut palette    none (GIF has no sound)
              per frame
    ========  ===========================  ==================================================

    H.264 and VP9 are written as 8-bit 4:2:0 (yuv420p), what every player decodes, in
    BT.709 limited range and tagged so. 4:2:0 needs even dimensions: an odd width or height
    is padded by one pixel that repeats the last column or row (nothing is cropped). GIF
    stores delays in hundredths of a second, so a rate that does not divide 100 (12 fps is
    8.33 cs) gets alternating delays (8, 8, 9 cs) whose average is the rate. Median cut
    costs about 0.2 s per 512x512 frame; it gives clearly better palettes than octree.
    Frames with alpha are written without it.

    Frames are timestamped 0, 1, 2… in a time base of 1/fps, so the average rate read back
    is the rate given. Audio is taken from ``audio_from`` (the original clip) with its
    timing relative to the first video frame kept, and is muxed in step with the video so
    the file is interleaved. Audio that starts after the last video frame ends is dropped:
    the sound ends within one audio packet (about 20-40 ms) after the picture. Frames are
    consumed one at a time; nothing is held in memory.

    The file is written to ``.<name>.<pid>.tmp`` beside the target (a dotfile, so
    watchers ignore it), flushed to disk and renamed into place only when complete; on any
    error the temporary file is removed.

Errors
    A file that is not a readable video (not a video, truncated, no video stream) raises
    :class:`~daemon.errors.UnreadableInput` naming it: that is the file's fault. ``OSError``
    from the storage (EIO, a vanished file, permissions) propagates unchanged: that is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from daemon.errors import UnreadableInput
from daemon.media.video_checks import missing_tail

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a clip."""

    frames: int  # exact: counted by decoding
    fps: Fraction  # average frame rate of the video stream
    width: int  # upright size, after any rotation recorded in the file
    height: int
    has_audio: bool
    codec: str  # FFmpeg's name of the video codec, e.g. "h264"
    duration: float | None  # seconds of video, if the timestamps tell


# --------------------------------------------------------------------------- reading


def probe(path: Path) -> VideoInfo:
    """Facts about the video at ``path``, decoding it once to count frames exactly.

    Raises :class:`UnreadableInput` when the file is not a complete, readable video.
    """
    with _opened(path) as (container, stream):
        count, rotation = 0, 0
        first_pts: int | None = None
        last_pts: int | None = None
        last_duration = 0
        for frame in _decoded(container, stream, path):
            if count == 0:
                rotation, first_pts = frame.rotation, frame.pts
            last_pts, last_duration = frame.pts, frame.duration
            count += 1
        time_base = stream.time_base or Fraction(1)
        span = None
        if first_pts is not None and last_pts is not None:
            span = (last_pts - first_pts) * time_base
        # The whole run of the video, when the last frame says how long it lasts.
        measured = (
            span + last_duration * time_base if span is not None and last_duration > 0 else None
        )
        fps = _average_rate(stream, container, count, measured)
        if measured is None and span is not None:
            measured = span + 1 / fps  # the last frame lasts one average frame
        width, height = stream.codec_context.width, stream.codec_context.height
        if _quarter_turns(rotation) % 2:
            width, height = height, width
        return VideoInfo(
            frames=count,
            fps=fps,
            width=width,
            height=height,
            has_audio=len(container.streams.audio) > 0,
            codec=stream.codec_context.codec.canonical_name,  # "av1", not "libdav1d"
            duration=float(measured) if measured is not None else None,
        )


def estimated_frames(path: Path) -> int | None:
    """How many frames the video's headers say it has, without decoding it (a queued video's
    share of the work, for ``status``); None when they do not say or the file is unreadable.
    :func:`probe` counts them exactly when the video is painted."""
    import av

    try:
        with av.open(str(path), "r") as container:
            stream = _video_stream(container, path)
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if container.duration and rate:  # in microseconds
                return max(1, round(container.duration / 1_000_000 * rate))
    except (av.FFmpegError, OSError, UnreadableInput):
        return None
    return None


def read_frames(path: Path) -> Iterator[Image.Image]:
    """Every frame of the clip once, in display order, as upright RGB images.

    Lazy: one frame is decoded per step. Raises :class:`UnreadableInput` when the file is
    not a readable video, possibly after yielding the frames before a defect.
    """
    with _opened(path) as (container, stream):
        for frame in _decoded(container, stream, path):
            yield _upright(frame.to_image(), frame.rotation)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tuple[InputContainer, VideoStream]]:
    """The clip's container and video stream, once its structure shows it is complete."""
    import av

    with read_errors(path):
        missing = missing_tail(path)
        if missing:
            raise UnreadableInput(f"{path.name} is truncated: {missing}.")
        with av.open(str(path), "r") as container:
            yield container, _video_stream(container, path)


@contextlib.contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Turn FFmpeg's complaints about the file into UnreadableInput; storage errors pass."""
    import av

    try:
        yield
    except av.FFmpegError as exc:
        if isinstance(exc, OSError):
            raise  # EIO, ENOENT, EACCES…: the storage's fault, not the file's
        raise UnreadableInput(
            f"{path.name} is not a readable video ({exc.strerror or exc}); "
            "export it again and drop it again."
        ) from exc


def _video_stream(container: InputContainer, path: Path) -> VideoStream:
    import av

    name = container.format.name
    if name == "image2" or name.endswith("_pipe"):
        # FFmpeg opens a PNG or JPEG as a one-frame "video"; that is an image, not a clip.
        raise UnreadableInput(f"{path.name} is a still image, not a video.")
    for stream in container.streams.video:
        # Cover art in a music file is a video stream flagged as an attached picture.
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise UnreadableInput(f"{path.name} has no video stream.")


def _decoded(container: InputContainer, stream: VideoStream, path: Path) -> Iterator[VideoFrame]:
    """The stream's frames; a stream without any is no video."""
    stream.thread_type = "AUTO"  # frame threads: decoding is the cost of probe
    count = 0
    for frame in container.decode(stream):
        count += 1
        yield frame
    if count == 0:
        raise UnreadableInput(f"{path.name} contains no video frames.")


def _average_rate(
    stream: VideoStream, container: InputContainer, count: int, duration: Fraction | None
) -> Fraction:
    rate = stream.average_rate
    if duration and (container.format.name == "gif" or not rate):
        # GIF keeps per-frame delays in centiseconds and FFmpeg's average for it is a
        # guess; frames over total time is the true average.
        return count / duration
    return Fraction(rate or stream.guessed_rate or 25)


def _quarter_turns(rotation: float) -> int:
    """FFmpeg's display rotation (degrees counterclockwise) as 0-3 quarter turns."""
    return round(rotation / 90) % 4


def _upright(image: Image.Image, rotation: float) -> Image.Image:
    """Turn the decoded picture the way the file asks players to show it."""
    turns = _quarter_turns(rotation)
    if turns == 1:
        return image.transpose(Image.Transpose.ROTATE_90)
    if turns == 2:
        return image.transpose(Image.Transpose.ROTATE_180)
    if turns == 3:
        return image.transpose(Image.Transpose.ROTATE_270)
    return image
