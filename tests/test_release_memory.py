"""Unloading gives memory back to the OS (daemon/render/memory.py): a heap left fragmented
by freed blocks around a few live ones is returned by ``release_memory``, where glibc's
``malloc`` would otherwise keep it resident (measured at full size by ``make test-real``)."""

from __future__ import annotations

import ctypes.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.render import memory

REPO = Path(__file__).resolve().parent.parent

# 100,000 blocks of 4 KiB (400 MB, each its own malloc), one in 16 kept alive: the freed
# ones between them cannot shrink the heap from its top, so free() alone returns nothing.
FRAGMENTED = r"""
import gc, json, re
from pathlib import Path
import torch  # release_memory's own import, done before the first measurement
from daemon.render.memory import release_memory

def resident():
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())[1]) * 1024

before = resident()
blocks = [bytearray(4096) for _ in range(100_000)]
kept = blocks[::16]
del blocks
gc.collect()
held = resident()
release_memory()
print(json.dumps({"before": before, "held": held, "after": resident(), "kept": len(kept)}))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_release_memory_returns_a_fragmented_heap_to_the_os() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENTED], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rss = json.loads(done.stdout)
    retained = rss["held"] - rss["before"]
    assert retained > 200e6, rss  # free() kept most of the 400 MB
    assert rss["after"] - rss["before"] < retained / 4, rss  # malloc_trim gave it back


def test_without_malloc_trim_release_memory_still_collects(monkeypatch) -> None:
    """musl, macOS, Windows: no malloc_trim to call, nothing fails."""
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    memory._malloc_trim.cache_clear()
    try:
        assert memory._malloc_trim() is None
        memory.release_memory()
    finally:
        memory._malloc_trim.cache_clear()
