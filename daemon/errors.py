"""The three kinds of failure, because each one is handled differently.

* :class:`InputError` — the file's own fault (not an image, truncated, bad per-image YAML).
  The job goes to ``_failed`` with a report; retrying would fail the same way.
* :class:`TransientError` — the process's fault (model missing, GPU out of memory, disk
  full, share gone, the file held by another program). The input stays in the inbox and the
  job is retried later.
* :class:`ConfigError` — the daemon's configuration or a profile is wrong. Reported at
  start-up and by ``img2imgd check``; jobs for that profile wait until it is fixed.

Any other exception is sorted into one of these by :func:`classify`, the only place that
decides whose fault a failure is.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass


class Img2ImgdError(Exception):
    """Base of every error this package raises on purpose."""


class InputError(Img2ImgdError):
    """The input file (or one of its companions) is bad; the job fails and is archived."""


class UnreadableInput(InputError):
    """The file does not decode. It may be broken, or its writer may only have paused, so
    a file written moments ago gets a few more tries before it fails."""


class TransientError(Img2ImgdError):
    """Not the file's fault; the job is retried later and the input stays in the inbox."""


class NotStarted(TransientError):
    """The daemon stopped before the job was sent to a render worker: it stays in the inbox
    and runs on the next start, as if it had never been taken."""


class Superseded(TransientError):
    """A live input's render stopped at a step because a newer version of it arrived."""


class ConfigError(Img2ImgdError):
    """The configuration or a profile is invalid; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class Fault(enum.Enum):
    """Whose fault a failure is, which decides what happens to the input."""

    INPUT = "input"  # the file's: it goes to _failed with a report
    PROCESS = "process"  # this process's or machine's: the input waits and is retried
    CONFIG = "config"  # the configuration's: the input waits until it is fixed


@dataclass(frozen=True)
class Verdict:
    fault: Fault
    reason: str
    retry_soon: bool = False  # a file that may still be being written: look again shortly
    foreseen: bool = True  # False: an exception nobody expected (worth its traceback)


UNEXPECTED_ERROR_TRIES = 3  # an unknown error blames the file only when it repeats
STILL_WRITING_TRIES = 3
RECENT_WRITE = 10.0  # s; an undecodable file this fresh may still be being written
# Errors of the storage, not of the file: a dropped share, a dying or full disk.
STORAGE_ERRNOS = frozenset(
    {errno.EIO, errno.ENOENT, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN, errno.ENOSPC}
)
# A file held by another program (a viewer, Photoshop, an antivirus scan, a sync client) or a
# permission: not the file's fault either. Windows reports a sharing or lock violation as
# EACCES (its winerror says which); macOS's privacy controls refuse with EPERM.
HELD_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EBUSY})
HELD_WINERRORS = frozenset({32, 33})  # ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION
HELD_ADVICE = (
    "another program holds the file, or img2imgd's user may not use it: close that program, "
    "or fix the permissions"
)


def is_held(exc: OSError) -> bool:
    """A file held by another program, or a permission refused: worth waiting for."""
    return exc.errno in HELD_ERRNOS or getattr(exc, "winerror", None) in HELD_WINERRORS


def is_storage_error(exc: BaseException) -> bool:
    """An error of the storage or of a held file: never the file's own fault."""
    return isinstance(exc, OSError) and (exc.errno in STORAGE_ERRNOS or is_held(exc))


def storage_reason(exc: OSError, text: str) -> str:
    """`text`, describing storage error `exc`, with what to do when the file is held."""
    return f"{text} ({HELD_ADVICE})" if is_held(exc) else text


def is_out_of_memory(exc: BaseException) -> bool:
    """A CPU ``MemoryError`` or a GPU out-of-memory error (torch's ``OutOfMemoryError``, or
    the RuntimeError older builds and other backends raise), told apart without torch."""
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in str(exc).lower()
    )


def classify(
    exc: BaseException, *, attempt: int = 0, age: float | None = None, name: str = "the input"
) -> Verdict:
    """The one place that decides whose fault `exc` is.

    `attempt` counts the earlier tries of the same input; `age` is how many seconds ago the
    input was last written (None: unknown). Out of memory, storage errors and anything
    unforeseen are the process's fault; an unforeseen error that keeps coming back on the
    same file is finally blamed on the file (`name` in the reason), so that one poison file
    cannot block a queue.
    """
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, UnreadableInput):
        fresh = age is not None and age < RECENT_WRITE and attempt + 1 < STILL_WRITING_TRIES
        if fresh:
            return Verdict(Fault.PROCESS, f"{reason} (written moments ago; trying again)", True)
        return Verdict(Fault.INPUT, reason)
    if isinstance(exc, InputError):
        return Verdict(Fault.INPUT, reason)
    if isinstance(exc, ConfigError):
        return Verdict(Fault.CONFIG, reason)
    if isinstance(exc, TransientError):
        return Verdict(Fault.PROCESS, reason)
    if is_out_of_memory(exc):
        return Verdict(Fault.PROCESS, f"out of memory ({type(exc).__name__}: {reason})")
    if isinstance(exc, OSError) and is_storage_error(exc):
        # Retried with a growing delay (each retry logged with this reason): a permission
        # that never comes keeps the input waiting in the inbox and says why; never fails it.
        return Verdict(Fault.PROCESS, f"storage error: {storage_reason(exc, reason)}")
    unexpected = f"unexpected {type(exc).__name__}: {reason}"
    if attempt + 1 < UNEXPECTED_ERROR_TRIES:
        return Verdict(Fault.PROCESS, unexpected, foreseen=False)
    tries = f"{name} failed {UNEXPECTED_ERROR_TRIES} times with an {unexpected}"
    return Verdict(Fault.INPUT, tries, foreseen=False)
