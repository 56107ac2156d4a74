"""daemon.media.video against real PyAV/FFmpeg: every format round-trips frames, rate and sound.

Clips are tiny (64x48, 12 frames) so the whole module runs in a few seconds on a CPU.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from daemon.errors import InputError, UnreadableInput
from daemon.media.video import probe, read_frames
from daemon.media.video_write import VIDEO_SUFFIXES, write_video
from tests.support.media import make_test_clip, pattern_frame

FRAMES = 12
SIZE = (64, 48)
FPS = Fraction(12)
CODECS = {".mp4": "h264", ".mov": "h264", ".mkv": "h264", ".webm": "vp9", ".gif": "gif"}
AUDIO_CODECS = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "opus"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One test clip per format, made once for the module."""
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for suffix in VIDEO_SUFFIXES:
        made[suffix] = folder / f"clip{suffix}"
        make_test_clip(made[suffix], frames=FRAMES, size=SIZE, fps=FPS)
    return made


def nearest_pattern(image: Image.Image, frames: int = FRAMES) -> int:
    """Index of the test-pattern frame this (lossy) picture is closest to."""
    pixels = np.asarray(image, dtype=np.float32)
    errors = [
        np.abs(pixels - np.asarray(pattern_frame(i, frames=frames, size=image.size))).mean()
        for i in range(frames)
    ]
    return int(np.argmin(errors))


def nearest_index(image: Image.Image, references: list[np.ndarray]) -> int:
    pixels = np.asarray(image, dtype=np.float32)
    return int(np.argmin([np.abs(pixels - reference).mean() for reference in references]))


