"""A clip's render state, from its first frame to its end, in memory and on disk.

A clip's frames share one base seed (the profile's, or one drawn for the clip when it says
-1; ``seed_mode: increment`` or ``random`` derive each frame's from it) and one key frame: the
first finished frame, whose colours every later frame is corrected towards (``color_correction``,
see :mod:`daemon.a1111.color`) and, for a video, whose filled-in prompts every later frame
uses. The key frame is painted first and alone, and a frame after it is prepared only once it
is written (:meth:`Clip.colors` waits for it). With ``ip_adapter: {reference: key_frame}``
the same kept image, as painted, is the IP-Adapter reference of every frame after it
(:meth:`Clip.key_frame`). With ``temporal:`` every frame leads, and the frames it kept
(:mod:`daemon.clips.memory`) are what the next one takes from it.

One lifetime: a clip is opened by its first frame (:meth:`ClipStore.open`) and kept on disk in
its state folder (``state.json``: its source, the drawn seed, the frames done; the key frame's
image), so that a daemon killed mid-clip resumes it the same way. A video's clip leaves memory
when its painting stops (:meth:`ClipStore.release`); a clip folder's when the folder has run
empty (:meth:`ClipStore.close`, which removes its state too: the next clip dropped there
starts afresh). States whose input left the inbox unfinished go after a day
(:func:`drop_abandoned`).

Under ``executor: ray`` none of this leaves the daemon: what a frame takes from its clip (its
seed, the key frame's colours) travels inside its request, as values.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger
from PIL import Image

from daemon.a1111.color import ColorReference, color_reference
from daemon.a1111.seeds import draw_seed
from daemon.atomic import atomic_writer, write_text
from daemon.clips.memory import FrameMemory
from daemon.clips.progress import Pace
from daemon.intake.pairing import pending_images
from daemon.render.values import RenderResult, TemporalInputs

REFERENCE_NAME = "reference.png"  # a clip folder's key frame, as painted (not as delivered)


@dataclass
class ClipRecord:
    """What a clip keeps on disk between its frames (and across restarts)."""

    source: str = ""  # the clip's inbox folder or the video file: gone → state abandoned
    seed: int | None = None  # the drawn seed, when the profile says -1
    done: int = 0
    seconds: float = 0.0  # painting time of the frames done, for the time left


class Clip:
    """One clip's render state, shared by the threads that prepare, paint and write its
    frames. `reference`: where its key frame's image is kept (the colours of the frames after
    it); a clip folder's is :data:`REFERENCE_NAME` in its state folder, a video's its first
    painted frame."""

    def __init__(self, store: ClipStore, folder: Path, reference: Path, record: ClipRecord):
        self.folder = folder
        self.reference = reference
        self.pace = Pace()  # of this run (the first frame painted carries the model's load)
        # A video's prompts as its first frame filled them in ({interrogate}/{tags}), for every
        # frame after it; None until then (and for a clip folder, whose frames fill their own).
        self.prompts: tuple[str, str] | None = None
        self._store = store
        self._record = record
        self._key = threading.Condition()
        self._keys_on_their_way = 0
        self.memory = FrameMemory(folder)  # its frames kept for the next ones (temporal:)

    def base_seed(self, requested: int, rng: random.Random) -> int:
        """`requested` (the profile's seed), or for -1 the seed drawn for this clip, drawn
        once and kept on disk before it is used. OSError: the state folder."""
        if requested != -1:
            return requested
        with self._key:
            if self._record.seed is None:
                self._record.seed = draw_seed(-1, rng)
                self._store.save(self.folder, self._record)
            return self._record.seed

    def key_on_its_way(self) -> None:
        """The key frame was sent to be painted: the frames after it wait for it."""
        with self._key:
            self._keys_on_their_way += 1

    def key_settled(self) -> None:
        """The key frame sent is written (or failed: then the next frame becomes the key)."""
        with self._key:
            self._keys_on_their_way = max(0, self._keys_on_their_way - 1)
            self._key.notify_all()

    def colors(self) -> ColorReference | None:
        """The key frame's colours, once a key frame on its way is written; None before
        there is one (the frame asking becomes the key frame)."""
        self._wait_for_key()
        return self._store.colors(self.reference)

    def key_frame(self) -> Image.Image | None:
        """The key frame as painted (``ip_adapter: {reference: key_frame}``), once a key
        frame on its way is written; None before there is one, as for :meth:`colors`."""
        self._wait_for_key()
        return self._store.key_frame(self.reference)

    def frames_done(self) -> int:
        """The clip's frames written so far, in every run."""
        with self._key:
            return self._record.done

    def settled(self) -> None:
        """Return once the frames sent ahead to lead (a key frame; with ``temporal:``,
        every frame) are written."""
        self._wait_for_key()

    def _wait_for_key(self) -> None:
        with self._key:
            self._key.wait_for(lambda: not self._keys_on_their_way)

    def keep_reference(self, image: Image.Image) -> None:
        """Keep the key frame's image, as painted (a clip folder's outputs may be lossy)."""
        with atomic_writer(self.reference) as handle:
            image.convert("RGB").save(handle, format="PNG")

    def remember(self, inputs: TemporalInputs | None, result: RenderResult) -> None:
        """Keep a frame painted with ``temporal:`` for the frames after it, before it is
        delivered (colour-corrected already). OSError: the state folder."""
        if inputs is not None:
            image = result.images[0]
            self.memory.keep(inputs.index, inputs.source, image, result.noise, key=inputs.key)

    def paced(self, frames: int, seconds: float) -> float | None:
        """`frames` of the clip were written, together, after `seconds` of painting: the
        pace (s/frame) to say with them."""
        with self._key:
            self.pace.frames_done(time.monotonic(), frames, seconds)
            return self.pace.per_frame()

    def written(self, frames: int, seconds: float) -> tuple[int, float | None]:
        """As :meth:`paced`, and counted on disk (for a clip that spans runs): the frames
        done in all, and the pace. OSError: the state folder."""
        per_frame = self.paced(frames, seconds)
        with self._key:
            self._record.done += frames
            self._record.seconds += seconds
            self._store.save(self.folder, self._record, durable=False)  # not worth an fsync
            return self._record.done, per_frame


@dataclass(frozen=True, kw_only=True)
class ClipFrame:
    """A frame of a clip, as prepared: its seed and colour reference, drawn from its clip."""

    clip: Clip
    seed: int
    colors: ColorReference | None  # the key frame's, None until it is written
    key_frame: Image.Image | None = None  # as painted, for reference: key_frame (else None)
    leads: bool  # the key frame: painted alone, its result the reference of the frames after


class ClipStore:
    """Every clip's state: in memory while its frames are painted, and in a state folder
    (``<root>/<id>/`` for a clip folder, the video's own for a video) until it ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._saving = threading.Lock()  # one temporary name per file and process
        self._clips: dict[Path, Clip] = {}
        self._colors: tuple[Path, int, ColorReference] | None = None  # one clip paints at a time
        self._key_frame: tuple[Path, int, Image.Image] | None = None  # the same, its pixels

    def folder(self, profile: str, sub_dir: PurePosixPath) -> Path:
        """The state folder of the clip in `sub_dir` of `profile`'s inbox."""
        key = f"{profile}/{sub_dir.as_posix()}".encode()
        name = f"{profile}-{sub_dir.name}-{hashlib.sha256(key).hexdigest()[:12]}"
        return self.root / re.sub(r"[^\w.-]", "_", name)

    def open(self, folder: Path, source: Path, *, reference: Path | None = None) -> Clip:
        """The clip whose state is in `folder` (the clip folder or video `source`'s), as
        its frames left it, even in an earlier run. OSError: the state folder."""
        with self._lock:
            clip = self._clips.get(folder)
            if clip is not None and folder.exists():
                return clip
            record = read_record(folder)
            if record.source != str(source):
                record.source = str(source)
                self.save(folder, record)
            clip = Clip(self, folder, reference or folder / REFERENCE_NAME, record)
            self._clips[folder] = clip
            return clip

    def release(self, folder: Path) -> None:
        """The clip is not painted in this run any more; its state stays on disk."""
        with self._lock:
            self._clips.pop(folder, None)

    def close(self, folder: Path) -> ClipRecord:
        """The clip is over: its state goes. Returns what it recorded."""
        record = read_record(folder)
        self.release(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return record

    def save(self, folder: Path, record: ClipRecord, *, durable: bool = True) -> None:
        """Write the record; `durable` (a drawn seed) waits for the disk, counts do not."""
        text = json.dumps(
            {"source": record.source, "seed": record.seed, "done": record.done,
             "seconds": record.seconds}
        )  # fmt: skip
        with self._saving:
            write_text(folder / "state.json", text + "\n", durable=durable)

    def colors(self, reference: Path) -> ColorReference | None:
        """The colours of the key frame kept at `reference`, read once per clip."""
        stamp = _stamp(reference)
        with self._lock:
            cached = self._colors
        if cached is not None and cached[:2] == (reference, stamp):
            return cached[2]
        image = self.key_frame(reference)
        if image is None or stamp is None:
            return None
        colors = color_reference(image)
        with self._lock:
            self._colors = (reference, stamp, colors)
        return colors

    def key_frame(self, reference: Path) -> Image.Image | None:
        """The key frame kept at `reference` (RGB), read once per clip; None: none there."""
        stamp = _stamp(reference)
        if stamp is None:
            return None
        with self._lock:
            cached = self._key_frame
        if cached is not None and cached[:2] == (reference, stamp):
            return cached[2]
        try:
            with Image.open(reference) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError):
            return None
        with self._lock:
            self._key_frame = (reference, stamp, image)
        return image


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def read_record(folder: Path) -> ClipRecord:
    try:
        data: dict[str, Any] = json.loads((folder / "state.json").read_text())
        return ClipRecord(
            str(data.get("source", "")), data.get("seed"), int(data["done"]), float(data["seconds"])
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ClipRecord()


def drop_abandoned(root: Path, seconds: float, *, now: float | None = None) -> list[Path]:
    """Remove the states (and a video's frames) whose clip folder or video has left the
    inbox — finished, failed or taken away — and that nothing touched for `seconds` (a share
    that is only unmounted for a while keeps them). Returns what was removed."""
    now = time.time() if now is None else now
    dropped = []
    for folder in (p for p in _children(root) if p.is_dir()):
        recorded = read_record(folder).source
        source = Path(recorded) if recorded else None
        if source is not None and (source.is_file() or any(pending_images(source))):
            continue  # its input is still waiting in the inbox
        try:
            newest = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in _children(folder)])
        except OSError:
            continue
        if now - newest > seconds:
            shutil.rmtree(folder, ignore_errors=True)
            dropped.append(folder)
    if dropped:
        logger.info("removed the state of {} finished or abandoned clip(s)", len(dropped))
    return dropped


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []
