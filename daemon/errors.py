"""The three kinds of failure, because each one is handled differently.

* :class:`InputError` — the file's own fault (not an image, truncated, bad per-image YAML).
  The job goes to ``_failed`` with a report; retrying would fail the same way.
* :class:`TransientError` — the process's fault (model missing, GPU out of memory, disk
  full, share gone). The input stays in the inbox and the job is retried later.
* :class:`ConfigError` — the daemon's configuration or a profile is wrong. Reported at
  start-up and by ``img2imgd check``; jobs for that profile wait until it is fixed.
"""

from __future__ import annotations


class Img2ImgdError(Exception):
    """Base of every error this package raises on purpose."""


class InputError(Img2ImgdError):
    """The input file (or one of its companions) is bad; the job fails and is archived."""


class UnreadableInput(InputError):
    """The file does not decode. It may be broken, or its writer may only have paused, so
    a file written moments ago gets a few more tries before it fails."""


class TransientError(Img2ImgdError):
    """Not the file's fault; the job is retried later and the input stays in the inbox."""


class ConfigError(Img2ImgdError):
    """The configuration or a profile is invalid; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]
