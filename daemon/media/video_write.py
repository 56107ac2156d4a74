"""Writing a video: repainted frames joined back into a clip, keeping rate and sound.

The formats, codecs and audio handling are described in :mod:`daemon.media.video`. The file
is written through :mod:`daemon.atomic` (a hidden temporary name, flushed and renamed into
place only when complete); on any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from daemon.atomic import written_path
from daemon.intake.names import VIDEO_EXTENSIONS
from daemon.media.video import read_errors

if TYPE_CHECKING:
    from av.audio.frame import AudioFrame
    from av.audio.stream import AudioStream
    from av.container import InputContainer, OutputContainer
    from av.packet import Packet
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

VIDEO_SUFFIXES = VIDEO_EXTENSIONS

# Sample rate of the test clip's tone, and of re-encoded sound the encoder cannot take at
# its own rate (Opus runs only at 48 kHz and a few fractions of it).
_AUDIO_RATE = 48_000


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
    # The muxer is named explicitly, not guessed from the temporary name.
    with written_path(target) as temporary, contextlib.ExitStack() as stack:
        if not _encode(iter(frames), temporary, fps, fmt, audio, stack):  # stack: audio source
            raise ValueError(f"cannot write {target.name}: there are no frames")


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
    with read_errors(path):
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
        with read_errors(self._path):
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
        with read_errors(self._path):
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
