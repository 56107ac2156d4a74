"""``img2imgd status``: what the daemon is doing, read from its journal (also while it runs)."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.deliver.journal import Entry, open_read_only
from daemon.deliver.recovery import lock_owner
from daemon.intake.jobs import JobStatus

IN_HAND = (JobStatus.RUNNING, JobStatus.WRITING, JobStatus.WRITTEN)


def status_report(
    state_dir: Path, journal_name: str, *, recent: int = 10, now: float | None = None
) -> str:
    now = time.time() if now is None else now
    owner = lock_owner(state_dir)
    lines = [f"img2imgd is running (pid {owner})" if owner else "img2imgd is not running"]
    journal = open_read_only(state_dir / journal_name)
    if journal is None:
        lines.append("no jobs yet (no journal in " + str(state_dir) + ")")
        return "\n".join(lines) + "\n"
    try:
        queued = journal.recent(100_000, states=(JobStatus.QUEUED,)) if owner else []
        in_hand = journal.recent(1, states=IN_HAND) if owner else []
        latest = journal.recent(
            recent, states=(JobStatus.DONE, JobStatus.FAILED, JobStatus.DEFERRED)
        )
        failures = journal.recent(5, states=(JobStatus.FAILED,))
        counts = journal.counts(since=now - 24 * 3600)
    finally:
        journal.close()
    lines.append(f"queue: {len(queued)} waiting" + (f", next {queued[-1].label}" if queued else ""))
    if in_hand:
        job = in_hand[0]
        started = f" for {now - job.started_at:.0f} s" if job.started_at else ""
        lines.append(f"now:   {job.label} ({job.state.value}{started})")
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


def _line(entry: Entry) -> str:
    when = time.strftime("%m-%d %H:%M:%S", time.localtime(entry.finished_at or entry.queued_at))
    detail = (
        f"{entry.seconds:.1f} s"
        if entry.state is JobStatus.DONE and entry.seconds
        else entry.reason
    )
    return f"{when}  {entry.state.value:<8}  {entry.label}  {detail}".rstrip()
