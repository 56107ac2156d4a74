"""Running under systemd: the sd_notify protocol (the unit file: :mod:`daemon.ops.unit`).

sd_notify is one AF_UNIX datagram of ``KEY=VALUE`` lines to the socket named by
``$NOTIFY_SOCKET``; it is spoken here directly so the daemon needs neither libsystemd nor a
Python binding. Without ``NOTIFY_SOCKET`` (dev runs, tests) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Mapping

from loguru import logger

# systemd reads notifications into a buffer of a few KiB and drops what does not fit; a
# status line is for humans in `systemctl status`, so a long one is cut rather than lost.
_MAX_STATUS_BYTES = 1024
_SEND_TIMEOUT = 2.0  # s

_NEWLINES = re.compile(r"\s*[\r\n]+\s*")
# Looked up, not assumed: Python on Windows has no AF_UNIX (then nothing is sent).
_AF_UNIX: int | None = getattr(socket, "AF_UNIX", None)


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; a no-op without it (dev runs, tests)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        notify_socket = environ.get("NOTIFY_SOCKET", "") if _AF_UNIX is not None else ""
        self._address = _socket_address(notify_socket)
        self.enabled: bool = self._address is not None
        self._watchdog_usec = _positive_int(environ.get("WATCHDOG_USEC"))
        # systemd sets WATCHDOG_PID so a forked child that inherited the environment does not
        # believe it is the supervised process; unset means "whoever reads this".
        self._watchdog_pid = _positive_int(environ.get("WATCHDOG_PID"))
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._last_status: str | None = None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; False when disabled or the send failed. Never raises."""
        if self._address is None or _AF_UNIX is None or not fields:
            return False
        # A newline inside a field would smuggle in another KEY=VALUE; each field is one line.
        payload = "\n".join(_one_line(field) for field in fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._socket is None:
                    # Close-on-exec without SOCK_CLOEXEC (Linux only): Python makes every
                    # socket non-inheritable itself (PEP 446).
                    self._socket = socket.socket(_AF_UNIX, socket.SOCK_DGRAM)
                    # A datagram send blocks while the receiver's queue is full; a stuck
                    # receiver must not stall the main loop (and so the watchdog) for long.
                    self._socket.settimeout(_SEND_TIMEOUT)
                self._socket.sendto(payload, self._address)
            except OSError as exc:
                # Notification is advisory: losing systemd (daemon-reexec, a stale socket in a
                # dev shell) must never take the daemon down with it. The socket is recreated
                # on the next send in case it is the broken part.
                logger.debug("sd_notify {!r} failed: {}", fields, exc)
                self._close_locked()
                return False
        return True

    def ready(self, status: str = "") -> None:
        """READY=1: startup is complete (``Type=notify`` holds dependants until this)."""
        self._send_with_status("READY=1", status)

    def status(self, text: str) -> None:
        """STATUS=…, shown by ``systemctl status``; unchanged text is not resent."""
        text = _status_text(text)
        with self._lock:
            if text == self._last_status:
                return  # the main loop reports often; systemd needs only changes
        self._send_with_status(None, text)

    def stopping(self, status: str = "") -> None:
        """STOPPING=1: shutdown has begun (so systemctl shows "deactivating", not a hang)."""
        self._send_with_status("STOPPING=1", status)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before systemd's start/stop timeout kills us (from now)."""
        self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings, or None when the unit sets no WatchdogSec=.

        Half the timeout, as sd_watchdog_enabled(3) advises, so one late ping is not fatal.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def watchdog_ping(self) -> None:
        """WATCHDOG=1: the main loop is alive."""
        self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the sending socket (the next send opens a new one)."""
        with self._lock:
            self._close_locked()

    def _send_with_status(self, head: str | None, status: str) -> None:
        status = _status_text(status)
        fields = [head] if head else []
        if status:
            fields.append(f"STATUS={status}")
        if self.send(*fields) and status:
            with self._lock:
                self._last_status = status

    def _close_locked(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | None:
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace: no file, leading NUL byte
    if value.startswith("/"):
        return value
    # Empty, or a form this module does not speak (systemd 253+ also offers vsock:…).
    if value:
        logger.debug("NOTIFY_SOCKET={!r} is not a unix socket; not notifying", value)
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


def _one_line(text: str) -> str:
    return _NEWLINES.sub(" ", text).strip()


def _status_text(text: str) -> str:
    text = _one_line(text)
    encoded = text.encode("utf-8")
    if len(encoded) > _MAX_STATUS_BYTES:
        text = encoded[: _MAX_STATUS_BYTES - 3].decode("utf-8", "ignore") + "..."
    return text
