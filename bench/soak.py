"""img2imgd soak test: drop files for a while, kill and restart the daemon, then account for all.

Not part of the pytest suite: it runs for minutes and its point is chance, not a fixed path.
A real ``img2imgd run`` subprocess watches a temporary inbox while this script

* drops uniquely named images at random intervals, arriving the ways real tools write them:
  a temporary name then a rename (Photoshop, browsers), slow writes in place through one open
  handle (copiers, sftp), plain copies (``cp``), now and then into a nested sub-folder, and
  now and then a deliberately bad file (text named ``.png``);
* kills the daemon every few seconds, mostly with SIGKILL (a crash, the OOM killer, a power
  cut as far as the process can tell) and sometimes with SIGTERM (systemd stop), and starts it
  again at once.

When the time is up the daemon gets to finish the backlog undisturbed, is stopped with SIGTERM,
and every input is accounted for exactly once: a good one archived in ``inbox/_done`` with
exactly one result (``<stem>.png`` + ``<stem>.txt``, no ``-1`` copy) in the outbox, a bad one
in ``inbox/_failed`` with its ``.error.txt``, nothing left in the inbox, no hidden temporaries.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak.py [--seconds 120] [--seed N] [--keep]

Exit status 0 when nothing was lost, duplicated, misrouted, left half-done or littered, else 1
with a diagnosis of every offending input (journal rows and daemon log lines).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

# Run as `python bench/soak.py`, Python puts bench/ on the path, not the project root: the
# workspace helper in tests/support (shared with the tests) is imported from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from daemon.atomic import is_temporary
from tests.support import workspace as shared

# The daemon imports diffusers lazily; a soak test must never wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "soak"
MODEL = "builtin:tiny-sd"
JOURNAL = "journal.sqlite3"  # daemon.ops.service.JOURNAL_NAME
LOG_NAME = "daemon.log"

DROP_GAP = (0.0, 0.3)  # s between two drops
# A restart costs ~10 s on a 2-core CPU (imports, then the model loads with the first job) and
# a job ~0.1 s, so a clock started at the spawn would kill almost only during start-up and
# never hit the moments that matter (outputs being written, inputs being archived). Most kills
# therefore come KILL_GAP after the restarted daemon finished its first job; a share comes
# EARLY after the spawn instead, to interrupt recovery and the model load too.
KILL_GAP = (1.0, 8.0)  # s after the daemon is working again
EARLY_SHARE = 0.2
EARLY = (0.0, 4.0)  # s after the spawn
WORKING_TIMEOUT = 30.0  # s; an empty inbox never shows a first job: kill anyway after this
SIGTERM_SHARE = 0.25  # the rest are SIGKILL
BAD_SHARE = 0.06  # text named .png
NESTED_SHARE = 0.12  # into a sub-folder of the profile folder
STYLES = ("rename", "slow", "copy")
STYLE_WEIGHTS = (4, 3, 3)
# Pauses of an in-place writer stay well under stability_delay: by the folder contract a file
# whose size and mtime are still moving is not complete, so a longer pause would be a test of
# the contract's limit, not of crash safety.
STABILITY_DELAY = 0.2
SLOW_PAUSE = (0.01, 0.05)
SLOW_CHUNK = 4096
SIGTERM_GRACE = 60.0  # s the daemon gets to finish the job in hand before a SIGKILL
DRAIN_TIMEOUT = 300.0  # s without progress on the backlog once the dropping stopped
WATCH = 0.2  # s between the chaos thread's checks that the daemon is still alive

NAME = re.compile(r"^(soak-\d{6})(-\d+)?(\..+)$")  # id, collision suffix, extensions


# ------------------------------------------------------------------------------ set-up


class Workspace(shared.Workspace):
    """The shared workspace, plus where the sources wait and where the daemon logs."""

    @property
    def sources(self) -> Path:
        return self.root / "sources"  # outside the inbox: what `cp` copies from

    @property
    def log(self) -> Path:
        return self.root / LOG_NAME


def model_cache() -> Path:
    """Where the tiny model lives between runs; generating it takes seconds, so keep it."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "img2imgd-soak"


def ensure_model(cache: Path) -> Path:
    from daemon.models.builtin import ensure_builtin  # imports torch only when it has to build

    folder = cache / "builtin"
    ensure_builtin("tiny-sd", folder)
    return folder


