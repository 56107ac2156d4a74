"""Hostile names and what the daemon says about them: a file name is whatever bytes someone
gave it (newlines, carriage returns, terminal escape sequences); it is shown escaped in the
log, in ``status`` and in the reports, and an output gets a name every platform can hold.
Tracebacks show code, never the values of local variables."""

from __future__ import annotations

import subprocess
import sys

from daemon.ops.service import JOURNAL_NAME
from daemon.ops.status import status_report
from daemon.paths import escaped, portable_name, shown
from tests.conftest import Workspace, wait_for
from tests.support.media import make_test_clip
from tests.test_cli import ENV, FAST, JOBS, cli
from tests.test_cli import workspace as cli_workspace

# A name that would forge a log line (newline + a timestamp), set the terminal's title (OSC)
# and return the cursor (carriage return) if it were printed as it is.
FORGING = "cat\n03:12:09 SUCCESS done all\x1b]0;pwned\x07\rX"
FORGING_SHOWN = "cat\\n03:12:09 SUCCESS done all\\x1b]0;pwned\\x07\\rX"
SCREEN_CLEARING = "bad\x1b[2J\x1b[Hname"


def printable(text: str) -> bool:
    """Every line of `text` is free of control characters."""
    return all(line.isprintable() for line in text.split("\n"))


def test_names_are_shown_escaped_and_relative_where_shorter(monkeypatch, tmp_path):
    assert escaped(FORGING) == FORGING_SHOWN
    assert escaped("bad \udcff byte") == "bad \\xff byte"  # os.fsdecode's surrogate: the byte
    assert escaped(escaped(FORGING)) == escaped(FORGING)  # safe to apply again
    assert escaped("day 1/猫 photo.png") == "day 1/猫 photo.png"  # ordinary names as they are
    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path / "inbox" / "img2img") == "inbox/img2img"
    assert shown(tmp_path) == "."
    assert shown("/elsewhere/inbox") == "/elsewhere/inbox"  # outside: the full path is shorter


def test_output_names_are_portable_and_ordinary_ones_unchanged():
    for ordinary in ("chelsea", "frame_0012", "day 1", "猫 photo", "v1.2", ".hidden", "COM10"):
        assert portable_name(ordinary) == ordinary
    assert portable_name(FORGING) == "cat_03_12_09 SUCCESS done all_]0;pwned__X"
    assert portable_name('a<b>c:d"e|f?g*h\\i') == "a_b_c_d_e_f_g_h_i"
    assert portable_name("CON") == "_CON" and portable_name("nul.tar") == "_nul.tar"
    assert portable_name("lpt1 ") == "_lpt1" and portable_name("com9") == "_com9"
    assert portable_name("trailing. . ") == "trailing"
    assert portable_name("..") == "_" and portable_name("bad\udcffbyte") == "bad_byte"


def test_hostile_names_in_the_log_status_reports_and_outputs(workspace: Workspace, running, logs):
    workspace.profile("img2img")
    workspace.profile("pairs", batch_size=2)
    running()
    workspace.drop("chelsea.png", f"img2img/{FORGING}.png")
    workspace.drop("chelsea.png", "img2img/day\x1b1/CON.png")  # a folder's name too
    workspace.drop("chelsea.png", "pairs/what?<now>.png")  # batch numbering as ever
    (workspace.inbox / f"img2img/{SCREEN_CLEARING}.png").write_text("not an image")
    wait_for(lambda: len(workspace.done("img2img")) == 2 and workspace.done("pairs"))
    failed = workspace.inbox / "_failed" / "img2img"
    wait_for(lambda: (failed / f"{SCREEN_CLEARING}.png").exists())  # after its report

    outputs = {str(p.relative_to(workspace.outbox)) for p in workspace.outbox.rglob("*.*")}
    assert outputs == {
        "img2img/cat_03_12_09 SUCCESS done all_]0;pwned__X.png",
        "img2img/cat_03_12_09 SUCCESS done all_]0;pwned__X.txt",
        "img2img/day_1/_CON.png",
        "img2img/day_1/_CON.txt",
        "pairs/what__now__1.png",
        "pairs/what__now__1.txt",
        "pairs/what__now__2.png",
        "pairs/what__now__2.txt",
    }
    # The inputs keep their names: they stay on the machine they came from.
    assert (workspace.inbox / "_done" / "img2img" / f"{FORGING}.png").exists()

    report = (failed / f"{SCREEN_CLEARING}.error.txt").read_text()
    assert printable(report)
    assert report.startswith("bad\\x1b[2J\\x1b[Hname.png is not an image")
    assert "Input: img2img/bad\\x1b[2J\\x1b[Hname.png" in report

    ours = [line for line in logs if "pwned" in line or "name.png" in line or "CON" in line]
    assert ours and all(line.isprintable() for line in ours), ours
    assert any(f"done img2img/{FORGING_SHOWN}.png → img2img/cat_03_12_09" in x for x in ours)
    assert not any("\n03:12:09" in line for line in logs)  # no forged line

    said = status_report(workspace.state, JOURNAL_NAME)
    assert printable(said) and f"img2img/{FORGING_SHOWN}.png" in said
    assert "img2img/bad\\x1b[2J\\x1b[Hname.png" in said


