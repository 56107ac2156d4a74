"""The CLIP interrogator through the real transformers code, on the built-in tiny BLIP + CLIP.

The tiny models have random weights, so the words mean nothing; what is checked is the
machinery: caption lengths, the shape of each mode's answer, A1111's scores recomputed here
independently with plain transformers calls, the greedy chain's promise (its answer is the
most similar candidate), and the label-embedding cache (observed through a forward hook on
the real text encoder, not a mock).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from loguru import logger
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

from daemon.engines import interrogate_clip as engine
from daemon.engines.interrogate_clip import ClipInterrogator, ClipOptions, ClipResult
from daemon.engines.label_cache import model_identity
from daemon.engines.labels import LabelList
from daemon.errors import ConfigError
from daemon.models.tiny_interrogator import build_tiny_interrogator

RANKED = re.compile(r"^\((?P<text>.+):(?P<score>-?\d\.\d{3})\)$")
SHORT = {"caption_min_length": 4, "caption_max_length": 8}
"""A short caption leaves the chain room to improve on it (the tiny BLIP stops at min)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-interrogator")
    build_tiny_interrogator(folder)
    return folder


def load(tiny: Path, cache_dir: Path) -> ClipInterrogator:
    return ClipInterrogator.load(tiny / "blip", tiny / "clip", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def ci(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> ClipInterrogator:
    return load(tiny, tmp_path_factory.mktemp("label-cache"))


def lists() -> list[LabelList]:
    return [
        LabelList("mediums", ("oil painting", "photograph", "watercolor", "pencil sketch")),
        LabelList("artists", ("Claude Monet", "by Pablo Picasso", "Greg Rutkowski")),
        LabelList("movements", ("impressionism", "cubism", "surrealism", "art nouveau")),
        LabelList(
            "flavors",
            (*(f"flavor {i}" for i in range(30)), "moody", "bokeh", "neon lights", "film grain"),
            top_n=2,
        ),
        LabelList("negative", ("ugly", "blurry", "bad anatomy", "watermark")),
    ]


def picture(seed: int = 0) -> Image.Image:
    """A noise picture; different seeds give different CLIP features."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))


class TextEncoderCalls:
    """Counts forward calls of the real CLIP text encoder (an observation, not a mock)."""

    def __init__(self, interrogator: ClipInterrogator) -> None:
        self.count = 0
        self._handle = interrogator.clip_model.text_model.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def reference_scores(tiny: Path, image: Image.Image, texts: list[str]) -> torch.Tensor:
    """Cosine similarities straight from transformers, independent of the engine's code."""
    model = CLIPModel.from_pretrained(tiny / "clip").eval()
    processor = CLIPProcessor.from_pretrained(tiny / "clip")
    with torch.inference_mode():
        image_in = processor(images=image, return_tensors="pt")
        text_in = processor(text=texts, return_tensors="pt", padding=True)
        img = model.get_image_features(**image_in).pooler_output
        txt = model.get_text_features(**text_in).pooler_output
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img @ txt.T)[0]


# --- the module and the built-in -------------------------------------------------------------


def test_import_does_not_load_torch() -> None:
    code = "import sys, daemon.engines.interrogate_clip; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tiny_interrogator_folders(tiny: Path, tmp_path: Path) -> None:
    for name in ("blip", "clip"):
        assert (tiny / name / "config.json").is_file()
        assert (tiny / name / "model.safetensors").is_file()
        assert (tiny / name / "processor_config.json").is_file()
    started = time.monotonic()
    interrogator = load(tiny, tmp_path)
    assert time.monotonic() - started < 2.0  # ~0.1 s here; generous for a busy machine
    text = interrogator.blip_model.config.text_config
    vocab_size = text.vocab_size
    for token_id in (text.bos_token_id, text.pad_token_id, text.eos_token_id, text.sep_token_id):
        assert 0 <= token_id < vocab_size
    tokenizer = CLIPProcessor.from_pretrained(tiny / "clip").tokenizer
    ids = [tuple(tokenizer(t).input_ids) for t in ("a cat", "a cab", "A  cat", "cat a")]
    assert ids[0] == ids[2]  # CLIP lowercases and splits on whitespace
    assert len({ids[0], ids[1], ids[3]}) == 3
    with pytest.raises(ValueError, match="not empty"):
        build_tiny_interrogator(tiny)


def test_tiny_build_is_deterministic(tiny: Path, tmp_path: Path) -> None:
    build_tiny_interrogator(tmp_path / "again")
    for name in ("blip", "clip"):
        first = load_file(tiny / name / "model.safetensors")
        second = load_file(tmp_path / "again" / name / "model.safetensors")
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)


