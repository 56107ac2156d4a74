"""The live rules behind one interface (:class:`daemon.live.live.Live`): its pure parts
called directly, the class on real files, a real profile store and a real journal; and one
rule the daemon tests in test_live.py do not reach, the seed kept across a restart."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from daemon.config.profiles import Profile, ProfileStore
from daemon.intake.jobs import Job
from daemon.intake.pairing import Companions, companions_on_disk
from daemon.journal.journal import Journal
from daemon.live.identity import content_digest, kept_seed
from daemon.live.live import Live, in_place
from daemon.live.quiet import NOTHING, RENDERS, quiet_left, stamps, turn
from daemon.render.render import share_a_call
from daemon.render.values import RenderRequest
from tests.conftest import DATA, Workspace


def profile(**keys: object) -> Profile:
    return Profile.model_validate({"model": "builtin:tiny-sd", **keys})


# ----------------------------------------------------------------- quiet time (pure)


def test_quiet_time_counts_from_the_newest_file() -> None:
    seen = ((10, 5_000_000_000), (20, 9_000_000_000))  # mtimes 5 s and 9 s
    assert quiet_left(seen, delay=0.25, now=9.1) == pytest.approx(0.15)
    assert quiet_left(seen, delay=0.25, now=10.0) <= 0


def test_the_quiet_time_rule() -> None:
    seen = ((10, 5_000_000_000),)
    assert turn(None, None, 0.25, now=100.0) is NOTHING, "gone meanwhile"
    waiting = turn(seen, None, 0.25, now=5.1)
    assert not waiting.renders and waiting.again_in == pytest.approx(0.15)
    assert turn(seen, None, 0.25, now=6.0) is RENDERS, "quiet, and never a job before"
    assert turn(seen, seen, 0.25, now=6.0) is NOTHING, "found again by a rescan, unchanged"
    assert turn(((11, 5_000_000_000),), seen, 0.25, now=6.0) is RENDERS, "changed"


def test_stamps_are_none_when_a_file_is_gone(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"1234")
    found = stamps([image])
    assert found is not None and found[0][0] == 4
    assert stamps([image, tmp_path / "a.mask.png"]) is None


# ----------------------------------------------------------------- content and seed (pure)


def test_content_is_the_files_names_bytes_and_settings(tmp_path: Path) -> None:
    image, mask = tmp_path / "a.png", tmp_path / "a.mask.png"
    image.write_bytes(b"image")
    mask.write_bytes(b"mask")
    settings = profile(prompt="a cat")
    first = content_digest([image, mask], settings)
    assert content_digest([image, mask], settings) == first, "the same content"
    mask.write_bytes(b"mask, edited")
    assert content_digest([image, mask], settings) != first, "a companion is content"
    mask.write_bytes(b"mask")
    assert content_digest([image, mask], profile(prompt="a dog")) != first, "settings too"
    renamed = tmp_path / "b.png"
    shutil.copyfile(image, renamed)
    assert content_digest([renamed, mask], settings) != first, "and names"


def test_a_random_seed_is_kept_and_a_fixed_one_is_the_profiles() -> None:
    assert kept_seed(-1, drawn=77, kept=5) == 5
    assert kept_seed(-1, drawn=77, kept=None) == 77, "first render: the one drawn"
    assert kept_seed(1234, drawn=1234, kept=5) == 1234, "a profile's seed is its own"


def test_a_request_that_must_stay_alone_never_shares_a_call() -> None:
    image = Image.new("RGB", (64, 64))
    request = RenderRequest("p/a.png", profile(), image, size=(64, 64))
    assert share_a_call(request, request), "a plain img2img request shares"
    alone = RenderRequest("p/b.png", profile(), image, size=(64, 64), alone=True)
    assert not share_a_call(alone, request)
    assert not share_a_call(request, alone)


# ----------------------------------------------------------------- the interface


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3").open()
    yield opened
    opened.close()


class Clocks:
    """The clocks a Live is handed: driven by the test, never slept on."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = time.time()


