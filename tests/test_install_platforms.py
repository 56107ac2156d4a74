"""Install on each system: ``init`` sets up a folder, ``install-service`` writes a systemd
unit, a launchd agent or a Windows logon task, and ``device: auto`` picks MPS on a Mac.

No Mac or Windows machine exists here: the launchd plist and the Task Scheduler XML are
generated on Linux (``--platform``) and checked field by field after parsing them back;
the daemon is started from the plist's own ProgramArguments and stopped with SIGTERM, as
launchd would. MPS is never run: ``torch``'s availability checks are faked.
"""

from __future__ import annotations

import plistlib
import signal
import subprocess
import sys
from pathlib import Path, PurePath
from xml.etree import ElementTree as ET

import pytest
import torch

from daemon.ops import launchd, logon_task
from daemon.ops.install import daemon_command
from daemon.ops.privacy import protected_folder_warnings
from daemon.ops.workspace import SHIPPED_PROFILES, set_up_folders
from daemon.render import device
from daemon.render.device import auto_device, dtype_name, enable_mps_fallback, pick_device
from tests.conftest import wait_for
from tests.test_cli import ENV, FAST, QUICK, cli, workspace

ROOT = Path(__file__).resolve().parents[1]
TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
SHIPPED = sorted(path.name for path in SHIPPED_PROFILES.glob("*.yaml"))


# ----------------------------------------------------------------------------- init


def test_init_sets_up_a_folder_with_the_shipped_profiles_and_is_idempotent(tmp_path):
    made = cli(tmp_path, "init")
    assert made.returncode == 0, made.stdout
    assert (tmp_path / "inbox").is_dir() and (tmp_path / "outbox").is_dir()
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == SHIPPED
    assert "img2img.yaml" in SHIPPED
    assert f"made {tmp_path / 'inbox'}" in made.stdout
    assert f"made {tmp_path / 'profiles' / 'img2img.yaml'}" in made.stdout

    edited = tmp_path / "profiles" / "img2img.yaml"
    edited.write_text("steps: 3\n")
    (tmp_path / "profiles" / "sketch.yaml").unlink()  # the user's choice: not restored
    again = cli(tmp_path, "init")
    assert again.returncode == 0, again.stdout
    assert "already exists; left as it is" in again.stdout and "made" not in again.stdout
    assert edited.read_text() == "steps: 3\n"
    assert not (tmp_path / "profiles" / "sketch.yaml").exists()


def test_the_checkout_profiles_are_the_shipped_ones():
    # One copy: the checkout's profiles/ links to the package's, which a wheel carries.
    assert (ROOT / "profiles").resolve() == SHIPPED_PROFILES
    assert "data/**/*" in (ROOT / "pyproject.toml").read_text()


def test_set_up_folders_reports_nothing_when_all_is_there(tmp_path):
    assert len(set_up_folders(tmp_path)) == 3 + len(SHIPPED)
    assert set_up_folders(tmp_path) == []


# --------------------------------------------------------------------------- device


def test_auto_prefers_cuda_then_mps_then_cpu():
    assert auto_device(cuda=True, mps=True) == "cuda"
    assert auto_device(cuda=False, mps=True) == "mps"
    assert auto_device(cuda=False, mps=False) == "cpu"


@pytest.mark.parametrize(
    ("where", "flow", "bf16", "expected"),
    [
        ("cpu", False, False, "float32"),
        ("cpu", True, True, "float32"),
        ("cuda", False, False, "float16"),
        ("cuda", True, False, "bfloat16"),
        ("mps", False, False, "float16"),
        ("mps", True, True, "bfloat16"),  # macOS 14+
        ("mps", True, False, "float32"),  # older macOS: fp16 would overflow
    ],
)
def test_dtype_per_device_and_family(where, flow, bf16, expected):
    assert dtype_name(where, flow=flow, mps_bf16=bf16) == expected