# --- caption ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(24, 48), (5, 10), (8, 8), (1, 48)])
def test_caption_length_follows_min_length(ci: ClipInterrogator, low: int, high: int) -> None:
    """The tiny BLIP ends as soon as it may: min_length - 1 words (the start token counts)."""
    options = ClipOptions(caption_min_length=low, caption_max_length=high)
    caption = ci.caption(picture(), options)
    assert len(caption.split()) == low - 1
    assert caption == ci.caption(picture(), options)  # deterministic
    assert "\n" not in caption and "[" not in caption  # words only, specials skipped


def test_caption_is_cut_at_max_length(tiny: Path, tmp_path: Path) -> None:
    """A decoder that never ends on its own (its [SEP] made impossible) stops at max_length."""
    interrogator = load(tiny, tmp_path)
    sep = interrogator.blip_model.config.text_config.sep_token_id
    with torch.no_grad():
        interrogator.blip_model.text_decoder.cls.predictions.bias[sep] = -1e4
    for beams in (1, 3):
        options = ClipOptions(caption_min_length=2, caption_max_length=12, num_beams=beams)
        assert len(interrogator.caption(picture(), options).split()) == 11


def test_caption_is_the_same_after_reloading(
    ci: ClipInterrogator, tiny: Path, tmp_path: Path
) -> None:
    assert load(tiny, tmp_path).caption(picture(3)) == ci.caption(picture(3))


# --- modes -----------------------------------------------------------------------------------


def test_classic_shape(ci: ClipInterrogator) -> None:
    result = ci.interrogate(picture(), lists(), ClipOptions(**SHORT))
    assert isinstance(result, ClipResult)
    assert result.caption == ci.caption(picture(), ClipOptions(**SHORT))
    categories = [t.category for t in result.terms]
    assert categories == ["mediums", "artists", "movements", "flavors", "flavors"]
    assert result.line == ", ".join([result.caption, *(t.text for t in result.terms)])
    artist = result.terms[1].text
    assert artist.startswith("by ") and not artist.startswith("by by ")
    assert artist in {"by Claude Monet", "by Pablo Picasso", "by Greg Rutkowski"}
    negative = set(lists()[-1].terms)
    assert not negative & {t.text for t in result.terms}
    flavors = [t.score for t in result.terms[3:]]
    assert flavors == sorted(flavors, reverse=True)


def test_classic_follows_the_given_order_and_top_n(ci: ClipInterrogator) -> None:
    reordered = [lists()[2], lists()[0]]
    result = ci.interrogate(picture(), reordered, ClipOptions(**SHORT))
    assert [t.category for t in result.terms] == ["movements", "mediums"]
    overridden = ci.interrogate(picture(), lists(), ClipOptions(top_n=3, **SHORT))
    counts = [t.category for t in overridden.terms]
    assert counts == ["mediums"] * 3 + ["artists"] * 3 + ["movements"] * 3 + ["flavors"] * 3


def test_classic_scores_are_a1111_softmax(ci: ClipInterrogator, tiny: Path) -> None:
    """softmax(100 · cosine) over each list, recomputed with plain transformers calls."""
    image = picture(1)
    result = ci.interrogate(image, lists(), ClipOptions(return_ranks=True, **SHORT))
    medium_terms = list(lists()[0].terms)
    probs = (100 * reference_scores(tiny, image, medium_terms)).softmax(dim=-1)
    best = int(probs.argmax())
    assert result.terms[0].text == medium_terms[best]
    assert result.terms[0].score == pytest.approx(float(probs[best]), abs=1e-4)
    ranked = result.line.split(", ")[len(result.caption.split(", ")) :]
    assert len(ranked) == len(result.terms)
    for part, term in zip(ranked, result.terms, strict=True):
        match = RANKED.match(part)
        assert match, part
        assert match["text"] == term.text
        assert match["score"] == f"{term.score:.3f}"
        assert 0.0 <= term.score <= 1.0