def make_workspace(root: Path, cache: Path) -> Workspace:
    """The folders, the profile and img2imgd.yaml; the daemon finds the built-in model in
    state/builtin, a link to ``cache/builtin`` (:func:`ensure_model`)."""
    profile = {
        "model": MODEL,
        "prompt": "soak",
        "sampler_name": "Euler",
        "steps": 4,
        "denoising_strength": 0.5,
        "max_pixels": 32 * 32,  # the job's cost is not the point: many jobs are
        "seed": -1,
    }
    config = {
        "stability_delay": STABILITY_DELAY,
        "retry_delay": 1.0,
        "rescan_interval": 2.0,
        "log_level": "INFO",
    }
    ws = Workspace(root, cache, profile_base=profile, settings_base=config).create()
    ws.sources.mkdir()
    ws.profile(PROFILE)
    ws.config_file()
    return ws


def make_sources(ws: Workspace, rng: random.Random, count: int = 16) -> list[Path]:
    """A pool of small noise images of mixed shapes and formats to drop copies of."""
    paths = []
    for index in range(count):
        width, height = rng.randint(24, 160), rng.randint(24, 160)
        pixels = rng.randbytes(width * height * 3)
        image = Image.frombytes("RGB", (width, height), pixels)
        extension = "jpg" if index % 4 == 3 else "png"
        path = ws.sources / f"source-{index:02d}.{extension}"
        if extension == "jpg":
            image.save(path, quality=90)
        else:
            image.save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ the daemon


def stamp() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


class DaemonProcess:
    """One ``img2imgd run`` at a time, its output appended to one log across restarts."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.started_at = 0.0
        self._run_offset = 0
        self._log: IO[str] = ws.log.open("a", buffering=1)

    def mark(self, text: str) -> None:
        # O_APPEND on both sides: our markers interleave with the daemon's lines, never tear them.
        self._log.write(f"=== soak {stamp()} {text}\n")

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(self.ws.config), "run"],
            cwd=self.ws.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.runs += 1
        self.started_at = time.monotonic()
        self.mark(f"started run {self.runs}, pid {self.proc.pid}")
        self._run_offset = self.ws.log.stat().st_size

    def working(self) -> bool:
        """True once this run has finished a job (done or failed), i.e. the model is loaded."""
        with self.ws.log.open("rb") as handle:
            handle.seek(self._run_offset)
            text = handle.read()
        return b" SUCCESS done " in text or b" FAILED " in text

    def exited(self) -> int | None:
        """The exit status if the process has ended by itself, else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, sig: signal.Signals, grace: float = SIGTERM_GRACE) -> tuple[int, bool]:
        """Send ``sig`` and wait for the exit; (status, had to escalate to SIGKILL)."""
        assert self.proc is not None
        up = time.monotonic() - self.started_at
        self.mark(f"{sig.name} pid {self.proc.pid} (run {self.runs}, up {up:.1f} s)")
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.mark(f"pid {self.proc.pid} still alive {grace:.0f} s after {sig.name}: SIGKILL")
            self.proc.kill()
            return self.proc.wait(), True
        self.mark(f"pid {self.proc.pid} exited with status {status}")
        return status, False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@dataclass
class Chaos:
    """What the killer thread did."""

    sigkill: int = 0
    sigterm: int = 0
    escalated: int = 0  # SIGTERMs that needed a SIGKILL after the grace time
    sigterm_status: Counter[int] = field(default_factory=Counter)
    unexpected: list[int] = field(default_factory=list)  # exit statuses nobody asked for


def chaos_loop(
    daemon: DaemonProcess, rng: random.Random, stop: threading.Event, chaos: Chaos
) -> None:
    """Kill the daemon at random moments and start it again at once, until ``stop``."""
    while not stop.is_set():
        if rng.random() < EARLY_SHARE:
            watch(daemon, stop, chaos, daemon.started_at + rng.uniform(*EARLY))
        else:
            watch(daemon, stop, chaos, daemon.started_at + WORKING_TIMEOUT, or_working=True)
            watch(daemon, stop, chaos, time.monotonic() + rng.uniform(*KILL_GAP))
        if stop.is_set():
            break
        if rng.random() < SIGTERM_SHARE:
            status, escalated = daemon.stop(signal.SIGTERM)
            chaos.sigterm += 1
            chaos.escalated += escalated
            chaos.sigterm_status[status] += 1
        else:
            daemon.stop(signal.SIGKILL)
            chaos.sigkill += 1
        daemon.start()


