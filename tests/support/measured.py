"""A child process measured as a whole: wall time, peak RSS, and RSS at a chosen moment.

The peak is the kernel's own (``ru_maxrss`` from ``os.wait4`` for that pid), so it counts
every page the process ever held, however briefly. "RSS at a moment" is ``VmRSS`` read from
``/proc`` as soon as a marker line (e.g. the daemon's "loaded model … in") appears in the
child's output: its resident memory with the model loaded, before it starts painting.

RSS counts the pages of a memory-mapped file too (safetensors maps the checkpoint while
diffusers converts it): clean page cache the kernel can take back under pressure. So the
anonymous part (``RssAnon``, the process's own allocations) is also sampled at every poll,
and its largest value kept: a sampled peak, which can miss a spike shorter than a poll.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_POLL = 0.02  # s between looks at the child's output and state


@dataclass(frozen=True)
class Measured:
    returncode: int
    output: str
    seconds: float  # start to exit
    peak_rss: int  # bytes
    marked_rss: int | None  # bytes, when the marker appeared; None if it never did
    peak_anon: int  # bytes, the largest RssAnon sampled

    def seconds_in(self, pattern: str) -> float:
        """The number of seconds a log line reports (``pattern`` with one group)."""
        found = re.search(pattern, self.output)
        assert found, f"no line matching {pattern!r} in:\n{self.output[-3000:]}"
        return float(found[1])


def run_measured(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    marker: str | None = None,
    timeout: float = 1800,
) -> Measured:
    """Run `command` to its end, its output (stdout and stderr) into `log`."""
    started = time.monotonic()
    with open(log, "w+b") as out:
        popen = subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=out, stderr=out)
        marked: int | None = None
        peak_anon = 0
        while True:
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                break
            memory = _memory(popen.pid)
            peak_anon = max(peak_anon, memory.get("RssAnon", 0))
            if marker is not None and marked is None and marker in log.read_text(errors="replace"):
                marked = memory.get("VmRSS")
            if time.monotonic() - started > timeout:
                popen.send_signal(signal.SIGKILL)
            time.sleep(_POLL)
        popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(
        returncode=popen.returncode,
        output=log.read_text(errors="replace"),
        seconds=time.monotonic() - started,
        peak_rss=usage.ru_maxrss * 1024,  # KiB on Linux
        marked_rss=marked,
        peak_anon=peak_anon,
    )


def _memory(pid: int) -> dict[str, int]:
    """The process's ``VmRSS``, ``RssAnon``, … in bytes; empty once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = re.findall(r"^(\w+):\s+(\d+) kB", status, re.MULTILINE)
    return {name: int(kib) * 1024 for name, kib in found}


def mem_available() -> int:
    """Bytes the kernel says can be allocated without swapping (0 where unknown)."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return 0
    return int(found[1]) * 1024 if found else 0
