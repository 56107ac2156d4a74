"""What a clip's later frames take from its earlier ones (``temporal:``), kept on disk.

For each frame painted, its clip keeps three lossless files in ``<state>/temporal/``: the
source frame as fitted to the processing size (the next frame's optical flow starts from
it), the result as written (before any lossy encoding: the previous frame's pixels for
``flow_init``, ``key_frame_attention`` and ControlNet loopback), and the initial noise it was
painted with (``warped_noise``). The uninterrupted run reads them back too, never floats held
in memory, so a daemon killed mid-clip and resumed paints the remaining frames from the same
bytes: pixel-identical.

They are written before the frame is delivered (a video's frame PNG, a clip folder's
archive), and the files of the last two frames are kept, with the key frame's: a crash between
keeping a frame and delivering it repaints that frame, which then finds its predecessor's.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.atomic import atomic_writer, write_bytes, write_text

FOLDER = "temporal"
KEY = "key.txt"  # the key frame's number
_NAME = re.compile(r"(\d{6})\.(source|result)\.png$")


@dataclass(frozen=True)
class Painted:
    """An earlier frame of the clip, as the frames after it need it."""

    index: int
    source: Image.Image  # RGB at the processing size
    result: Image.Image  # RGB, as written
    noise: np.ndarray | None  # (C, h, w) float32, or None (warped_noise off)


class FrameMemory:
    """A clip's kept frames in `folder` (its state folder's ``temporal/``)."""

    def __init__(self, state: Path) -> None:
        self.folder = state / FOLDER
        self._lock = threading.Lock()

    def keep(
        self,
        index: int,
        source: Image.Image,
        result: Image.Image,
        noise: np.ndarray | None,
        *,
        key: bool,
    ) -> None:
        """Keep frame `index` (`key`: it is the clip's key frame from now on), then drop the
        frames no later frame can need. OSError: the state folder."""
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            if noise is not None:
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(noise, dtype=np.float32))
                write_bytes(self._path(index, "noise.npy"), buffer.getvalue())
            for kind, image in (("source", source), ("result", result)):
                with atomic_writer(self._path(index, f"{kind}.png")) as handle:
                    image.convert("RGB").save(handle, format="PNG", compress_level=1)
            if key:
                write_text(self.folder / KEY, f"{index}\n")
            self._prune(index)

    def previous(self, index: int) -> Painted | None:
        """The latest frame kept before frame `index`; None: none (the clip's first)."""
        earlier = [n for n in self._indices() if n < index]
        return self._read(max(earlier)) if earlier else None

    def key(self) -> Painted | None:
        """The clip's key frame; None before it is painted."""
        number = self._key_index()
        return None if number is None else self._read(number)

    def _key_index(self) -> int | None:
        try:
            return int((self.folder / KEY).read_text().strip())
        except (OSError, ValueError):
            return None

    def _read(self, index: int) -> Painted | None:
        try:
            images = []
            for kind in ("source", "result"):
                with Image.open(self._path(index, f"{kind}.png")) as opened:
                    images.append(opened.convert("RGB"))
            noise_path = self._path(index, "noise.npy")
            noise = np.load(noise_path) if noise_path.exists() else None
        except (OSError, ValueError):
            return None  # a file half gone: the frame paints as if it had no predecessor
        return Painted(index, images[0], images[1], noise)

    def _indices(self) -> list[int]:
        try:
            names = [_NAME.match(path.name) for path in self.folder.iterdir()]
        except OSError:
            return []
        found: dict[int, set[str]] = {}
        for match in filter(None, names):
            found.setdefault(int(match[1]), set()).add(match[2])
        return sorted(n for n, kinds in found.items() if kinds == {"source", "result"})

    def _prune(self, newest: int) -> None:
        keep = {newest, self._key_index(), *[n for n in self._indices() if n < newest][-1:]}
        for path in self.folder.iterdir():
            number = path.name.split(".", 1)[0]
            if number.isdigit() and int(number) not in keep:
                path.unlink(missing_ok=True)

    def _path(self, index: int, kind: str) -> Path:
        return self.folder / f"{index:06d}.{kind}"