def watch(
    daemon: DaemonProcess,
    stop: threading.Event,
    chaos: Chaos,
    deadline: float,
    *,
    or_working: bool = False,
) -> None:
    """Wait until ``deadline`` (or the daemon is working, or ``stop``), restarting a daemon
    that died without being asked."""
    while not stop.is_set() and time.monotonic() < deadline:
        if or_working and daemon.working():
            return
        status = daemon.exited()
        if status is not None:  # a bug worth reporting; the soak goes on meanwhile
            daemon.mark(f"the daemon exited by itself with status {status}")
            chaos.unexpected.append(status)
            daemon.start()
        stop.wait(WATCH)


# ------------------------------------------------------------------------------ dropping


@dataclass
class Drop:
    """One input, as the manifest records it."""

    name: str  # soak-000123.png
    style: str  # rename | slow | copy | bad
    sub: str  # "" or the sub-folder below inbox/<profile>/
    at: float  # s since the start of the soak

    @property
    def ident(self) -> str:
        return self.name.split(".")[0]

    @property
    def good(self) -> bool:
        return self.style != "bad"

    @property
    def relative(self) -> str:
        """Where it lives below inbox/<profile>/ (and below _done/<profile>/ afterwards)."""
        return f"{self.sub}/{self.name}" if self.sub else self.name


class Dropper:
    def __init__(self, ws: Workspace, sources: list[Path], rng: random.Random) -> None:
        self.ws = ws
        self.sources = sources
        self.rng = rng
        self.manifest: list[Drop] = []
        self.t0 = time.monotonic()

    def drop_one(self) -> Drop:
        rng = self.rng
        index = len(self.manifest) + 1
        source = rng.choice(self.sources)
        style = "bad" if rng.random() < BAD_SHARE else rng.choices(STYLES, STYLE_WEIGHTS)[0]
        sub = ""
        if rng.random() < NESTED_SHARE:
            # Mostly folders that exist already, sometimes a brand-new two-level one: files
            # written into a folder the watcher has not armed yet are the racy case.
            sub = rng.choice([f"nest-{rng.randint(0, 3)}", f"new-{index:06d}/deeper"])
        suffix = ".png" if style == "bad" else source.suffix
        drop = Drop(f"soak-{index:06d}{suffix}", style, sub, time.monotonic() - self.t0)
        folder = self.ws.inbox / PROFILE / sub
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / drop.name
        # Recorded before the write: an input the daemon could see is always in the manifest.
        self.manifest.append(drop)
        if style == "bad":
            target.write_text("this is not an image, whatever its name says\n")
        elif style == "copy":
            shutil.copyfile(source, target)
        elif style == "rename":
            self._rename_in(source.read_bytes(), target)
        else:
            self._write_slowly(source.read_bytes(), target)
        return drop

    def _rename_in(self, data: bytes, target: Path) -> None:
        # Names the daemon must ignore until the rename: a hidden .tmp or a .part download.
        temporary = target.with_name(
            self.rng.choice([f".{target.name}.{os.getpid()}.tmp", f"{target.name}.part"])
        )
        with temporary.open("wb") as handle:
            handle.write(data)
        os.rename(temporary, target)

    def _write_slowly(self, data: bytes, target: Path) -> None:
        # One handle for the whole write: the close event is what says "complete".
        with target.open("wb") as handle:
            for start in range(0, len(data), SLOW_CHUNK):
                handle.write(data[start : start + SLOW_CHUNK])
                handle.flush()
                time.sleep(self.rng.uniform(*SLOW_PAUSE))

    def run(self, seconds: float) -> None:
        deadline = self.t0 + seconds
        while time.monotonic() < deadline:
            self.drop_one()
            time.sleep(self.rng.uniform(*DROP_GAP))


# ------------------------------------------------------------------------------ draining


def inbox_leftovers(ws: Workspace) -> list[Path]:
    """Files still in the inbox outside the _done and _failed trees."""
    left = []
    for folder, dirs, files in os.walk(ws.inbox):
        if Path(folder) == ws.inbox:
            dirs[:] = [d for d in dirs if d not in ("_done", "_failed")]
        left += [Path(folder) / name for name in files]
    return left


def drain(ws: Workspace, timeout: float) -> tuple[float, list[Path]]:
    """Wait until the inbox holds no inputs; (seconds waited, what is left when it gave up).

    It gives up after ``timeout`` seconds *without progress*: a backlog of hundreds of files
    on a busy 2-core machine may take minutes, and that is slowness, not a stuck daemon.
    """
    start = last_progress = time.monotonic()
    left = inbox_leftovers(ws)
    while left and time.monotonic() - last_progress < timeout:
        time.sleep(0.5)
        now_left = inbox_leftovers(ws)
        if len(now_left) < len(left):
            last_progress = time.monotonic()
        left = now_left
    return time.monotonic() - start, left


