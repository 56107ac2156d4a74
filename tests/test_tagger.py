"""Taggers through the real code: onnxruntime on the built-in tiny WD14 tagger, torch on a
narrow random DeepDanbooru state dict saved as a real ``.pt`` pickle."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon.engines import deepdanbooru
from daemon.engines.tagger import (
    CATEGORY_CHARACTER,
    CATEGORY_RATING,
    KAOMOJI,
    TaggerOptions,
    TagInfo,
    TagResult,
    Wd14Tagger,
    format_tags,
    wd14_input,
)
from daemon.engines.taggers import load_tagger
from daemon.errors import ConfigError
from daemon.models.tiny_tagger import build_tiny_tagger, tiny_tag_rows
from tests.support.deepdanbooru import random_state_dict

DATA = Path(__file__).parent / "data"
DD_TAGS = [
    "1girl",
    "long_hair",
    "smile",
    "hatsune_miku_(cosplay)",
    "^_^",
    "blue_eyes",
    "outdoors",
    "open_mouth",
    "short_hair",
    "sky",
    "rating:safe",
    "rating:questionable",
    "rating:explicit",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tagger") / "tiny"
    build_tiny_tagger(folder)
    return folder


@pytest.fixture(scope="module")
def wd14(tiny_dir: Path) -> Wd14Tagger:
    tagger = load_tagger(tiny_dir)
    assert isinstance(tagger, Wd14Tagger)
    return tagger


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.open(DATA / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def scores(wd14: Wd14Tagger, image: Image.Image) -> np.ndarray:
    return wd14.predict(image)


@pytest.fixture(scope="module")
def dd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dd") / "model-resnet_custom_v3.pt"
    torch.save(random_state_dict(DD_TAGS, seed=0), path)
    return path


def names(result: TagResult) -> list[str]:
    return [tag.name for tag in result.tags]


def by_descending_score(result: TagResult) -> bool:
    kept = [tag.score for tag in result.tags]
    return kept == sorted(kept, reverse=True)


def by_name(wd14: Wd14Tagger, scores: np.ndarray) -> dict[str, tuple[float, int | None]]:
    return {tag.name: (float(s), tag.category) for tag, s in zip(wd14.tags, scores, strict=True)}


# ---------------------------------------------------------------------------------------------
# WD14: loading and the tiny built-in


def test_tiny_tagger_loads_like_a_real_wd14_folder(wd14: Wd14Tagger, tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["model.onnx", "selected_tags.csv"]
    header = (tiny_dir / "selected_tags.csv").read_text().splitlines()[0]
    assert header == "tag_id,name,category,count"
    assert wd14.kind == "wd14"
    assert wd14.default_threshold == 0.35
    assert wd14.size == 64  # read from the ONNX input shape
    assert wd14.providers == ["CPUExecutionProvider"]
    assert [(t.name, t.category) for t in wd14.tags] == [(r[1], r[2]) for r in tiny_tag_rows()]
    assert [t.name for t in wd14.tags[:4]] == ["general", "sensitive", "questionable", "explicit"]
    assert {t.category for t in wd14.tags[:4]} == {CATEGORY_RATING}
    # The model.onnx file itself is accepted too (its tag list lies beside it).
    assert load_tagger(tiny_dir / "model.onnx").kind == "wd14"


def test_tiny_scores_spread_and_depend_on_the_image(
    wd14: Wd14Tagger, scores: np.ndarray, image: Image.Image
) -> None:
    assert scores.shape == (len(wd14.tags),)
    assert scores.dtype == np.float32
    assert 0 < scores.min() < 0.1 and 0.9 < scores.max() < 1
    assert ((scores > 0.35) & (scores < 0.85)).sum() >= 8
    other = wd14.predict(Image.new("RGB", (80, 50), (255, 255, 255)))
    assert np.abs(other - scores).max() > 0.05


def test_scores_are_the_same_across_two_builds(
    tmp_path: Path, tiny_dir: Path, scores: np.ndarray, image: Image.Image
) -> None:
    build_tiny_tagger(tmp_path / "again")
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (
        tiny_dir / "model.onnx"
    ).read_bytes()
    np.testing.assert_array_equal(load_tagger(tmp_path / "again").predict(image), scores)


def test_tiny_tagger_needs_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        build_tiny_tagger(tmp_path)


# ---------------------------------------------------------------------------------------------
# WD14: preprocessing


def half_red_half_transparent(width: int, height: int) -> Image.Image:
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))  # transparent black
    img.paste((255, 0, 0, 255), (0, 0, width // 2, height))
    return img


def test_wd14_input_alpha_on_white_square_padding_bgr() -> None:
    pixels = wd14_input(half_red_half_transparent(64, 32), 64)
    assert pixels.shape == (1, 64, 64, 3) and pixels.dtype == np.float32
    px = pixels[0]
    assert (px[:16] == 255).all() and (px[48:] == 255).all()  # white bands above and below
    assert (px[16:48, :32] == [0, 0, 255]).all()  # red, in BGR order
    assert (px[16:48, 32:] == 255).all()  # transparent black became white


def test_wd14_input_pads_tall_images_at_the_sides() -> None:
    img = Image.new("RGB", (16, 64), (10, 20, 30))
    px = wd14_input(img, 64)[0]
    assert (px[:, :24] == 255).all() and (px[:, 40:] == 255).all()
    assert (px[:, 24:40] == [30, 20, 10]).all()


def test_wd14_input_semi_transparent_pixels_blend_with_white() -> None:
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
    px = wd14_input(img, 64)[0]
    np.testing.assert_allclose(px[10, 10], [127, 127, 255], atol=1)


def test_wd14_input_shrinks_with_an_area_filter() -> None:
    checker = np.indices((128, 128)).sum(axis=0) % 2 * 255  # one-pixel checkerboard
    img = Image.fromarray(checker.astype(np.uint8)).convert("RGB")
    px = wd14_input(img, 64)[0]
    np.testing.assert_allclose(px, 127.5, atol=0.6)  # each output pixel averages 2x2
    # Block-structured content shrinks exactly to the small version.
    big = half_red_half_transparent(64, 32).resize((128, 64), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(
        wd14_input(big, 64), wd14_input(half_red_half_transparent(64, 32), 64)
    )


def test_wd14_input_enlarges_bicubic() -> None:
    small = half_red_half_transparent(16, 8)
    px = wd14_input(small, 64)[0]
    assert px.shape == (64, 64, 3)
    assert (px[:10] == 255).all()  # white above the content (bicubic rings near its edge)
    np.testing.assert_allclose(px[32, 8], [0, 0, 255], atol=1)
    np.testing.assert_allclose(px[32, 56], [255, 255, 255], atol=1)
    square = Image.new("RGB", (16, 16), (255, 255, 255))
    square.paste(small, (0, 4), small)
    expected = np.asarray(square.resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32)
    np.testing.assert_array_equal(px, expected[:, :, ::-1])


# ---------------------------------------------------------------------------------------------
# Options, through the tiny WD14 tagger


def test_default_line_is_by_score_above_035_without_ratings(
    wd14: Wd14Tagger, image: Image.Image, scores: np.ndarray
) -> None:
    result = wd14.tag(image)
    table = by_name(wd14, scores)
    expected = [
        name
        for name, (score, category) in table.items()
        if category != CATEGORY_RATING
        and score >= (0.85 if category == CATEGORY_CHARACTER else 0.35)
    ]
    assert sorted(names(result)) == sorted(expected)
    kept_scores = [tag.score for tag in result.tags]
    assert kept_scores == sorted(kept_scores, reverse=True)
    assert result.line == ", ".join(tag.text for tag in result.tags)
    assert set(result.ratings) == {"general", "sensitive", "questionable", "explicit"}
    assert not set(result.ratings) & set(names(result))


def test_threshold_zero_keeps_every_tag_and_one_keeps_none(
    wd14: Wd14Tagger, image: Image.Image
) -> None:
    non_rating = [t.name for t in wd14.tags if t.category != CATEGORY_RATING]
    general = [t.name for t in wd14.tags if t.category == 0]
    everything = wd14.tag(image, TaggerOptions(threshold=0, character_threshold=0))
    assert sorted(names(everything)) == sorted(non_rating)
    assert set(general) <= set(names(wd14.tag(image, TaggerOptions(threshold=0))))
    nothing = wd14.tag(image, TaggerOptions(threshold=1, character_threshold=1))
    assert nothing.line == "" and nothing.tags == ()


def test_threshold_is_inclusive(wd14: Wd14Tagger, scores: np.ndarray) -> None:
    smile = by_name(wd14, scores)["smile"][0]
    at = format_tags(
        scores,
        wd14.tags,
        TaggerOptions(threshold=smile),
        default_threshold=0.35,
        default_sort_alpha=False,
    )
    above = format_tags(
        scores,
        wd14.tags,
        TaggerOptions(threshold=float(np.nextafter(smile, 1))),
        default_threshold=0.35,
        default_sort_alpha=False,
    )
    assert "smile" in names(at) and "smile" not in names(above)


def test_character_threshold_applies_to_characters_only(
    wd14: Wd14Tagger, image: Image.Image, scores: np.ndarray
) -> None:
    table = by_name(wd14, scores)
    characters = {n for n, (_, c) in table.items() if c == CATEGORY_CHARACTER}
    cut = 0.6
    result = wd14.tag(image, TaggerOptions(threshold=0.99, character_threshold=cut))
    assert set(names(result)) == {n for n in characters if table[n][0] >= cut}
    assert 0 < len(names(result)) < len(characters)  # the tiny model has characters both sides
    default = set(names(wd14.tag(image, TaggerOptions(threshold=0))))
    assert default & characters == {n for n in characters if table[n][0] >= 0.85}


def test_sort_order_both_ways(wd14: Wd14Tagger, image: Image.Image) -> None:
    alpha = wd14.tag(image, TaggerOptions(sort_alpha=True))
    assert names(alpha) == sorted(names(alpha))
    by_score = wd14.tag(image, TaggerOptions(sort_alpha=False))
    assert by_descending_score(by_score)
    assert sorted(names(alpha)) == sorted(names(by_score)) and names(alpha) != names(by_score)


def test_spaces_except_kaomoji(wd14: Wd14Tagger, image: Image.Image) -> None:
    result = wd14.tag(image, TaggerOptions(threshold=0))
    written = {tag.name: tag.text for tag in result.tags}
    assert written["long_hair"] == "long hair"
    assert written["^_^"] == "^_^" and written[">_<"] == ">_<"
    assert {"^_^", ">_<", "o_o", "0_0", "(o)_(o)", "||_||", "x_x"} <= KAOMOJI
    raw = wd14.tag(image, TaggerOptions(threshold=0, use_spaces=False))
    assert {tag.text for tag in raw.tags} >= {"long_hair", "looking_at_viewer", "^_^"}
    assert "long_hair" in raw.line.split(", ") and "long hair" not in raw.line


def test_escape(wd14: Wd14Tagger, image: Image.Image) -> None:
    escaped = wd14.tag(image, TaggerOptions(threshold=0))
    assert "hatsune miku \\(cosplay\\)" in escaped.line.split(", ")
    plain = wd14.tag(image, TaggerOptions(threshold=0, escape=False))
    assert "hatsune miku (cosplay)" in plain.line.split(", ")
    assert "\\" not in plain.line
    backslash = format_tags(
        [0.9, 0.9],
        [TagInfo("a\\b"), TagInfo("(o)_(o)")],
        TaggerOptions(),
        default_threshold=0.5,
        default_sort_alpha=True,
    )
    assert backslash.line == "\\(o\\)_\\(o\\), a\\\\b"


def test_exclude_ignores_case_spaces_and_escapes(wd14: Wd14Tagger, image: Image.Image) -> None:
    everything = names(wd14.tag(image, TaggerOptions(threshold=0)))
    excluded = ("Long Hair", "LOOKING_at viewer", "hatsune miku \\(cosplay\\)", "^_^")
    result = wd14.tag(image, TaggerOptions(threshold=0, exclude_tags=excluded))
    gone = {"long_hair", "looking_at_viewer", "hatsune_miku_(cosplay)", "^_^"}
    assert set(names(result)) == set(everything) - gone
    # A1111's comma-separated string works the same.
    as_text = TaggerOptions(threshold=0, exclude_tags="long hair, ^_^")  # type: ignore[arg-type]
    assert as_text.exclude_tags == ("long hair", "^_^")
    assert set(names(wd14.tag(image, as_text))) == set(everything) - {"long_hair", "^_^"}


def test_include_ratings_puts_the_best_rating_first(wd14: Wd14Tagger, image: Image.Image) -> None:
    result = wd14.tag(image, TaggerOptions(include_ratings=True))
    best = max(result.ratings, key=lambda name: result.ratings[name])
    assert best == "general"  # the tiny model is designed so
    assert result.tags[0].name == best and result.tags[0].category == CATEGORY_RATING
    assert result.line.startswith("general, ")
    assert [t.name for t in result.tags[1:]] == names(wd14.tag(image))
    alpha = wd14.tag(image, TaggerOptions(include_ratings=True, sort_alpha=True))
    assert alpha.tags[0].name == "general"  # first whatever the order of the rest


def test_ranks_format(wd14: Wd14Tagger, image: Image.Image) -> None:
    result = wd14.tag(image, TaggerOptions(return_ranks=True, threshold=0))
    for tag in result.tags:
        assert tag.text.startswith("(") and tag.text.endswith(f":{tag.score:.3f})")
    written = {tag.name: tag.text for tag in result.tags}
    smile = next(t for t in result.tags if t.name == "smile").score
    assert written["smile"] == f"(smile:{smile:.3f})"
    assert written["hatsune_miku_(cosplay)"].startswith("(hatsune miku \\(cosplay\\):")
    fixed = format_tags(
        [0.98765],
        [TagInfo("blue_eyes")],
        TaggerOptions(return_ranks=True),
        default_threshold=0.35,
        default_sort_alpha=False,
    )
    assert fixed.line == "(blue eyes:0.988)"


def test_format_tags_ties_keep_model_order() -> None:
    tags = [TagInfo("b"), TagInfo("a"), TagInfo("c")]
    result = format_tags(
        [0.5, 0.5, 0.7], tags, TaggerOptions(), default_threshold=0.35, default_sort_alpha=False
    )
    assert result.line == "c, b, a"
    with pytest.raises(ValueError, match="2 scores for 3 tags"):
        format_tags(
            [0.1, 0.2], tags, TaggerOptions(), default_threshold=0.3, default_sort_alpha=False
        )


# ---------------------------------------------------------------------------------------------
# DeepDanbooru


def test_deepdanbooru_refused_unless_pickles_are_allowed(dd_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tagger(dd_file)
    message = str(caught.value)
    assert str(dd_file) in message and "pickle" in message
    assert "`allow_pickle: true`" in message and "configuration" in message


def test_deepdanbooru_loads_and_tags(dd_file: Path, image: Image.Image) -> None:
    tagger = load_tagger(dd_file, allow_pickle=True)
    assert tagger.kind == "deepdanbooru" and tagger.default_threshold == 0.5
    assert [t.name for t in tagger.tags] == DD_TAGS
    assert [t.category for t in tagger.tags if t.name.startswith("rating:")] == [9, 9, 9]
    assert {t.category for t in tagger.tags if not t.name.startswith("rating:")} == {None}

    scores = tagger.predict(image)
    assert scores.shape == (len(DD_TAGS),) and scores.dtype == np.float32
    assert ((scores > 0.02) & (scores < 0.98)).sum() >= 5  # a spread, not saturated
    np.testing.assert_array_equal(tagger.predict(image), scores)  # deterministic

    result = tagger.tag(image)
    pairs = zip(DD_TAGS, scores, strict=True)
    expected = sorted(n for n, s in pairs if s >= 0.5 and not n.startswith("rating:"))
    assert names(result) == expected  # A1111: alphabetical, 0.5, no ratings
    assert set(result.ratings) == {"rating:safe", "rating:questionable", "rating:explicit"}

    everything = tagger.tag(image, TaggerOptions(threshold=0, include_ratings=True))
    best = max(result.ratings, key=lambda name: result.ratings[name])
    assert everything.tags[0].name == best
    assert names(everything)[1:] == sorted(n for n in DD_TAGS if not n.startswith("rating:"))
    assert "hatsune miku \\(cosplay\\)" in everything.line and "^_^" in everything.line
    by_score = tagger.tag(image, TaggerOptions(threshold=0, sort_alpha=False))
    assert by_descending_score(by_score)
    # character_threshold has nothing to act on: DeepDanbooru tags carry no category.
    assert tagger.tag(image, TaggerOptions(threshold=0, character_threshold=1)).line == (
        tagger.tag(image, TaggerOptions(threshold=0)).line
    )


def test_deepdanbooru_from_a_folder_holding_one_file(dd_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "torch_deepdanbooru"
    folder.mkdir()
    shutil.copy(dd_file, folder / dd_file.name)
    (folder / "notes.txt").write_text("not a model")
    assert load_tagger(folder, allow_pickle=True).kind == "deepdanbooru"
    shutil.copy(dd_file, folder / "other.pth")
    with pytest.raises(ConfigError, match="several model files"):
        load_tagger(folder, allow_pickle=True)


def test_deepdanbooru_preprocessing_is_a1111s() -> None:
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    img.paste((0, 0, 255), (0, 25, 100, 50))  # top red, bottom blue
    pixels = deepdanbooru.preprocess(img)
    assert pixels.shape == (1, 512, 512, 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1
    # Resize and fill: the bands above and below are the stretched edge rows, in RGB.
    np.testing.assert_allclose(pixels[0, 5, 256], [1, 0, 0], atol=0.01)
    np.testing.assert_allclose(pixels[0, 506, 256], [0, 0, 1], atol=0.01)


def test_deepdanbooru_wrong_state_dicts_are_config_errors(tmp_path: Path) -> None:
    state = random_state_dict(DD_TAGS)
    missing = {k: v for k, v in state.items() if k != "n_Conv_50.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match=r"n_Conv_50\.weight' is missing"):
        load_tagger(tmp_path / "missing.pt", allow_pickle=True)
    torch.save({**state, "tags": DD_TAGS[:-1]}, tmp_path / "short.pt")
    with pytest.raises(ConfigError, match="scores 13 tags but its 'tags' list has 12"):
        load_tagger(tmp_path / "short.pt", allow_pickle=True)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="holds a list"):
        load_tagger(tmp_path / "list.pt", allow_pickle=True)


# ---------------------------------------------------------------------------------------------
# Unreadable and unknown models


def test_unreadable_models_are_config_errors(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    with pytest.raises(ConfigError, match="cannot be loaded; the file is damaged"):
        load_tagger(broken)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ConfigError, match=r"garbage\.pt"):
        load_tagger(garbage, allow_pickle=True)


def test_mismatched_tag_list_is_a_config_error(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "short"
    shutil.copytree(tiny_dir, folder)
    lines = (folder / "selected_tags.csv").read_text().splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ConfigError, match=r"scores 30 tags but .* lists 29"):
        load_tagger(folder)
    (folder / "selected_tags.csv").write_text("just,some\nwords,here\n")
    with pytest.raises(ConfigError, match="not a WD14 tag list"):
        load_tagger(folder)


def test_anything_else_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope'} does not exist; expected"):
        load_tagger(tmp_path / "nope")
    (tmp_path / "model.onnx").write_bytes(b"")  # no selected_tags.csv beside it
    with pytest.raises(ConfigError, match="is not a tagger; expected a WD14 tagger folder"):
        load_tagger(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"x\.safetensors is not a tagger"):
        load_tagger(tmp_path / "x.safetensors")