def test_fast_mode(ci: ClipInterrogator, tiny: Path) -> None:
    image = picture(2)
    result = ci.interrogate(image, lists(), ClipOptions(mode="fast", max_flavors=5, **SHORT))
    assert len(result.terms) == 5
    assert result.line == ", ".join([result.caption, *(t.text for t in result.terms)])
    scores = [t.score for t in result.terms]
    assert scores == sorted(scores, reverse=True)
    # The five best by cosine over every list but `negative`, checked independently.
    merged = [t for lst in lists()[:-1] for t in engine.label_texts(lst)]
    cosine = reference_scores(tiny, image, merged)
    expected = [merged[i] for i in cosine.argsort(descending=True)[:5].tolist()]
    assert [t.text for t in result.terms] == expected
    everything = ci.interrogate(image, lists(), ClipOptions(mode="fast", max_flavors=500))
    assert len(everything.terms) == len(merged)
    ranked = ci.interrogate(image, lists(), ClipOptions(mode="fast", return_ranks=True, **SHORT))
    assert all(RANKED.match(p) for p in ranked.line.split(", ")[len(ranked.caption.split(", ")) :])


@pytest.mark.parametrize("seed", [0, 4])
def test_best_mode_is_the_most_similar_candidate(ci: ClipInterrogator, seed: int) -> None:
    image = picture(seed)
    caption = ci.caption(image, ClipOptions(**SHORT))
    classic = ci.interrogate(image, lists(), ClipOptions(**SHORT)).line
    fast = ci.interrogate(image, lists(), ClipOptions(mode="fast", max_flavors=6, **SHORT)).line
    best = ci.interrogate(image, lists(), ClipOptions(mode="best", max_flavors=6, **SHORT))
    assert best.caption == caption
    assert best.line in {caption, classic, fast} or best.line.startswith(caption + ", ")
    assert len(best.terms) <= max(6, len(classic.split(", ")))
    sims = ci.similarities(image, [caption, classic, fast, best.line])
    assert sims[3] >= max(sims[:3]) - 1e-5
    # With these lists the chain beats the other three (seen on the tiny model): it really ran.
    assert best.line not in {caption, classic, fast}
    assert sims[3] > max(sims[:3])


def test_negative_mode(ci: ClipInterrogator) -> None:
    image = picture(5)
    result = ci.interrogate(image, lists(), ClipOptions(mode="negative", max_flavors=4))
    assert result.caption == ""
    assert 1 <= len(result.terms) <= 4
    assert {t.category for t in result.terms} <= {"flavors", "negative"}
    assert result.line == ", ".join(t.text for t in result.terms)
    # Each chosen step lowered the similarity: the prompt is less similar than its first term
    # alone, or it is that term alone (nothing lowered it further).
    sims = ci.similarities(image, [result.terms[0].text, result.line])
    assert sims[1] <= sims[0] + 1e-6
    # The first term is the least similar single candidate of the pool.
    flavors = {t.text for t in result.terms if t.category == "flavors"}
    assert all(t.text not in set(lists()[0].terms) for t in result.terms)
    assert flavors <= set(lists()[3].terms)


def test_lines_stay_on_one_line_and_long_chains_fit(ci: ClipInterrogator) -> None:
    long_terms = tuple(
        f"term {i} " + " ".join(f"word{j}" for j in range(40)) + "\nsecond line" for i in range(12)
    )
    labels = [LabelList("flavors", long_terms), LabelList("mediums", ("photo\nof a thing",))]
    for mode in engine.MODES:
        options = ClipOptions(mode=mode, max_flavors=10, **SHORT)
        result = ci.interrogate(picture(), labels, options)
        assert "\n" not in result.line
        assert all("\n" not in t.text for t in result.terms)
    # A 77-token prompt fills CLIP's context: a chain can add at most one such term after it.
    best = ci.interrogate(picture(), labels, ClipOptions(mode="best", max_flavors=10, **SHORT))
    assert len([t for t in best.terms if t.category == "flavors"]) <= 2
    assert len(ci.similarities(picture(), [" ".join(long_terms)])) == 1


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="mode"):
        ClipOptions(mode="slow")
    with pytest.raises(ConfigError, match="caption_max_length"):
        ClipOptions(caption_min_length=30, caption_max_length=20)
    with pytest.raises(ConfigError, match="top_n"):
        ClipOptions(top_n=0)


