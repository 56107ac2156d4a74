"""The daemon under systemd: notifications over a real socket, and the generated unit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import Workspace, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_daemon_notifies_ready_status_watchdog_and_stopping(
    workspace: Workspace, running, monkeypatch, tmp_path
):
    address = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    messages: list[str] = []

    def received(text: str) -> bool:
        while True:  # drain what has arrived; watchdog pings keep coming
            try:
                messages.append(receiver.recv(4096).decode())
            except BlockingIOError:
                break
        return any(text in message for message in messages)

    workspace.profile("img2img")
    daemon = running()
    wait_for(lambda: received("READY=1"))
    wait_for(lambda: received("WATCHDOG=1"))
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: received("STATUS=working on img2img/a.png"))
    wait_for(lambda: received("1 done"))
    daemon.stop_event.set()
    wait_for(lambda: received("STOPPING=1"))
    receiver.close()


def test_install_service_writes_a_user_unit(workspace: Workspace, tmp_path):
    workspace.profile("img2img")
    config = workspace.root / "img2imgd.yaml"
    config.write_text(
        f"inbox: {workspace.inbox}\noutbox: {workspace.outbox}\nprofiles: {workspace.profiles}\n"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "install-service", "--user"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "xdg/systemd/user/img2imgd.service").read_text()
    assert "Type=notify" in unit and f"--config {config}" in unit
    assert f"ReadWritePaths={workspace.inbox} {workspace.outbox}" in unit
    assert "systemctl --user enable --now img2imgd" in result.stdout
