"""Giving memory back after a model is unloaded, to the GPU driver and to the OS.

Dropping the last reference frees a model's tensors inside the process, but that is not
memory the machine gets back: CUDA's caching allocator keeps its blocks (``empty_cache``
returns them), and glibc's malloc keeps freed heap pages for reuse. A pipeline is thousands
of tensors, most of them too small for malloc to give each its own mapping, so gigabytes
of an unloaded model stayed resident until ``malloc_trim`` asks glibc to return them.
Elsewhere (musl, macOS, Windows) there is no ``malloc_trim`` and nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any


def release_memory() -> None:
    """Collect cycles, empty CUDA's cache, and trim glibc's heap where there is one."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
