"""``img2imgd status``: what the daemon is doing, read from its journal (also while it runs),
and, with ``executor: ray``, its render workers (from ``workers.json``, which the daemon
rewrites every few seconds while it runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

from daemon.atomic import write_text
from daemon.deliver.journal import Entry, open_read_only
from daemon.deliver.recovery import lock_owner
from daemon.intake.jobs import JobStatus
from daemon.paths import escaped, shown
from daemon.render.executor import WorkerInfo

IN_HAND = (JobStatus.RUNNING, JobStatus.DISPATCHED, JobStatus.WRITING, JobStatus.WRITTEN)
WORKERS_NAME = "workers.json"
PACE_JOBS = 50  # the recent done jobs the time left is estimated from


def publish_workers(state_dir: Path, workers: list[WorkerInfo]) -> None:
    """What `status` shows of the render workers; nothing (no file) when there are none."""
    path = state_dir / WORKERS_NAME
    if not workers:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    rows = [dataclasses.asdict(worker) for worker in workers]
    write_text(path, json.dumps(rows, indent=1), durable=False)  # rewritten in seconds


def worker_lines(state_dir: Path) -> list[str]:
    try:
        rows = json.loads((state_dir / WORKERS_NAME).read_text())
    except (OSError, ValueError):
        return []
    lines = [f"workers: {len(rows)}"]
    for row in rows:
        state = "ready" if row["alive"] else "starting or restarting"
        models = ", ".join(row["models"]) or "none loaded"
        line = (
            f"  {row['name']}  {row['node']} GPU {row['gpus'] or '-'}  pid {row['pid'] or '?'}"
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
    following = f", next {escaped(queued[-1].label)}" if queued else ""
    queue = f"queue: {len(queued)} waiting{following}"
    left = time_left(len(queued) + len(in_hand), paced)
    lines.append(queue + (f"; {left}" if left else ""))
    for job in reversed(in_hand):
        started = f" for {now - job.started_at:.0f} s" if job.started_at else ""
        on = f" on {job.worker}" if job.worker and job.state is JobStatus.DISPATCHED else ""
        lines.append(f"now:   {escaped(job.label)} ({job.state.value}{on}{started})")
    if owner:
        lines += worker_lines(state_dir)
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


def pace(done: list[Entry]) -> float | None:
    """Seconds per job at these done jobs' pace: the spacing of their ends, which counts
    several workers and the overlap of preparing, painting and writing, but never more than
    their mean duration, which leaves out the idle time between bursts."""
    ends = sorted(entry.finished_at for entry in done if entry.finished_at)
    durations = [entry.seconds for entry in done if entry.seconds]
    estimates = [sum(durations) / len(durations)] if durations else []
    if len(ends) >= 2:
        estimates.append((ends[-1] - ends[0]) / (len(ends) - 1))
    return min(estimates) if estimates else None


def time_left(jobs: int, done: list[Entry]) -> str:
    """The time `jobs` take at these done jobs' pace, as `status` says it ("about 4 min at
    the last 50 jobs' pace"); empty with nothing to do or no pace yet."""
    seconds_each = pace(done)
    if not jobs or seconds_each is None:
        return ""
    return f"about {_duration(jobs * seconds_each)} at the last {len(done)} jobs' pace"


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
