"""Output names, atomic writes, path containment, moving inputs, and the failure report."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from daemon.a1111.infotext import png_info
from daemon.atomic import atomic_writer, write_text
from daemon.deliver.lifecycle import archive, fail
from daemon.deliver.outputs import claim_names, failure_report, move_into, write_image
from daemon.errors import InputError
from daemon.intake.jobs import Job
from daemon.intake.pairing import Companions
from daemon.paths import UnsafePath, inside
from daemon.tasks.outputs import output_stems

SUFFIXES = (".png", ".txt")


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# ----------------------------------------------------------------- names


def test_output_stems_for_one_and_for_a_batch():
    assert output_stems("a", 1) == ["a"]
    assert output_stems("a", 3) == ["a_1", "a_2", "a_3"]
    assert output_stems("frame.001", 2) == ["frame.001_1", "frame.001_2"]


def test_claim_names_in_an_empty_folder_keeps_the_stems(tmp_path):
    assert claim_names(tmp_path, ["a"], SUFFIXES, overwrite=False) == ["a"]
    assert claim_names(tmp_path / "missing", ["a_1", "a_2"], SUFFIXES, overwrite=False) == [
        "a_1",
        "a_2",
    ]


@pytest.mark.parametrize("taken", ["a.png", "a.txt"])
def test_claim_names_moves_the_group_when_the_image_or_sidecar_exists(tmp_path, taken):
    touch(tmp_path / taken)
    assert claim_names(tmp_path, ["a"], SUFFIXES, overwrite=False) == ["a-1"]


def test_claim_names_takes_the_next_free_suffix(tmp_path):
    for name in ("a.png", "a.txt", "a-1.png", "a-2.txt"):
        touch(tmp_path / name)
    assert claim_names(tmp_path, ["a"], SUFFIXES, overwrite=False) == ["a-3"]


def test_claim_names_moves_the_whole_batch_when_any_member_is_taken(tmp_path):
    touch(tmp_path / "a_2.txt")
    stems = output_stems("a", 3)
    assert claim_names(tmp_path, stems, SUFFIXES, overwrite=False) == ["a_1-1", "a_2-1", "a_3-1"]


def test_claim_names_only_looks_at_the_suffixes_it_is_given(tmp_path):
    touch(tmp_path / "a.webp")
    touch(tmp_path / "a.error.txt")
    assert claim_names(tmp_path, ["a"], SUFFIXES, overwrite=False) == ["a"]


def test_claim_names_with_overwrite_returns_the_plain_stems(tmp_path):
    for name in ("a.png", "a.txt", "a_1.png"):
        touch(tmp_path / name)
    assert claim_names(tmp_path, ["a"], SUFFIXES, overwrite=True) == ["a"]
    assert claim_names(tmp_path, ["a_1", "a_2"], SUFFIXES, overwrite=True) == ["a_1", "a_2"]


# ----------------------------------------------------------------- atomic writes


def test_atomic_writer_writes_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "deep" / "a.png"
    with atomic_writer(target) as handle:
        handle.write(b"new")
        assert not target.exists()  # nothing at the final name until it is complete
        temporaries = [p for p in target.parent.iterdir() if p.name.startswith(".")]
        assert len(temporaries) == 1
    assert target.read_bytes() == b"new"
    assert listing(tmp_path / "out") == ["deep/a.png"]


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_atomic_writer_on_an_exception_leaves_the_target_untouched(tmp_path, error):
    target = touch(tmp_path / "a.png", b"old")
    with pytest.raises(type(error)), atomic_writer(target) as handle:
        handle.write(b"half")
        raise error
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["a.png"]


def test_atomic_writer_on_an_exception_creates_nothing(tmp_path):
    target = tmp_path / "b.png"
    with pytest.raises(OSError), atomic_writer(target) as handle:
        handle.write(b"half")
        raise OSError(28, "No space left on device")
    assert listing(tmp_path) == []


def test_write_text_replaces_atomically_in_utf8(tmp_path):
    target = touch(tmp_path / "a.txt", b"old")
    write_text(target, "prompt: café, 写真\n")
    assert target.read_text(encoding="utf-8") == "prompt: café, 写真\n"
    assert listing(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_write_image_writes_a_readable_file_with_its_parameters(tmp_path, fmt):
    target = tmp_path / f"a.{fmt}"
    image = Image.new("RGBA", (16, 8), (10, 20, 30, 128))
    write_image(image, target, output_format=fmt, infotext="a cat\nSteps: 2", quality=90)
    with Image.open(target) as result:
        assert result.size == (16, 8)
        assert result.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt]
        assert png_info(result) == "a cat\nSteps: 2"
    assert listing(tmp_path) == [f"a.{fmt}"]


# ----------------------------------------------------------------- containment


def test_inside_joins_and_resolves(tmp_path):
    assert inside(tmp_path, "p", PurePosixPath("shots/day 1"), "a.png") == (
        tmp_path.resolve() / "p" / "shots" / "day 1" / "a.png"
    )
    assert inside(tmp_path) == tmp_path.resolve()
    assert inside(tmp_path, PurePosixPath(".")) == tmp_path.resolve()


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("p", "..", "..", "etc"),
        ("p/../../etc",),
        (PurePosixPath("../x"),),
        ("/etc/passwd",),
        ("p", "/etc"),
        ("a\0b.png",),
        ("p", "shots\0"),
    ],
)
def test_inside_refuses_dot_dot_absolute_parts_and_nul(tmp_path, parts):
    with pytest.raises(UnsafePath, match="refusing the path"):
        inside(tmp_path, *parts)


def test_inside_refuses_a_symlink_that_escapes(tmp_path):
    root = tmp_path / "outbox"
    secret = tmp_path / "secret"
    secret.mkdir()
    root.mkdir()
    (root / "p").symlink_to(secret)
    with pytest.raises(UnsafePath, match="resolves outside"):
        inside(root, "p", "a.png")
    (root / "q.png").symlink_to("/etc/passwd")
    with pytest.raises(UnsafePath, match="resolves outside"):
        inside(root, "q.png")


def test_inside_allows_a_symlink_that_stays_inside_and_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    (real / "p").mkdir(parents=True)
    (real / "alias").symlink_to(real / "p")
    assert inside(real, "alias", "a.png") == real / "p" / "a.png"
    link_root = tmp_path / "link-root"
    link_root.symlink_to(real)
    assert inside(link_root, "p", "a.png") == real / "p" / "a.png"


# ----------------------------------------------------------------- moving inputs


def test_move_into_creates_the_folder_and_moves(tmp_path):
    source = touch(tmp_path / "in" / "a.png", b"A")
    (moved,) = move_into([source], tmp_path / "done" / "p" / "shots")
    assert moved == tmp_path / "done" / "p" / "shots" / "a.png"
    assert moved.read_bytes() == b"A" and not source.exists()


def test_move_into_never_overwrites(tmp_path):
    done = tmp_path / "done"
    touch(done / "a.png", b"first")
    touch(done / "a.mask.png", b"first mask")
    touch(done / "a-1.png", b"second")
    sources = [touch(tmp_path / "in" / "a.png", b"third"), touch(tmp_path / "in" / "a.mask.png")]
    moved = move_into(sources, done)
    assert moved == [done / "a-2.png", done / "a-1.mask.png"]
    assert (done / "a.png").read_bytes() == b"first"
    assert (done / "a-1.png").read_bytes() == b"second"
    assert (done / "a-2.png").read_bytes() == b"third"
    assert (done / "a.mask.png").read_bytes() == b"first mask"


def test_move_into_treats_a_dangling_symlink_as_a_taken_name(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "a.png").symlink_to(tmp_path / "nowhere")
    (moved,) = move_into([touch(tmp_path / "in" / "a.png")], done)
    assert moved == done / "a-1.png"
    assert (done / "a.png").is_symlink()


def test_move_into_names_without_a_stem(tmp_path):
    done = tmp_path / "done"
    touch(done / ".hidden")
    touch(done / "README")
    moved = move_into([touch(tmp_path / "in" / ".hidden"), touch(tmp_path / "in" / "README")], done)
    assert moved == [done / ".hidden-1", done / "README-1"]


def test_move_into_moves_a_symlink_as_a_symlink(tmp_path):
    secret = touch(tmp_path / "secret.txt", b"private key")
    link = tmp_path / "in" / "a.png"
    link.parent.mkdir()
    link.symlink_to(secret)
    (moved,) = move_into([link], tmp_path / "failed")
    assert moved.is_symlink()
    assert os.readlink(moved) == str(secret)
    assert not link.exists() and not link.is_symlink()
    assert secret.read_bytes() == b"private key"
    assert listing(tmp_path / "failed") == ["a.png"]


# ----------------------------------------------------------------- lifecycle


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


def inpaint_job(inbox: Path, sub_dir: str = "shots") -> Job:
    folder = inbox / "inpaint" / sub_dir
    image = touch(folder / "a.png", b"image")
    mask = touch(folder / "masks" / "a.png", b"mask")
    settings = touch(folder / "a.yaml", b"steps: 3\n")
    return Job(
        profile="inpaint",
        image=image,
        sub_dir=PurePosixPath(sub_dir),
        companions=Companions(mask=mask, settings=settings),
    )


def test_fail_moves_every_input_keeping_sub_folders_and_writes_a_report(inbox):
    job = inpaint_job(inbox)
    reason = "a.png is not an image (it is text)"
    report = fail(job, inbox, reason, InputError(reason))
    failed = inbox / "_failed" / "inpaint" / "shots"
    assert report == failed / "a.error.txt"
    assert listing(inbox / "_failed") == [
        "inpaint/shots/a.error.txt",
        "inpaint/shots/a.png",
        "inpaint/shots/a.yaml",
        "inpaint/shots/masks/a.png",
    ]
    assert (failed / "masks" / "a.png").read_bytes() == b"mask"
    assert listing(inbox / "inpaint") == []
    lines = report.read_text(encoding="utf-8").splitlines()
    assert lines[0] == reason
    assert "Input: inpaint/shots/a.png" in lines
    assert "Traceback" not in report.read_text()  # expected problems need no traceback
    assert not [p for p in failed.rglob(".*")]  # no temporaries


def test_fail_at_the_profile_root(inbox):
    image = touch(inbox / "img2img" / "b.png")
    job = Job(profile="img2img", image=image, sub_dir=PurePosixPath("."))
    report = fail(job, inbox, "b.png is truncated", None)
    assert report == inbox / "_failed" / "img2img" / "b.error.txt"
    assert report.read_text().splitlines()[0] == "b.png is truncated"
    assert "Input: img2img/b.png" in report.read_text()


def test_a_second_failure_of_the_same_name_keeps_the_first_and_its_report(inbox):
    first = fail(inpaint_job(inbox), inbox, "first reason", None)
    second = fail(inpaint_job(inbox), inbox, "second reason", None)
    failed = inbox / "_failed" / "inpaint" / "shots"
    assert first == failed / "a.error.txt" and second == failed / "a-1.error.txt"
    assert first.read_text().splitlines()[0] == "first reason"
    assert second.read_text().splitlines()[0] == "second reason"
    assert (failed / "a-1.png").exists() and (failed / "masks" / "a-1.png").exists()


def test_a_report_never_replaces_an_older_report(inbox):
    old = touch(inbox / "_failed" / "img2img" / "c.error.txt", b"old report\n")
    image = touch(inbox / "img2img" / "c.png")
    report = fail(
        Job(profile="img2img", image=image, sub_dir=PurePosixPath(".")), inbox, "new", None
    )
    assert report == old.with_name("c.error-1.txt")
    assert old.read_bytes() == b"old report\n"


def test_an_unexpected_error_report_has_the_reason_first_then_the_traceback(inbox):
    image = touch(inbox / "img2img" / "d.png")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as exc:
        error = exc
    report = fail(
        Job(profile="img2img", image=image, sub_dir=PurePosixPath(".")),
        inbox,
        "d.png failed 3 times with an unexpected ZeroDivisionError",
        error,
    )
    text = report.read_text()
    assert text.splitlines()[0] == "d.png failed 3 times with an unexpected ZeroDivisionError"
    assert "Traceback" in text and "ZeroDivisionError: division by zero" in text


def test_failure_report_text():
    text = failure_report("  it broke  \n", None, job_name="p/x/a.png")
    assert text.splitlines()[0] == "  it broke"
    assert "Input: p/x/a.png" in text and text.endswith("\n")


def test_archive_moves_every_input_to_done_keeping_sub_folders(inbox):
    job = inpaint_job(inbox, sub_dir="2024/june")
    moved = archive(job, inbox)
    done = inbox / "_done" / "inpaint" / "2024" / "june"
    assert moved == [done / "a.png", done / "masks" / "a.png", done / "a.yaml"]
    assert listing(inbox / "inpaint") == []
    assert (done / "masks" / "a.png").read_bytes() == b"mask"