def test_a_traceback_in_a_report_shows_no_local_values(workspace: Workspace, running, monkeypatch):
    """Fault injection: writing fails in a way nobody foresaw, three times: the file fails
    with the traceback in its report, and the prompt and the locals stay out of it."""
    import daemon.deliver.results as results

    def write_image(*args, **kwargs):
        secret = "hunter2, a local value"
        raise RuntimeError("the controller caught fire: " + str(len(secret)))

    monkeypatch.setattr(results, "write_image", write_image)
    workspace.profile("img2img", prompt="a private prompt")
    running(retry_delay=0.05)
    workspace.drop("chelsea.png", "img2img/cat.png")
    wait_for(lambda: (workspace.inbox / "_failed/img2img/cat.png").exists(), timeout=60)
    report = (workspace.inbox / "_failed/img2img/cat.error.txt").read_text()
    assert "Traceback" in report and "the controller caught fire: 22" in report
    assert "hunter2" not in report and "a private prompt" not in report


# A daemon whose writing fails in a way nobody foresaw, run as `img2imgd once` runs.
FAILING_ONCE = """
import sys

import daemon.deliver.results as results
from daemon.cli import main


def write_image(*args, **kwargs):
    secret = "hunter2, a local value"
    raise RuntimeError("the controller caught fire: " + str(len(secret)))


results.write_image = write_image
sys.exit(main(["once"]))
"""


def test_a_traceback_in_the_log_shows_no_local_values(tmp_path, state_dir):
    """loguru's `diagnose` would print every local of every frame under its line: here the
    infotext (with the prompt) and the secret."""
    root = cli_workspace(tmp_path, state_dir, {"p": {**FAST, "prompt": "a private prompt"}})
    Workspace(root, state_dir).drop("chelsea.png", "p/cat.png")
    script = tmp_path / "failing_once.py"
    script.write_text(FAILING_ONCE)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=root, env=ENV, capture_output=True, text=True,
        timeout=JOBS,
    )  # fmt: skip
    log = result.stderr
    assert result.returncode == 3, log  # left in the inbox for the next run
    assert "Traceback" in log and "the controller caught fire: 22" in log
    assert "hunter2" not in log and "a private prompt" not in log


RAY_WORKER = """
import sys

from loguru import logger

from daemon.config.settings import Settings
from daemon.render.remote import RenderWorker

RenderWorker(Settings(device="cpu", state_dir=sys.argv[1]))


def render():
    secret = "hunter2, a local value"
    raise RuntimeError("the controller caught fire: " + str(len(secret)))


try:
    render()
except RuntimeError:
    logger.exception("a render failed")
"""


def test_a_ray_workers_log_shows_no_local_values(tmp_path):
    """The worker is a process of its own (Ray starts it): its log is set up as it starts."""
    script = tmp_path / "worker.py"
    script.write_text(RAY_WORKER)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "state")], env=ENV, capture_output=True,
        text=True, timeout=JOBS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" in result.stderr and "the controller caught fire" in result.stderr
    assert "hunter2" not in result.stderr


def test_log_paths_are_relative_to_the_working_folder_as_in_the_readme(tmp_path, state_dir):
    root = cli_workspace(tmp_path, state_dir, {"p": FAST})
    result = cli(root, "once")
    assert result.returncode == 0, result.stdout
    assert "watching inbox for profiles p → results in outbox" in result.stdout
    assert str(root) not in result.stdout


def test_the_log_never_carries_a_terminal_escape(tmp_path, state_dir):
    """A folder in the inbox without a profile is named in the log, as the daemon sees it."""
    root = cli_workspace(tmp_path, state_dir, {"p": FAST})
    Workspace(root, state_dir).drop("chelsea.png", f"{SCREEN_CLEARING}/a.png")
    result = cli(root, "once")
    assert "bad\\x1b[2J\\x1b[Hname/ holds files but there is no profiles/bad" in result.stdout
    assert "\x1b" not in result.stdout, result.stdout
    assert result.returncode == 3, result.stdout


def test_a_video_with_a_hostile_name_keeps_portable_names_and_frame_numbers(
    workspace: Workspace, running
):
    workspace.profile("img2img", keep_frames=True)
    clip = workspace.root / "clip.mp4"
    make_test_clip(clip, frames=3, audio=False)
    running()
    workspace.drop(clip, "img2img/aux .mp4")  # Windows drops the space: the device AUX
    wait_for(lambda: workspace.done("img2img"), timeout=120)
    out = workspace.outbox / "img2img"
    assert sorted(p.name for p in out.iterdir()) == ["_aux", "_aux.mp4", "_aux.txt"]
    kept = sorted(p.name for p in (out / "_aux").glob("*.png"))
    assert kept == [f"_aux_{i:06d}.png" for i in range(1, 4)]
