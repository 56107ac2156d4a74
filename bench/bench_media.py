"""img2imgd benchmark: interrogation, clips and videos — the daemon's cost per image or frame.

Not a test: it prints plain-text tables. Offline on a CPU with the built-in random models,
so the pictures and words are noise, but every byte goes through the real code.

1. Interrogation per image: the engine called directly on decoded images, vs the daemon
   (``run_once`` over the same files: decode, interrogate, write .txt/.json, archive;
   the fixed cost of starting and stopping ``run_once`` is taken out).
2. Repaint per frame: the render function called directly on decoded frames, vs the daemon on
   the same frames as a folder (a clip: one job per frame, colour correction, progress) and
   as a video (decode, paint, write PNG frames, encode H.264 + AAC).
3. ControlNet per image: the render function and the daemon with no unit, one unit (canny)
   and two (canny + lineart_standard), each with the built-in tiny ControlNet, and the ratio
   of each to no unit.
4. Reference per image: the same, with a ``reference_only`` unit (attention injection, no
   model: the input is its own reference) and an IP-Adapter (``builtin:tiny-ip-adapter``,
   the profile's ``reference:`` image, encoded once), against no unit.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_media.py [--images N] [--frames N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Run as `python bench/bench_media.py`, Python puts bench/ on the path, not the project root:
# the helpers in tests/support (shared with the tests) are imported from there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger
from PIL import Image

from daemon.a1111.imaging import flatten_on_white, load_image
from daemon.config.profiles import Profile
from daemon.media.video import read_frames
from daemon.ops.service import Daemon
from daemon.prepare.canvas import processing_size
from daemon.render.cache import ModelCache
from daemon.render.render import render
from daemon.render.values import RenderRequest
from tests.support.media import make_test_clip
from tests.support.workspace import DATA, Workspace

TAGGER = {"task": "interrogate", "interrogator": "deepbooru", "model": "builtin:tiny-tagger"}
CLIP = {
    "task": "interrogate", "interrogator": "clip", "model": "builtin:tiny-interrogator",
    "caption_min_length": 8, "caption_max_length": 16,
}  # fmt: skip
PAINT = {"model": "builtin:tiny-sd", "prompt": "a test", "steps": 8, "denoising_strength": 0.5,
         "sampler_name": "Euler", "seed": 1234, "max_pixels": 128 * 128}  # fmt: skip


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.models = ModelCache(models_dir=None, state_dir=self.state, device="cpu")
        self._empty: float | None = None

    def workspace(self, name: str) -> Workspace:
        """A daemon's folders, made under root/name: no default profile keys, Settings' own
        delays but a short stability delay, and the state folder the models live in."""
        settings = {"state_dir": self.state, "stability_delay": 0.05}
        workspace = Workspace(self.root / name, self.state, profile_base={}, settings_base=settings)
        return workspace.create()

    def once(self, workspace: Workspace) -> float:
        """Seconds of ``run_once`` over the inbox, less what a run over an empty inbox costs
        (start-up and shut-down: journal, recovery, scheduler), which no file should carry."""
        settings = workspace.settings()
        started = time.perf_counter()
        tally = Daemon(settings, watch=False, models=self.models).run_once(tick=0.01)
        if tally.failed or tally.deferred:
            raise RuntimeError(f"the daemon did not finish cleanly: {tally}")
        return time.perf_counter() - started - self.empty_run()

    def empty_run(self) -> float:
        if self._empty is None:
            settings = self.workspace("empty").settings()
            started = time.perf_counter()
            Daemon(settings, watch=False, models=self.models).run_once(tick=0.01)
            self._empty = time.perf_counter() - started
        return self._empty


def timed(action: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        action()
    return (time.perf_counter() - started) / count


def interrogation(bench: Bench, images: int) -> list[tuple[str, float, float]]:
    rows = []
    sources = [DATA / "chelsea.png", DATA / "astronaut.png"]
    for label, keys in (("tagger (tiny WD14, ONNX)", TAGGER), ("CLIP (tiny BLIP + CLIP)", CLIP)):
        settings = Profile.model_validate(keys)
        kind = settings.interrogator
        ref = settings.interrogation_model(kind)
        decoded = [flatten_on_white(load_image(p, max_pixels=2**26)) for p in sources]
        interrogate = bench.models.interrogators.interrogate
        interrogate(decoded[0], settings, kind, ref)  # warm: model and label embeddings
        index = iter(range(images))
        direct = timed(lambda: interrogate(decoded[next(index) % 2], settings, kind, ref), images)  # noqa: B023

        run = bench.workspace(f"interrogate-{kind}")
        run.profile("p", **keys)
        for i in range(images):
            run.drop(sources[i % 2], f"p/img{i:03d}.png")
        daemon = bench.once(run) / images
        rows.append((label, direct, daemon))
    return rows


def repaint(bench: Bench, frames: int) -> list[tuple[str, float, float]]:
    clip = bench.root / "clip.mp4"
    make_test_clip(clip, frames=frames, size=(128, 96))
    decoded = list(read_frames(clip))

    run = bench.workspace("frames")
    settings = Profile.model_validate({**PAINT, "color_correction": False})

    def request(frame: Image.Image) -> RenderRequest:
        size = processing_size(settings, *frame.size)
        return RenderRequest("frame", settings, frame, size=size, seed=1234)

    render(request(decoded[0]), bench.models)  # warm
    index = iter(range(frames))
    direct = timed(lambda: render(request(decoded[next(index)]), bench.models), frames)

    run.profile("p", **PAINT)
    folder = run.inbox / "p" / "clip"
    folder.mkdir()
    for i, frame in enumerate(decoded, start=1):
        frame.save(folder / f"frame_{i:04d}.png")
    as_folder = bench.once(run) / frames

    video_run = bench.workspace("video")
    video_run.profile("p", **PAINT)
    video_run.drop(clip, "p/clip.mp4")
    as_video = bench.once(video_run) / frames
    return [
        ("frames as a folder (a clip)", direct, as_folder),
        ("frames of a video (.mp4 + audio)", direct, as_video),
    ]


CANNY = {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet"}
LINES = {"enabled": True, "module": "lineart_standard", "model": "builtin:tiny-controlnet"}
REFERENCE = DATA / "astronaut.png"  # the reference image of the IP-Adapter row
Case = tuple[str, dict[str, Any]]  # a row's label and the profile keys that guide it
UNITS: tuple[Case, ...] = (
    ("no unit", {}),
    ("one unit (canny)", {"controlnet": [CANNY]}),
    ("two units (+ lineart)", {"controlnet": [CANNY, LINES]}),
)
REFERENCES: tuple[Case, ...] = (
    ("no unit", {}),
    ("reference_only unit", {"controlnet": [{"enabled": True, "module": "reference_only"}]}),
    ("IP-Adapter (tiny-ip-adapter)",
     {"ip_adapter": {"model": "builtin:tiny-ip-adapter", "reference": str(REFERENCE)}}),
)  # fmt: skip


def guided(bench: Bench, images: int, cases: tuple[Case, ...]) -> list[tuple[str, float, float]]:
    """Each case's cost per image: the render function, and the daemon over the same files."""
    sources = [DATA / "chelsea.png", DATA / "astronaut.png"]
    decoded = [flatten_on_white(load_image(p, max_pixels=2**26)) for p in sources]
    reference = flatten_on_white(load_image(REFERENCE, max_pixels=2**26))
    rows = []
    for number, (label, keys) in enumerate(cases):
        settings = Profile.model_validate({**PAINT, **keys})
        adapter = reference if settings.ip_adapter is not None else None

        def request(
            image: Image.Image, settings: Profile = settings, adapter: Image.Image | None = adapter
        ) -> RenderRequest:
            size = processing_size(settings, *image.size)
            return RenderRequest("image", settings, image, size=size, seed=1234, reference=adapter)

        render(request(decoded[0]), bench.models)  # warm: the model, its ControlNet or adapter
        index = iter(range(images))
        direct = timed(lambda: render(request(decoded[next(index) % 2]), bench.models), images)  # noqa: B023
        run = bench.workspace(f"guided-{id(cases)}-{number}")
        run.profile("p", **PAINT, **keys)
        for i in range(images):
            run.drop(sources[i % 2], f"p/img{i:03d}.png")
        rows.append((label, direct, bench.once(run) / images))
    return rows


def print_ratios(title: str, rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':36} {'direct':>10} {'daemon':>10} {'x no unit':>10}")
    base = rows[0][2]
    for label, direct, daemon in rows:
        print(f"{label:36} {direct * 1000:>8.0f}ms {daemon * 1000:>8.0f}ms {daemon / base:>9.2f}x")


def print_table(title: str, unit: str, rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':36} {'direct':>10} {'daemon':>10} {'overhead':>10}")
    for label, direct, daemon in rows:
        print(
            f"{label:36} {direct * 1000:>8.0f}ms {daemon * 1000:>8.0f}ms "
            f"{(daemon - direct) * 1000:>+8.0f}ms   per {unit}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="images per interrogator")
    parser.add_argument("--frames", type=int, default=24, help="frames in the clip")
    args = parser.parse_args()
    logger.remove()
    logger.add(lambda m: None, level="ERROR")  # quiet: the tables are the output
    import torch

    print(f"torch threads: {torch.get_num_threads()}, CPU only, tiny built-in models")
    with tempfile.TemporaryDirectory(prefix="img2imgd-bench-") as tmp:
        bench = Bench(Path(tmp))
        print_table("Interrogation", "image", interrogation(bench, args.images))
        print_table("Repaint (tiny-sd, 128x96, 4 steps)", "frame", repaint(bench, args.frames))
        title = "ControlNet per image (tiny-sd + tiny-controlnet, up to 128x128 px, 4 model calls)"
        print_ratios(title, guided(bench, args.images, UNITS))
        title = "Reference per image (tiny-sd, up to 128x128 px, 4 model calls; the same input)"
        print_ratios(title, guided(bench, args.images, REFERENCES))


if __name__ == "__main__":
    main()
