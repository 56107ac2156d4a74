"""img2imgd against the script a user would write instead, both timed as whole processes.

``make bench``: the same files through ``bench/plain_loop.py`` (import torch and diffusers,
load the pipeline once, loop, save) and through ``img2imgd once`` (start-up, stability check,
journal, outputs with parameters, archive), each as a fresh process on an idle machine, in
interleaved rounds. Three cases, as in PERFORMANCE.md: (a) 24 images, (b) a clip folder of
24 frames, (c) a 24-frame video (the loop decodes and encodes with PyAV). The tiny built-in
model, 96x96, 20 steps x 0.5 (10 run), Euler a, CFG 7.

Then where the daemon's time goes, from one instrumented in-process run of case (a):
waiting, import and load, decode, text encoding, UNet, VAE, writing. Last, a running daemon's
resident memory after 100 images and after 1,000, and the latency of a live profile from
an export renamed into the inbox to the start of its render.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/whole.py [--rounds 3] [--images 24] [--memory 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as `python bench/whole.py`, Python puts bench/ on the path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from daemon.models.builtin import ensure_builtin
from tests.support.media import make_test_clip
from tests.support.workspace import DATA, Workspace

ROOT = Path(__file__).resolve().parent.parent
SIZE = 96
PROFILE: dict[str, Any] = {
    "model": "builtin:tiny-sd",
    "prompt": "a test",
    "sampler_name": "Euler a",
    "steps": 20,
    "denoising_strength": 0.5,
    "cfg_scale": 7.0,
    "seed": 1234,
    "max_pixels": SIZE * SIZE,
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Scale:
    """How big the work is. Both use the tiny model's UNet, which is the size diffusers' own
    pipeline tests use (block channels 32/64, two layers per block, cross-attention 32); only
    the pictures grow. At 96 px start-up (import and load, ~5 s) is longer than the painting
    of 24 images (~3.5 s); at 352 px one image costs the loop ~0.6 s here and compute
    dominates, so only batching and overlap can win there (issue 23)."""

    name: str
    size: int
    targets: dict[str, float]  # case -> median ratio to reach


SCALES = (
    Scale("start-up", SIZE, {"images": 0.65, "clip": 0.70, "video": 0.70}),
    Scale("compute", 352, {"images": 0.85, "clip": 0.85, "video": 0.85}),
)


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    make: Callable[[Path, int, int], None]  # fill a profile folder: (folder, count, size)
    plain_mode: str  # plain_loop.py's mode
    plain_input: Callable[[Path], Path]  # the loop's input, from the profile folder


def _images(folder: Path, count: int, size: int = SIZE) -> None:
    sources = [DATA / "chelsea.png", DATA / "astronaut.png"]
    for index in range(count):
        with Image.open(sources[index % 2]) as image:
            square = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        square.save(folder / f"img_{index:03d}.png")


def _clip(folder: Path, count: int, size: int) -> None:
    (folder / "clip").mkdir()
    _images(folder / "clip", count, size)


def _video(folder: Path, count: int, size: int) -> None:
    make_test_clip(folder / "clip.mp4", frames=count, size=(size, size), audio=False)


CASES = (
    Case("images", "(a) {n} images", _images, "images", lambda f: f),
    Case("clip", "(b) a clip folder of {n} frames", _clip, "images", lambda f: f / "clip"),
    Case("video", "(c) a {n}-frame video", _video, "video", lambda f: f / "clip.mp4"),
)


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of `command` as a fresh process, and what it printed."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def run_plain(case: Case, model: Path, source: Path, root: Path) -> tuple[float, float]:
    """The loop's whole-process time and its painting time alone (from its own clock, after
    import and load: the pure compute the daemon is measured against)."""
    out = root / "plain-out"
    shutil.rmtree(out, ignore_errors=True)
    script = str(ROOT / "bench" / "plain_loop.py")
    seconds, printed = timed(
        [sys.executable, script, case.plain_mode, str(model), str(source), str(out)], root
    )
    return seconds, float(printed.split("painting=")[1].split()[0])


def run_daemon(
    case: Case, master: Path, state: Path, root: Path, size: int, settings: dict[str, Any]
) -> float:
    shutil.rmtree(root, ignore_errors=True)
    profile = {**PROFILE, "max_pixels": size * size}
    ws = Workspace(root, state, profile_base=profile, settings_base=settings).create()
    ws.profile("p")
    shutil.copytree(master, ws.inbox / "p", dirs_exist_ok=True)
    config = ws.config_file()
    return timed([sys.executable, "-m", "daemon", "--config", str(config), "once"], ROOT)[0]


@dataclass
class Row:
    case: Case
    label: str
    target: float
    plain: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)  # the loop's painting alone
    daemon: list[float] = field(default_factory=list)
    one_at_a_time: list[float] = field(default_factory=list)  # the daemon at max_batch: 1


def compare(rounds: int, count: int, scale: Scale, state: Path, work: Path) -> list[Row]:
    """Interleaved rounds whose order rotates, so a busy spell hits every contender alike.
    At the compute scale the daemon also runs at ``max_batch: 1``: what batching gives."""
    model = ensure_builtin("tiny-sd", state / "builtin")
    contenders = ["plain", "daemon"] + (["one"] if scale.name == "compute" else [])
    rows = []
    for case in CASES:
        master = work / f"{scale.name}-{case.name}-inputs"
        master.mkdir()
        case.make(master, count, scale.size)
        row = Row(case, f"{case.label.format(n=count)}, {scale.size} px", scale.targets[case.name])
        for index in range(rounds):
            turn = index % len(contenders)
            for which in contenders[turn:] + contenders[:turn]:
                if which == "plain":
                    seconds, painting = run_plain(case, model, case.plain_input(master), work)
                    row.plain.append(seconds)
                    row.compute.append(painting)
                else:
                    settings = {"max_batch": 1} if which == "one" else {}
                    seconds = run_daemon(case, master, state, work / "daemon", scale.size, settings)
                    (row.one_at_a_time if which == "one" else row.daemon).append(seconds)
            print(f"  {scale.name} {case.name} round {index + 1}: plain {row.plain[-1]:.1f} s "
                  f"(painting {row.compute[-1]:.1f} s), img2imgd {row.daemon[-1]:.1f} s"
                  + (f", max_batch 1 {row.one_at_a_time[-1]:.1f} s" if row.one_at_a_time else ""),
                  flush=True)  # fmt: skip
        rows.append(row)
    return rows


def _median_ratio(top: list[float], bottom: list[float]) -> tuple[float, str]:
    ratios = [t / b for t, b in zip(top, bottom, strict=True)]
    return statistics.median(ratios), f"{min(ratios):.2f}-{max(ratios):.2f}"


def print_table(rows: list[Row], rounds: int) -> None:
    print(f"\nwhole process, median of {rounds} interleaved rounds (each a fresh process);")
    print("ratio = img2imgd / plain loop; 'painting' = the loop's own time after import and load")
    head = (
        f"{'case':40} {'plain loop':>10} {'painting':>9} {'img2imgd':>9} {'ratio':>6} "
        f"{'ratios':>10} {'target':>6} {'max_batch 1':>11} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        ratio, spread = _median_ratio(row.daemon, row.plain)
        one = ""
        if row.one_at_a_time:
            one_ratio, _ = _median_ratio(row.one_at_a_time, row.plain)
            one = f"{statistics.median(row.one_at_a_time):>10.1f}s {one_ratio:>6.2f}"
        print(
            f"{row.label:40} {statistics.median(row.plain):>9.1f}s "
            f"{statistics.median(row.compute):>8.1f}s {statistics.median(row.daemon):>8.1f}s "
            f"{ratio:>6.2f} {spread:>10} {row.target:>6.2f} {one}"
        )


# ----------------------------------------------------------------------- where the time goes


class Stopwatch:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - started

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        real = getattr(owner, attribute)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return real(*args, **kwargs)

        if isinstance(owner, type):
            setattr(owner, attribute, timed_call)
        else:
            object.__setattr__(owner, attribute, timed_call)  # frozen dataclasses too


def breakdown(count: int, state: Path, work: Path) -> None:
    """One `once` run of case (a) in this process, with the stages timed where they run."""
    import_started = time.perf_counter()
    import diffusers  # noqa: F401
    import torch  # noqa: F401  (what the daemon's first job would import)

    imports = time.perf_counter() - import_started
    from daemon.engines.prompt_encoder import PromptEncoder
    from daemon.ops.service import Daemon

    watch = Stopwatch()
    ws = Workspace(work / "breakdown", state, profile_base=dict(PROFILE), settings_base={})
    ws.create().profile("p")
    _images(ws.inbox / "p", count)
    daemon = Daemon(ws.settings(), watch=False)
    watch.wrap(daemon.worker.preparer, "prepare", "decode and check")
    watch.wrap(daemon.worker.deliverer, "deliver", "writing")
    watch.wrap(daemon.ledger, "done", "journal and archive")
    watch.wrap(PromptEncoder, "encode", "text encoding")
    with watch.part("import and load"):  # what the daemon overlaps with the stability check
        pipe = daemon.models.pipeline("builtin:tiny-sd", "img2img")
    watch.wrap(pipe.unet, "forward", "UNet")
    watch.wrap(pipe.vae, "encode", "VAE")
    watch.wrap(pipe.vae, "decode", "VAE")
    daemon.run_once()
    total = time.perf_counter() - import_started
    totals = dict(watch.totals)
    totals["import and load"] += imports
    inside = sum(totals.get(k, 0.0) for k in ("text encoding", "UNet", "VAE"))
    totals["waiting (stability check) and the rest"] = max(0.0, total - sum(totals.values()))
    print(f"\nwhere img2imgd's time goes, case (a), {count} images, one run in-process")
    print("(here the load runs first; a real `once` overlaps it with the stability check)")
    print(f"{'part':44} {'seconds':>8} {'share':>7}")
    for name, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{name:44} {seconds:>8.2f} {seconds / total:>7.0%}")
    print(f"{'total':44} {total:>8.2f}")
    print(f"(model work: text encoding + UNet + VAE = {inside:.2f} s)")


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def memory(total: int, state: Path, work: Path) -> None:
    """A running daemon's resident memory after 100 images and after `total` (64 px, 4 steps):
    a daemon that runs for weeks must not grow with the work it has done."""
    ws = Workspace(work / "memory", state, profile_base={**PROFILE, "steps": 4,
                   "max_pixels": 64 * 64}, settings_base={"stability_delay": 0.2})  # fmt: skip
    ws.create().profile("p")
    staging = work / "memory-staging"
    staging.mkdir()
    with Image.open(DATA / "chelsea.png") as image:
        small = image.convert("RGB").resize((64, 64))
    for index in range(total):
        small.save(staging / f"m_{index:05d}.png")
    config = ws.config_file()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "--config", str(config), "run"], cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marks: dict[int, int] = {}
    try:
        for path in sorted(staging.iterdir()):
            path.rename(ws.inbox / "p" / path.name)
        deadline = time.monotonic() + 1800
        while len(marks) < 2 and time.monotonic() < deadline:
            done = sum(1 for _ in (ws.inbox / "_done" / "p").glob("*.png"))
            for mark in (100, total):
                if done >= mark and mark not in marks:
                    marks[mark] = rss(daemon.pid)
            time.sleep(0.2)
    finally:
        daemon.terminate()
        daemon.wait(60)
    if len(marks) < 2:
        raise SystemExit(f"the memory run did not finish: {marks}")
    change = marks[total] / marks[100] - 1
    print("\nmemory of a running daemon (RSS), 64 px images, 4 steps")
    print(f"after 100 images: {marks[100] / 2**20:.0f} MiB; after {total}: "
          f"{marks[total] / 2**20:.0f} MiB ({change:+.1%}; target within ±5 %)")  # fmt: skip


def live_latency(state: Path, work: Path, exports: int = 10) -> None:
    """A live profile: from an export renamed into the inbox (as Photoshop's Generator does)
    to the start of its rendering, on a running daemon with the model loaded."""
    import threading

    from daemon.ops.service import Daemon

    ws = Workspace(work / "live", state, profile_base={**PROFILE, "live": True},
                   settings_base={"stability_delay": 2.0})  # fmt: skip
    ws.create().profile("live")
    daemon = Daemon(ws.settings(device="cpu"))
    started: list[float] = []
    run = daemon.worker.run

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        started.append(time.monotonic())
        return run(*args, **kwargs)

    daemon.worker.run = timed_run  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    latencies = []
    try:
        with Image.open(DATA / "chelsea.png") as image:
            picture = image.convert("RGB").resize((SIZE, SIZE))
        for index in range(exports + 1):  # the first one loads the model: not counted
            picture.paste((index * 20 % 256, 60, 160), (0, 0, 24, 24))
            staged = work / f"export-{index}.png"
            picture.save(staged)
            before = len(started)
            renamed = time.monotonic()
            os.replace(staged, ws.inbox / "live" / "photo.png")
            while daemon.tally.done < index + 1:
                time.sleep(0.005)
            if index:
                latencies.append(started[before] - renamed)
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    delay = 0.25
    print(f"\nlive profile, an export renamed into the inbox to the start of its render "
          f"({exports} exports, event mode)")  # fmt: skip
    print(
        f"median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s; "
        f"target at most live_delay + 0.1 = {delay + 0.1:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=24, help="images or frames per case")
    parser.add_argument("--memory", type=int, default=1000, help="images in the memory run")
    parser.add_argument(
        "--scales", default="start-up,compute", help="which of start-up,compute to compare"
    )
    parser.add_argument(
        "--only-ratios", action="store_true", help="stop after the comparison table"
    )
    parser.add_argument(
        "--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "img2imgd-bench-state"
    )
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="img2imgd-whole-") as tmp:
        rows = [
            row
            for scale in SCALES
            if scale.name in args.scales.split(",")
            for row in compare(args.rounds, args.images, scale, args.state_dir, Path(tmp))
        ]
        if rows:
            print_table(rows, args.rounds)
        if args.only_ratios:
            return
        breakdown(args.images, args.state_dir, Path(tmp))
        live_latency(args.state_dir, Path(tmp))
        memory(args.memory, args.state_dir, Path(tmp))
    print(f"\ntotal {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
