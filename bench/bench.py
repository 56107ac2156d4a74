"""img2imgd benchmark: what the daemon costs on top of diffusers, and how fast it reacts.

Not a test: it asserts nothing about speed, it prints plain-text tables. Runs offline on a
CPU with the built-in random model ``builtin:tiny-sd``, so the images are noise but every
byte goes through the real code: watchdog observer, stability tracker, main loop, queue,
worker, prepare, render (diffusers pipeline), deliver (PNG writer), archive.

1. Daemon time per image vs a plain diffusers loop over the same files, same warm pipeline
   (same ModelCache, hence the same weights and the same modules), same sampler, steps,
   strength, seed and size. The daemon's figure runs from the first drop into the inbox to
   the last input archived to ``_done``.
2. Drop-to-start latency with an idle daemon: from the moment a file is complete in the
   inbox to the moment the worker takes it (``Worker.run``), for renamed-in files,
   files written slowly in place, and the polling observer.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench.py [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# Run as `python bench/bench.py`, Python puts bench/ on the path, not the project root: the
# workspace helper in tests/support (shared with the tests) is imported from there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger
from PIL import Image

from daemon.config.settings import Settings
from daemon.intake.jobs import Job, JobStatus
from daemon.ops.service import TICK, Daemon, Observers
from daemon.render.cache import ModelCache
from tests.support.workspace import DATA, Workspace
from tests.support.workspace import drop as drop_file

# The daemon imports diffusers and transformers lazily, so this still comes first: a
# benchmark must never wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

T = TypeVar("T")
SOURCES = ("chelsea.png", "astronaut.png")
MODEL = "builtin:tiny-sd"
PROFILE = "bench"
PROMPT = "a test"
SAMPLER = "Euler"
STRENGTH = 0.5
CFG_SCALE = 7.0
SEED = 1234
THROUGHPUT_DELAY = 0.05  # s; small so the stability check does not throttle a burst
POLL_INTERVAL = 0.5  # s, the polling observer's period in the polling scenario
WARMUP_CALLS = 2  # the first call at a new size/step count is ~10x slower (oneDNN set-up)
JOB_TIMEOUT = 120.0  # s; far beyond any job here, only there so a hang cannot last forever
# watchdog's inotify observer holds an unpaired IN_MOVED_FROM this long, and every event
# queued behind it waits too (watchdog/observers/inotify_move_event_grouper.py, `delay`).
# The daemon's first archive into a new _done/ folder makes one (see `Scenario`), so the
# measurements that are about the steady state let it pass first.
MOVE_HOLD = 0.5
DISTURBED = 0.05  # share of the machine used by other processes that makes a row suspect


@dataclass(frozen=True)
class Case:
    """One throughput setting: square images of ``size`` px at ``steps`` steps."""

    size: int
    steps: int

    @property
    def label(self) -> str:
        return f"{self.size}x{self.size}, {self.steps} steps"


CASES = (Case(64, 4), Case(128, 10))


# ------------------------------------------------------------------------------ set-up


def core_count() -> int:
    """Cores this process may use (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def print_environment(threads: int) -> None:
    import diffusers
    import torch
    import watchdog.version

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print("== environment")
    print(f"python        {platform.python_version()} on {platform.platform()}")
    print(f"cpu           {core_count()} usable cores (os.cpu_count() = {os.cpu_count()})")
    # The daemon's worker never calls set_num_threads: show what a new thread gets too.
    in_new_thread = in_thread(torch.get_num_threads)
    print(f"torch         {torch.__version__}, {threads} threads ({in_new_thread} in a new thread)")
    print(f"diffusers     {diffusers.__version__}")
    print(f"watchdog      {watchdog.version.VERSION_STRING}")
    # Other processes on a 2-core box skew every number; the load average says whether any ran.
    meter = CpuMeter()
    time.sleep(1.0)
    print(
        f"load average  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; other processes "
        f"used {share(meter.others())} of the machine in the last second"
    )
    print(f"model         {MODEL} (random weights), sampler {SAMPLER}, strength {STRENGTH}")
    print()


@dataclass(frozen=True)
class CpuSample:
    wall: float
    busy: float  # s of CPU the whole machine spent, all processes
    ours: float  # s of CPU this process spent, all threads


def cpu_sample() -> CpuSample | None:
    """Linux only (/proc/stat); elsewhere the benchmark just cannot tell."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq soft steal
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    times = os.times()
    return CpuSample(time.monotonic(), busy, times.user + times.system)


class CpuMeter:
    """How much of the machine other processes used while something was measured.

    On a 2-core box torch's OpenMP threads wait for each other at every operator, so one busy
    neighbour can make a pipeline call several times slower: such numbers must be flagged.
    """

    def __init__(self) -> None:
        self._start = cpu_sample()

    def others(self) -> float | None:
        end = cpu_sample()
        if self._start is None or end is None or end.wall <= self._start.wall:
            return None
        foreign = (end.busy - self._start.busy) - (end.ours - self._start.ours)
        return max(0.0, foreign / ((end.wall - self._start.wall) * (os.cpu_count() or 1)))


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def setup_logging(verbose: bool) -> None:
    # The daemon logs one INFO line per job; the tables are the output, so only problems show.
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING")


def make_inputs(folder: Path, size: int, count: int) -> list[Path]:
    """``count`` RGB PNGs of ``size`` px, alternating the two sample photos."""
    folder.mkdir(parents=True, exist_ok=True)
    originals = [Image.open(DATA / name).convert("RGB") for name in SOURCES]
    paths = []
    for index in range(count):
        image = originals[index % len(originals)].resize((size, size), Image.Resampling.LANCZOS)
        path = folder / f"img_{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def drop(source: Path, target: Path) -> float:
    """Copy into the inbox the way most tools do (temp name, then rename); return the time
    the file became visible under its final name."""
    drop_file(source, target)
    return time.monotonic()


def write_slowly(source: Path, target: Path, *, chunks: int = 4, pause: float = 0.05) -> float:
    """Write in place in pieces with pauses (a slow copier), then close; return the close time.

    The pauses stay well under the stability delay, so only the close event can make the
    file ready early.
    """
    data = source.read_bytes()
    step = -(-len(data) // chunks)
    with target.open("wb") as handle:
        for offset in range(0, len(data), step):
            handle.write(data[offset : offset + step])
            handle.flush()
            time.sleep(pause)
    return time.monotonic()


# ------------------------------------------------------------------------------ the daemon


@dataclass
class Probe:
    """What the benchmark observes of a running daemon, through its hooks and two shims."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    started: dict[str, float] = field(default_factory=dict)  # image name -> run() called
    ended: dict[str, tuple[float, JobStatus]] = field(default_factory=dict)
    run_seconds: list[float] = field(default_factory=list)  # prepare + render + deliver
    paint_seconds: list[float] = field(default_factory=list)  # the executor's render in it

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def attach(self, daemon: Daemon) -> None:
        # Instance attributes shadow the methods the worker looks up on each job; the shims
        # only read the clock, so what runs is exactly the daemon's code.
        run, paint = daemon.worker.run, daemon.executor.render

        def timed_run(job: Job) -> Any:
            start = time.monotonic()
            with self.lock:
                self.started.setdefault(job.image.name, start)
            try:
                return run(job)
            finally:
                self.run_seconds.append(time.monotonic() - start)

        def timed_paint(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                return paint(*args, **kwargs)
            finally:
                self.paint_seconds.append(time.monotonic() - start)

        daemon.worker.run = timed_run  # type: ignore[method-assign]
        daemon.executor.render = timed_paint  # type: ignore[method-assign]

    def job_ended(self, job: Job, status: JobStatus) -> None:
        # Called by the worker after archive(): the input is already in _done.
        with self.changed:
            self.ended[job.image.name] = (time.monotonic(), status)
            self.changed.notify_all()

    def wait_ended(self, names: list[str], timeout: float = JOB_TIMEOUT) -> list[float]:
        """End times of the named jobs; raises if any did not end, or did not succeed."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(name in self.ended for name in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.ended]
                    raise RuntimeError(f"jobs did not finish within {timeout} s: {missing}")
                self.changed.wait(left)
            results = [self.ended[name] for name in names]
        bad = [
            (n, s.value)
            for n, (_, s) in zip(names, results, strict=True)
            if s is not JobStatus.DONE
        ]
        if bad:
            raise RuntimeError(f"jobs did not succeed: {bad} (run with --verbose for the log)")
        return [when for when, _ in results]

    def reset_timings(self) -> None:
        with self.lock:
            self.run_seconds.clear()
            self.paint_seconds.clear()


def make_workspace(root: Path, state_dir: Path, case: Case) -> Workspace:
    """A workspace with the benchmark's profile for ``case`` (every key spelled out, none of
    the tests' defaults). Settings' own delays apply (no test speed-ups), and the daemon keeps
    its journal in the shared ``state_dir``."""
    profile = {
        "model": MODEL,
        "prompt": PROMPT,
        "sampler_name": SAMPLER,
        "steps": case.steps,
        "denoising_strength": STRENGTH,
        "cfg_scale": CFG_SCALE,
        "width": case.size,
        "height": case.size,
        "seed": SEED,
    }
    # max_batch 1: this measures the daemon's cost per image on top of the same pipeline
    # call, one image per call as the loop makes it (make bench shows what batching gains).
    base = {"state_dir": state_dir, "max_batch": 1}
    workspace = Workspace(root, state_dir, profile_base={}, settings_base=base)
    workspace.profile(PROFILE, **profile)
    return workspace


@contextlib.contextmanager
def running_daemon(settings: Settings, models: ModelCache) -> Iterator[tuple[Daemon, Probe]]:
    """The real daemon (observer, scheduler, main loop, worker) in a thread, as `img2imgd run`
    runs it (default tick), stopped on exit."""
    probe = Probe()
    daemon = Daemon(settings, models=models, observers=Observers(job_end=probe.job_ended))
    probe.attach(daemon)
    thread = threading.Thread(target=daemon.run_forever, name="bench-daemon", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    # The observer must be watching before the first drop, or that drop waits for a rescan.
    while not (daemon._watcher is not None and daemon._watcher.is_alive()):
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon's watcher did not start")
        time.sleep(0.01)
    try:
        yield daemon, probe
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)


# ------------------------------------------------------------------------------ 1. throughput


@dataclass
class PlainResult:
    seconds: float  # whole loop: load, pipeline, save
    pipe_seconds: float  # pipeline calls only
    outputs: dict[str, Path]
    others: float | None  # share of the CPU other processes used meanwhile


@dataclass
class DaemonResult:
    seconds: float  # first drop -> last input archived
    run_seconds: float  # sum of Worker.run (prepare + render + deliver)
    paint_seconds: float  # sum of the executor's render
    outputs: dict[str, Path]
    others: float | None


def prepare_pipeline(models: ModelCache) -> Any:
    """The warm img2img pipeline the daemon will use, with the profile's sampler on it."""
    from daemon.a1111.samplers import build_scheduler, parse_sampler

    pipe = models.pipeline(MODEL, "img2img")
    # The same scheduler class and flags the daemon builds per job, so both paths sample alike.
    pipe.scheduler = build_scheduler(parse_sampler(SAMPLER), pipe.scheduler.config)
    return pipe


def paint_plain(pipe: Any, image: Image.Image, case: Case) -> Image.Image:
    import torch

    generator = torch.Generator("cpu").manual_seed(SEED)  # as the daemon: a CPU generator
    with torch.inference_mode():
        result = pipe(
            prompt=PROMPT,
            negative_prompt=None,
            image=image,
            num_inference_steps=case.steps,
            strength=STRENGTH,
            guidance_scale=CFG_SCALE,
            num_images_per_prompt=1,
            generator=[generator],
        )
    return result.images[0]


def in_thread(action: Callable[[], T]) -> T:
    """Run ``action`` in a new, short-lived thread and return its result.

    Every torch call of the benchmark goes through here, never the main thread. libgomp
    gives each thread that runs a parallel region its own pool, which lives as long as that
    thread; while two pools exist on a 2-core machine their threads stop spinning between
    operators, and the daemon's worker measured 15-30% slower (idle machine, torch 2.13).
    `img2imgd run` uses torch only in its worker, so the benchmark must not add a second pool.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(action())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=target, name="bench-torch")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def plain_loop(pipe: Any, inputs: list[Path], out_dir: Path, case: Case) -> PlainResult:
    """What one would write without the daemon: load, paint, save, for each file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}
    pipe_seconds = 0.0
    meter = CpuMeter()
    start = time.monotonic()
    for path in inputs:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        before = time.monotonic()
        painted = paint_plain(pipe, image, case)
        pipe_seconds += time.monotonic() - before
        target = out_dir / path.name
        painted.save(target)
        outputs[path.name] = target
    seconds = time.monotonic() - start
    return PlainResult(seconds, pipe_seconds, outputs, meter.others())


def daemon_burst(
    workspace: Workspace, models: ModelCache, inputs: list[Path], warmups: list[Path]
) -> DaemonResult:
    """Drop every input one after another into a running daemon; time until all are archived."""
    settings = workspace.settings(stability_delay=THROUGHPUT_DELAY)
    folder = workspace.inbox / PROFILE
    with running_daemon(settings, models) as (_, probe):
        # One job first: the daemon's own first-job costs (profile parse, model hash, the
        # sampler module import) are start-up, like model loading, not per image.
        names = [f"warm_{path.name}" for path in warmups]
        for path, name in zip(warmups, names, strict=True):
            drop(path, folder / name)
        probe.wait_ended(names)
        time.sleep(MOVE_HOLD + 0.1)  # that first archive created _done/<profile>/: see MOVE_HOLD
        probe.reset_timings()
        meter = CpuMeter()
        start = time.monotonic()
        for path in inputs:
            drop(path, folder / path.name)
        ends = probe.wait_ended([path.name for path in inputs])
        seconds = max(ends) - start
        others = meter.others()
        run_seconds, paint_seconds = sum(probe.run_seconds), sum(probe.paint_seconds)
    outputs = {path.name: workspace.outbox / PROFILE / path.name for path in inputs}
    return DaemonResult(seconds, run_seconds, paint_seconds, outputs, others)


def max_pixel_difference(a: dict[str, Path], b: dict[str, Path]) -> int:
    """Largest per-channel difference between the two runs' outputs of the same inputs."""
    import numpy as np

    worst = 0
    for name, path in a.items():
        with Image.open(path) as first, Image.open(b[name]) as second:
            x = np.asarray(first.convert("RGB"), dtype=np.int16)
            y = np.asarray(second.convert("RGB"), dtype=np.int16)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


@dataclass
class CaseResult:
    case: Case
    images: int
    plain: PlainResult
    daemon: DaemonResult
    max_diff: int


def warm_up(pipe: Any, path: Path, case: Case) -> None:
    with Image.open(path) as opened:
        first = opened.convert("RGB")
    for _ in range(WARMUP_CALLS):
        paint_plain(pipe, first, case)


def measure_case(
    root: Path, state_dir: Path, models: ModelCache, pipe: Any, case: Case, images: int, rounds: int
) -> CaseResult:
    inputs = make_inputs(root / "inputs", case.size, images)
    in_thread(lambda: warm_up(pipe, inputs[0], case))
    best_plain: PlainResult | None = None
    best_daemon: DaemonResult | None = None
    # Alternate the two so a neighbour's burst of CPU use hits both alike; keep each one's
    # best round, the usual estimate of what the code costs on an undisturbed machine.
    for index in range(rounds):
        plain = in_thread(functools.partial(plain_loop, pipe, inputs, root / f"plain{index}", case))
        if best_plain is None or plain.seconds < best_plain.seconds:
            best_plain = plain
        workspace = make_workspace(root / f"daemon{index}", state_dir, case)
        result = daemon_burst(workspace, models, inputs, inputs[:1])
        if best_daemon is None or result.seconds < best_daemon.seconds:
            best_daemon = result
    assert best_plain is not None and best_daemon is not None
    diff = max_pixel_difference(best_plain.outputs, best_daemon.outputs)
    return CaseResult(case, images, best_plain, best_daemon, diff)


def per_image_ms(seconds: float, images: int) -> float:
    return seconds / images * 1000


def print_throughput(results: list[CaseResult], rounds: int) -> None:
    print("== 1. time per image: plain diffusers loop vs the daemon")
    print(
        f"pipeline warmed first ({WARMUP_CALLS} calls per setting), so model loading is not "
        f"counted; daemon: 1 warm-up job, then the burst;\nstability_delay {THROUGHPUT_DELAY} s, "
        f"tick {TICK} s, inotify observer; best of {rounds} round(s) each, alternating; torch "
        "only ever runs in one thread at a time"
    )
    header = (
        f"{'setting':<19}{'images':>7}{'plain ms/img':>14}{'daemon ms/img':>15}"
        f"{'overhead ms/img':>17}{'overhead':>10}{'max px diff':>13}{'others CPU':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        plain = per_image_ms(r.plain.seconds, r.images)
        daemon = per_image_ms(r.daemon.seconds, r.images)
        others = f"{share(r.plain.others)}/{share(r.daemon.others)}"
        print(
            f"{r.case.label:<19}{r.images:>7}{plain:>14.1f}{daemon:>15.1f}"
            f"{daemon - plain:>17.1f}{(daemon - plain) / plain:>10.1%}{r.max_diff:>13}"
            f"{others:>12}"
        )
    print()
    print("where the time per image goes (ms; same best rounds as above)")
    header = (
        f"{'setting':<19}{'plain pipe()':>13}{'load+save':>11}{'daemon paint()':>16}"
        f"{'run()-paint()':>15}{'outside run()':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        n = r.images
        plain_io = r.plain.seconds - r.plain.pipe_seconds
        rest_of_run = r.daemon.run_seconds - r.daemon.paint_seconds
        outside = r.daemon.seconds - r.daemon.run_seconds
        print(
            f"{r.case.label:<19}{per_image_ms(r.plain.pipe_seconds, n):>13.1f}"
            f"{per_image_ms(plain_io, n):>11.1f}{per_image_ms(r.daemon.paint_seconds, n):>16.1f}"
            f"{per_image_ms(rest_of_run, n):>15.1f}{per_image_ms(outside, n):>15.1f}"
        )
    print(
        "pipe(): the diffusers call alone; load+save: the plain loop's PIL open and PNG save;\n"
        "paint(): resize + scheduler build + the same call; run()-paint(): checks, decode, PNG\n"
        "and .txt writes (fsync'd); outside run(): archive to _done, queue hand-off, idle gaps.\n"
        "max px diff 0: the daemon wrote exactly the plain loop's pixels. others CPU: share of\n"
        "the machine other processes used during the plain / daemon measurement."
    )
    print()


# ------------------------------------------------------------------------------ 2. latency


@dataclass(frozen=True)
class Scenario:
    label: str
    delay: float
    polling: bool = False
    slow_write: bool = False
    # Drop 0.1 s after the daemon archived a file into a _done/ folder it had to create
    # (the first file of a profile or of a sub-folder). move_into() creates the folder and
    # renames into it at once; watchdog adds the new folder's watch only when its thread gets
    # to the folder's creation event. When the rename wins that race it is seen as a move
    # *out* with no move in, and watchdog holds it, and every event after it, for MOVE_HOLD.
    after_new_archive: bool = False

    def expected(self) -> str:
        """What the design allows, to read the measured numbers against."""
        if self.polling:
            low, high = self.delay, self.delay + POLL_INTERVAL + 2 * TICK
            return f"{low * 1000:.0f}–{high * 1000:.0f}"
        if self.after_new_archive:
            held = (MOVE_HOLD - NEW_ARCHIVE_GAP) * 1000
            return f"0–{TICK * 1000:.0f}, ~{held:.0f} if held"
        return f"0–{TICK * 1000:.0f} (1 tick)"


NEW_ARCHIVE_GAP = 0.1  # s between that archive and the measured drop


def scenarios(delays: tuple[float, ...]) -> list[Scenario]:
    found = []
    for delay in delays:
        found += [
            Scenario("renamed in (inotify move)", delay),
            Scenario("written slowly, closed", delay, slow_write=True),
            Scenario(f"polling {POLL_INTERVAL} s, renamed in", delay, polling=True),
        ]
    # The stability delay plays no part in it, so once is enough.
    found.append(Scenario("renamed in, after 1st archive", delays[0], after_new_archive=True))
    return found


def arrive(scenario: Scenario, source: Path, target: Path) -> float:
    return write_slowly(source, target) if scenario.slow_write else drop(source, target)


def measure_latency(
    root: Path, state_dir: Path, models: ModelCache, scenario: Scenario, drops: int, seed: int
) -> tuple[list[float], float | None]:
    """Seconds from file complete to job start, one per drop, each into an idle daemon."""
    # The smallest job: only the start time matters here.
    workspace = make_workspace(root, state_dir, CASES[0])
    profile_folder = workspace.inbox / PROFILE
    source = make_inputs(root / "inputs", CASES[0].size, 1)[0]
    settings = workspace.settings(
        stability_delay=scenario.delay, polling=scenario.polling, poll_interval=POLL_INTERVAL
    )
    pauses = random.Random(seed)
    latencies = []
    meter = CpuMeter()
    with running_daemon(settings, models) as (_, probe):
        drop(source, profile_folder / "warm.png")  # its archive creates _done/<profile>/
        probe.wait_ended(["warm.png"])
        time.sleep(MOVE_HOLD + 0.1)
        for index in range(drops):
            folder = profile_folder
            if scenario.after_new_archive:
                folder = profile_folder / f"batch{index:02d}"  # a new _done/ folder each time
                folder.mkdir()
                time.sleep(0.1)  # let the watcher add the new inbox folder's watch
                first = f"first_{index:02d}.png"
                drop(source, folder / first)
                probe.wait_ended([first])
                time.sleep(NEW_ARCHIVE_GAP)
            else:
                # A random pause lands each drop at a different phase of the tick and the poll.
                time.sleep(pauses.uniform(0.05, 0.3))
            name = f"drop_{index:02d}.png"
            complete = arrive(scenario, source, folder / name)
            probe.wait_ended([name])  # idle again before the next drop
            latencies.append(probe.started[name] - complete)
    return latencies, meter.others()


LatencyRow = tuple[Scenario, list[float], float | None]


def print_latency(rows: list[LatencyRow]) -> None:
    print("== 2. drop-to-start latency (daemon idle; file complete -> the worker takes the job)")
    print(
        f"complete = os.replace returned, or the slow writer closed the file; tick {TICK} s; "
        "expected = what the design allows; each scenario: 1 warm-up drop first"
    )
    header = (
        f"{'how the file arrives':<30}{'stability_delay':>16}{'drops':>7}"
        f"{'median ms':>11}{'max ms':>9}{'expected ms':>24}{'others CPU':>12}"
    )
    print(header)
    print("-" * len(header))
    for scenario, values, others in rows:
        print(
            f"{scenario.label:<30}{scenario.delay:>14.1f} s{len(values):>7}"
            f"{statistics.median(values) * 1000:>11.0f}{max(values) * 1000:>9.0f}"
            f"{scenario.expected():>24}{share(others):>12}"
        )
    print()


def warn_if_disturbed(results: list[CaseResult], rows: list[LatencyRow]) -> None:
    shares = [x.others for r in results for x in (r.plain, r.daemon)]
    shares += [others for _, _, others in rows]
    worst = max((value for value in shares if value is not None), default=0.0)
    if worst > DISTURBED:
        print(
            f"NOTE: other processes used up to {worst:.0%} of the machine during a measurement;"
            " the affected rows are not\nreliable (torch's threads stall behind a busy "
            "neighbour). Run again on an idle machine."
        )


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=None, help="images per setting (24)")
    parser.add_argument(
        "--quick", action="store_true", help="6 images, 1 round, 2 drops, 0.5 s delay only"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "img2imgd-bench-state",
        help="where the built-in model is generated once and kept (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the daemon's log")
    args = parser.parse_args(argv)
    if args.images is not None and args.images < 1:
        parser.error("--images must be at least 1")
    return args


def timed_section(title: str, action: Callable[[], T]) -> T:
    start = time.monotonic()
    result = action()
    print(f"({title}: {time.monotonic() - start:.1f} s)", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    images = args.images or (6 if args.quick else 24)
    rounds = 1 if args.quick else 3
    drops = 2 if args.quick else 5
    delays = (0.5,) if args.quick else (0.5, 2.0)

    import torch

    threads = core_count()
    torch.set_num_threads(threads)  # as many as cores: the default may count host CPUs
    setup_logging(args.verbose)
    print_environment(threads)

    began = time.monotonic()
    models = ModelCache(models_dir=None, state_dir=args.state_dir, device="cpu")
    pipe = timed_section(
        "model build/load, not measured", lambda: in_thread(lambda: prepare_pipeline(models))
    )
    with tempfile.TemporaryDirectory(prefix="img2imgd-bench-") as tmp:
        root = Path(tmp)
        results = []
        for case in CASES:
            where = root / f"case{case.size}"
            measure = functools.partial(
                measure_case, where, args.state_dir, models, pipe, case, images, rounds
            )
            results.append(timed_section(case.label, measure))
        print_throughput(results, rounds)
        rows = []
        for index, scenario in enumerate(scenarios(delays)):
            latencies, others = measure_latency(
                root / f"latency{index}", args.state_dir, models, scenario, drops, seed=index
            )
            rows.append((scenario, latencies, others))
        print_latency(rows)
        warn_if_disturbed(results, rows)
    print(f"total {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
