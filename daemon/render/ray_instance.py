"""Ray, connected the daemon's way: to a cluster, or to a private instance on this machine.

The private instance (``ray_address`` empty) is bound to 127.0.0.1 (a Ray head runs whatever
code it is sent, so it is never reachable from the network) and writes only into the state
folder: its sessions, logs and sockets go to ``state/ray`` (Ray's default is ``/tmp/ray``),
and it authenticates with a token made for this run and passed in the environment (Ray's
default writes one to ``~/.ray/auth_token``, which a service with ``ProtectHome=read-only``
cannot). Either way, what Ray says reaches the daemon's log in the daemon's own format: Ray's
Python warnings through loguru, and the render workers' lines through :func:`forward_worker_logs`
instead of Ray's raw, colour-prefixed copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from daemon.errors import ConfigError

INSTALL_HINT = "pip install 'img2imgd[ray]'"
LOOPBACK_ENVIRONMENT = (
    # Ray's node-IP lookup answers 127.0.0.1 instead of rewriting it to the interface address
    ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
    ("RAY_USAGE_STATS_ENABLED", "0"),  # a daemon does not report usage
)
# A unix socket path holds 107 bytes; Ray puts its sockets at
# <temp>/session_<YYYY-MM-DD_HH-MM-SS_µs>_<pid>/sockets/plasma_store: 64 bytes after <temp>.
SOCKET_PATH_MAX = 107
SOCKET_SUFFIX = 64
SESSIONS_KEPT = 3  # Ray never removes its session folders (logs): the newest few stay
WORKER_MARK = "img2imgd:"  # a render worker's own log line: img2imgd:<LEVEL>:<message>
LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def connected() -> bool:
    """Ray is imported and connected already (a test's cluster, or a caller's own)."""
    return "ray" in sys.modules and bool(sys.modules["ray"].is_initialized())


def connect(address: str, state_dir: Path) -> Any:
    """Ray, connected: to the cluster at `address` (``auto``, ``host:port``), or to a private
    instance on this machine whose files stay in `state_dir`."""
    if not address:  # set before Ray is imported: it reads them then
        for name, value in LOOPBACK_ENVIRONMENT:
            os.environ.setdefault(name, value)
        _private_token()
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # if Ray prints a worker line itself
    try:
        import ray
    except ImportError as exc:
        message = f"executor: ray needs Ray, which is not installed: {INSTALL_HINT}"
        raise ConfigError(message) from exc
    if ray.is_initialized():
        return ray
    route_ray_logging()
    options: dict[str, Any] = {"configure_logging": False}
    if address:
        ray.init(address=address, **options)
        logger.info("joined the Ray cluster at {}", address)
        return ray
    temp = ray_temp_dir(state_dir)
    prune_sessions(state_dir / "ray")
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        _temp_dir=str(temp),
        # Ray starts its workers at nice 15, behind any busy process of the machine;
        # painting is this machine's job.
        _system_config={"worker_niceness": 0},
        **options,
    )
    logger.info("started a private Ray instance on 127.0.0.1 (its logs: {})", state_dir / "ray")
    return ray


def _private_token() -> None:
    """Token authentication (Ray's default for a new cluster) with a token made for this run,
    in the environment that Ray's processes inherit: Ray then neither warns about the mode
    nor writes ``~/.ray/auth_token``. A mode or token the user set is kept."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def ray_temp_dir(state_dir: Path) -> Path:
    """Where the private instance keeps its sessions: ``state/ray``. When that path is too
    long for Ray's unix sockets, a short link in the temporary folder points there, so the
    files still live in the state folder."""
    home = state_dir / "ray"
    home.mkdir(parents=True, exist_ok=True)
    if _fits(home):
        return home
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:10]
    link = Path(tempfile.gettempdir()) / f"img2imgd-ray-{digest}"
    if not _fits(link):
        raise ConfigError(
            f"the state folder {state_dir} and the temporary folder {link.parent} are both "
            f"too long for Ray's sockets ({SOCKET_PATH_MAX} bytes): use a shorter state_dir"
        )
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} is in the way of Ray's link to {home}: remove it")
    if not (link.is_symlink() and link.resolve() == home.resolve()):
        link.unlink(missing_ok=True)  # a link to somewhere else
        link.symlink_to(home, target_is_directory=True)
    logger.info(
        "the state folder's path is too long for Ray's sockets; Ray reaches {} through the "
        "link {}",
        home, link,
    )  # fmt: skip
    return link


def _fits(temp: Path) -> bool:
    return len(os.fsencode(temp)) + SOCKET_SUFFIX <= SOCKET_PATH_MAX


def prune_sessions(folder: Path, keep: int = SESSIONS_KEPT) -> None:
    """Remove all but the newest `keep` sessions of the private instance (their logs)."""
    sessions = sorted(path for path in folder.glob("session_2*") if not path.is_symlink())
    for old in sessions[: max(0, len(sessions) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------- Ray's messages, our log


class _ToLoguru(logging.Handler):
    """Ray's own Python log records (its start-up warnings), as daemon log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname if record.levelname in LEVELS else "WARNING"
        logger.opt(exception=record.exc_info).log(level, "Ray: {}", record.getMessage())


def route_ray_logging() -> None:
    """Ray's logger (which prints to stderr in Ray's format) writes to the daemon's log."""
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers = [_ToLoguru(level=logging.WARNING)]
    ray_logger.setLevel(logging.WARNING)
    ray_logger.propagate = False


def forward_worker_logs(label_of: Callable[[str], str | None]) -> bool:
    """The render workers' output (which Ray streams to this process) into the daemon's log:
    each line with the worker's name (`label_of` its pid) at the level it was logged at.
    False when this Ray has no such hook: it then prints the lines itself, uncoloured."""
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray that moved it
        return False
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("img2imgd")
    dispatcher.add_handler("img2imgd", lambda batch: _log_batch(batch, label_of))
    return True


def stop_forwarding_worker_logs() -> None:
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    dispatcher.remove_handler("img2imgd")


def _log_batch(batch: dict[str, Any], label_of: Callable[[str], str | None]) -> None:
    pid = str(batch.get("pid") or "")
    if pid == "autoscaler" or not pid:  # Ray's periodic cluster summaries
        return
    who = label_of(pid) or _ray_process(batch, pid)
    plain = "WARNING" if batch.get("is_err") else "INFO"
    for line in batch.get("lines", []):
        level, message = worker_line(line, plain)
        if message.strip():
            logger.log(level, "{}: {}", who, message)


def _ray_process(batch: dict[str, Any], pid: str) -> str:
    name = batch.get("actor_name") or batch.get("task_name") or "Ray"
    return f"{name} pid {pid}" if pid.isdigit() else f"Ray {pid}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def worker_line(line: str, plain: str) -> tuple[str, str]:
    """(level, message) of a line a worker printed: its own log lines carry their level;
    anything else (a library's print or warning) gets `plain`. Colour codes are dropped."""
    line = _ANSI.sub("", line)
    if line.startswith(WORKER_MARK):
        level, _, message = line[len(WORKER_MARK) :].partition(":")
        if level in LEVELS:
            return level, message
    return plain, line


def worker_logging(level: str) -> None:
    """In a render worker: its log lines in the form :func:`worker_line` reads back."""
    logger.remove()
    # diagnose=False: a traceback shows the code, never the values of local variables
    # (prompts, paths, credentials), as in the daemon's own log.
    logger.add(
        sys.stderr, level=level, format=WORKER_MARK + "{level}:{message}", colorize=False,
        diagnose=False,
    )  # fmt: skip
