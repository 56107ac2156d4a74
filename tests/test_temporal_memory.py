"""A clip's kept frames (:mod:`daemon.clips.memory`): what a resumed daemon reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from daemon.clips.memory import FrameMemory


def picture(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, value, value))


def keep(memory: FrameMemory, index: int, *, key: bool = False) -> np.ndarray:
    noise = np.full((4, 1, 1), index, dtype=np.float32)
    memory.keep(index, picture(index), picture(100 + index), noise, key=key)
    return noise


def test_a_new_memory_reads_back_the_previous_frame_and_the_key_frame_bytes_for_bytes(
    tmp_path: Path,
):
    memory = FrameMemory(tmp_path)
    assert memory.previous(1) is None and memory.key() is None
    keep(memory, 1, key=True)
    noise = keep(memory, 2)
    resumed = FrameMemory(tmp_path)  # another process, after a kill -9
    previous = resumed.previous(3)
    assert previous is not None and previous.index == 2
    assert np.array_equal(np.asarray(previous.result), np.asarray(picture(102)))
    assert np.array_equal(np.asarray(previous.source), np.asarray(picture(2)))
    assert previous.noise is not None and np.array_equal(previous.noise, noise)
    key = resumed.key()
    assert key is not None and key.index == 1


def test_only_the_last_two_frames_and_the_key_frame_are_kept(tmp_path: Path):
    memory = FrameMemory(tmp_path)
    keep(memory, 1, key=True)
    for index in range(2, 7):
        keep(memory, index)
    kept = sorted({int(path.name[:6]) for path in memory.folder.glob("0*")})
    assert kept == [1, 5, 6]


def test_a_frame_painted_again_after_a_crash_finds_its_predecessor(tmp_path: Path):
    """Kept, then killed before delivery: frame 3 is painted again and must take frame 2."""
    memory = FrameMemory(tmp_path)
    for index in (1, 2, 3):
        keep(memory, index, key=index == 1)
    previous = FrameMemory(tmp_path).previous(3)
    assert previous is not None and previous.index == 2


def test_a_later_key_frame_replaces_the_first(tmp_path: Path):
    memory = FrameMemory(tmp_path)
    keep(memory, 1, key=True)
    keep(memory, 2)
    keep(memory, 3, key=True)
    key = memory.key()
    assert key is not None and key.index == 3
    assert not list(memory.folder.glob("000001.*")), "the old key frame is dropped"


def test_a_half_written_frame_is_not_taken(tmp_path: Path):
    memory = FrameMemory(tmp_path)
    keep(memory, 1, key=True)
    keep(memory, 2)
    (memory.folder / "000002.result.png").unlink()
    previous = memory.previous(3)
    assert previous is not None and previous.index == 1
