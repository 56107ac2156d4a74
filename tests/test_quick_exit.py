"""The process's own exit after its work: exit handlers run, streams are flushed, the exit
code is kept; while another non-daemon thread runs, Python's ordinary exit waits for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from daemon.ops.quick_exit import end_process

marker = Path(sys.argv[1])
atexit.register(lambda: marker.with_suffix(".atexit").write_text("ran"))
sys.stdout.write("buffered, no newline")  # a pipe: block-buffered until flushed
if sys.argv[2] == "thread":
    def late() -> None:
        time.sleep(0.3)
        marker.with_suffix(".thread").write_text("finished")
    threading.Thread(target=late).start()
end_process(3)
"""


def run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "marker"), mode],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_exit_handlers_run_streams_are_flushed_and_the_code_is_kept(tmp_path):
    done = run(tmp_path, "alone")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "marker.atexit").read_text() == "ran"


def test_a_running_non_daemon_thread_is_waited_for(tmp_path):
    done = run(tmp_path, "thread")
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "marker.thread").read_text() == "finished"
    assert (tmp_path / "marker.atexit").read_text() == "ran"
