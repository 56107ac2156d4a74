"""sd_notify over real unix datagram sockets, and the generated unit file.

No mocks: a test binds the socket systemd would own and reads what the Notifier sent; the
unit file is checked line by line and, where systemd-analyze exists, by systemd itself.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config.settings import Settings
from daemon.ops.systemd import Notifier
from daemon.ops.unit import CUDA_DEVICES, enable_hint, install_unit, unit_file, writable_dirs

# AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
_MAX_SOCKET_PATH = 100

Receiver = tuple[socket.socket, dict[str, str]]  # the bound socket, and the environ naming it


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _assert_nothing_pending(sock: socket.socket) -> None:
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    sock.settimeout(2.0)


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sdn") as short:
        yield Path(short) / "notify.sock"


@pytest.fixture
def path_socket(socket_path: Path) -> Iterator[Receiver]:
    sock = _receiver(str(socket_path))
    try:
        yield sock, {"NOTIFY_SOCKET": str(socket_path)}
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[Receiver]:
    name = f"img2imgd-test-{secrets.token_hex(8)}"
    sock = _receiver("\0" + name)
    try:
        yield sock, {"NOTIFY_SOCKET": "@" + name}
    finally:
        sock.close()


# --- sd_notify ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_exact_datagrams(which: str, request: pytest.FixtureRequest) -> None:
    sock, environ = request.getfixturevalue(which)
    notifier = Notifier(environ)
    assert notifier.enabled

    notifier.ready("watching 3 profiles")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 3 profiles"
    notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    notifier.status("job a.png\n  2 queued\r\n")
    assert sock.recv(4096) == b"STATUS=job a.png 2 queued"
    notifier.stopping("finishing a.png")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=finishing a.png"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.extend_timeout(90)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"
    notifier.extend_timeout(0.25)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=250000"
    notifier.watchdog_ping()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.send("A=1", "B=2") is True
    assert sock.recv(4096) == b"A=1\nB=2"
    notifier.close()


def test_a_field_cannot_smuggle_in_another(
    path_socket: Receiver,
) -> None:
    sock, environ = path_socket
    Notifier(environ).status("ok\nREADY=1")
    assert sock.recv(4096) == b"STATUS=ok READY=1"


def test_long_status_is_cut(path_socket: Receiver) -> None:
    sock, environ = path_socket
    Notifier(environ).status("é" * 5000)
    datagram = sock.recv(65536)
    assert datagram.startswith(b"STATUS=\xc3\xa9")
    assert datagram.endswith(b"...")
    assert len(datagram) <= len(b"STATUS=") + 1024
    datagram.decode("utf-8")  # never cut inside a character


def test_status_is_not_resent_unchanged(path_socket: Receiver) -> None:
    sock, environ = path_socket
    notifier = Notifier(environ)
    notifier.status("idle")
    notifier.status("idle")
    notifier.status("idle\n")  # the same once collapsed
    notifier.status("job a.png")
    notifier.status("job a.png")
    notifier.status("idle")
    assert sock.recv(4096) == b"STATUS=idle"
    assert sock.recv(4096) == b"STATUS=job a.png"
    assert sock.recv(4096) == b"STATUS=idle"
    _assert_nothing_pending(sock)

    # READY/STOPPING carry a status too, and count as its last value.
    notifier.ready("watching")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching"
    notifier.status("watching")
    _assert_nothing_pending(sock)


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "20000000"})
    assert notifier.enabled is False
    assert notifier.send("READY=1") is False
    notifier.ready("x")
    notifier.status("x")
    notifier.stopping()
    notifier.extend_timeout(10)
    notifier.watchdog_ping()
    assert notifier.watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": ""}).enabled is False
    assert Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled is False


def test_default_environ_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().enabled is False


def test_dead_socket_returns_false_and_recovers(socket_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(socket_path)})
    assert notifier.enabled
    assert notifier.send("READY=1") is False  # nothing at that path
    notifier.ready("x")  # no exception either

    listener = _receiver(str(socket_path))
    listener.close()  # the file stays, nobody listens: ECONNREFUSED
    assert socket_path.exists()
    assert notifier.send("WATCHDOG=1") is False

    socket_path.unlink()
    listener = _receiver(str(socket_path))  # systemd back (e.g. after daemon-reexec)
    try:
        assert notifier.send("WATCHDOG=1") is True
        assert listener.recv(4096) == b"WATCHDOG=1"
    finally:
        listener.close()


def test_dead_abstract_socket_returns_false() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": f"@img2imgd-test-gone-{secrets.token_hex(8)}"})
    assert notifier.send("READY=1") is False


def test_failed_status_is_sent_again_later(socket_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(socket_path)})
    notifier.status("idle")  # lost: nobody listens yet
    listener = _receiver(str(socket_path))
    try:
        notifier.status("idle")
        assert listener.recv(4096) == b"STATUS=idle"
    finally:
        listener.close()


def test_concurrent_sends_arrive_whole(path_socket: Receiver) -> None:
    sock, environ = path_socket
    notifier = Notifier(environ)
    threads_n, each = 8, 50
    results: list[bool] = []

    def worker(index: int) -> None:
        for count in range(each):
            results.append(notifier.send(f"X_THREAD={index}", f"X_COUNT={count}"))

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(threads_n)]
    for thread in threads:
        thread.start()
    received = {sock.recv(4096) for _ in range(threads_n * each)}
    for thread in threads:
        thread.join()
    assert all(results) and len(results) == threads_n * each
    assert received == {
        f"X_THREAD={index}\nX_COUNT={count}".encode()
        for index in range(threads_n)
        for count in range(each)
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(
    path_socket: Receiver,
    extra: dict[str, str],
    expected: float | None,
) -> None:
    _, environ = path_socket
    assert Notifier({**environ, **extra}).watchdog_interval() == expected


# --- the unit file ------------------------------------------------------------------------


def _settings(root: Path, **overrides: Path) -> Settings:
    folders = {
        "inbox": root / "inbox",
        "outbox": root / "outbox",
        "profiles": root / "profiles",
        "state_dir": root / "state",
        "models_dir": root / "models",
        **overrides,
    }
    return Settings(**folders)


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def test_system_unit_has_every_directive(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    text = unit_file(
        exec_start=["/opt/img2imgd/.venv/bin/img2imgd", "run"],
        working_dir=tmp_path,
        settings=settings,
        user=False,
        service_user="sdworker",
    )
    d = _directives(text)
    assert _sections(text) == ["[Unit]", "[Service]", "[Install]"]
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == ["/opt/img2imgd/.venv/bin/img2imgd run"]
    assert d["WorkingDirectory"] == [str(tmp_path)]
    assert d["Restart"] == ["on-failure"]
    assert d["RestartSec"] == ["5"]
    assert d["KillMode"] == ["mixed"]
    assert d["KillSignal"] == ["SIGTERM"]
    assert d["TimeoutStopSec"] == ["300"]
    assert d["WatchdogSec"] == ["120"]
    assert "PYTHONUNBUFFERED=1" in d["Environment"]
    assert f"HF_HOME={tmp_path / 'state' / 'huggingface'}" in d["Environment"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == [f"{tmp_path}/inbox {tmp_path}/outbox {tmp_path}/state"]
    assert "ReadOnlyPaths" not in d  # profiles and models are read-only through strict
    assert d["ProtectHome"] == ["read-only"]
    assert d["PrivateTmp"] == ["yes"]
    assert d["UMask"] == ["0027"]
    assert d["DeviceAllow"][:5] == [
        "/dev/nvidia0 rw",
        "/dev/nvidiactl rw",
        "/dev/nvidia-uvm rw",
        "/dev/nvidia-uvm-tools rw",
        "/dev/nvidia-modeset rw",
    ]
    assert all(value.startswith("/dev/nvidia") for value in d["DeviceAllow"])
    assert "PrivateDevices" not in d  # it would hide the GPU
    assert "DevicePolicy" not in d  # auto: pseudo devices (/dev/null...) stay allowed
    assert "PrivateDevices=yes would hide" in text
    assert d["RequiresMountsFor"] == [f"{tmp_path}/inbox {tmp_path}/outbox"]
    assert d["After"] == ["network-online.target"]
    assert d["Wants"] == ["network-online.target"]
    assert d["User"] == ["sdworker"]
    assert d["WantedBy"] == ["multi-user.target"]
    assert text.startswith("# ")
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now img2imgd" in text
    for folder in ("profiles", "models"):
        assert f"{tmp_path}/{folder}" not in d["ReadWritePaths"][0]


def test_user_unit_differs(tmp_path: Path) -> None:
    text = unit_file(
        exec_start=["/usr/bin/python3", "-m", "daemon"],
        working_dir=tmp_path,
        settings=_settings(tmp_path),
        user=True,
        service_user="ignored",
    )
    d = _directives(text)
    assert "User" not in d
    assert d["WantedBy"] == ["default.target"]
    assert "systemctl --user daemon-reload && systemctl --user enable --now img2imgd" in text
    assert "loginctl enable-linger" in text
    assert "PrivateUsers=yes" in text  # the comment on what a user manager cannot apply


def test_system_user_defaults_to_the_sudo_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    text = unit_file(
        exec_start=["/usr/bin/python3"],
        working_dir=tmp_path,
        settings=_settings(tmp_path),
        user=False,
    )
    assert _directives(text)["User"] == ["alice"]


def test_quoting_of_spaces_percent_and_dollar(tmp_path: Path) -> None:
    odd = Path("/srv/my sd %n files")
    settings = _settings(odd)
    text = unit_file(
        exec_start=[f"{odd}/.venv/bin/python", "-m", "daemon", "--tag=$HOME", 'a"b\\c', ";", ""],
        working_dir=odd,
        settings=settings,
        user=False,
        service_user="u",
    )
    d = _directives(text)
    assert d["ExecStart"] == [
        '"/srv/my sd %%n files/.venv/bin/python" -m daemon --tag=$$HOME "a\\"b\\\\c" \\; ""'
    ]
    assert d["WorkingDirectory"] == ["/srv/my sd %%n files"]  # taken whole, never unquoted
    assert d["ReadWritePaths"] == [
        '"/srv/my sd %%n files/inbox" "/srv/my sd %%n files/outbox" "/srv/my sd %%n files/state"'
    ]
    assert d["RequiresMountsFor"] == ['"/srv/my sd %%n files/inbox" "/srv/my sd %%n files/outbox"']
    assert '"HF_HOME=/srv/my sd %%n files/state/huggingface"' in d["Environment"]


def test_relative_folders_are_taken_from_the_working_dir(tmp_path: Path) -> None:
    text = unit_file(
        exec_start=["/usr/bin/python3"],
        working_dir=tmp_path,
        settings=Settings(inbox=Path("in"), outbox=Path("in"), state_dir=Path("st")),
        user=True,
    )
    # inbox == outbox is listed once
    assert _directives(text)["ReadWritePaths"] == [f"{tmp_path}/in {tmp_path}/st"]


def test_folders_under_home_drop_protect_home(tmp_path: Path) -> None:
    home = Path("/home/alice/sd")
    text = unit_file(
        exec_start=["/usr/bin/python3"],
        working_dir=home,
        settings=_settings(tmp_path, outbox=home / "outbox"),
        user=True,
    )
    assert _directives(text)["ProtectHome"] == ["no"]
    assert "/home/alice/sd/outbox" in text.split("ProtectHome=no")[0].rsplit("[Service]")[1]

    root = unit_file(
        exec_start=["/usr/bin/python3"],
        working_dir=tmp_path,
        settings=_settings(tmp_path, state_dir=Path("/root/state")),
        user=False,
        service_user="root",
    )
    assert _directives(root)["ProtectHome"] == ["no"]

    # Only the writable folders matter: read-only models in a home are fine.
    models = unit_file(
        exec_start=["/usr/bin/python3"],
        working_dir=tmp_path,
        settings=_settings(tmp_path, models_dir=Path("/home/alice/models")),
        user=False,
        service_user="alice",
    )
    assert _directives(models)["ProtectHome"] == ["read-only"]


def test_profiles_inside_a_writable_folder_are_made_read_only(tmp_path: Path) -> None:
    text = unit_file(
        exec_start=["/usr/bin/python3"],
        working_dir=tmp_path,
        settings=_settings(tmp_path, profiles=tmp_path / "state" / "profiles"),
        user=False,
        service_user="u",
    )
    assert _directives(text)["ReadOnlyPaths"] == [f"-{tmp_path}/state/profiles"]


@pytest.mark.parametrize(
    "exec_start",
    [[], ["python3", "-m", "daemon"], ["/usr/bin/python3", "two\nlines"]],
)
def test_bad_exec_start_is_refused(tmp_path: Path, exec_start: list[str]) -> None:
    with pytest.raises(ValueError):
        unit_file(
            exec_start=exec_start, working_dir=tmp_path, settings=_settings(tmp_path), user=True
        )


def test_writable_dirs(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert writable_dirs(settings) == [tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"]


# --- systemd's own opinion ----------------------------------------------------------------

_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(_ANALYZE is None, reason="systemd-analyze is not installed")


def _odd_install(tmp_path: Path) -> tuple[Path, Settings]:
    """A working dir with a space and a % holding a real executable, and real folders."""
    base = tmp_path / "my sd %n dir"
    base.mkdir()
    python = base / "python"
    python.symlink_to(os.path.realpath(shutil.which("python3") or "/usr/bin/python3"))
    settings = _settings(base)
    for folder in writable_dirs(settings):
        folder.mkdir()
    return python, settings


def _verify(path: Path, *, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert _ANALYZE is not None
    env = dict(os.environ)
    if user:
        # The user manager wants a runtime dir; a container session may not have one.
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    command = [_ANALYZE, *(["--user"] if user else []), "verify", str(path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


@needs_analyze
@pytest.mark.parametrize("user", [False, True])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, user: bool) -> None:
    python, settings = _odd_install(tmp_path)
    text = unit_file(
        exec_start=[str(python), "-m", "daemon", "run", "--tag=$HOME"],
        working_dir=python.parent,
        settings=settings,
        user=user,
        service_user=None if user else "root",
    )
    path = install_unit(text, user=user, home=tmp_path / "home", system_dir=tmp_path / "etc")
    result = _verify(path, user=user, tmp_path=tmp_path)
    if user and "Failed to initialize manager" in result.stderr:
        pytest.skip(f"no user manager can be simulated here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert path.name not in result.stderr, result.stderr


@needs_analyze
def test_systemd_reads_the_quoted_path_back(tmp_path: Path) -> None:
    """systemd names the executable it parsed: proof the quoting and %% round-trip."""
    python, settings = _odd_install(tmp_path)
    missing = python.parent / "no such python"
    text = unit_file(
        exec_start=[str(missing), "-m", "daemon"],
        working_dir=python.parent,
        settings=settings,
        user=False,
        service_user="root",
    )
    path = install_unit(text, user=False, system_dir=tmp_path / "etc")
    result = _verify(path, user=False, tmp_path=tmp_path)
    assert result.returncode != 0
    assert f"Command {missing} is not executable" in result.stderr


# --- installing ---------------------------------------------------------------------------


def test_install_user_unit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = install_unit("[Unit]\n", user=True, home=home)
    assert path == home / ".config" / "systemd" / "user" / "img2imgd.service"
    assert path.read_text() == "[Unit]\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    again = install_unit("[Service]\n", user=True, home=home)  # replaces in place
    assert again == path
    assert path.read_text() == "[Service]\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["img2imgd.service"]  # no temp left


def test_install_system_unit(tmp_path: Path) -> None:
    system_dir = tmp_path / "etc" / "systemd" / "system"
    path = install_unit("x\n", user=False, name="img2imgd-gpu1.service", system_dir=system_dir)
    assert path == system_dir / "img2imgd-gpu1.service"
    assert path.read_text() == "x\n"


@pytest.mark.parametrize("name", ["img2imgd", "../evil.service", ".service"])
def test_install_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        install_unit("x", user=False, name=name, system_dir=tmp_path)


def test_enable_hint() -> None:
    user = enable_hint(Path("/home/a/.config/systemd/user/img2imgd.service"), user=True)
    assert "systemctl --user daemon-reload && systemctl --user enable --now img2imgd" in user
    assert "loginctl enable-linger $USER" in user
    assert "journalctl --user -u img2imgd -f" in user

    system = enable_hint(Path("/etc/systemd/system/img2imgd.service"), user=False)
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now img2imgd" in system
    assert "journalctl -u img2imgd -f" in system
    assert "--user" not in system and "linger" not in system


def test_cuda_devices_constant() -> None:
    assert "/dev/nvidia0" in CUDA_DEVICES and "/dev/nvidia-uvm" in CUDA_DEVICES


def test_the_header_names_the_module_that_writes_it(tmp_path: Path) -> None:
    """The header says which command and module generated the unit: that file must exist."""
    text = unit_file(
        exec_start=["/usr/bin/python3", "-m", "daemon", "run"],
        working_dir=tmp_path,
        settings=Settings(),
        user=True,
    )
    named = re.search(r"Generated by `img2imgd install-service` \((daemon/[\w/]+\.py)\)", text)
    assert named is not None
    assert (Path(__file__).parent.parent / named.group(1)).is_file()