def make_live(workspace: Workspace, journal: Journal, clocks: Clocks | None = None) -> Live:
    settings = workspace.settings()
    clocks = clocks or Clocks()
    return Live(
        settings.inbox, settings.outbox, ProfileStore(settings.profiles), journal,
        clock=lambda: clocks.monotonic, wall_clock=lambda: clocks.wall,
    )  # fmt: skip


def job_for(workspace: Workspace, relative: str, *, live: bool) -> Job:
    image = workspace.inbox / relative
    profile, *middle, _name = PurePosixPath(relative).parts
    return Job(profile, image, PurePosixPath(*middle), companions_on_disk(image), live=live)


def test_which_profiles_are_live(workspace: Workspace, journal: Journal) -> None:
    workspace.profile("live", live=True)
    workspace.profile("plain")
    (workspace.profiles / "broken.yaml").write_text("live: [true\n")
    live = make_live(workspace, journal)
    assert live.watches("live") and not live.watches("plain")
    assert not live.watches("broken") and not live.watches("missing")
    assert live.leaves_alone("live") and not live.leaves_alone("plain")
    assert live.applies(profile(live=True)) and not live.applies(profile())


def test_a_companion_changed_alone_renders_its_live_image(
    workspace: Workspace, journal: Journal
) -> None:
    workspace.profile("live", live=True)
    workspace.profile("plain")
    live = make_live(workspace, journal)
    for profile in ("live", "plain"):
        workspace.drop("astronaut.png", f"{profile}/photo.png")
        workspace.drop("astronaut.mask.png", f"{profile}/photo.mask.png")
    assert live.renders_again(workspace.inbox / "live/photo.mask.png", "live") == (
        workspace.inbox / "live/photo.png"
    )
    assert live.renders_again(workspace.inbox / "plain/photo.mask.png", "plain") is None


def test_a_live_input_becomes_a_job_once_quiet_and_only_when_changed(
    workspace: Workspace, journal: Journal
) -> None:
    workspace.profile("live", live=True, live_delay=0.5)
    clocks = Clocks()
    live = make_live(workspace, journal, clocks)
    image = workspace.drop("astronaut.png", "live/photo.png")
    settings = profile(live=True, live_delay=0.5)
    clocks.wall = image.stat().st_mtime + 0.2
    waiting = live.turn(image, Companions(), settings)
    assert not waiting.renders and waiting.again_in == pytest.approx(0.3, abs=0.01)
    clocks.wall = image.stat().st_mtime + 0.51  # quiet (st_mtime is rounded: not exactly 0.5)
    assert live.turn(image, Companions(), settings) is RENDERS
    assert live.turn(image, Companions(), settings) is NOTHING, "a rescan's second look"
    assert live.turn(image, Companions(), profile()) is RENDERS, "not live: no quiet time"
    later = clocks.wall + 10
    os.utime(image, (later, later))
    clocks.wall = later + 1
    assert live.turn(image, Companions(), settings) is RENDERS, "exported again"


def rendered_once(
    workspace: Workspace, journal: Journal, *, grace: float
) -> tuple[Live, Clocks, Path]:
    """A live input that became a job once, with the Live that saw it and its clocks."""
    workspace.profile("live", live=True, live_grace=grace)
    clocks = Clocks()
    live = make_live(workspace, journal, clocks)
    image = workspace.drop("astronaut.png", "live/photo.png")
    clocks.wall = time.time() + 60
    assert live.turn(image, Companions(), profile(live=True)) is RENDERS
    return live, clocks, image


def test_a_deletion_is_final_only_after_the_grace(
    workspace: Workspace, journal: Journal, logs: list[str]
) -> None:
    live, clocks, image = rendered_once(workspace, journal, grace=5.0)
    live.vanished(workspace.inbox / "live/never-seen.png")  # not a live input it knows
    image.unlink()
    live.vanished(image)
    clocks.monotonic += 4.9
    live.expire()
    assert not any("was deleted" in line for line in logs), "it may still come back"
    clocks.monotonic += 0.2
    live.expire()
    said = [line for line in logs if "was deleted and did not come back within 5 s" in line]
    assert len(said) == 1 and "live/photo.png" in said[0]
    assert "never-seen" not in "".join(logs)
    live.expire()
    assert len([line for line in logs if "was deleted" in line]) == 1, "said once"


