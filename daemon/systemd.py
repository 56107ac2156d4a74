"""Running under systemd: the sd_notify protocol and the generated unit file.

sd_notify is one AF_UNIX datagram of ``KEY=VALUE`` lines to the socket named by
``$NOTIFY_SOCKET``; it is spoken here directly so the daemon needs neither libsystemd nor a
Python binding. Without ``NOTIFY_SOCKET`` (dev runs, tests) every call is a cheap no-op.

The unit file is generated rather than shipped because its folders (``ReadWritePaths=``,
``RequiresMountsFor=``) and its ``ExecStart=`` (the venv's interpreter) differ per install.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from loguru import logger

from daemon.config import Settings

DEFAULT_UNIT_NAME = "img2imgd.service"

# systemd reads notifications into a buffer of a few KiB and drops what does not fit; a
# status line is for humans in `systemctl status`, so a long one is cut rather than lost.
_MAX_STATUS_BYTES = 1024
_SEND_TIMEOUT = 2.0  # s

# The character devices CUDA opens. nvidia0 is the first GPU (more are added when present);
# nvidia-uvm(-tools) is unified memory, which every CUDA context needs; nvidia-modeset is
# opened by some driver versions at init.
CUDA_DEVICES = (
    "/dev/nvidia0",
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
)

# ProtectHome= covers these; a writable folder below them decides its value (see unit_file).
_HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; a no-op without it (dev runs, tests)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
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
        if self._address is None or not fields:
            return False
        # A newline inside a field would smuggle in another KEY=VALUE; each field is one line.
        payload = "\n".join(_one_line(field) for field in fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
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


# --- the unit file ------------------------------------------------------------------------


def unit_file(
    *,
    exec_start: Sequence[str],
    working_dir: Path,
    settings: Settings,
    user: bool,
    service_user: str | None = None,
) -> str:
    """The text of ``img2imgd.service`` for these folders; ``user`` makes a ``--user`` unit.

    Relative folders in ``settings`` are taken relative to ``working_dir``.
    """
    if not exec_start:
        raise ValueError("exec_start is empty")
    if not exec_start[0].startswith("/"):
        # systemd would look a bare name up in its own PATH, never the venv's.
        raise ValueError(f"ExecStart needs an absolute executable path, not {exec_start[0]!r}")
    working_dir = Path(os.path.abspath(working_dir))
    settings = settings.resolved(working_dir)
    writable = writable_dirs(settings)
    read_only = [
        folder
        for folder in (settings.profiles, settings.models_dir)
        if folder is not None and any(_is_under(folder, parent) for parent in writable)
    ]
    home_writable = [
        folder for folder in writable if any(_is_under(folder, root) for root in _home_roots())
    ]
    unit_name = DEFAULT_UNIT_NAME.removesuffix(".service")
    scope = "--user " if user else ""
    sudo = "" if user else "sudo "
    devices = [*CUDA_DEVICES, *_more_gpus()]
    hf_home = settings.state_dir / "huggingface"

    lines = [
        f"# {DEFAULT_UNIT_NAME}: the img2imgd watch-folder daemon as a systemd "
        + ("user service." if user else "system service."),
        "# Generated by `img2imgd` (daemon/systemd.py) for the folders of this install;",
        "# generate it again after moving folders rather than editing it, and put local",
        f"# changes in an override: systemctl {scope}edit {unit_name}",
        "# Enable and start it with:",
        f"#   {sudo}systemctl {scope}daemon-reload && {sudo}systemctl {scope}enable --now "
        f"{unit_name}",
    ]
    if user:
        lines.append(f"#   loginctl enable-linger {_user_name()}   # run without a login session")
    lines += [
        f"# Follow its log with: journalctl {scope}-u {unit_name} -f",
        "",
        "[Unit]",
        "Description=img2imgd: Stable Diffusion img2img watch-folder daemon",
        "# The folders may be network shares and models may come from the hub.",
        "After=network-online.target",
        "Wants=network-online.target",
        "# Do not start (or keep running) without the mounts the inbox and outbox live on.",
        "RequiresMountsFor=" + _path_list([settings.inbox, settings.outbox]),
        "",
        "[Service]",
        "# READY=1 once the watches are armed, STATUS= with the queue, WATCHDOG=1 from the",
        "# main loop. Only the main process may notify: worker threads share its pid anyway.",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=" + " ".join(_exec_word(arg) for arg in exec_start),
        "WorkingDirectory=" + _escape_specifiers(str(working_dir)),
    ]
    if not user:
        # A system unit would otherwise run as root, owning every output file.
        lines.append("User=" + _escape_specifiers(_unit_user(service_user)))
    lines += [
        "SyslogIdentifier=img2imgd",
        "Environment=PYTHONUNBUFFERED=1",
        "# Hub downloads go to the state folder: the home cache (~/.cache/huggingface) is",
        "# read-only under ProtectSystem=strict. Gated models need HF_TOKEN= in an override.",
        "Environment=" + _quote_word(f"HF_HOME={hf_home}", dollar=False),
        "Restart=on-failure",
        "RestartSec=5",
        "# First SIGTERM: the job in hand is finished (or requeued), then exit 0; the daemon",
        "# sends EXTEND_TIMEOUT_USEC while a long job finishes. mixed: SIGTERM to the main",
        "# process only, SIGKILL to everything left when the timeout runs out.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=300",
        "# A wedged main loop (no WATCHDOG=1 for this long) is killed and restarted.",
        "WatchdogSec=120",
        "",
        "# Hardening: the whole file system is read-only except the folders the daemon",
        "# writes; the profiles and models folders stay read-only.",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=" + _path_list(writable),
    ]
    if read_only:
        lines += [
            "# Nested inside a writable folder above, so made read-only again explicitly.",
            "ReadOnlyPaths=" + _path_list(read_only, missing_ok=True),
        ]
    if home_writable:
        lines += [
            "# ProtectHome=read-only is left off because "
            + ", ".join(str(folder) for folder in home_writable),
            "# is under /home, /root or /run/user. Nothing is lost: ProtectSystem=strict",
            "# already keeps every home read-only apart from ReadWritePaths= above.",
            "ProtectHome=no",
        ]
    else:
        lines.append("ProtectHome=read-only")
    lines += [
        "PrivateTmp=yes",
        "# Outputs are readable by the group, not by everyone.",
        "UMask=0027",
        "",
        "# CUDA. PrivateDevices=yes would hide the /dev/nvidia* nodes and break CUDA, so it is",
        "# not set. With any DeviceAllow= the default DevicePolicy=auto behaves like",
        '# "closed": only the listed devices plus the standard pseudo devices (/dev/null,',
        "# /dev/zero, /dev/full, /dev/random, /dev/urandom, /dev/tty, ptys) stay usable.",
        "# Nodes that do not exist (no GPU) are skipped with a warning in the journal; add",
        "# lines here for GPUs added later (/dev/nvidia1 rw, ...).",
        *(f"DeviceAllow={device} rw" for device in devices),
    ]
    if user:
        lines += [
            "# In a --user unit the manager has no privileges for mount namespaces or device",
            "# filters: unless PrivateUsers=yes is added (needs unprivileged user namespaces),",
            "# the ProtectSystem=/ProtectHome=/ReadWritePaths=/PrivateTmp=/DeviceAllow= lines",
            "# above are silently not applied. NoNewPrivileges= and UMask= always are.",
        ]
    lines += [
        "",
        "[Install]",
        "WantedBy=" + ("default.target" if user else "multi-user.target"),
        "",
    ]
    return "\n".join(lines)


def writable_dirs(settings: Settings) -> list[Path]:
    """The folders the daemon writes (inbox, outbox, state), without duplicates.

    They must exist before the service starts: systemd refuses to start a unit whose
    ``ReadWritePaths=`` are missing, and the daemon could not create them under
    ``ProtectSystem=strict``.
    """
    folders: list[Path] = []
    for folder in (settings.inbox, settings.outbox, settings.state_dir):
        if folder not in folders:
            folders.append(folder)
    return folders


def install_unit(
    text: str,
    *,
    user: bool,
    name: str = DEFAULT_UNIT_NAME,
    home: Path | None = None,
    system_dir: Path = Path("/etc/systemd/system"),
) -> Path:
    """Write the unit where the (user or system) manager looks; returns its path."""
    if "/" in name or not name.endswith(".service") or name == ".service":
        raise ValueError(f"not a service unit name: {name!r}")
    folder = _user_unit_dir(home) if user else system_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    # Temp file + rename: a reload never sees half a unit, and a failed write leaves the
    # previous unit as it was.
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; unit files are conventionally 0644
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def enable_hint(path: Path, *, user: bool) -> str:
    """The commands that load, enable, start and follow the unit at ``path``."""
    unit = shlex.quote(path.name.removesuffix(".service"))
    if user:
        return "\n".join(
            [
                f"systemctl --user daemon-reload && systemctl --user enable --now {unit}",
                "loginctl enable-linger $USER   # keep it running when you are not logged in",
                f"journalctl --user -u {unit} -f",
            ]
        )
    return "\n".join(
        [
            f"sudo systemctl daemon-reload && sudo systemctl enable --now {unit}",
            f"journalctl -u {unit} -f",
        ]
    )


def _user_unit_dir(home: Path | None) -> Path:
    if home is None:
        # The user manager looks in $XDG_CONFIG_HOME/systemd/user, which is ~/.config unless
        # the user moved it.
        config = os.environ.get("XDG_CONFIG_HOME", "")
        base = Path(config) if config.startswith("/") else Path.home() / ".config"
    else:
        base = home / ".config"
    return base / "systemd" / "user"


def _unit_user(service_user: str | None) -> str:
    name = service_user or _user_name()
    if not name or _CONTROL.search(name) or name != name.strip() or " " in name:
        raise ValueError(f"not a usable User= name: {name!r}")
    return name


def _user_name() -> str:
    # Under sudo the interesting user is the one who ran sudo, not root.
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _home_roots() -> list[Path]:
    # Also the resolved form, for systems where /home is a symlink (e.g. to /var/home).
    roots: list[Path] = []
    for root in _HOME_ROOTS:
        for form in (root, root.resolve()):
            if form not in roots:
                roots.append(form)
    return roots


def _is_under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _more_gpus() -> list[str]:
    """Device nodes of GPUs beyond the first, as present on this machine."""
    nodes = [str(node) for node in Path("/dev").glob("nvidia[0-9]*") if node.name[6:].isdigit()]
    return sorted((node for node in nodes if node != "/dev/nvidia0"), key=lambda n: int(n[11:]))


def _check_text(text: str) -> str:
    if _CONTROL.search(text):
        # Unit files are line based; a newline or NUL cannot be written into them.
        raise ValueError(f"control character in {text!r}; systemd cannot express it")
    return text


def _escape_specifiers(text: str) -> str:
    return _check_text(text).replace("%", "%%")  # %n, %h... are systemd specifiers


def _quote_word(text: str, *, dollar: bool) -> str:
    """One word for a systemd space-separated list, with its specifiers escaped.

    ``dollar`` escapes ``$`` too, for the settings that expand environment variables
    (ExecStart=). Double quotes group a word; inside them ``\\`` and ``"`` are escaped.
    """
    text = _escape_specifiers(text)
    if dollar:
        text = text.replace("$", "$$")
    if _PLAIN_WORD.fullmatch(text.replace("$", "")):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_word(arg: str) -> str:
    if arg == ";":
        return "\\;"  # a lone ; separates commands in ExecStart=; this is the documented escape
    return _quote_word(arg, dollar=True)


def _path_list(paths: Iterable[Path], *, missing_ok: bool = False) -> str:
    prefix = "-" if missing_ok else ""  # "-": ignore the entry when the path does not exist
    return " ".join(_quote_word(prefix + str(path), dollar=False) for path in paths)
