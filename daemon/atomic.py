"""Writing files and folders so that nobody ever sees half of one.

Every writer of the daemon goes through here: outputs, videos, clip state, the hash cache,
the systemd unit, the label-embedding cache and the built-in model folders. A file is
written under a hidden temporary name in its destination folder, flushed to disk and
renamed into place (a rename within one folder is atomic); a folder is built the same way
and renamed whole.

The temporary name is ``.<name>.<pid>.tmp``: hidden (a dotfile), so the inbox watcher and
image viewers ignore it; the pid says which process left it. :func:`is_temporary` parses that
same pattern, so crash recovery removes exactly what an interrupted write left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from daemon.errors import is_held

_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")


def temporary_path(target: Path) -> Path:
    """The hidden name a write of `target` goes through before it is renamed into place."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def is_temporary(name: str) -> bool:
    """True for a name :func:`temporary_path` makes (any process's)."""
    return _TEMPORARY.match(name) is not None


@contextlib.contextmanager
def written_path(target: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield the temporary path for a writer that wants a path (an encoder, a library's
    ``save``); on success it is flushed and renamed to `target`, on failure removed.

    ``durable=False`` skips the fsyncs: for files that are cheap to lose (progress counts)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(target)
    try:
        yield temporary
        if durable:
            _fsync_file(temporary)
        replace_when_free(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


# A viewer, an antivirus scan or Photoshop that holds the target makes Windows refuse the
# rename (WinError 32 or 5) for a moment; waited for here a little, and beyond that the
# caller's storage-error path retries the whole write later (never the input's fault).
HELD_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8)  # s; about 1.5 s in all


def replace_when_free(source: Path, target: Path) -> None:
    """``os.replace``, tried again while another program holds `target`."""
    for wait in (*HELD_WAITS, None):
        try:
            os.replace(source, target)
            return
        except OSError as exc:
            if wait is None or not is_held(exc):
                raise
            time.sleep(wait)


@contextlib.contextmanager
def atomic_writer(target: Path, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Yield a binary file at the temporary name; on success it becomes `target`."""
    with written_path(target, durable=durable) as temporary, temporary.open("wb") as handle:
        yield handle


def write_bytes(target: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_writer(target, durable=durable) as handle:
        handle.write(data)


def write_text(target: Path, text: str, *, durable: bool = True) -> None:
    write_bytes(target, text.encode("utf-8"), durable=durable)


def copy_file(source: Path, target: Path) -> None:
    """A byte-for-byte copy of `source`, written like every output."""
    with source.open("rb") as reader, atomic_writer(target) as handle:
        shutil.copyfileobj(reader, handle, 1024 * 1024)


def build_folder(
    final: Path,
    build: Callable[[Path], None],
    *,
    complete: Callable[[Path], bool],
    stale_after: float = 3600.0,
) -> Path:
    """Run ``build(folder)`` in a temporary folder beside `final`, then rename it into place,
    so `final` exists only when whole. `complete(final)` says whether a folder is done.

    Two processes building at once both succeed; the loser discards its copy. Temporary
    folders of crashed builds older than `stale_after` seconds are removed on the way.
    """
    if complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final, stale_after)
    temporary = temporary_path(final)
    shutil.rmtree(temporary, ignore_errors=True)  # this process's own leftover
    temporary.mkdir()
    try:
        build(temporary)
        try:
            os.rename(temporary, final)  # atomic; replaces at most an empty folder
        except OSError:
            if not complete(final):  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def _remove_stale(final: Path, seconds: float) -> None:
    now = time.time()
    for path in final.parent.glob(f".{final.name}.*.tmp"):
        with contextlib.suppress(OSError):  # removed concurrently by another process
            if now - path.stat().st_mtime > seconds:
                shutil.rmtree(path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    # Read-write: Windows flushes a file only through a handle that may write to it.
    descriptor = os.open(path, os.O_RDWR)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable where the platform can: only where ``os.O_DIRECTORY``
    exists does a folder open as a file descriptor. Windows has none (a folder cannot be
    opened, so not flushed): there the rename is as durable as the filesystem makes it."""
    as_folder = getattr(os, "O_DIRECTORY", None)
    if as_folder is None:
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY | as_folder)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems (SMB, some FUSE) cannot fsync a folder; the rename stands
    finally:
        os.close(descriptor)