# ------------------------------------------------------------------------------ accounting


@dataclass
class Found:
    """Every file of one input id, by area, as paths relative to the area's profile root."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    inbox: list[str] = field(default_factory=list)
    outbox: list[str] = field(default_factory=list)


@dataclass
class Accounting:
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    offenders: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    done: int = 0
    failed: int = 0
    strays: list[Path] = field(default_factory=list)
    unknown: list[Path] = field(default_factory=list)

    def flag(self, category: str, drop: Drop, text: str) -> None:
        self.problems[category].append(drop.name)
        self.offenders[drop.name].append(f"{category}: {text}")

    def count(self, category: str) -> int:
        """Inputs with at least one problem of ``category``."""
        return len(set(self.problems.get(category, [])))


def index_files(ws: Workspace) -> tuple[dict[str, Found], list[Path], list[Path]]:
    """(files by input id, hidden temporaries anywhere, files that belong to no input)."""
    found: dict[str, Found] = defaultdict(Found)
    strays: list[Path] = []
    unknown: list[Path] = []
    areas = {
        "done": ws.inbox / "_done" / PROFILE,
        "failed": ws.inbox / "_failed" / PROFILE,
        "outbox": ws.outbox / PROFILE,
    }
    walks = [(area, root) for area, root in areas.items()]
    walks.append(("inbox", ws.inbox / PROFILE))
    for area, root in walks:
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if not path.is_file() and not path.is_symlink():
                continue
            relative = path.relative_to(root)
            if area == "inbox" and relative.parts[0] in ("_done", "_failed"):
                continue  # not reachable with inbox/<profile>, kept for safety
            if is_temporary(path.name) or path.name.startswith("."):
                strays.append(path)
                continue
            match = NAME.match(path.name)
            if match is None:
                unknown.append(path)
                continue
            getattr(found[match.group(1)], area).append(str(relative))
    # Anything outside the profile's trees (a wrong profile folder, the inbox root) is odd too.
    for path in ws.outbox.rglob("*"):
        if path.is_file() and path.relative_to(ws.outbox).parts[0] != PROFILE:
            (strays if path.name.startswith(".") else unknown).append(path)
    return found, strays, unknown


def account(ws: Workspace, manifest: list[Drop]) -> Accounting:
    found, strays, unknown = index_files(ws)
    result = Accounting(strays=strays, unknown=unknown)
    for drop in manifest:
        check_drop(drop, found.pop(drop.ident, Found()), result)
    for files in found.values():  # ids that were never dropped: a name invented
        for area in ("done", "failed", "inbox", "outbox"):
            result.unknown += [Path(area) / p for p in getattr(files, area)]
    return result


def check_drop(drop: Drop, files: Found, result: Accounting) -> None:
    stem_dir = f"{drop.sub}/" if drop.sub else ""
    inputs_done = [p for p in files.done if not p.endswith(".error.txt")]
    inputs_failed = [p for p in files.failed if ".error" not in Path(p).name]
    reports = [p for p in files.failed if ".error" in Path(p).name]
    images = [p for p in files.outbox if p.endswith(".png")]
    texts = [p for p in files.outbox if p.endswith(".txt")]
    if files.inbox:
        result.flag("lost", drop, f"still in the inbox: {files.inbox}")
    if inputs_done and inputs_failed:
        result.flag("duplicated", drop, f"in _done {inputs_done} AND _failed {inputs_failed}")
    elif len(inputs_done) > 1 or len(inputs_failed) > 1:
        result.flag("duplicated", drop, f"archived more than once: {inputs_done + inputs_failed}")
    if len(images) > 1 or len(texts) > 1:
        result.flag("duplicated", drop, f"more than one result: {sorted(files.outbox)}")
    if drop.good:
        check_good(drop, files, inputs_done, inputs_failed, images, texts, stem_dir, result)
    else:
        check_bad(drop, files, inputs_done, inputs_failed, reports, stem_dir, result)


def check_good(
    drop: Drop,
    files: Found,
    inputs_done: list[str],
    inputs_failed: list[str],
    images: list[str],
    texts: list[str],
    stem_dir: str,
    result: Accounting,
) -> None:
    if inputs_failed:
        result.flag("misrouted", drop, f"a good input failed: {inputs_failed}")
    if not inputs_done and not inputs_failed and not files.inbox:
        result.flag("lost", drop, "the input is nowhere: not in the inbox, _done or _failed")
    elif inputs_done and drop.relative not in inputs_done:
        result.flag("misrouted", drop, f"archived under another name: {inputs_done}")
    if inputs_done and not images:
        result.flag("lost", drop, "archived in _done but there is no result in the outbox")
    expected = f"{stem_dir}{drop.ident}"
    if images and f"{expected}.png" not in images:
        result.flag("misrouted", drop, f"the result has another name: {images}")
    if images and f"{expected}.txt" not in texts:
        result.flag("incomplete", drop, f"no {expected}.txt beside the result")
    if inputs_done and not inputs_failed:
        result.done += 1


def check_bad(
    drop: Drop,
    files: Found,
    inputs_done: list[str],
    inputs_failed: list[str],
    reports: list[str],
    stem_dir: str,
    result: Accounting,
) -> None:
    if files.outbox:
        result.flag("misrouted", drop, f"a bad input has results: {files.outbox}")
    if inputs_done:
        result.flag("misrouted", drop, f"a bad input was archived as done: {inputs_done}")
    if not inputs_failed and not inputs_done and not files.inbox:
        result.flag("lost", drop, "the input is nowhere: not in the inbox, _done or _failed")
    if inputs_failed and drop.relative not in inputs_failed:
        result.flag("misrouted", drop, f"failed under another name: {inputs_failed}")
    if inputs_failed and f"{stem_dir}{drop.ident}.error.txt" not in reports:
        result.flag("incomplete", drop, f"no .error.txt beside the failed input ({reports})")
    if len(reports) > 1:
        result.flag("duplicated", drop, f"more than one report: {reports}")
    if inputs_failed and not inputs_done:
        result.failed += 1


# ------------------------------------------------------------------------------ reporting


def journal_rows(ws: Workspace, name: str | None = None) -> list[dict[str, Any]]:
    path = ws.state / JOURNAL
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        if name is None:
            rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        else:
            rows = db.execute(
                "SELECT * FROM jobs WHERE inputs LIKE ? ORDER BY id", (f'%/{name}"%',)
            ).fetchall()
    finally:
        db.close()
    return [dict(row) for row in rows]


def job_seconds(rows: list[dict[str, Any]]) -> list[float]:
    """The daemon's own timing of every job it finished (the journal's ``seconds``)."""
    return [float(r["seconds"]) for r in rows if r["state"] == "done" and r["seconds"]]


def log_counts(ws: Workspace) -> Counter[str]:
    """What recovery and the worker said, counted from the daemon's log."""
    counts: Counter[str] = Counter()
    patterns = {
        "rerun": "interrupted mid-job; it runs again",
        "archived": "its results were complete; input archived",
        "still writing": "written moments ago; trying again",
        "tracebacks": "Traceback",
    }
    for line in ws.log.read_text(errors="replace").splitlines():
        for key, text in patterns.items():
            if text in line:
                counts[key] += 1
    return counts


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def summary_rows(
    args: argparse.Namespace,
    manifest: list[Drop],
    chaos: Chaos,
    result: Accounting,
    ws: Workspace,
    drained: float,
    final: int,
) -> list[tuple[str, str]]:
    styles = Counter(d.style for d in manifest)
    nested = sum(1 for d in manifest if d.sub)
    good = sum(1 for d in manifest if d.good)
    seconds = job_seconds(journal_rows(ws))
    # The first job of every run includes the model load: the median says what a job costs.
    timing = (
        f"{statistics.mean(seconds):.3f} (median {statistics.median(seconds):.3f}) over "
        f"{len(seconds)} jobs"
        if seconds
        else "-"
    )
    said = log_counts(ws)
    sigterm = ", ".join(f"status {s}: {n}" for s, n in sorted(chaos.sigterm_status.items()))
    arrival = ", ".join(f"{s} {styles[s]}" for s in (*STYLES, "bad")) + f"; nested {nested}"
    kills = chaos.sigkill + chaos.sigterm
    return [
        ("seconds", f"{args.seconds:g} dropping, then {drained:.1f} draining"),
        ("files dropped", f"{len(manifest)} (good {good}, bad {len(manifest) - good})"),
        ("  arrival", arrival),
        ("kills", f"{kills} (SIGKILL {chaos.sigkill}, SIGTERM {chaos.sigterm})"),
        ("  SIGTERM exits", f"{sigterm or '-'}; escalated to SIGKILL {chaos.escalated}"),
        ("  daemon died by itself", f"{len(chaos.unexpected)} {chaos.unexpected or ''}".rstrip()),
        ("  recovery (log)", f"reruns {said['rerun']}, archived after restart {said['archived']}"),
        ("  final SIGTERM", f"exit status {final}"),
        ("done", str(result.done)),
        ("failed", str(result.failed)),
        ("lost", str(result.count("lost"))),
        ("duplicated outputs", str(result.count("duplicated"))),
        ("misrouted", str(result.count("misrouted"))),
        ("incomplete", str(result.count("incomplete"))),
        ("stray temporaries", str(len(result.strays))),
        ("unknown files", str(len(result.unknown))),
        ("tracebacks in log", str(said["tracebacks"])),
        ("mean job seconds", timing),
    ]  # fmt: skip


