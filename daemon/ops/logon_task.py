"""The Windows per-user logon task for ``img2imgd run`` (Task Scheduler XML).

A logon task runs in the artist's own session, so it sees mapped drives and the user's
folders, which a Windows service (session 0, another account) does not. It runs the venv's
``pythonw.exe``: no console window; the daemon then logs to ``img2imgd.log`` in its working
folder (:func:`daemon.ops.windowless.redirect_missing_streams`). Task Scheduler restarts it
after a failure (``RestartOnFailure``). Ending the task is a hard kill (TerminateProcess):
no handler runs, and the journal requeues the job in hand on the next start.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import PureWindowsPath
from xml.etree import ElementTree as ET

TASK_NAME = "img2imgd"
NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"

# Settings in the schema's order. ExecutionTimeLimit PT0S: no limit (the default is 72 h,
# after which Task Scheduler would end the daemon). RestartOnFailure: its shortest interval
# is one minute and its largest count 999.
_SETTINGS: tuple[tuple[str, str], ...] = (
    ("MultipleInstancesPolicy", "IgnoreNew"),
    ("DisallowStartIfOnBatteries", "false"),
    ("StopIfGoingOnBatteries", "false"),
    ("AllowHardTerminate", "true"),
    ("StartWhenAvailable", "true"),
    ("RunOnlyIfNetworkAvailable", "false"),
    ("AllowStartOnDemand", "true"),
    ("Enabled", "true"),
    ("Hidden", "true"),
    ("RunOnlyIfIdle", "false"),
    ("WakeToRun", "false"),
    ("ExecutionTimeLimit", "PT0S"),
    ("Priority", "7"),
)


def windowless_python(executable: str) -> str:
    """``pythonw.exe`` beside ``python.exe`` (a venv's Scripts folder holds both)."""
    path = PureWindowsPath(executable)
    if path.name.lower() == "python.exe":
        return str(path.with_name("pythonw.exe"))
    return executable


def task_xml(*, program: Sequence[str], working_dir: str, user: str) -> bytes:
    """The task definition, UTF-16 as ``schtasks /Create /XML`` reads it."""
    if not program:
        raise ValueError("program is empty")
    ET.register_namespace("", NAMESPACE)
    task = ET.Element(_tag("Task"), version="1.2")
    info = ET.SubElement(task, _tag("RegistrationInfo"))
    _text(info, "Description", "img2imgd: the Stable Diffusion watch-folder daemon, at logon")
    _text(info, "URI", "\\" + TASK_NAME)
    trigger = ET.SubElement(ET.SubElement(task, _tag("Triggers")), _tag("LogonTrigger"))
    _text(trigger, "Enabled", "true")
    _text(trigger, "UserId", user)  # this user's logon only
    principal = ET.SubElement(ET.SubElement(task, _tag("Principals")), _tag("Principal"))
    principal.set("id", "Author")
    _text(principal, "UserId", user)
    _text(principal, "LogonType", "InteractiveToken")  # in the session: no password stored
    _text(principal, "RunLevel", "LeastPrivilege")
    settings = ET.SubElement(task, _tag("Settings"))
    for name, value in _SETTINGS:
        _text(settings, name, value)
    restart = ET.SubElement(settings, _tag("RestartOnFailure"))
    _text(restart, "Interval", "PT1M")
    _text(restart, "Count", "999")
    actions = ET.SubElement(task, _tag("Actions"), Context="Author")
    exec_ = ET.SubElement(actions, _tag("Exec"))
    _text(exec_, "Command", program[0])
    _text(exec_, "Arguments", subprocess.list2cmdline(list(program[1:])))
    _text(exec_, "WorkingDirectory", working_dir)
    ET.indent(task)  # for a person reading the file before registering it
    body = ET.tostring(task, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-16"?>\r\n' + body).encode("utf-16")


def create_hint(xml_file: str) -> str:
    """The PowerShell commands that register, start, stop and remove the task."""
    return "\n".join(
        [
            f'schtasks /Create /XML "{xml_file}" /TN {TASK_NAME}',
            f"schtasks /Run /TN {TASK_NAME}    # start it now (it starts at every logon)",
            f"schtasks /End /TN {TASK_NAME}    # stop it: a hard kill, the job in hand is "
            "requeued on the next start",
            f"schtasks /Delete /TN {TASK_NAME} /F",
        ]
    )


def _tag(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _text(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, _tag(name)).text = value