def audio_seconds(path: Path) -> float | None:
    """Decoded length of the first audio track (priming and padding already trimmed)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.sample_rate


def audio_codec(path: Path) -> str:
    with av.open(str(path)) as container:
        return container.streams.audio[0].codec_context.codec.canonical_name


def leftovers(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_probe_reports_the_test_clip(clips: dict[str, Path], suffix: str) -> None:
    info = probe(clips[suffix])
    assert info.frames == FRAMES
    assert isinstance(info.fps, Fraction)
    assert info.fps == FPS
    assert (info.width, info.height) == SIZE
    assert info.has_audio is (suffix != ".gif")
    assert info.codec == CODECS[suffix]
    assert info.duration == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_read_frames_yields_every_frame_in_order(clips: dict[str, Path], suffix: str) -> None:
    frames = list(read_frames(clips[suffix]))
    assert len(frames) == FRAMES
    assert all(frame.mode == "RGB" and frame.size == SIZE for frame in frames)
    assert [nearest_pattern(frame) for frame in frames] == list(range(FRAMES))


def test_test_clip_tone_lasts_as_long_as_the_video(clips: dict[str, Path]) -> None:
    for suffix in (".mp4", ".webm"):
        # AAC decodes to whole 1024-sample frames: at most one frame (21 ms) extra.
        assert audio_seconds(clips[suffix]) == pytest.approx(1.0, abs=0.025)


def test_test_clip_is_deterministic(clips: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again.mp4"
    make_test_clip(again, frames=FRAMES, size=SIZE, fps=FPS)
    first = [np.asarray(frame) for frame in read_frames(clips[".mp4"])]
    second = [np.asarray(frame) for frame in read_frames(again)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_display_rotation_is_applied(tmp_path: Path) -> None:
    """Phones store portrait clips landscape with a rotation flag; frames come out upright."""
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=12)
        stream.width, stream.height = 64, 48
        stream.set_display_rotation(-90)  # shown turned a quarter clockwise
        for index in range(2):
            pixels = np.zeros((48, 64, 3), np.uint8)
            pixels[:12, :12] = 255  # a white top-left corner
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 12)
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))

    info = probe(path)
    assert (info.width, info.height) == (48, 64)
    upright = np.asarray(next(read_frames(path)))
    assert upright.shape == (64, 48, 3)
    # A quarter turn clockwise takes the top-left corner to the top right.
    assert upright[:8, -8:].mean() > 200
    assert upright[:8, :8].mean() < 50


# --------------------------------------------------------------------------- unreadable


@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_a_truncated_clip_is_unreadable(
    clips: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    data = clips[suffix].read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(UnreadableInput, match=re.escape(f"cut{suffix}")):
        probe(cut)
    with pytest.raises(UnreadableInput, match=re.escape(f"cut{suffix}")):
        next(read_frames(cut))  # before the first frame, not after the last


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.mp4", b"this is not a video\n" * 20, "not a readable video"),
        ("empty.mp4", b"", "not a readable video"),
    ],
)
def test_a_file_that_is_not_a_video_is_unreadable(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableInput, match=re.escape(f"{name} is {reason}")) as caught:
        probe(path)
    assert isinstance(caught.value, InputError)  # the file's fault: it goes to _failed
    with pytest.raises(UnreadableInput, match=re.escape(name)):
        list(read_frames(path))


def test_a_still_image_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "photo.mp4"
    Image.new("RGB", (16, 16), "red").save(path, format="PNG")
    with pytest.raises(UnreadableInput, match=re.escape("photo.mp4 is a still image")):
        probe(path)


def test_sound_without_pictures_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "song.mp4"
    with av.open(str(path), "w") as output:
        stream = output.add_stream("aac", rate=48_000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), "flt", "mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, 0, Fraction(1, 48_000)
        output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    with pytest.raises(UnreadableInput, match=re.escape("song.mp4 has no video stream")):
        probe(path)


def test_a_missing_file_is_a_storage_error_not_the_files_fault(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        probe(tmp_path / "gone.mp4")
    assert not isinstance(caught.value, InputError)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_round_trip_keeps_frames_rate_order_and_sound(
    clips: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    source = clips[suffix]
    before = probe(source)
    references = [np.asarray(frame, dtype=np.float32) for frame in read_frames(source)]
    target = tmp_path / f"out{suffix}"

    write_video(read_frames(source), target, fps=before.fps, audio_from=source)

    after = probe(target)
    assert (after.frames, after.fps, after.width, after.height) == (
        before.frames,
        before.fps,
        before.width,
        before.height,
    )
    assert after.has_audio is before.has_audio
    assert [nearest_index(frame, references) for frame in read_frames(target)] == list(
        range(FRAMES)
    )
    if before.has_audio:
        assert audio_codec(target) == AUDIO_CODECS[suffix]  # copied, not re-encoded
        original, written = audio_seconds(source), audio_seconds(target)
        assert original is not None and written == pytest.approx(original, abs=0.03)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("source", "target", "codec"), [(".webm", ".mp4", "aac"), (".mp4", ".webm", "opus")]
)
def test_audio_the_target_cannot_hold_is_re_encoded(
    clips: dict[str, Path], tmp_path: Path, source: str, target: str, codec: str
) -> None:
    path = tmp_path / f"out{target}"
    write_video(read_frames(clips[source]), path, fps=FPS, audio_from=clips[source])
    assert probe(path).frames == FRAMES
    assert audio_codec(path) == codec
    assert audio_seconds(path) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_sound_longer_than_the_new_video_is_cut(
    clips: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    """Half the frames, the full original as sound: the sound stops with the picture."""
    path = tmp_path / f"half{suffix}"
    frames = [pattern_frame(i, frames=FRAMES, size=SIZE) for i in range(FRAMES // 2)]
    write_video(frames, path, fps=FPS, audio_from=clips[".mp4"])  # copied, re-encoded
    assert probe(path).frames == FRAMES // 2
    assert audio_seconds(path) == pytest.approx(0.5, abs=0.045)  # within an audio packet


def test_a_gif_target_or_a_silent_source_gives_a_silent_video(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    write_video(read_frames(clips[".gif"]), tmp_path / "a.mp4", fps=FPS, audio_from=clips[".gif"])
    write_video(read_frames(clips[".mp4"]), tmp_path / "b.gif", fps=FPS, audio_from=clips[".mp4"])
    assert not probe(tmp_path / "a.mp4").has_audio
    assert not probe(tmp_path / "b.gif").has_audio


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_an_ntsc_rate_is_kept_exactly(tmp_path: Path, suffix: str) -> None:
    fps = Fraction(30000, 1001)
    path = tmp_path / f"ntsc{suffix}"
    write_video((pattern_frame(i, frames=4, size=SIZE) for i in range(4)), path, fps=fps)
    info = probe(path)
    assert (info.frames, info.fps) == (4, fps)


def test_an_odd_size_is_padded_by_one_repeated_pixel(tmp_path: Path) -> None:
    frames = [pattern_frame(i, frames=3, size=(33, 21)) for i in range(3)]
    write_video(frames, tmp_path / "odd.mp4", fps=FPS)
    write_video(frames, tmp_path / "odd.gif", fps=FPS)
    info = probe(tmp_path / "odd.mp4")
    assert (info.width, info.height) == (34, 22)
    assert (probe(tmp_path / "odd.gif").width, probe(tmp_path / "odd.gif").height) == (33, 21)
    first = np.asarray(next(read_frames(tmp_path / "odd.mp4")), dtype=np.float32)
    # The added column and row repeat their neighbours (up to compression).
    assert np.abs(first[:, -1] - first[:, -2]).mean() < 8
    assert np.abs(first[-1] - first[-2]).mean() < 8


def test_frames_are_consumed_one_at_a_time(tmp_path: Path) -> None:
    """A long iterator is streamed: earlier pictures are released while later ones come."""
    alive: list[weakref.ref[Image.Image]] = []
    most_alive = 0

    def frames() -> Iterator[Image.Image]:
        nonlocal most_alive
        for index in range(30):
            most_alive = max(most_alive, sum(ref() is not None for ref in alive))
            image = pattern_frame(index, frames=30, size=SIZE)
            alive.append(weakref.ref(image))
            yield image
            del image

    write_video(frames(), tmp_path / "long.mp4", fps=FPS)
    assert probe(tmp_path / "long.mp4").frames == 30
    assert most_alive <= 1


def test_a_failing_frame_iterator_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")

    def frames() -> Iterator[Image.Image]:
        for index in range(3):
            yield pattern_frame(index, frames=FRAMES, size=SIZE)
        raise RuntimeError("the repaint failed")

    with pytest.raises(RuntimeError, match="the repaint failed"):
        write_video(frames(), target, fps=FPS, audio_from=None)
    assert target.read_bytes() == b"previous result"  # untouched
    assert leftovers(tmp_path) == []


def test_frames_of_different_sizes_are_refused_and_leave_no_file(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    frames = [pattern_frame(0, frames=2, size=SIZE), pattern_frame(1, frames=2, size=(32, 32))]
    with pytest.raises(ValueError, match="frame 1 is 32x32 but the first frame is 64x48"):
        write_video(frames, tmp_path / "out.webm", fps=FPS, audio_from=clips[".webm"])
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_audio_source_is_named_and_leaves_no_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all\n" * 10)
    frames = [pattern_frame(0, frames=1, size=SIZE)]
    with pytest.raises(UnreadableInput, match=re.escape("bad.mp4")):
        write_video(frames, tmp_path / "out.mp4", fps=FPS, audio_from=bad)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["bad.mp4"]


@pytest.mark.parametrize(
    ("name", "frames", "fps", "message"),
    [
        ("out.avi", 1, FPS, "must end in one of"),
        ("out.mp4", 0, FPS, "there are no frames"),
        ("out.mp4", 1, Fraction(0), "must be positive"),
    ],
)
def test_bad_requests_are_refused_and_leave_no_file(
    tmp_path: Path, name: str, frames: int, fps: Fraction, message: str
) -> None:
    images = [pattern_frame(i, frames=max(frames, 1), size=SIZE) for i in range(frames)]
    with pytest.raises(ValueError, match=message):
        write_video(images, tmp_path / name, fps=fps)
    assert list(tmp_path.iterdir()) == []
