"""Test clips: small deterministic videos with a picture pattern and a tone."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from daemon.media.video_write import _AUDIO_RATE, _AudioFeed, _Format, _format_for, _rate, _write

if TYPE_CHECKING:
    from av.container import OutputContainer


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
    if fmt.video_codec == "libx264":
        # On AVX-512 CPUs x264's macroblock tree depends on leftover heap contents: the
        # same frames encode differently from call to call. Without it they do not.
        fmt = replace(fmt, video_options=(*fmt.video_options, ("x264-params", "mbtree=0")))

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
