"""The one frame pipeline and a clip's render state, driven directly: a source and a sink
defined here (as a new kind of input would define them), the real in-process executor, the
tiny model and a real clip store on disk."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from daemon.clips.state import Clip, ClipStore
from daemon.config.profiles import Profile
from daemon.queue.frames import Frame, FramePipeline
from daemon.queue.writer import Writer
from daemon.render.cache import ModelCache
from daemon.render.executor import InProcessExecutor, Outcome
from daemon.render.values import RenderRequest, RenderResult
from tests.conftest import FAST_PROFILE, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Pictures:
    """A source: `count` frames of one clip, each request built from what the clip holds
    when the frame is read (the key frame's colours), as the real sources do."""

    def __init__(self, clip: Clip, settings: Profile, count: int) -> None:
        self.clip, self.settings, self.count = clip, settings, count
        self.read: list[int] = []
        self.leads: dict[int, bool] = {}
        self.reading: dict[int, threading.Event] = {}
        self._next = 1

    def next(self) -> Frame[int] | None:
        if self._next > self.count:
            return None
        index, self._next = self._next, self._next + 1
        self.reading.setdefault(index, threading.Event()).set()
        colors = self.clip.colors()  # waits while the key frame is on its way
        self.read.append(index)
        self.leads[index] = colors is None  # no key frame yet: this one is it
        image = Image.new("RGB", (64, 64), (40 * index % 255, 90, 140))
        request = RenderRequest(
            f"frame {index}", self.settings, image, size=(64, 64), seed=index, colors=colors
        )
        return Frame(request, index, self.clip, leads=colors is None)

    def ready(self, head: Frame[int]) -> int:
        return 1 + self.count - head.item

    def more(self, head: Frame[int], count: int) -> list[Frame[int]]:
        taken = []
        while len(taken) < count and (frame := self.next()) is not None:
            taken.append(frame)
        return taken

    def read_ahead(self) -> None:
        pass


class Album:
    """A sink: each result kept in memory, on a writer thread like the outbox's; the key frame
    kept by its clip. `hold`: the key frame's writing waits until this event is set."""

    def __init__(self, writer: Writer, hold: threading.Event | None = None) -> None:
        self.writer = writer
        self.hold = hold
        self.calls: list[list[int]] = []
        self.written: dict[int, RenderResult] = {}
        self.seconds: list[float] = []

    def dispatched(self, frames: list[Frame[int]]) -> None:
        return None

    def later(self, write: Callable[[], None], *, leads: bool) -> None:
        self.writer.submit(write)

    def write(self, frames: list[Frame[int]], outcomes: list[Outcome], seconds: float) -> None:
        self.calls.append([frame.item for frame in frames])
        self.seconds.append(seconds)
        for frame, outcome in zip(frames, outcomes, strict=True):
            assert isinstance(outcome, RenderResult), outcome
            if frame.leads and frame.clip is not None:
                if self.hold is not None:
                    assert self.hold.wait(timeout=60)
                frame.clip.keep_reference(outcome.images[0])
            self.written[frame.item] = outcome


@pytest.fixture
def writer() -> Iterator[Writer]:
    writer = Writer(depth=3)
    writer.start()
    yield writer
    writer.stop()


def settings(max_batch: int) -> Profile:
    return Profile.model_validate({**FAST_PROFILE, "max_batch": max_batch})


def test_the_key_frame_is_painted_alone_and_the_rest_in_batches_in_order(
    models: ModelCache, tmp_path: Path, writer: Writer
):
    clip = ClipStore(tmp_path).open(tmp_path / "clip", tmp_path / "inbox-clip")
    source, sink = Pictures(clip, settings(max_batch=2), 5), Album(writer)
    FramePipeline(InProcessExecutor(models), max_batch=8).paint(source, sink)
    wait_for(lambda: len(sink.written) == 5)
    assert sink.calls == [[1], [2, 3], [4, 5]]  # the profile's max_batch: 2
    assert source.read == [1, 2, 3, 4, 5]
    assert all(seconds > 0 for seconds in sink.seconds)
    first = sink.written[1].images[0]
    assert clip.reference.exists() and clip.colors() is not None
    reference = np.asarray(Image.open(clip.reference).convert("RGB"))
    assert np.array_equal(reference, np.asarray(first.convert("RGB")))


def test_the_frame_after_the_key_frame_is_read_once_the_key_frame_is_written(
    models: ModelCache, tmp_path: Path, writer: Writer
):
    """The key frame's writing is held until the pipeline has started reading frame 2:
    without the clip's wait, frame 2 would find no colours and become a key frame too."""
    clip = ClipStore(tmp_path).open(tmp_path / "clip", tmp_path / "inbox-clip")
    source = Pictures(clip, settings(max_batch=1), 3)
    source.reading[2] = threading.Event()
    sink = Album(writer, hold=source.reading[2])
    FramePipeline(InProcessExecutor(models)).paint(source, sink)
    wait_for(lambda: len(sink.written) == 3)
    assert sink.calls == [[1], [2], [3]]
    assert source.leads == {1: True, 2: False, 3: False}


def test_a_clips_state_lives_from_its_first_frame_to_its_end(tmp_path: Path):
    store = ClipStore(tmp_path / "sequences")
    folder = store.folder("img2img", PurePosixPath("clip1"))
    clip = store.open(folder, tmp_path / "inbox/img2img/clip1")
    assert store.open(folder, tmp_path / "inbox/img2img/clip1") is clip  # one per clip
    seed = clip.base_seed(-1, random.Random(5))
    assert clip.base_seed(-1, random.Random(6)) == seed  # drawn once
    assert clip.base_seed(77, random.Random(6)) == 77  # a seed given is the seed
    assert clip.colors() is None  # no key frame yet
    clip.keep_reference(Image.new("RGB", (8, 8), (200, 30, 30)))
    assert clip.written(1, 2.0) == (1, None)  # the first frame of a run has no pace yet

    store.release(folder)  # a restart: the state is read back from disk
    again = ClipStore(tmp_path / "sequences").open(folder, tmp_path / "inbox/img2img/clip1")
    assert again is not clip
    assert again.base_seed(-1, random.Random(7)) == seed
    assert again.colors() is not None
    record = store.close(folder)
    assert (record.done, record.seconds) == (1, 2.0)
    assert not folder.exists()


def test_colours_wait_while_a_key_frame_is_on_its_way(tmp_path: Path):
    clip = ClipStore(tmp_path).open(tmp_path / "clip", tmp_path / "inbox-clip")
    clip.key_on_its_way()
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.append(clip.colors()))
    reader.start()
    reader.join(timeout=0.2)
    assert reader.is_alive() and not seen  # still waiting for the key frame
    clip.keep_reference(Image.new("RGB", (8, 8), (10, 200, 30)))
    clip.key_settled()
    reader.join(timeout=30)
    assert not reader.is_alive() and seen[0] is not None
    clip.key_settled()  # settling twice (a failed write settled already) never blocks later
    assert clip.colors() is not None