def diagnose(ws: Workspace, manifest: list[Drop], result: Accounting) -> None:
    """For every offending input: what was found, its journal rows, its log lines."""
    by_name = {d.name: d for d in manifest}
    log_lines = ws.log.read_text(errors="replace").splitlines()
    for name, problems in result.offenders.items():
        drop = by_name[name]
        print(f"\n-- {name} ({drop.style}, sub {drop.sub or '-'}, dropped at {drop.at:.1f} s)")
        for problem in problems:
            print(f"   {problem}")
        for row in journal_rows(ws, name):
            print(
                f"   journal #{row['id']}: {row['state']} attempt {row['attempt']} "
                f"outputs {json.loads(row['outputs'])} reason {row['reason']!r}"
            )
        for number, line in enumerate(log_lines, 1):
            if drop.ident in line:
                print(f"   log:{number}: {line}")
    for path in result.strays:
        print(f"stray temporary: {path}")
    for path in result.unknown:
        print(f"unknown file: {path}")


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to drop files")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace and say where")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    # Separate streams: the drop sequence for a seed stays the same whatever the kills do.
    chaos_rng = random.Random(rng.random())
    print(f"== img2imgd soak: {args.seconds:g} s, seed {seed}", flush=True)
    cache = model_cache()
    ensure_model(cache)
    ws = make_workspace(Path(tempfile.mkdtemp(prefix="img2imgd-soak-")), cache)
    print(f"workspace {ws.root}", flush=True)
    sources = make_sources(ws, rng)
    daemon = DaemonProcess(ws)
    chaos = Chaos()
    stop = threading.Event()
    killer = threading.Thread(target=chaos_loop, args=(daemon, chaos_rng, stop, chaos))
    dropper = Dropper(ws, sources, rng)
    drained, left, status = 0.0, [], 0
    try:
        daemon.start()
        killer.start()
        dropper.run(args.seconds)
        stop.set()
        killer.join()
        (ws.root / "manifest.json").write_text(
            json.dumps([asdict(d) for d in dropper.manifest], indent=1)
        )
        if daemon.exited() is not None:
            daemon.start()
        daemon.mark("dropping stopped; draining")
        drained, left = drain(ws, DRAIN_TIMEOUT)
        if left:
            print(
                f"TIMEOUT: {len(left)} input(s) still in the inbox and none processed for "
                f"{DRAIN_TIMEOUT:.0f} s, e.g. {[str(p.relative_to(ws.inbox)) for p in left[:5]]};"
                f" the daemon is stuck (see {ws.log})",
                flush=True,
            )
        status, _ = daemon.stop(signal.SIGTERM)
        if status != 0:
            print(f"the final SIGTERM ended the daemon with status {status}, not 0")
    finally:
        stop.set()
        if killer.is_alive():
            killer.join()
        daemon.close()
    result = account(ws, dropper.manifest)
    print()
    print_table(summary_rows(args, dropper.manifest, chaos, result, ws, drained, status))
    bad = (
        sum(result.count(c) for c in ("lost", "duplicated", "misrouted", "incomplete"))
        + len(result.strays)
        + len(result.unknown)
        + len(chaos.unexpected)
        + bool(left)
        + (status != 0)
    )
    if bad:
        diagnose(ws, dropper.manifest, result)
    if args.keep or bad:
        print(f"\nworkspace kept: {ws.root} (daemon log {ws.log.name}, manifest.json)")
    else:
        shutil.rmtree(ws.root, ignore_errors=True)
    print("\nFAIL" if bad else "\nOK: every input accounted for exactly once")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