def test_auto_picks_mps_in_fp16_when_torch_says_mps_is_there(monkeypatch):
    # Fault injection: this machine has no MPS; torch is made to report one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == ("mps", torch.float16)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *_: True, raising=False)
    assert device.flow_dtype("mps") == torch.bfloat16
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *_: False, raising=False)
    assert device.flow_dtype("mps") == torch.float32
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == ("cpu", torch.float32)


def test_mps_fallback_is_set_on_macos_only_and_never_over_a_users_value():
    environ: dict[str, str] = {}
    assert enable_mps_fallback("linux", environ) is False and environ == {}
    assert enable_mps_fallback("darwin", environ) is True
    assert environ == {"PYTORCH_ENABLE_MPS_FALLBACK": "1"}
    mine = {"PYTORCH_ENABLE_MPS_FALLBACK": "0"}
    assert (
        enable_mps_fallback("darwin", mine) is False and mine["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"
    )


# --------------------------------------------------------------------------- macOS


def test_install_service_writes_a_launchd_agent_that_parses_back(tmp_path, state_dir):
    root = workspace(tmp_path / "studio", state_dir, {"img2img": FAST})
    home = tmp_path / "home"
    result = cli(root, "install-service", "--platform", "macos", env={**ENV, "HOME": str(home)})
    assert result.returncode == 0, result.stdout
    path = home / "Library/LaunchAgents/local.img2imgd.plist"
    agent = plistlib.loads(path.read_bytes())
    log = str(home / "Library/Logs/img2imgd.log")
    assert agent["Label"] == "local.img2imgd"
    assert agent["ProgramArguments"][1:] == [
        "-m", "daemon", "--config", str(root / "img2imgd.yaml"), "run"
    ]  # fmt: skip
    assert Path(agent["ProgramArguments"][0]).is_absolute()
    assert agent["WorkingDirectory"] == str(root)
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == log
    assert agent["ExitTimeOut"] == 300 and agent["ThrottleInterval"] == 10
    assert agent["ProcessType"] == "Interactive"
    assert agent["EnvironmentVariables"]["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"
    assert f"launchctl bootstrap gui/$(id -u) {path}" in result.stdout
    assert "launchctl bootout gui/$(id -u)/local.img2imgd" in result.stdout
    assert (home / "Library/Logs").is_dir()  # launchd does not create the log's folder


def test_the_agent_program_runs_in_the_foreground_and_stops_on_sigterm(tmp_path, state_dir):
    # As launchd runs it: its arguments, folder and environment, no fork; SIGTERM ends it.
    root = workspace(tmp_path, state_dir, {"img2img": FAST})
    command = daemon_command(root / "img2imgd.yaml", root)
    agent = plistlib.loads(
        launchd.agent_plist(program=command, working_dir=root, log_file=root / "log")
    )
    with open(agent["StandardOutPath"], "w") as log:
        process = subprocess.Popen(
            agent["ProgramArguments"], cwd=agent["WorkingDirectory"], stdout=log,
            stderr=subprocess.STDOUT,
            env={**ENV, **agent["EnvironmentVariables"]},
        )  # fmt: skip
        try:
            _wait_for_text(root / "log", "watching", process)
            process.send_signal(signal.SIGTERM)
            assert process.wait(QUICK) == 0  # KeepAlive's SuccessfulExit: not restarted
        finally:
            if process.poll() is None:
                process.kill()
    assert "SIGTERM received" in (root / "log").read_text()


def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: text in path.read_text() or process.poll() is not None, timeout=QUICK)
    assert text in path.read_text(), path.read_text()


# ------------------------------------------------------------------------- Windows


def test_install_service_writes_a_windows_logon_task_that_parses_back(tmp_path, state_dir):
    root = workspace(tmp_path, state_dir, {"img2img": FAST})
    env = {**ENV, "USERDOMAIN": "STUDIO", "USERNAME": "ada"}
    result = cli(root, "install-service", "--platform", "windows", env=env)
    assert result.returncode == 0, result.stdout
    path = root / "img2imgd-task.xml"
    data = path.read_bytes()
    assert data.startswith(b"\xff\xfe")  # UTF-16 with its byte order mark, as schtasks reads
    task = ET.fromstring(data)
    assert task.tag == f"{TASK}Task" and task.get("version") == "1.2"
    assert _text(task, "RegistrationInfo/URI") == "\\img2imgd"
    assert _text(task, "Triggers/LogonTrigger/UserId") == "STUDIO\\ada"
    assert _text(task, "Triggers/LogonTrigger/Enabled") == "true"
    assert _text(task, "Principals/Principal/UserId") == "STUDIO\\ada"
    assert _text(task, "Principals/Principal/LogonType") == "InteractiveToken"
    assert _text(task, "Principals/Principal/RunLevel") == "LeastPrivilege"
    for name, value in {
        "Hidden": "true", "ExecutionTimeLimit": "PT0S", "MultipleInstancesPolicy": "IgnoreNew",
        "DisallowStartIfOnBatteries": "false", "StopIfGoingOnBatteries": "false",
        "RestartOnFailure/Interval": "PT1M", "RestartOnFailure/Count": "999",
    }.items():  # fmt: skip
        assert _text(task, f"Settings/{name}") == value, name
    assert _text(task, "Actions/Exec/Arguments") == (
        f"-m daemon --config {root / 'img2imgd.yaml'} run"
    )
    assert _text(task, "Actions/Exec/WorkingDirectory") == str(root)
    assert f'schtasks /Create /XML "{path}" /TN img2imgd' in result.stdout


def test_the_task_runs_pythonw_and_quotes_arguments_as_windows_splits_them():
    assert logon_task.windowless_python(r"C:\img\.venv\Scripts\python.exe") == (
        r"C:\img\.venv\Scripts\pythonw.exe"
    )
    xml = logon_task.task_xml(
        program=[r"C:\img\.venv\Scripts\pythonw.exe", "--config", r"C:\My Art\img2imgd.yaml"],
        working_dir=r"C:\My Art",
        user="ada",
    )
    task = ET.fromstring(xml)
    assert _text(task, "Actions/Exec/Command") == r"C:\img\.venv\Scripts\pythonw.exe"
    assert _text(task, "Actions/Exec/Arguments") == r'--config "C:\My Art\img2imgd.yaml"'


def test_the_daemon_takes_ctrl_break_as_a_stop_signal_where_windows_has_it():
    from daemon.cli import STOP_SIGNALS

    assert "SIGBREAK" in STOP_SIGNALS  # CTRL_BREAK_EVENT; looked up, so absent here is fine


def _text(task: ET.Element, path: str) -> str | None:
    found = task.find("/".join(f"{TASK}{part}" for part in path.split("/")))
    assert found is not None, path
    return found.text


# ------------------------------------------------------------------- macOS privacy


def test_a_folder_under_desktop_gets_a_warning_on_macos_only():
    home = PurePath("/Users/ada")
    folders = {"inbox": home / "Desktop/in", "outbox": home / "img2imgd/outbox"}
    warnings = protected_folder_warnings(
        folders, platform="darwin", home=home, python="/Users/ada/img/.venv/bin/python"
    )
    assert len(warnings) == 1
    assert warnings[0].startswith("inbox: /Users/ada/Desktop/in is inside /Users/ada/Desktop")
    assert "Files and Folders" in warnings[0] and "/Users/ada/img/.venv/bin/python" in warnings[0]
    assert protected_folder_warnings(folders, platform="linux", home=home, python="p") == []
    clear = {"inbox": home / "DesktopArt/in", "state_dir": home / "Documents2"}
    assert protected_folder_warnings(clear, platform="darwin", home=home, python="p") == []


def test_without_console_streams_as_under_pythonw_the_log_goes_to_a_file(tmp_path, state_dir):
    # pythonw.exe starts Python with sys.stdout and sys.stderr set to None; imitated here.
    root = workspace(tmp_path, state_dir, {"img2img": FAST})
    windowless = "import sys; sys.stdout = sys.stderr = None; from daemon.cli import entry; entry()"
    result = subprocess.run(
        [sys.executable, "-c", windowless, "check"], cwd=root, env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=QUICK,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert "config and 1 profile(s) are valid: img2img" in (root / "img2imgd.log").read_text()
