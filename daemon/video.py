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
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from daemon.errors import UnreadableInput
from daemon.video_checks import missing_tail

if TYPE_CHECKING:
    from av.audio.frame import AudioFrame
    from av.audio.stream import AudioStream
    from av.container import InputContainer, OutputContainer
    from av.packet import Packet
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".gif")

# Sample rate of the test clip's tone, and of re-encoded sound the encoder cannot take at
# its own rate (Opus runs only at 48 kHz and a few fractions of it).
_AUDIO_RATE = 48_000


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


@dataclass(frozen=True)
class _Format:
    """How :func:`write_video` writes one suffix."""

    muxer: str
    video_codec: str
    video_options: tuple[tuple[str, str], ...]
    audio_codec: str | None  # what other audio is re-encoded to; None: no audio at all
    copy_audio: frozenset[str] | None  # codecs remuxed as they are; None: all the muxer takes
    container_options: tuple[tuple[str, str], ...] = ()

    @property
    def palette(self) -> bool:
        return self.video_codec == "gif"


# crf 18 is visually lossless for H.264; VP9's scale differs (24 is comparable). "b": "0"
# makes libvpx use constant quality instead of capping the bitrate. cpu-used 2 and row-mt
# keep VP9 tolerable on a CPU without hurting quality much.
_X264 = (("crf", "18"), ("preset", "medium"))
_VP9 = (("crf", "24"), ("b", "0"), ("deadline", "good"), ("cpu-used", "2"), ("row-mt", "1"))
# faststart moves the index to the front so players can start before the whole file loads.
_FASTSTART = (("movflags", "+faststart"),)

_FORMATS = {
    ".mp4": _Format("mp4", "libx264", _X264, "aac", frozenset({"aac", "mp3"}), _FASTSTART),
    ".mov": _Format("mov", "libx264", _X264, "aac", frozenset({"aac", "mp3", "alac"}), _FASTSTART),
    ".mkv": _Format("matroska", "libx264", _X264, "aac", None),
    ".webm": _Format("webm", "libvpx-vp9", _VP9, "libopus", frozenset({"opus", "vorbis"})),
    ".gif": _Format("gif", "gif", (), None, frozenset()),
}


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

    with _reading(path):
        missing = missing_tail(path)
        if missing:
            raise UnreadableInput(f"{path.name} is truncated: {missing}.")
        with av.open(str(path), "r") as container:
            yield container, _video_stream(container, path)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
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


# --------------------------------------------------------------------------- writing


class _AudioFeed(Protocol):
    """An audio track being muxed in step with the video."""

    def write_until(self, end: Fraction) -> None:
        """Mux the audio that starts before ``end`` seconds of video."""

    def finish(self, end: Fraction) -> None:
        """Mux what is left before ``end`` seconds and flush any encoder."""


# Adds its stream to the output (before the first packet) and returns the feed, or None.
_AudioFactory = Callable[["OutputContainer", _Format, contextlib.ExitStack], "_AudioFeed | None"]


def write_video(
    frames: Iterable[Image.Image],
    target: Path,
    *,
    fps: Fraction,
    audio_from: Path | None = None,
) -> None:
    """Encode ``frames`` into ``target`` at exactly ``fps``, with the sound of ``audio_from``.

    The suffix of ``target`` picks the format (see the module docstring). Frame ``i`` is
    shown at ``i / fps`` seconds; all frames must have the size of the first (an odd width
    or height is padded by one repeated pixel for H.264 and VP9). ``audio_from`` is usually
    the original clip: its first audio track is copied as is when the target format takes
    its codec, else re-encoded (more than two channels are then mixed down to stereo); a
    clip without audio, or a GIF target, gives a silent result. ``frames`` is consumed
    lazily. Raises ``ValueError`` for an unknown suffix, no frames or mismatched sizes, and
    :class:`UnreadableInput` when ``audio_from`` cannot be read; the target is then
    untouched and no temporary file remains.
    """
    fmt = _format_for(target)
    rate = _rate(fps)

    def source_audio(
        output: OutputContainer, fmt: _Format, stack: contextlib.ExitStack
    ) -> _AudioFeed | None:
        if audio_from is None or fmt.audio_codec is None:
            return None
        return _source_audio(output, fmt, audio_from, stack)

    _write(frames, target, rate, fmt, source_audio)


