"""End the process without tearing its modules down.

With torch, diffusers and transformers loaded, Python's own teardown (freeing every module
and object one by one) takes 1-2 s on a 2-core machine, after the last output is written
and the last line logged: `img2imgd once` would make its caller wait for nothing. Every
output, the journal and the lock are closed by then (files are written to a temporary
name, fsynced and renamed), so what teardown still owes is the exit handlers (logging,
temporary folders) and the standard streams, and both are done here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def end_process(code: int) -> NoReturn:
    """Exit with ``code`` at once; the ordinary exit while another non-daemon thread runs
    (Python would wait for it)."""
    if any(thread.is_alive() and not thread.daemon for thread in _others()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter runs first when it exits
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or None
            stream.flush()
    os._exit(code)


def _others() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread is not threading.main_thread()]
