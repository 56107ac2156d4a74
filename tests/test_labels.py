"""Label lists: our files, the user's folder, A1111's .topN suffix, dict limit, skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.engines.labels import (
    CLASSIC_ORDER,
    DEFAULT_LABELS_DIR,
    NEGATIVE,
    LabelList,
    load_label_lists,
    read_label_file,
)
from daemon.errors import ConfigError


def write(folder: Path, name: str, *lines: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def ours(tmp_path: Path) -> Path:
    folder = tmp_path / "ours"
    write(folder, "flavors.top3.txt", "golden hour", "bokeh", "8k", "bokeh")
    write(folder, "artists.txt", "Claude Monet", "Hokusai")
    write(folder, "mediums.txt", "an oil painting", "a photograph")
    write(folder, "movements.txt", "impressionism")
    write(folder, "negative.txt", "blurry")
    return folder


def test_lists_come_in_a1111_order_with_their_top_n(ours: Path) -> None:
    lists = load_label_lists(defaults_dir=ours)
    assert [x.name for x in lists] == [*CLASSIC_ORDER, NEGATIVE]
    flavors = lists[3]
    assert flavors == LabelList("flavors", ("golden hour", "bokeh", "8k"), 3)  # kept once
    assert lists[0].top_n == 1


def test_the_users_folder_replaces_and_adds(ours: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    write(mine, "artists.top2.txt", "# my favourites", "", "  Alphonse   Mucha ", "Hiroshige")
    write(mine, "Cameras.txt", "a Leica photo")
    lists = {x.name: x for x in load_label_lists(mine, defaults_dir=ours)}
    assert lists["artists"] == LabelList("artists", ("Alphonse Mucha", "Hiroshige"), 2)
    assert lists["cameras"].terms == ("a Leica photo",)
    names = list(lists)
    assert names.index("cameras") > names.index("flavors")  # after the classic four
    assert names[-1] == NEGATIVE


def test_dict_limit_and_skip_categories(ours: Path) -> None:
    lists = load_label_lists(defaults_dir=ours, dict_limit=1, skip_categories=["Artists "])
    assert "artists" not in [x.name for x in lists]
    assert all(len(x.terms) == 1 for x in lists)
    assert len(load_label_lists(defaults_dir=ours, dict_limit=0)[3].terms) == 3  # 0: all
    with pytest.raises(ConfigError, match=r"no list named artist;.*artists"):
        load_label_lists(defaults_dir=ours, skip_categories=["artist"])


def test_bad_lists_are_config_errors(ours: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        load_label_lists(tmp_path / "missing", defaults_dir=ours)
    empty = write(tmp_path / "bad", "empty.txt", "# nothing", "")
    with pytest.raises(ConfigError, match="has no terms"):
        read_label_file(empty)
    odd = write(tmp_path / "bad2", "x.top.txt", "a")
    with pytest.raises(ConfigError, match="must be named"):
        read_label_file(odd)


def test_shipped_lists() -> None:
    """Our own lists: enough terms to rank, one line each, nothing a prompt would split."""
    lists = {x.name: x for x in load_label_lists()}
    assert list(lists) == [*CLASSIC_ORDER, NEGATIVE]
    assert lists["flavors"].top_n == 3
    for label in lists.values():
        assert len(label.terms) >= 100, label.name
        assert not [t for t in label.terms if "," in t], label.name
        raw = DEFAULT_LABELS_DIR / next(DEFAULT_LABELS_DIR.glob(f"{label.name}*.txt")).name
        assert len(raw.read_text().splitlines()) == len(label.terms), f"{label.name}: repeats"
