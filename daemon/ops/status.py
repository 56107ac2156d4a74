"""``img2imgd status``: what the daemon is doing, read from its journal (also while it runs),
and, with ``executor: ray``, its render workers and the requests no worker has taken yet
(from ``workers.json``, which the daemon rewrites every few seconds while it runs).

The work is counted in images: a video counts its frames (the journal keeps their number),
so a queued 24-frame video weighs 24 images in the queue and in the pace."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.atomic import write_text
from daemon.intake.jobs import JobStatus
from daemon.journal.journal import Entry, open_read_only
from daemon.journal.lock import lock_owner
from daemon.paths import escaped, shown
from daemon.render.executor import WorkerInfo

IN_HAND = (JobStatus.RUNNING, JobStatus.DISPATCHED, JobStatus.WRITING, JobStatus.WRITTEN)
WORKERS_NAME = "workers.json"
PACE_JOBS = 50  # the recent done jobs the time left is estimated from


def publish_workers(
    state_dir: Path, workers: list[WorkerInfo], waiting: Sequence[str] = ()
) -> None:
    """What `status` shows of the render workers and of the requests `waiting` for one;
    nothing (no file) when there is neither."""
    path = state_dir / WORKERS_NAME
    if not workers and not waiting:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    shown = {"workers": [dataclasses.asdict(worker) for worker in workers],
             "waiting": list(waiting)}  # fmt: skip
    write_text(path, json.dumps(shown, indent=1), durable=False)  # rewritten in seconds


def _published(state_dir: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """The workers and the labels waiting for one, as the daemon last wrote them."""
    try:
        shown = json.loads((state_dir / WORKERS_NAME).read_text())
    except (OSError, ValueError):
        return [], set()
    if isinstance(shown, list):  # written by a daemon from before the waiting list
        return shown, set()
    return list(shown.get("workers", [])), set(shown.get("waiting", []))


def worker_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"workers: {len(rows)}"] if rows else []
    for row in rows:
        state = "ready" if row["alive"] else "starting or restarting"
        models = ", ".join(row["models"]) or "none loaded"
        where = f"GPU {row['gpus']}" if row["gpus"] else ("CPU" if row["pid"] else "-")
        line = (
            f"  {row['name']}  {row['node']} {where}  pid {row['pid'] or '?'}"
            f"  {state}  {row['done']} done, {row['in_flight']} in hand  models: {models}"
        )
        if row["last_error"]:
            line += f"  last error: {escaped(row['last_error'])}"
        lines.append(line)
    return lines


def status_report(
    state_dir: Path, journal_name: str, *, recent: int = 10, now: float | None = None
) -> str:
    now = time.time() if now is None else now
    owner = lock_owner(state_dir)
    lines = [f"img2imgd is running (pid {owner})" if owner else "img2imgd is not running"]
    journal = open_read_only(state_dir / journal_name)
    if journal is None:
        lines.append(f"no jobs yet (no journal in {shown(state_dir)})")
        return "\n".join(lines) + "\n"
    try:
        queued = journal.recent(100_000, states=(JobStatus.QUEUED,)) if owner else []
        in_hand = journal.recent(20, states=IN_HAND) if owner else []
        latest = journal.recent(
            recent, states=(JobStatus.DONE, JobStatus.FAILED, JobStatus.DEFERRED)
        )
        failures = journal.recent(5, states=(JobStatus.FAILED,))
        paced = journal.recent(PACE_JOBS, states=(JobStatus.DONE,)) if owner else []
        counts = journal.counts(since=now - 24 * 3600)
    finally:
        journal.close()
    workers, waiting = _published(state_dir) if owner else ([], set())
    lines.append(queue_line(queued, in_hand, paced))
    for job in reversed(in_hand):
        lines.append(f"now:   {escaped(job.label)} ({_doing(job, waiting, now)})")
    lines += worker_lines(workers)
    lines.append(
        "last 24 h: "
        + ", ".join(
            f"{counts.get(s.value, 0)} {s.value}"
            for s in (JobStatus.DONE, JobStatus.FAILED, JobStatus.DEFERRED)
        )
    )
    if latest:
        lines.append("recent:")
        lines += [f"  {_line(entry)}" for entry in latest]
    if failures:
        lines.append("recent failures (reports in inbox/_failed/):")
        lines += [f"  {_line(entry)}" for entry in failures]
    return "\n".join(lines) + "\n"


def queue_line(queued: list[Entry], in_hand: list[Entry], paced: list[Entry]) -> str:
    """``queue: 3 waiting (26 images, counting a video's frames), next v/clip.mp4; about 52 s
    at the last 50 images' pace``."""
    line = f"queue: {len(queued)} waiting"
    images = sum(entry.images for entry in queued)
    if images != len(queued):
        line += f" ({images} images, counting a video's frames)"
    if queued:
        line += f", next {escaped(queued[-1].label)}"
    left = time_left(images + sum(entry.images for entry in in_hand), paced)
    return line + (f"; {left}" if left else "")


def _doing(job: Entry, waiting: set[str], now: float) -> str:
    """What an in-hand job is doing: its state, or waiting for a render worker (prepared and
    handed over, but no worker can take it: none is up, or every one is busy)."""
    started = f" for {now - job.started_at:.0f} s" if job.started_at else ""
    if job.state is JobStatus.RUNNING and _is_waiting(job.label, waiting):
        return f"waiting for a worker{started}"
    on = f" on {job.worker}" if job.worker and job.state is JobStatus.DISPATCHED else ""
    return f"{job.state.value}{on}{started}"


def _is_waiting(label: str, waiting: set[str]) -> bool:
    """`label`, or one of its frames (a video's requests are ``<label> frame <n>``)."""
    return label in waiting or any(w.startswith(f"{label} frame ") for w in waiting)


def pace(done: list[Entry]) -> float | None:
    """Seconds per image at these done jobs' pace (a video counts its frames): the spacing
    of their ends, which counts several workers and the overlap of preparing, painting and
    writing, but never more than their mean duration, which leaves out the idle time between
    bursts."""
    ended = sorted((entry.finished_at, entry.images) for entry in done if entry.finished_at)
    timed = [entry for entry in done if entry.seconds]
    estimates = []
    if timed:
        estimates.append(sum(e.seconds or 0.0 for e in timed) / sum(e.images for e in timed))
    if len(ended) >= 2:  # the first end only starts the clock: its images came before it
        after_first = sum(images for _, images in ended[1:])
        estimates.append((ended[-1][0] - ended[0][0]) / after_first)
    return min(estimates) if estimates else None


def time_left(images: int, done: list[Entry]) -> str:
    """The time `images` take at these done jobs' pace, as `status` says it ("about 4 min
    at the last 50 images' pace"); empty with nothing to do or no pace yet."""
    seconds_each = pace(done)
    if not images or seconds_each is None:
        return ""
    counted = sum(entry.images for entry in done)
    return f"about {_duration(images * seconds_each)} at the last {counted} images' pace"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _line(entry: Entry) -> str:
    when = time.strftime("%m-%d %H:%M:%S", time.localtime(entry.finished_at or entry.queued_at))
    detail = (
        f"{entry.seconds:.1f} s"
        if entry.state is JobStatus.DONE and entry.seconds
        else entry.reason
    )
    # Labels and reasons are escaped when recorded; again here for a journal written before
    # (escaping twice changes nothing).
    return f"{when}  {entry.state.value:<8}  {escaped(entry.label)}  {escaped(detail)}".rstrip()
