"""``executor: ray`` on a real local Ray cluster: a head with no GPU and two nodes with one
CPU and one fake GPU each (Ray places by GPU; torch, seeing no CUDA, paints on the CPU), all
on 127.0.0.1. The real daemon, the real journal, the tiny models; faults are real too: worker
processes killed, nodes removed, the daemon killed with ``kill -9``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.intake.jobs import JobStatus
from daemon.journal.journal import open_read_only
from daemon.ops.service import JOURNAL_NAME, Daemon, Observers
from daemon.ops.status import status_report
from tests.support.ray_cluster import (
    add_gpu_node,
    local_cluster,
    loopback_environment,
    ray_processes,
)
from tests.support.workspace import Workspace, wait_for
from tests.test_crash import finish_once, start, write_config

loopback_environment()  # before Ray is imported (below, or by the daemon): it reads it then
pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

IMAGES = ("astronaut.png", "chelsea.png")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster(gpu_nodes=2) as cluster:
        yield cluster
    ended = wait_for_no_ray_processes()
    assert not ended, f"Ray processes left behind after the cluster shut down: {ended}"


def wait_for_no_ray_processes(timeout: float = 20.0) -> list[int]:
    """Ray's processes of this session, once they had `timeout` s to end (then ended)."""
    deadline = time.monotonic() + timeout
    while (left := ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # a raylet killed with its node leaves its log monitor (SCALE-OUT.md)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def ray_settings(cluster: Any, **keys: Any) -> dict[str, Any]:
    return {"executor": "ray", "ray_address": cluster.address, **keys}


def drop_images(workspace: Workspace, profile: str, count: int) -> list[str]:
    names = [f"img{i:02d}.png" for i in range(count)]
    for i, name in enumerate(names):
        workspace.drop(IMAGES[i % len(IMAGES)], f"{profile}/{name}")
    return names


def run_once(workspace: Workspace, **keys: Any) -> Daemon:
    daemon = Daemon(workspace.settings(**keys), watch=False)
    daemon.run_once(tick=0.02)
    return daemon


def assert_exactly_once(workspace: Workspace, profile: str, names: list[str]) -> None:
    """Every input painted once: one PNG and one .txt each, no ``-1`` copy, all archived."""
    outputs = sorted(p.name for p in workspace.outputs(profile))
    expected = sorted([*names, *(n.replace(".png", ".txt") for n in names)])
    assert outputs == expected, f"outputs: {outputs}"
    assert sorted(p.name for p in workspace.done(profile)) == sorted(names)
    assert not workspace.failed(profile)


def journal_entries(workspace: Workspace) -> list[Any]:
    journal = open_read_only(workspace.state / JOURNAL_NAME)
    if journal is None:
        return []
    try:
        return journal.recent(1000)
    finally:
        journal.close()


def slow_profile(workspace: Workspace, name: str = "slow") -> None:
    # A few seconds a job on one CPU: still in hand when the test acts.
    workspace.profile(name, max_pixels=128 * 128, steps=40, denoising_strength=1.0)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# ----------------------------------------------------------------- the same results


def test_results_equal_the_local_executors_and_spread_over_both_workers(
    cluster: Any, workspace: Workspace, tmp_path: Path
):
    workspace.profile("p")
    names = drop_images(workspace, "p", 6)
    daemon = run_once(workspace, **ray_settings(cluster))
    assert_exactly_once(workspace, "p", names)
    workers = {entry.worker for entry in journal_entries(workspace)}
    assert len(workers) == 2, f"the jobs went to {workers}"

    local = Workspace(tmp_path / "local", workspace.state_dir).create()
    local.profile("p")
    drop_images(local, "p", 6)
    run_once(local)
    for name in names:
        ours, theirs = workspace.outbox / "p" / name, local.outbox / "p" / name
        difference = np.abs(pixels(ours) - pixels(theirs)).max()
        assert difference <= 2, f"{name}: differs by {difference} from the local executor"
        assert (workspace.outbox / "p" / name).with_suffix(".txt").read_text() == (
            local.outbox / "p" / name
        ).with_suffix(".txt").read_text()
    assert daemon.executor.workers() == [], "the workers ended with the daemon"


def test_a_video_spreads_its_frames_over_the_workers(cluster: Any, workspace: Workspace):
    from tests.support.media import make_test_clip

    # Colour correction on: frame 1 is painted first, alone. Frames slow enough that the
    # worker with the model loaded is still busy when the next ones come: the rest spill
    # over to the other (a free worker with the model is always preferred, so with frames
    # faster than the daemon sends them, one worker would rightly take them all).
    workspace.profile("v", steps=30, denoising_strength=1.0)
    clip = workspace.root / "clip.mp4"
    make_test_clip(clip, frames=9, size=(64, 48))
    workspace.drop(clip, "v/clip.mp4")
    painted: dict[str, int] = {}

    def job_end(_job: object, _status: object) -> None:
        painted.update({w.name: w.done for w in daemon.executor.workers()})

    observers = Observers(job_end=job_end)
    daemon = Daemon(workspace.settings(**ray_settings(cluster)), watch=False, observers=observers)
    # Both workers up first: frames go only to workers that have answered.
    wait_for(lambda: sum(w.alive for w in daemon.executor.workers()) == 2, timeout=120)
    daemon.run_once(tick=0.02)
    assert daemon.tally.done == 1, daemon.tally
    assert [p.name for p in workspace.outputs("v")] == ["clip.mp4", "clip.txt"]
    assert sorted(painted.values()) != [0, 9] and sum(painted.values()) == 9, painted


def test_a_clip_at_the_default_batch_is_shared_out_so_both_workers_paint(
    cluster: Any, workspace: Workspace
):
    """8 frames at max_batch auto (8 on a CPU) on two idle workers: the colour reference
    alone, then the other 7 as 4 on one worker and 3 on the other, not 7 on one."""
    from tests.test_sequences import make_frames

    # Frames slow enough that one worker still paints its share when the other's is sent.
    workspace.profile("c", steps=20, max_pixels=96 * 96, denoising_strength=0.8)
    make_frames(workspace.inbox / "c" / "clip", 8, size=(96, 72))
    daemon = Daemon(workspace.settings(**ray_settings(cluster, max_batch="auto")), watch=False)
    wait_for(lambda: sum(w.alive for w in daemon.executor.workers()) == 2, timeout=120)
    daemon.run_once(tick=0.02)
    assert daemon.tally.done == 8, daemon.tally
    painted = {entry.label: entry.worker for entry in journal_entries(workspace)}
    after_reference = [painted[f"c/clip/frame_{i:04d}.png"] for i in range(2, 9)]
    shares = sorted(after_reference.count(worker) for worker in set(after_reference))
    assert shares == [3, 4], painted


def test_a_clip_over_two_workers_follows_its_key_frame_even_when_a_worker_dies(
    cluster: Any, workspace: Workspace
):
    """The README's choice: a clip's state travels with each frame's request, as values (the
    frame's seed, the key frame's colours), so the clip spreads over the workers and a frame
    sent again after its worker died is painted the same. Each frame must be what the clip
    makes of it in-process (tests/test_sequences.py): its own seed from the clip's base, and
    the uncorrected painting matched to the key frame's colours, to the last bit."""
    from daemon.a1111.color import apply_color_correction, color_reference
    from tests.test_sequences import make_frames, seeds_of

    # Each frame alone (a batch paints within a level, not to the bit), slow enough that both
    # workers paint and one can be killed mid-clip.
    keys = dict(steps=20, max_pixels=96 * 96, denoising_strength=0.8, max_batch=1,
                seed=4321, seed_mode="increment")  # fmt: skip
    workspace.profile("corrected", **keys)
    workspace.profile("plain", **keys, color_correction=False)  # the paintings, uncorrected
    for profile in ("corrected", "plain"):
        make_frames(workspace.inbox / profile / "clip", 6, size=(96, 72))
    daemon = Daemon(workspace.settings(**ray_settings(cluster)), watch=False)
    wait_for(lambda: sum(w.alive for w in daemon.executor.workers()) == 2, timeout=120)
    killed: list[int] = []

    def kill_a_busy_worker_after_the_key_frame() -> bool:
        # Once both workers had their share (the key frame and two frames after it, each
        # alone: one on each worker), so that both paint part of the clip whatever follows.
        if len(list((workspace.outbox / "corrected/clip").glob("*.png"))) < 3:
            return False
        busy = [w for w in daemon.executor.workers() if w.alive and w.in_flight and w.pid]
        if busy:
            os.kill(busy[0].pid, signal.SIGKILL)
            killed.append(busy[0].pid)
        return bool(busy) or daemon.tally.done == 12

    killer = threading.Thread(
        target=lambda: wait_for(kill_a_busy_worker_after_the_key_frame, timeout=240)
    )
    killer.start()
    daemon.run_once(tick=0.02)
    killer.join()
    assert daemon.tally.done == 12 and daemon.tally.failed == 0, daemon.tally
    assert killed, "no worker was busy after the key frame"

    def out(profile: str, index: int) -> Image.Image:
        return Image.open(workspace.outbox / f"{profile}/clip/frame_{index:04d}.png").convert("RGB")

    assert seeds_of(workspace, "corrected", "clip") == {
        f"frame_{i:04d}": 4321 + i for i in range(1, 7)
    }
    assert np.array_equal(np.asarray(out("corrected", 1)), np.asarray(out("plain", 1)))
    reference = color_reference(out("corrected", 1))
    for index in range(2, 7):
        expected = apply_color_correction(reference, out("plain", index))
        assert np.array_equal(np.asarray(out("corrected", index)), np.asarray(expected)), index
    painted = {entry.label: entry.worker for entry in journal_entries(workspace)}
    after_key = {painted[f"corrected/clip/frame_{i:04d}.png"] for i in range(2, 7)}
    assert len(after_key) == 2, f"the frames after the key frame went to {after_key}"


def test_status_says_waiting_for_a_worker_while_no_worker_can_take_the_job(
    cluster: Any, workspace: Workspace, logs: list[str]
):
    workspace.profile("p")
    # Four GPUs a worker, on a cluster of two: no worker can start, the job waits.
    settings = workspace.settings(**ray_settings(cluster, ray_gpus_per_worker=4))
    daemon = Daemon(settings, watch=True)
    thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
    thread.start()
    try:
        workspace.drop("chelsea.png", "p/a.png")
        report = wait_for(
            lambda: _waiting(status_report(workspace.state, JOURNAL_NAME)), timeout=60
        )
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    assert "now:   p/a.png (waiting for a worker for " in report, report
    assert any("offers no GPU for a render worker" in line for line in logs)
    assert (workspace.inbox / "p" / "a.png").exists(), "it stays for the next run"


def test_cpu_workers_paint_and_one_that_cannot_start_is_said(
    cluster: Any, workspace: Workspace, logs: list[str], monkeypatch: pytest.MonkeyPatch
):
    from daemon.render import cluster as executor_module

    monkeypatch.setattr(executor_module, "SLOW_START", 3.0)
    workspace.profile("p")
    names = drop_images(workspace, "p", 2)
    # CPU workers take one CPU each: the cluster has 3 (the head's, one per node), not 4.
    keys = ray_settings(cluster, ray_gpus_per_worker=0, ray_workers=4)
    daemon = Daemon(workspace.settings(**keys), watch=False)
    said = re.compile(r"render worker w\d has not started in \d+ s: .* no free CPU for it")
    wait_for(lambda: any(said.search(line) for line in logs), timeout=60)
    daemon.run_once(tick=0.02)
    assert_exactly_once(workspace, "p", names)
    painters = {entry.worker for entry in journal_entries(workspace)}
    assert all(worker.endswith("@127.0.0.1 CPU") for worker in painters), painters


def _waiting(report: str) -> str | None:
    return report if "(waiting for a worker" in report else None


# ----------------------------------------------------------------- faults


def test_a_worker_killed_mid_job_leaves_every_input_done_exactly_once(
    cluster: Any, workspace: Workspace
):
    slow_profile(workspace)
    names = drop_images(workspace, "slow", 4)
    daemon = Daemon(workspace.settings(**ray_settings(cluster)), watch=False)
    killed: list[int] = []

    def kill_a_busy_worker() -> bool:
        busy = [w for w in daemon.executor.workers() if w.alive and w.in_flight and w.pid]
        if busy:
            os.kill(busy[0].pid, signal.SIGKILL)
            killed.append(busy[0].pid)
        return bool(busy)

    killer = threading.Thread(target=lambda: wait_for(kill_a_busy_worker, timeout=120))
    killer.start()
    daemon.run_once(tick=0.02)
    killer.join()
    assert killed
    assert_exactly_once(workspace, "slow", names)
    assert daemon.tally.failed == 0 and daemon.tally.done == 4, daemon.tally


def test_a_job_that_kills_its_worker_every_time_fails_with_a_report(
    cluster: Any, workspace: Workspace
):
    slow_profile(workspace, "poison")
    workspace.drop("astronaut.png", "poison/bad.png")
    daemon = Daemon(workspace.settings(**ray_settings(cluster)), watch=False)
    killed: set[int] = set()

    def kill_whoever_has_it() -> bool:
        """The fault: each worker that takes the file dies (as with a driver crash)."""
        for worker in daemon.executor.workers():
            if worker.alive and worker.in_flight and worker.pid not in killed:
                killed.add(worker.pid)
                with contextlib.suppress(OSError):
                    os.kill(worker.pid, signal.SIGKILL)
        return daemon.tally.failed > 0

    killer = threading.Thread(target=lambda: wait_for(kill_whoever_has_it, timeout=180))
    killer.start()
    daemon.run_once(tick=0.02)
    killer.join()
    assert len(killed) == 3
    failed = [p.name for p in workspace.failed("poison")]
    assert "bad.png" in failed, failed
    report = next(p for p in workspace.failed("poison") if p.suffix == ".txt").read_text()
    assert "render worker died 3 times" in report


def test_controlnet_units_paint_on_the_workers_as_on_the_local_executor(
    cluster: Any, workspace: Workspace, tmp_path: Path
):
    """Each input's own control image travels in its request: the worker's unit used it
    (the saved control image is it), and the result equals the local executor's."""
    units = [
        {"enabled": True, "module": "none", "model": "builtin:tiny-controlnet",
         "resize_mode": "Just Resize", "own_image": True},
        {"enabled": True, "module": "canny", "model": "builtin:tiny-controlnet"},
    ]  # fmt: skip
    local = Workspace(tmp_path / "local", workspace.state_dir).create()
    names = []
    for place in (workspace, local):
        place.profile("p", controlnet=units, save_control=True, width=64, height=64)
        names = drop_images(place, "p", 2)
        for index, name in enumerate(names):  # each its own: another input's picture
            place.drop(IMAGES[(index + 1) % len(IMAGES)], f"p/{name[:-4]}.control.png")
    run_once(workspace, **ray_settings(cluster))
    run_once(local)
    for name in names:
        # unit 0's control image as the worker fitted it: the input's own, as locally (the
        # input itself, had the control image not travelled, would give another picture)
        control = name.replace(".png", ".control.png")
        assert np.array_equal(pixels(workspace.outbox / "p" / control),
                              pixels(local.outbox / "p" / control))  # fmt: skip
        ours, theirs = pixels(workspace.outbox / "p" / name), pixels(local.outbox / "p" / name)
        assert np.abs(ours - theirs).max() <= 2, f"{name}: differs from the local executor's"
        text = (workspace.outbox / "p" / name).with_suffix(".txt").read_text()
        assert text == (local.outbox / "p" / name).with_suffix(".txt").read_text()
        assert "ControlNet 1: " in text


def test_a_temporal_clip_paints_on_the_workers_as_it_does_locally(
    cluster: Any, workspace: Workspace, tmp_path: Path
):
    """What a frame takes from the frames before it (previous result, key frame, warped
    noise) travels in its request as values: the workers paint what this process does."""
    keys = {"temporal": ["key_frame_attention", "flow_init", "warped_noise"], "seed": 3,
            "denoising_strength": 0.6, "steps": 6, "color_correction": False}  # fmt: skip
    results = []
    for where, settings in ((workspace, ray_settings(cluster)), (None, {})):
        place = where or Workspace(tmp_path / "local", workspace.state_dir).create()
        place.profile("t", **keys)
        for number, name in enumerate(("astronaut.png", "astronaut.png", "chelsea.png")):
            place.drop(name, f"t/shot/frame_{number + 1:04d}.png")
        run_once(place, **settings)
        assert len(place.done("t")) == 3 and not place.failed("t")
        results.append([pixels(p) for p in sorted((place.outbox / "t/shot").glob("*.png"))])
    for ours, theirs in zip(*results, strict=True):
        assert np.abs(ours - theirs).max() <= 2


def test_flux_and_an_instruction_edit_paint_on_the_workers_as_locally(
    cluster: Any, workspace: Workspace, tmp_path: Path
):
    """Today's families take the same road: a Flux img2img and a Kontext edit (with its
    instruction beside the image) paint on the workers what this process paints."""
    results = []
    for where, settings in ((workspace, ray_settings(cluster)), (None, {})):
        place = where or Workspace(tmp_path / "local", workspace.state_dir).create()
        place.profile("flux", model="builtin:tiny-flux", negative_prompt="blurry")
        place.profile("edit", task="edit", model="builtin:tiny-flux-kontext")
        place.drop("chelsea.png", "flux/cat.png")
        place.drop("chelsea.png", "edit/cat.png")
        (place.inbox / "edit/cat.prompt.txt").write_text("make it night")
        run_once(place, **settings)
        assert not place.failed("flux") and not place.failed("edit")
        results.append([place.outbox / f"{p}/cat.png" for p in ("flux", "edit")])
    for ours, theirs in zip(*results, strict=True):
        assert np.abs(pixels(ours) - pixels(theirs)).max() <= 2
        assert ours.with_suffix(".txt").read_text() == theirs.with_suffix(".txt").read_text()


def test_status_lists_the_workers(cluster: Any, workspace: Workspace):
    workspace.profile("p")
    drop_images(workspace, "p", 2)
    daemon = Daemon(workspace.settings(**ray_settings(cluster)), watch=True)
    thread = threading.Thread(target=daemon.run_forever, kwargs={"tick": 0.02}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.tally.done == 2, timeout=120)
        # Rewritten every 2 s: once it shows the two jobs done, with the model loaded.
        report = wait_for(lambda: _with_both_done(status_report(workspace.state, JOURNAL_NAME)))
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    workers = [line for line in report.splitlines() if line.startswith("  w")]
    assert len(workers) == 2, report
    for line in workers:
        assert "127.0.0.1 GPU 0" in line and "ready" in line and "pid " in line, line
    assert any("models: builtin:tiny-sd" in line for line in workers), report
    assert "workers:" not in status_report(workspace.state, JOURNAL_NAME), "gone at stop"


def _with_both_done(report: str) -> str | None:
    done = sum(int(count) for count in re.findall(r"ready  (\d+) done,", report))
    return report if done == 2 else None


def test_the_daemon_killed_with_jobs_in_flight_does_each_exactly_once_after_a_restart(
    cluster: Any, workspace: Workspace
):
    slow_profile(workspace)
    config = write_config(workspace, **ray_settings(cluster))
    names = drop_images(workspace, "slow", 4)
    loopback_environment()  # the daemon's subprocess inherits it
    daemon = start(config)
    try:
        wait_for(
            lambda: any(e.state is JobStatus.DISPATCHED for e in journal_entries(workspace)),
            timeout=120,
        )
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    finally:
        daemon.kill()
    output = finish_once(config, timeout=300)
    assert "interrupted mid-job; it runs again" in output
    assert_exactly_once(workspace, "slow", names)


# The tests on the module's cluster come before this one: it starts a cluster of its own and
# ends with every Ray process gone, the module's cluster's too.
def test_a_node_removed_and_another_added_loses_nothing(workspace: Workspace):
    slow_profile(workspace)
    names = drop_images(workspace, "slow", 10)  # enough to outlast the new node's start
    with local_cluster(gpu_nodes=2) as cluster:
        daemon = Daemon(workspace.settings(**ray_settings(cluster)), watch=False)
        gpu_nodes = [node for node in cluster.list_all_nodes() if not node.head]
        # The daemon on a thread: Ray adds nodes only from the main thread.
        runner = threading.Thread(target=daemon.run_once, kwargs={"tick": 0.02})
        runner.start()
        wait_for(lambda: sum(w.in_flight for w in daemon.executor.workers()) >= 2, 120)
        cluster.remove_node(gpu_nodes[0], allow_graceful=False)  # a machine dies
        wait_for(lambda: len(daemon.executor.workers()) == 1 or daemon.tally.done == 10, 60)
        add_gpu_node(cluster)  # and another joins: a second worker starts on it
        # ... unless the one left finished everything first: once then stops, and a worker
        # starting on the new node has nothing to do (seen once in CI with six images).
        wait_for(
            lambda: sum(w.alive for w in daemon.executor.workers()) == 2 or not runner.is_alive(),
            60,
        )
        runner.join(timeout=300)
        assert not runner.is_alive()
    wait_for_no_ray_processes()
    assert_exactly_once(workspace, "slow", names)


def test_an_error_that_does_not_pickle_travels_as_its_kind():
    """A request's exception must reach the daemon to be judged; one holding something that
    does not pickle travels as the same kind of error with its message."""
    import pickle

    from daemon.errors import InputError
    from daemon.render.remote import _portable

    class Unpicklable(InputError):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.lock = threading.Lock()

    sent = _portable(Unpicklable("the mask is empty"))
    assert isinstance(sent, InputError)
    assert "the mask is empty" in str(pickle.loads(pickle.dumps(sent)))
    plain = InputError("not an image")
    assert _portable(plain) is plain