def test_a_deleted_input_that_comes_back_is_not_gone(
    workspace: Workspace, journal: Journal, logs: list[str]
) -> None:
    live, clocks, image = rendered_once(workspace, journal, grace=1.0)
    image.unlink()
    live.vanished(image)
    workspace.drop("astronaut.png", "live/photo.png")  # the same bytes, exported again
    later = time.time() + 1  # a new mtime, whatever the file system's clock resolution
    os.utime(image, (later, later))
    clocks.monotonic += 2.0
    live.expire()
    assert not any("was deleted" in line for line in logs)
    assert live.turn(image, Companions(), profile(live=True)) is RENDERS, "a new mtime"


def test_identity_and_the_kept_seed_through_the_journal(
    workspace: Workspace, journal: Journal
) -> None:
    workspace.profile("live", live=True, seed=-1)
    workspace.profile("plain")
    live = make_live(workspace, journal)
    workspace.drop("astronaut.png", "live/photo.png")
    workspace.drop("astronaut.png", "plain/photo.png")
    job = job_for(workspace, "live/photo.png", live=True)
    plain = job_for(workspace, "plain/photo.png", live=False)
    assert live.identity(plain) is None and not live.unchanged(plain, None)

    digest = live.identity(job)
    assert digest is not None and not live.unchanged(job, digest), "never rendered"
    settings = profile(live=True, seed=-1)
    request = RenderRequest(job.label, settings, Image.new("RGB", (8, 8)), seed=42)
    first = live.request(job, request)
    assert (first.seed, first.alone, first.settings.overwrite) == (42, True, True)

    report = live.report(job)
    report.parent.mkdir(parents=True)
    report.write_text("an earlier version was broken")
    live.rendered(job, (digest, first.seed))
    assert not report.exists(), "a good render ends the report"
    assert live.unchanged(job, digest)
    assert live.request(job, replace(request, seed=7)).seed == 42, "the seed is kept"
    assert live.request(plain, request) is request, "others are as they are"


def test_only_a_newer_version_of_the_live_input_in_hand_supersedes_it(
    workspace: Workspace, journal: Journal
) -> None:
    workspace.profile("live", live=True)
    live = make_live(workspace, journal)
    workspace.drop("astronaut.png", "live/photo.png")
    workspace.drop("astronaut.mask.png", "live/photo.mask.png")
    job = job_for(workspace, "live/photo.png", live=True)
    assert in_place(job) and live.in_place(job)
    assert live.supersedes(job, job.image)
    assert live.supersedes(job, workspace.inbox / "live/photo.mask.png"), "its mask"
    assert not live.supersedes(job, workspace.inbox / "live/other.png")
    plain = job_for(workspace, "live/photo.png", live=False)
    assert not live.supersedes(plain, plain.image)
    assert live.report(job) == workspace.outbox / "live" / "photo.error.txt"


# ----------------------------------------------------------------- through the daemon


def test_a_drawn_seed_is_kept_across_a_restart(workspace: Workspace, models) -> None:
    """The kept seed lives in the journal: a daemon started again renders the edit with the
    seed it drew the first time."""
    from daemon.ops.service import Daemon

    workspace.profile("live", live=True, seed=-1)
    photo = workspace.drop("astronaut.png", "live/photo.png")
    old = time.time() - 10
    os.utime(photo, (old, old))
    first = Daemon(workspace.settings(), watch=False, models=models)
    assert first.run_once(tick=0.02).done == 1
    seed_of = _seed_line(workspace.outbox / "live" / "photo.txt")

    with Image.open(DATA / "astronaut.png") as image:
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo)
    os.utime(photo, (old + 1, old + 1))
    again = Daemon(workspace.settings(), watch=False, models=models)
    assert again.run_once(tick=0.02).done == 1, "changed while down: it renders"
    assert _seed_line(workspace.outbox / "live" / "photo.txt") == seed_of


def _seed_line(path: Path) -> str:
    return next(part for part in path.read_text().split(", ") if part.startswith("Seed: "))
