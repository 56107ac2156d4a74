"""Which inbox paths are jobs, of which profile, of which kind, and which files go with them."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from daemon.intake.names import is_ignored_dir, is_ignored_name
from daemon.intake.pairing import (
    Companions,
    Kind,
    Route,
    classify,
    companions_on_disk,
    find_companions,
    route,
)
from daemon.intake.watcher import walk_files

INBOX = Path("/srv/inbox")

# RELIABILITY.md, "Names to ignore".
JUNK_NAMES = [
    ".hidden.png",
    "~$photo.png",
    "photo.png~",
    "photo.tmp",
    "photo.png.tmp",
    "photo.TMP",
    "photo.png.part",
    "photo.png.partial",
    "photo.png.crdownload",
    "photo.png.filepart",
    "photo.png.download",
    "~syncthing~photo.png.tmp",
    ".syncthing.photo.png.tmp",
    "Thumbs.db",
    "thumbs.db",
    "desktop.ini",
    "Desktop.ini",
    ".DS_Store",
    "._photo.png",
    ".photo.png.Xa81Bz",  # rsync's temporary
    ".photo.png.1234.tmp",  # our own atomic writer's temporary
]
JUNK_DIRS = [
    ".stfolder",
    ".stversions",
    "@eaDir",
    "@EADIR",
    "__MACOSX",
    ".Spotlight-V100",
    ".Trashes",
    ".~tmp~",
    "$RECYCLE.BIN",
    "lost+found",
    ".git",
    "_done",
    "_failed",
    "_anything",
]
SYNC_CONFLICTS = [
    "photo.sync-conflict-20260101-120000-ABCDEFG.png",
    "photo.sync-conflict-20231231-235959-Q2W3E4R.jpg",
    "photo.mask.sync-conflict-20260101-120000-ABCDEFG.png",
    "photo.sync-conflict-20260101-120000-ABCDEFG.yaml",
]


def where(relative: str) -> Route:
    found = route(INBOX, INBOX / relative)
    assert found is not None, relative
    return found


# ----------------------------------------------------------------- route


@pytest.mark.parametrize(
    ("relative", "profile", "sub_dir", "name"),
    [
        ("img2img/a.png", "img2img", ".", "a.png"),
        ("img2img/shoot/a.png", "img2img", "shoot", "a.png"),
        ("inpaint/2024/june/day 1/a b.PNG", "inpaint", "2024/june/day 1", "a b.PNG"),
        ("inpaint/shots/masks/a.png", "inpaint", "shots/masks", "a.png"),
    ],
)
def test_route_finds_profile_and_nested_sub_path(relative, profile, sub_dir, name):
    found = where(relative)
    assert found == Route(profile=profile, sub_dir=PurePosixPath(sub_dir), name=name)


def test_route_stem_is_the_name_without_the_last_extension():
    assert where("p/frame.0001.png").stem == "frame.0001"
    assert where("p/a.png").stem == "a"


@pytest.mark.parametrize("name", ["a.png", "img2imgd.yaml", "README.txt"])
def test_files_directly_in_the_inbox_root_are_not_jobs(name):
    assert route(INBOX, INBOX / name) is None


def test_paths_outside_the_inbox_are_not_jobs():
    assert route(INBOX, Path("/srv/other/p/a.png")) is None
    assert route(INBOX, Path("/srv/inbox-2/p/a.png")) is None


@pytest.mark.parametrize("folder", JUNK_DIRS)
def test_ignored_folders_anywhere_hide_their_files(folder):
    assert is_ignored_dir(folder)
    assert route(INBOX, INBOX / folder / "a.png") is None  # in place of a profile
    assert route(INBOX, INBOX / "p" / folder / "a.png") is None
    assert route(INBOX, INBOX / "p" / "shots" / folder / "deeper" / "a.png") is None


def test_done_and_failed_archives_are_never_jobs():
    assert route(INBOX, INBOX / "_done" / "img2img" / "a.png") is None
    assert route(INBOX, INBOX / "_failed" / "img2img" / "shots" / "a.png") is None


@pytest.mark.parametrize("name", JUNK_NAMES)
def test_junk_names_are_ignored(name):
    assert is_ignored_name(name)
    assert route(INBOX, INBOX / "p" / name) is None
    assert route(INBOX, INBOX / "p" / "sub" / name) is None


@pytest.mark.parametrize("name", SYNC_CONFLICTS)
def test_syncthing_conflict_copies_are_left_alone(name):
    assert is_ignored_name(name)
    assert route(INBOX, INBOX / "p" / name) is None


@pytest.mark.parametrize(
    "name",
    ["name.sync-conflict-20260101-120000-ABCDEF.png", "name.sync-conflict-20160101-120000.png"],
)
def test_syncthing_conflict_copies_in_other_spellings_are_left_alone(name):
    assert route(INBOX, INBOX / "p" / name) is None


@pytest.mark.parametrize(
    "name",
    [
        "photo.png",
        "photo tmp.png",
        "temp.png",
        "part.png",
        "my~file.png",
        "thumbs.db.png",
        "a.sync-conflict.png",
        "Ünïcödé 写真.png",
        "photo.mask.png",
        "photo.yaml",
    ],
)
def test_ordinary_names_are_not_junk(name):
    assert not is_ignored_name(name)
    assert route(INBOX, INBOX / "p" / name) is not None


@pytest.mark.parametrize("folder", ["shots", "masks", "my_folder", "done", "failed", "2024"])
def test_ordinary_folders_are_entered(folder):
    assert not is_ignored_dir(folder)
    assert route(INBOX, INBOX / "p" / folder / "a.png") is not None


# ----------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("relative", "kind"),
    [
        ("p/a.png", Kind.IMAGE),
        ("p/a.PNG", Kind.IMAGE),
        ("p/a.JPG", Kind.IMAGE),
        ("p/a.jpeg", Kind.IMAGE),
        ("p/a.webp", Kind.IMAGE),
        ("p/a.TIFF", Kind.IMAGE),
        ("p/a.tif", Kind.IMAGE),
        ("p/a.mask.png", Kind.MASK),
        ("p/a.MASK.PNG", Kind.MASK),
        ("p/a.mask.jpg", Kind.MASK),
        ("p/masks/a.png", Kind.MASK),
        ("p/shots/masks/a.JPG", Kind.MASK),
        ("p/a.sketch.png", Kind.SKETCH),
        ("p/a.Sketch.PNG", Kind.SKETCH),
        ("p/a.yaml", Kind.SETTINGS),
        ("p/a.yml", Kind.SETTINGS),
        ("p/a.YAML", Kind.SETTINGS),
        ("p/a.txt", Kind.PARAMETERS),
        ("p/a.gif", Kind.IMAGE),  # a clip
        ("p/clip.MP4", Kind.IMAGE),
        ("p/a.psd", Kind.UNSUPPORTED),
        ("p/README", Kind.UNSUPPORTED),
        ("p/a.png.zip", Kind.UNSUPPORTED),
        ("p/a.control.png", Kind.CONTROL),  # ControlNet images: companions, never inputs
        ("p/a.control-2.PNG", Kind.CONTROL),
        ("p/clip/control/f_0001.png", Kind.CONTROL),
        ("p/clip/control-1/f_0001.png", Kind.CONTROL),
        ("p/a.controls.png", Kind.IMAGE),
        ("p/a.control.mp4", Kind.CONTROL),  # a video's control video
        ("p/a.control-1.webm", Kind.CONTROL),
        ("p/control.mp4", Kind.IMAGE),
        ("p/clip/controls/f_0001.png", Kind.IMAGE),
        ("p/a.reference.png", Kind.REFERENCE),  # IP-Adapter references: never inputs
        ("p/clip/reference/key.JPG", Kind.REFERENCE),
        ("p/reference.png", Kind.IMAGE),  # a name like any other
        ("p/references/a.png", Kind.IMAGE),
    ],
)
def test_classify(relative, kind):
    assert classify(where(relative)) is kind


def test_a_mask_folder_only_counts_by_its_exact_name():
    assert classify(where("p/masks_old/a.png")) is Kind.IMAGE
    assert classify(where("p/masks/deeper/a.png")) is Kind.IMAGE


# ----------------------------------------------------------------- companions


FOLDER = Path("/srv/inbox/p/shots")


def companions(image: str, names: set[str], mask_names: frozenset[str] = frozenset()) -> Companions:
    return find_companions(FOLDER / image, names, set(mask_names))


def test_no_companions():
    assert companions("a.png", {"b.png", "b.mask.png", "ab.yaml"}) == Companions()
    assert Companions().paths() == ()


def test_mask_next_to_the_image_wins_over_the_masks_folder():
    found = companions("a.png", {"a.mask.png", "b.png"}, frozenset({"a.png"}))
    assert found.mask == FOLDER / "a.mask.png"


def test_mask_from_the_masks_folder_when_none_is_beside_the_image():
    found = companions("a.png", {"b.mask.png"}, frozenset({"a.jpg", "b.png"}))
    assert found.mask == FOLDER / "masks" / "a.jpg"


def test_companions_match_case_insensitively_and_keep_the_real_name():
    found = companions("Photo.PNG", {"photo.MASK.png", "PHOTO.Sketch.PNG", "Photo.YML"})
    assert found.mask == FOLDER / "photo.MASK.png"
    assert found.sketch == FOLDER / "PHOTO.Sketch.PNG"
    assert found.settings == FOLDER / "Photo.YML"
    found = companions("photo.jpg", set(), frozenset({"PHOTO.PNG"}))
    assert found.mask == FOLDER / "masks" / "PHOTO.PNG"


def test_settings_yml_is_found_and_yaml_wins_when_both_exist():
    assert companions("a.png", {"a.yml"}).settings == FOLDER / "a.yml"
    assert companions("a.png", {"a.yml", "a.yaml"}).settings == FOLDER / "a.yaml"


def test_the_mask_may_have_another_image_extension():
    assert companions("a.png", {"a.mask.webp"}).mask == FOLDER / "a.mask.webp"


def test_only_png_sketches_are_sketches():
    assert companions("a.png", {"a.sketch.jpg"}).sketch is None


def test_companions_need_the_whole_stem():
    masks = frozenset({"ab.png", "xy.png"})  # (a single file there would serve every image)
    found = companions("a.png", {"ab.mask.png", "a.b.yaml", "xa.sketch.png"}, masks)
    assert found == Companions()
    dotted = companions("a.b.png", {"a.b.mask.png", "a.b.yaml", "a.mask.png"})
    assert dotted.mask == FOLDER / "a.b.mask.png"
    assert dotted.settings == FOLDER / "a.b.yaml"


def test_a_single_mask_in_the_masks_folder_serves_every_image():
    found = companions("frame_0007.png", set(), frozenset({"matte.png", "notes.txt"}))
    assert found.mask == FOLDER / "masks" / "matte.png" and found.mask_shared
    assert found.paths() == ()  # it is not moved with any one frame


def test_a_lone_mask_named_after_another_image_is_that_images_own():
    """b's mask may still be on its way: b must not be painted with a's."""
    found = companions("b.png", {"a.png", "a.yaml"}, frozenset({"a.png"}))
    assert found.mask is None
    assert companions("a.png", {"b.png"}, frozenset({"a.png"})).mask == FOLDER / "masks/a.png"


def test_masks_match_frames_by_trailing_number():
    masks = frozenset({"mask_1.png", "mask_2.png", "mask_10.png", "0012.png"})
    assert companions("frame_0002.png", set(), masks).mask == FOLDER / "masks" / "mask_2.png"
    assert companions("frame_0010.png", set(), masks).mask == FOLDER / "masks" / "mask_10.png"
    assert companions("shot12.png", set(), masks).mask == FOLDER / "masks" / "0012.png"
    assert companions("frame_0003.png", set(), masks).mask is None
    own = companions("mask_1.png", set(), masks)  # the same stem wins, and is its own
    assert own.mask == FOLDER / "masks" / "mask_1.png" and not own.mask_shared
    numbered = companions("frame_0002.png", set(), masks)
    assert not numbered.mask_shared and numbered.paths() == (FOLDER / "masks" / "mask_2.png",)


def test_companion_paths_order():
    found = companions("a.png", {"a.mask.png", "a.sketch.png", "a.yaml"})
    assert found.paths() == (FOLDER / "a.mask.png", FOLDER / "a.sketch.png", FOLDER / "a.yaml")


def test_companions_on_disk_reads_the_folder_and_masks_folder(tmp_path):
    folder = tmp_path / "inbox" / "inpaint" / "shots"
    (folder / "masks").mkdir(parents=True)
    for name in ("a.png", "b.png", "b.mask.png", "a.yml", ".a.mask.png.part", "masks/a.png"):
        (folder / name).write_bytes(b"x")
    (folder / "masks" / "b.png").write_bytes(b"x")
    a = companions_on_disk(folder / "a.png")
    assert a == Companions(mask=folder / "masks" / "a.png", settings=folder / "a.yml")
    b = companions_on_disk(folder / "b.png")
    assert b == Companions(mask=folder / "b.mask.png")


def test_companions_on_disk_ignores_junk_names(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    (folder / "a.mask.png~").write_bytes(b"x")
    (folder / "._a.yaml").write_bytes(b"x")
    assert companions_on_disk(folder / "a.png") == Companions()


def test_walking_a_real_inbox_skips_junk_and_ignored_folders(tmp_path):
    inbox = tmp_path / "inbox"
    keep = ["p/a.png", "p/shots/b.jpg", "p/shots/masks/b.png", "p/c.yaml", "q/d.PNG"]
    junk = [f"p/{name}" for name in JUNK_NAMES + SYNC_CONFLICTS]
    junk += [f"p/{folder}/x.png" for folder in JUNK_DIRS] + ["_done/p/old.png"]
    for relative in keep + junk:
        path = inbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = sorted(str(p.relative_to(inbox)) for p in walk_files(inbox))
    assert found == sorted(keep)
    assert all(route(inbox, inbox / relative) is not None for relative in keep)


# ------------------------------------------------------------ control images


def test_each_units_control_image_pairs_beside_the_image_then_in_its_folder_by_number():
    beside = {"frame_7.control.png", "frame_7.control-2.jpg", "frame_8.control-1.png", "control"}
    folders = {"control": {"c_7.png"}, "control-1": {"other_7.png"}, "control-3": {"x_9.png"}}
    found = find_companions(FOLDER / "frame_7.png", beside, set(), folders)
    assert found.controls == (
        (0, FOLDER / "frame_7.control.png"),  # beside wins over control/
        (1, FOLDER / "control-1/other_7.png"),  # by its frame number
        (2, FOLDER / "frame_7.control-2.jpg"),
    )
    assert found.control(3) is None
    assert FOLDER / "control-1/other_7.png" in found.paths(), "archived with its input"


def test_control_folders_hold_no_inputs(tmp_path):
    from daemon.intake.pairing import image_of_companion, pending_images

    (tmp_path / "control").mkdir()
    (tmp_path / "control/f_1.png").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "a.control-1.png").write_bytes(b"x")
    assert list(pending_images(tmp_path / "control")) == []
    assert list(pending_images(tmp_path)) == [tmp_path / "a.png"]
    assert image_of_companion(tmp_path / "a.control-1.png") == tmp_path / "a.png"
    assert companions_on_disk(tmp_path / "a.png").control(1) == tmp_path / "a.control-1.png"


def test_a_control_video_pairs_with_its_video(tmp_path):
    from daemon.intake.pairing import image_of_companion, pending_images

    for name in ("v.mp4", "v.control.mp4", "v.control-2.webm", "v.png"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(pending_images(tmp_path)) == [tmp_path / "v.mp4", tmp_path / "v.png"]
    assert image_of_companion(tmp_path / "v.control.mp4") == tmp_path / "v.mp4"
    assert companions_on_disk(tmp_path / "v.mp4").controls == (
        (0, tmp_path / "v.control.mp4"),
        (2, tmp_path / "v.control-2.webm"),
    )


# ------------------------------------------------------------ reference images


def test_an_images_own_reference_wins_over_its_folders():
    names = {"f_1.reference.png", "reference", "f_2.png"}
    key = {"key_frame.png", "notes.txt"}
    own = find_companions(FOLDER / "f_1.png", names, set(), reference_names=key)
    assert own.reference == FOLDER / "f_1.reference.png" and not own.reference_shared
    assert own.reference in own.paths(), "archived with its input"
    shared = find_companions(FOLDER / "f_2.png", names, set(), reference_names=key)
    assert shared.reference == FOLDER / "reference/key_frame.png" and shared.reference_shared
    assert shared.reference not in shared.paths() and shared.shared == (shared.reference,)


def test_reference_images_are_no_inputs(tmp_path):
    from daemon.intake.pairing import image_of_companion, pending_images

    (tmp_path / "reference").mkdir()
    for name in ("a.png", "a.reference.png", "reference/key.png"):
        (tmp_path / name).write_bytes(b"x")
    assert list(pending_images(tmp_path)) == [tmp_path / "a.png"]
    assert list(pending_images(tmp_path / "reference")) == []
    assert image_of_companion(tmp_path / "a.reference.png") == tmp_path / "a.png"
    assert image_of_companion(tmp_path / "reference/key.png") is None
    (tmp_path / "a.reference.png").unlink()
    assert companions_on_disk(tmp_path / "a.png").reference == tmp_path / "reference/key.png"
