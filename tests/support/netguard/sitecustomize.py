"""A network guard for child processes: put this folder first on PYTHONPATH.

Python imports ``sitecustomize`` at start-up, before any of the program's code, so from the
first line on every connect (``socket.connect``/``connect_ex``, hence ``create_connection``,
urllib, requests, httpx), datagram send (``sendto``) and name lookup (``getaddrinfo``) to a
host that is not loopback (or a Unix socket) raises :class:`NetworkBlocked` before the real
call is made, so no packet leaves, and is appended, one line each, to the file named by
``IMG2IMGD_NET_GUARD_LOG``. Libraries that swallow the error (and fall back to their cache)
still leave the line: a test asserts the file is empty.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback
from typing import Any

LOG = os.environ.get("IMG2IMGD_NET_GUARD_LOG", "")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlocked(OSError):
    """Raised instead of a network call to another host (an OSError, as a refused
    connection is, so callers handle it as they would a machine without network)."""


def _is_loopback(host: Any) -> bool:
    if host is None:  # getaddrinfo(None, port): the local wildcard, never a remote host
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False  # any other name would need a lookup: refused


def _refuse(what: str, host: Any) -> None:
    message = f"network guard: {what} to {host!r} refused (offline test)"
    if LOG:
        caller = "".join(traceback.format_stack(limit=6)[:-2]).replace("\n", " | ")
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(f"{message} :: {caller}\n")
    raise NetworkBlocked(message)


def _checked_address(self: socket.socket, address: Any, what: str) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        _refuse(what, address[0])


_connect, _connect_ex, _sendto = (
    socket.socket.connect,
    socket.socket.connect_ex,
    socket.socket.sendto,
)
_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    _checked_address(self, address, "connect")
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    _checked_address(self, address, "connect")
    return _connect_ex(self, address)


def _guarded_sendto(self: socket.socket, data: Any, *rest: Any) -> Any:
    _checked_address(self, rest[-1], "sendto")
    return _sendto(self, data, *rest)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_loopback(host):
        _refuse("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo
