"""What a newcomer and an operator meet: profiles added while the daemon runs, metrics for
Prometheus, and the time the queue has left in `img2imgd status`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.intake.jobs import JobStatus
from daemon.journal.journal import Entry
from daemon.journal.lock import lock_owner
from daemon.ops.service import JOURNAL_NAME, Daemon
from daemon.ops.status import pace, queue_line, status_report, time_left
from tests.conftest import FAST_PROFILE, Workspace, wait_for

# --- profiles added, fixed and removed while running -------------------------------------


def write_profile(workspace: Workspace, name: str, text: str) -> Path:
    """A profile written whole, as an editor saves it (the daemon never sees half a file)."""
    path = workspace.profiles / f"{name}.yaml"
    partial = path.with_name(f".{name}.yaml.part")
    partial.write_text(text)
    partial.replace(path)
    return path


def test_a_profile_added_while_running_gets_its_folder_and_works(
    workspace: Workspace, running, logs
):
    workspace.profile("first")
    daemon = running()
    # A file dropped into a folder made by hand before its profile exists waits for it.
    workspace.drop("chelsea.png", "later/early.png")
    write_profile(workspace, "late", yaml.safe_dump(FAST_PROFILE))
    said = wait_for(lambda: [line for line in logs if "new profile late" in line], timeout=10)
    assert "drop files into" in said[0] and (workspace.inbox / "late").is_dir()
    workspace.drop("chelsea.png", "late/a.png")
    write_profile(workspace, "later", yaml.safe_dump(FAST_PROFILE))
    wait_for(lambda: daemon.tally.done == 2, timeout=60)
    assert [p.name for p in workspace.done("late")] == ["a.png"]
    assert [p.name for p in workspace.done("later")] == ["early.png"]


def test_an_invalid_new_profile_is_said_and_picked_up_once_fixed(
    workspace: Workspace, running, logs
):
    workspace.profile("first")
    running()
    path = write_profile(workspace, "broken", "model: builtin:tiny-sd\nstepz: 4\n")
    wait_for(lambda: any("new profile broken is invalid" in line for line in logs), timeout=10)
    assert any(f"{path}:2: unknown key 'stepz'; did you mean 'steps'?" in line for line in logs)
    assert not (workspace.inbox / "broken").exists()
    said = len(logs)
    write_profile(workspace, "broken", yaml.safe_dump(FAST_PROFILE))
    wait_for(lambda: (workspace.inbox / "broken").is_dir(), timeout=10)
    assert sum("is invalid" in line for line in logs[said:]) == 0  # said once, not each look


def test_a_removed_profile_leaves_its_folder_and_files(workspace: Workspace, running, logs):
    workspace.profile("first")
    workspace.profile("gone")
    running(processing_hours=_hours_other_than_now())  # the file stays queued, not painted
    workspace.drop("chelsea.png", "gone/a.png")
    (workspace.profiles / "gone.yaml").unlink()
    wait_for(lambda: any("profile gone was removed" in line for line in logs), timeout=10)
    assert any("files there wait until the profile is back" in line for line in logs)
    assert (workspace.inbox / "gone/a.png").exists()


# --- metrics -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the daemon's /metrics page, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_what_the_daemon_did(workspace: Workspace):
    workspace.profile("img2img")
    workspace.profile("tags", task="interrogate", model="builtin:tiny-tagger",
                      interrogator="deepbooru")  # fmt: skip
    port = free_port()
    # No `models=`: the cache the daemon makes itself is built to report its loads to the
    # metrics (a cache handed in reports them to whoever built it).
    daemon = Daemon(workspace.settings(metrics_port=port))
    thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
    thread.start()
    try:
        wait_for(daemon.started.is_set)
        for name in ("a", "b", "c"):
            workspace.drop("chelsea.png", f"img2img/{name}.png")
        workspace.drop("chelsea.png", "tags/d.png")
        (workspace.inbox / "img2img/broken.png").write_text("not a picture")
        wait_for(lambda: daemon.tally.done == 4 and daemon.tally.failed == 1, timeout=60)
        samples = wait_for(lambda: _counted(scrape(port), 5))
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)

    def jobs(profile: str, task: str, outcome: str) -> float:
        labels = (("outcome", outcome), ("profile", profile), ("task", task))
        return samples.get(("img2imgd_jobs_total", labels), 0.0)

    assert jobs("img2img", "img2img", "done") == 3
    assert jobs("img2img", "img2img", "failed") == 1
    assert jobs("tags", "interrogate", "done") == 1
    assert samples[("img2imgd_job_seconds_count", (("task", "img2img"),))] == 3
    assert samples[("img2imgd_job_seconds_count", (("task", "interrogate"),))] == 1
    assert samples[("img2imgd_queue_length", ())] == 0
    loads = {labels: n for (name, labels), n in samples.items()
             if name == "img2imgd_model_load_seconds_count"}  # fmt: skip
    assert loads == {(("model", "builtin:tiny-sd"),): 1, (("model", "builtin:tiny-tagger"),): 1}
    assert not any(name.startswith("img2imgd_gpu") for name, _ in samples)  # no CUDA here
    with pytest.raises(OSError):  # the server stops with the daemon
        scrape(port)


def _counted(samples: dict, jobs: int) -> dict | None:
    total = sum(v for (name, _), v in samples.items() if name == "img2imgd_jobs_total")
    return samples if total == jobs else None


def test_metrics_on_a_port_in_use_are_said_and_the_daemon_runs(workspace: Workspace, running, logs):
    workspace.profile("img2img")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = running(metrics_port=port)
        workspace.drop("chelsea.png", "img2img/a.png")
        wait_for(lambda: daemon.tally.done == 1, timeout=60)
    assert any(f"metrics: cannot listen on 127.0.0.1:{port}" in line for line in logs)


def test_the_unit_shows_how_to_scrape(workspace: Workspace):
    from daemon.ops.unit import unit_file

    text = unit_file(exec_start=[sys.executable, "-m", "daemon", "run"], working_dir=workspace.root,
                     settings=workspace.settings(metrics_port=9101), user=True)  # fmt: skip
    assert "http://127.0.0.1:9101/metrics" in text and "targets: ['localhost:9101']" in text
    assert "metrics" not in unit_file(exec_start=[sys.executable, "run"],
                                      working_dir=workspace.root, settings=workspace.settings(),
                                      user=True)  # fmt: skip


# --- the time the queue has left -----------------------------------------------------------


def entry(
    finished_at: float | None,
    seconds: float | None,
    *,
    frames: int | None = None,
    label: str = "p/x.png",
    state: JobStatus = JobStatus.DONE,
) -> Entry:
    return Entry(id=0, profile="p", label=label, inputs=(), image_size=None,
                 image_mtime=None, state=state, attempt=0, outputs=(), reason="",
                 queued_at=0.0, started_at=None, finished_at=finished_at,
                 seconds=seconds, frames=frames)  # fmt: skip


def test_pace_counts_parallel_workers_and_leaves_out_idle_time():
    two_workers = [entry(1000 + 2 * n, 4.0) for n in range(50)]  # one ends every 2 s
    assert pace(two_workers) == pytest.approx(2.0)
    assert time_left(120, two_workers) == "about 4 min at the last 50 images' pace"
    bursts = [entry(1000 + 3600 * (n // 10) + n, 1.5) for n in range(20)]  # an hour apart
    assert pace(bursts) == pytest.approx(1.5)
    assert time_left(3, bursts) == "about 4 s at the last 20 images' pace"
    assert time_left(0, two_workers) == "" and time_left(5, []) == ""
    assert "1 h 40 min" in time_left(3000, two_workers)


def test_a_video_counts_its_frames_in_the_queue_and_in_the_pace():
    # Done: two images, then a 24-frame video that took 48 s: 2 s a frame, not 48 s a job.
    done = [entry(1000, 2.0), entry(1002, 2.0), entry(1050, 48.0, frames=24)]
    assert pace(done) == pytest.approx(2.0)
    queued = [entry(None, None, frames=24, label="p/clip.mp4", state=JobStatus.QUEUED),
              entry(None, None, label="p/a.png", state=JobStatus.QUEUED)]  # fmt: skip
    line = queue_line(queued, [], done)
    assert line.startswith("queue: 2 waiting (25 images, counting a video's frames), next p/a.png")
    assert line.endswith("; about 50 s at the last 26 images' pace"), line


def test_status_says_when_the_queue_will_be_done(workspace: Workspace, running):
    workspace.profile("img2img")
    daemon = running()
    for name in ("a", "b", "c"):
        workspace.drop("chelsea.png", f"img2img/{name}.png")
    wait_for(lambda: daemon.tally.done == 3, timeout=60)
    daemon.stop_event.set()
    wait_for(lambda: lock_owner(workspace.state) is None)
    # The next daemon runs outside its processing hours: what arrives waits, queued.
    later = running(processing_hours=_hours_other_than_now())
    for name in ("d", "e", "f", "g"):
        workspace.drop("chelsea.png", f"img2img/{name}.png")
    wait_for(lambda: len(later.queue) == 4, timeout=30)
    report = status_report(workspace.state, JOURNAL_NAME)
    assert "queue: 4 waiting" in report
    assert "at the last 3 images' pace" in report and "; about " in report
    config = workspace.config_file()
    shown = subprocess.run([sys.executable, "-m", "daemon", "--config", str(config), "status"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "at the last 3 images' pace" in shown.stdout, shown.stdout + shown.stderr


def test_status_counts_a_queued_videos_frames(workspace: Workspace, running):
    from tests.support.media import make_test_clip

    workspace.profile("img2img")
    waiting = running(processing_hours=_hours_other_than_now())  # what arrives stays queued
    clip = workspace.root / "clip.mp4"
    make_test_clip(clip, frames=12)
    workspace.drop(clip, "img2img/clip.mp4")
    workspace.drop("chelsea.png", "img2img/a.png")
    wait_for(lambda: len(waiting.queue) == 2, timeout=30)
    report = status_report(workspace.state, JOURNAL_NAME)
    assert "queue: 2 waiting (13 images, counting a video's frames)" in report, report


def _hours_other_than_now() -> str:
    start = datetime.now() + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H}:00-{end:%H}:00"