def make_test_clip(
    path: Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    fps: Fraction = Fraction(12),
    audio: bool = True,
) -> None:
    """Write a small deterministic clip: :func:`pattern_frame` pictures and a 440 Hz tone.

    The tone (AAC, or Opus in WebM) lasts exactly as long as the video; GIF gets none.
    """
    fmt = _format_for(path)

    def tone(
        output: OutputContainer, fmt: _Format, stack: contextlib.ExitStack
    ) -> _AudioFeed | None:
        del stack  # the tone needs no source to close
        if not audio or fmt.audio_codec is None:
            return None
        return _ToneAudio(output, fmt.audio_codec)

    pictures = (pattern_frame(index, frames=frames, size=size) for index in range(frames))
    _write(pictures, path, _rate(fps), fmt, tone)


def pattern_frame(index: int, *, frames: int, size: tuple[int, int]) -> Image.Image:
    """Frame ``index`` of :func:`make_test_clip`'s clip.

    A colour gradient whose green rises with the frame number and a white square that
    moves from left to right: neighbouring frames stay tellable apart after lossy
    compression, so tests can check order by finding the nearest pattern.
    """
    width, height = size
    progress = index / max(frames - 1, 1)
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = (xs * 255 // max(width - 1, 1)).astype(np.uint8)
    pixels[..., 1] = round(30 + 190 * progress)
    pixels[..., 2] = (ys * 255 // max(height - 1, 1)).astype(np.uint8)
    side = max(min(width, height) // 3, 1)
    left = round((width - side) * progress)
    top = (height - side) // 2
    pixels[top : top + side, left : left + side] = 255
    return Image.fromarray(pixels, "RGB")


def _rate(fps: Fraction | float) -> Fraction:
    """A float is taken as the nearest simple fraction (29.97 -> 2997/100)."""
    if isinstance(fps, float):
        return Fraction(fps).limit_denominator(100_000)
    return Fraction(fps)


def _format_for(target: Path) -> _Format:
    fmt = _FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot write {target.name}: a video must end in one of {', '.join(VIDEO_SUFFIXES)}"
        )
    return fmt


def _write(
    frames: Iterable[Image.Image],
    target: Path,
    fps: Fraction,
    fmt: _Format,
    audio: _AudioFactory,
) -> None:
    """Encode to a temporary file beside ``target``, then rename it into place."""
    if fps <= 0:
        raise ValueError(f"cannot write {target.name}: the frame rate must be positive, not {fps}")
    # The same temporary name as every output (outputs.atomic_writer), so that recovery
    # removes one left by a crash; the muxer is named explicitly, not guessed from it.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with contextlib.ExitStack() as stack:  # closes the audio source, if any
            if not _encode(iter(frames), temporary, fps, fmt, audio, stack):
                raise ValueError(f"cannot write {target.name}: there are no frames")
        _fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _encode(
    images: Iterator[Image.Image],
    temporary: Path,
    fps: Fraction,
    fmt: _Format,
    audio_factory: _AudioFactory,
    stack: contextlib.ExitStack,
) -> int:
    """Write the file; the number of frames written."""
    import av

    output = av.open(
        str(temporary), "w", format=fmt.muxer, container_options=dict(fmt.container_options)
    )
    try:
        count = _encode_into(output, images, fps, fmt, audio_factory, stack)
    except BaseException:
        # Closing writes a trailer and may fail too; the first error is the one to report.
        with contextlib.suppress(Exception):
            output.close()
        raise
    output.close()
    return count


def _encode_into(
    output: OutputContainer,
    images: Iterator[Image.Image],
    fps: Fraction,
    fmt: _Format,
    audio_factory: _AudioFactory,
    stack: contextlib.ExitStack,
) -> int:
    video: VideoStream | None = None
    audio: _AudioFeed | None = None
    size = (0, 0)
    count = 0
    for image in images:  # one image alive at a time: the caller's iterator may be long
        if video is None:
            # The first frame gives the size; every stream must exist before the header.
            size = image.size
            video = _add_video_stream(output, fmt, fps, size)
            audio = audio_factory(output, fmt, stack)
        frame = _video_frame(image, size, fmt, count)
        frame.pts, frame.time_base, frame.duration = count, 1 / fps, 1
        output.mux(video.encode(frame))
        count += 1
        if audio is not None:
            audio.write_until(count / fps)  # interleave: sound up to the end of this frame
    if video is None:
        return 0
    output.mux(video.encode(None))
    if audio is not None:
        audio.finish(count / fps)
    return count


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _add_video_stream(
    output: OutputContainer, fmt: _Format, fps: Fraction, size: tuple[int, int]
) -> VideoStream:
    from av.codec.context import Flags
    from av.video.stream import VideoStream

    stream = output.add_stream(fmt.video_codec, rate=fps, options=dict(fmt.video_options))
    assert isinstance(stream, VideoStream)
    stream.time_base = 1 / fps
    # Packets carry their duration, so the last frame lasts one frame too.
    stream.codec_context.flags |= Flags.frame_duration
    if fmt.palette:
        stream.width, stream.height = size
        stream.pix_fmt = "pal8"
        return stream
    stream.width, stream.height = _even(size)
    stream.pix_fmt = "yuv420p"
    # Say which matrix the pixels were converted with (_video_frame uses BT.709), so players
    # do not guess (they guess BT.601 for small pictures).
    context = stream.codec_context
    context.colorspace = context.color_primaries = context.color_trc = _AVCOL_BT709
    context.color_range = _AVCOL_RANGE_MPEG
    return stream


# FFmpeg's enum values (AVCOL_SPC_BT709 = AVCOL_PRI_BT709 = AVCOL_TRC_BT709 = 1).
_AVCOL_BT709 = 1
_AVCOL_RANGE_MPEG = 1


def _even(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    return width + width % 2, height + height % 2


def _video_frame(image: Image.Image, size: tuple[int, int], fmt: _Format, index: int) -> VideoFrame:
    from av.video.frame import VideoFrame

    if image.size != size:
        raise ValueError(
            f"frame {index} is {image.size[0]}x{image.size[1]} but the first frame is "
            f"{size[0]}x{size[1]}; every frame of a video must have the same size"
        )
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if fmt.palette:
        return _palette_frame(rgb)
    pixels = np.asarray(rgb)
    width, height = size
    if width % 2 or height % 2:
        # Repeat the last column/row rather than crop: no picture is lost.
        pixels = np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    frame = VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
    return frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")


def _palette_frame(rgb: Image.Image) -> VideoFrame:
    """A GIF frame with its own 256-colour palette (median cut: deterministic)."""
    from av.video.frame import VideoFrame

    quantized = rgb.quantize(256)
    indices = np.asarray(quantized, dtype=np.uint8)
    colours = np.asarray(quantized.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255  # PyAV takes the palette as ARGB, opaque here
    palette[: len(colours), 1:] = colours
    pair = (np.ascontiguousarray(indices), palette)
    # The stubs know only plain arrays; pal8 takes an (indices, palette) pair.
    return VideoFrame.from_ndarray(pair, format="pal8")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- audio


def _source_audio(
    output: OutputContainer, fmt: _Format, path: Path, stack: contextlib.ExitStack
) -> _AudioFeed | None:
    """The first audio track of ``path``, copied if ``fmt`` takes its codec, else encoded."""
    import av

    assert fmt.audio_codec is not None
    with _reading(path):
        source = stack.enter_context(av.open(str(path), "r"))
    if not source.streams.audio:
        return None
    stream = source.streams.audio[0]
    offset = _video_start(source)
    codec = stream.codec_context.codec.canonical_name
    takes = output.supported_codecs if fmt.copy_audio is None else fmt.copy_audio
    if codec in takes:
        return _CopiedAudio(output, source, stream, offset, path)
    return _EncodedAudio(output, fmt.audio_codec, source, stream, offset, path)


def _video_start(source: InputContainer) -> Fraction:
    """When the source's first video frame starts: time zero of the output."""
    for stream in source.streams.video:
        if stream.start_time is not None and stream.time_base is not None:
            return stream.start_time * stream.time_base
    return Fraction(0)


class _CopiedAudio:
    """The source's audio packets remuxed untouched: no second generation of loss."""

    def __init__(
        self,
        output: OutputContainer,
        source: InputContainer,
        stream: AudioStream,
        offset: Fraction,
        path: Path,
    ) -> None:
        self._output = output
        self._stream = output.add_stream_from_template(stream)
        self._time_base = stream.time_base or Fraction(1, stream.sample_rate)
        self._shift = round(offset / self._time_base)
        self._packets = source.demux(stream)
        self._path = path
        self._pending = self._next()

    def _next(self) -> Packet | None:
        with _reading(self._path):
            for packet in self._packets:
                if packet.pts is None or not packet.size:
                    continue  # the demuxer's empty end-of-stream packet
                packet.pts -= self._shift
                if packet.dts is not None:
                    packet.dts -= self._shift
                # Sound wholly before the first frame is dropped; a packet reaching zero is
                # kept, as AAC's priming packet is needed to decode the first samples.
                if (packet.pts + (packet.duration or 0)) * self._time_base >= 0:
                    return packet
        return None

    def write_until(self, end: Fraction) -> None:
        while self._pending is not None and self._pending.pts is not None:
            if self._pending.pts * self._time_base >= end:
                return
            self._pending.stream = self._stream
            self._output.mux(self._pending)
            self._pending = self._next()

    def finish(self, end: Fraction) -> None:
        self.write_until(end)


class _EncodedAudio:
    """The source's audio decoded and encoded to the target format's audio codec."""

    def __init__(
        self,
        output: OutputContainer,
        codec: str,
        source: InputContainer,
        stream: AudioStream,
        offset: Fraction,
        path: Path,
    ) -> None:
        import av
        from av.audio.stream import AudioStream

        rate = stream.sample_rate
        if rate not in (av.Codec(codec, "w").audio_rates or [rate]):
            rate = _AUDIO_RATE
        encoder = output.add_stream(codec, rate=rate)
        assert isinstance(encoder, AudioStream)
        encoder.layout = stream.layout if stream.channels <= 2 else "stereo"
        self._output = output
        self._encoder = encoder
        self._offset = offset
        self._frames = source.decode(stream)
        self._path = path
        self._next_sample: int | None = None  # where the previous frame ended, in samples
        self._pending = self._next()

    def _next(self) -> AudioFrame | None:
        """The next decoded frame, timestamped in samples from the output's first frame."""
        with _reading(self._path):
            for frame in self._frames:
                if frame.pts is None or frame.time_base is None:
                    continue
                rate = frame.sample_rate
                start = round((frame.pts * frame.time_base - self._offset) * rate)
                # Matroska and WebM clock audio in whole milliseconds; follow on from the
                # previous frame unless the source really leaves a gap (or overlaps).
                if self._next_sample is not None and abs(start - self._next_sample) < rate // 100:
                    start = self._next_sample
                self._next_sample = start + frame.samples
                if start + frame.samples > 0:  # else wholly before the first video frame
                    frame.pts, frame.time_base = start, Fraction(1, rate)
                    return frame
        return None

    def write_until(self, end: Fraction) -> None:
        while self._pending is not None and self._pending.pts is not None:
            if (
                self._pending.time_base is None
                or self._pending.pts * self._pending.time_base >= end
            ):
                return
            self._output.mux(self._encoder.encode(self._pending))
            self._pending = self._next()

    def finish(self, end: Fraction) -> None:
        self.write_until(end)
        self._output.mux(self._encoder.encode(None))


class _ToneAudio:
    """A 440 Hz sine generated up to the video's end, exactly (for the test clip)."""

    def __init__(self, output: OutputContainer, codec: str) -> None:
        from av.audio.stream import AudioStream

        encoder = output.add_stream(codec, rate=_AUDIO_RATE)
        assert isinstance(encoder, AudioStream)
        encoder.layout = "mono"
        self._output = output
        self._encoder = encoder
        self._written = 0  # samples

    def write_until(self, end: Fraction) -> None:
        from av.audio.frame import AudioFrame

        target = math.floor(end * _AUDIO_RATE)
        while self._written < target:
            count = min(1024, target - self._written)
            times = np.arange(self._written, self._written + count) / _AUDIO_RATE
            samples = (0.2 * np.sin(2 * np.pi * 440 * times)).astype(np.float32)
            frame = AudioFrame.from_ndarray(samples[np.newaxis, :], format="flt", layout="mono")
            frame.sample_rate = _AUDIO_RATE
            frame.pts, frame.time_base = self._written, Fraction(1, _AUDIO_RATE)
            self._output.mux(self._encoder.encode(frame))
            self._written += count

    def finish(self, end: Fraction) -> None:
        self.write_until(end)
        self._output.mux(self._encoder.encode(None))