# --- the label embedding cache ---------------------------------------------------------------


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def test_cache_is_written_and_reused_by_a_new_instance(tiny: Path, tmp_path: Path) -> None:
    first = load(tiny, tmp_path)
    calls = TextEncoderCalls(first)
    result = first.interrogate(picture(), lists())
    assert calls.count > 0  # the labels were embedded
    assert len(cache_files(tmp_path)) == len(lists())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files
    calls.count = 0
    first.interrogate(picture(1), lists())
    assert calls.count == 0  # a second image: only the image side runs
    calls.close()

    second = load(tiny, tmp_path)  # fresh state: nothing in memory
    calls = TextEncoderCalls(second)
    again = second.interrogate(picture(), lists())
    assert calls.count == 0  # read from disk, the text encoder never ran
    assert again == result
    calls.close()


def test_changing_a_term_makes_a_new_entry(tiny: Path, tmp_path: Path) -> None:
    load(tiny, tmp_path).interrogate(picture(), lists())
    before = set(cache_files(tmp_path))
    changed = lists()
    changed[2] = LabelList("movements", ("impressionism", "cubism", "surrealism", "baroque"))
    interrogator = load(tiny, tmp_path)
    calls = TextEncoderCalls(interrogator)
    interrogator.interrogate(picture(), changed)
    assert calls.count == 1  # only the changed list (one batch) was embedded
    after = set(cache_files(tmp_path))
    assert before < after and len(after - before) == 1


@pytest.mark.parametrize("damage", [b"", b"not a safetensors file at all", "truncate"])
def test_a_damaged_cache_file_is_recomputed(
    tiny: Path, tmp_path: Path, damage: bytes | str
) -> None:
    labels = [lists()[0]]
    expected = load(tiny, tmp_path).interrogate(picture(), labels)
    (path,) = cache_files(tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncate" else damage)  # type: ignore[arg-type]
    interrogator = load(tiny, tmp_path)
    calls = TextEncoderCalls(interrogator)
    assert interrogator.interrogate(picture(), labels) == expected
    assert calls.count == 1  # recomputed
    assert "embeddings" in load_file(path)  # and stored again, whole


def test_an_unwritable_cache_is_not_fatal(tiny: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    interrogator = load(tiny, blocker / "cache")
    result = interrogator.interrogate(picture(), lists())
    assert len(result.terms) == 5


def test_long_lists_report_progress(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO", format="{message}")
    try:
        terms = tuple(f"term number {i}" for i in range(2 * engine.TEXT_BATCH + 10))
        load(tiny, tmp_path).interrogate(picture(), [LabelList("flavors", terms)])
    finally:
        logger.remove(sink)
    progress = [m for m in messages if "terms (" in m]
    assert len(progress) == 3  # one per batch of TEXT_BATCH
    assert f"{len(terms)}/{len(terms)} terms (100%)" in progress[-1]


def test_model_identity_follows_weights_not_location(tiny: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny / "clip", tmp_path / "moved")
    original = CLIPModel.from_pretrained(tiny / "clip")
    moved = CLIPModel.from_pretrained(tmp_path / "moved")
    assert model_identity(original) == model_identity(moved)
    with torch.no_grad():
        moved.text_projection.weight[0, 0] += 0.01
    assert model_identity(original) != model_identity(moved)


# --- loading and unloading -------------------------------------------------------------------


def test_missing_or_wrong_models_are_config_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BLIP caption model folder .* does not exist"):
        ClipInterrogator.load(tmp_path / "nope", tiny / "clip", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"CLIP model folder .* does not exist"):
        ClipInterrogator.load(tiny / "blip", tmp_path / "nope", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="is a 'clip' model"):
        ClipInterrogator.load(tiny / "clip", tiny / "clip", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="could not be loaded"):
        ClipInterrogator.load(tiny / "blip", tmp_path / "empty", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="local Hugging Face cache"):
        ClipInterrogator.load("nobody/no-such-blip", tiny / "clip", cache_dir=tmp_path)


def test_unload(tiny: Path, tmp_path: Path) -> None:
    interrogator = load(tiny, tmp_path)
    interrogator.interrogate(picture(), lists()[:1])
    interrogator.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        interrogator.interrogate(picture(), lists()[:1])
    assert len(cache_files(tmp_path)) == 1  # the disk cache stays
