"""A1111 prompt syntax, extra-network tags, and the encoding through the real tiny pipeline."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from daemon.a1111.prompts import (
    LoraRef,
    build_chunks,
    extract_extra_networks,
    parse_prompt_attention,
    to_compel,
)
from daemon.engines.prompt_encoder import PromptEncoder, _emphasis
from daemon.render.cache import ModelCache

# ---------------------------------------------------------------------------------------------
# parse_prompt_attention: A1111's doctests first, verbatim (exact floats included)
# ---------------------------------------------------------------------------------------------

A1111_DOCTESTS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

MORE_CASES = [
    # weights
    ("(x:1.3)", [("x", 1.3)]),
    ("a (x: 1.5 ) b", [("a ", 1.0), ("x", 1.5), (" b", 1.0)]),  # spaces around the number
    ("(x:-1)", [("x", -1.0)]),
    ("a (x:1.0) b", [("a x b", 1.0)]),  # weight 1.0 merges with its neighbours
    ("[x]", [("x", 1 / 1.1)]),
    ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
    ("((x))", [("x", 1.1 * 1.1)]),
    ("((x:2))", [("x", 2 * 1.1)]),
    ("[(x)]", [("x", 1.1 / 1.1)]),
    ("(a [b] c)", [("a ", 1.1), ("b", 1.1 / 1.1), (" c", 1.1)]),
    # escapes: \( \) \[ \] \\ are the characters; a backslash before anything else vanishes
    ("\\(x\\)", [("(x)", 1.0)]),
    ("\\[x\\]", [("[x]", 1.0)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("a\\b", [("ab", 1.0)]),
    ("(\\(x\\))", [("(x)", 1.1)]),
    # unbalanced
    ("a (b", [("a ", 1.0), ("b", 1.1)]),
    ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
    ("(a [b", [("a ", 1.1), ("b", 1.1 / 1.1)]),
    ("(a:1.2", [("a:1.2", 1.1)]),  # no ")" after the number: text, bracket left open
    ("a) b] c", [("a) b] c", 1.0)]),  # closes without opens are text
    ("a:b", [("a:b", 1.0)]),
    # BREAK: a whole word only; its weight is multiplied by brackets like any run (A1111)
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(x) BREAK y", [("x", 1.1), ("", 1.0), ("BREAK", -1.0), ("y", 1.0)]),
    # empty
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_DOCTESTS + MORE_CASES)
def test_parse_prompt_attention(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == expected


def test_parse_returns_tuples() -> None:
    assert all(type(chunk) is tuple for chunk in parse_prompt_attention("a (b) [c]"))


# ---------------------------------------------------------------------------------------------
# extra networks
# ---------------------------------------------------------------------------------------------

SEED_PROMPT = (
    "<lora:korean:0.4>, <lora:zny_1.0:0.7>,(RAW photo, best quality), "
    "(realistic, photo-realistic:1.2)"
)


def test_lora_tags_of_the_seed_prompt() -> None:
    text, loras, ignored = extract_extra_networks(SEED_PROMPT)
    assert text == ", ,(RAW photo, best quality), (realistic, photo-realistic:1.2)"
    assert loras == [LoraRef("korean", 0.4, 0.4), LoraRef("zny_1.0", 0.7, 0.7)]
    assert ignored == []


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("<lora:name>", LoraRef("name", 1.0, 1.0)),
        ("<lora:name:0.5>", LoraRef("name", 0.5, 0.5)),
        ("<lora:name:0.5:0.8>", LoraRef("name", 0.5, 0.8)),
        ("<lora:name:-1>", LoraRef("name", -1.0, -1.0)),
        ("<lora:name:te=0.3>", LoraRef("name", 0.3, 0.3)),
        ("<lora:name:1:unet=0.2>", LoraRef("name", 1.0, 0.2)),
        ("<lora:name:0.5:0.6:8>", LoraRef("name", 0.5, 0.6)),  # dyn dim: not used
        ("<lyco:name:0.9>", LoraRef("name", 0.9, 0.9)),
        ("<lora:my lora v2.1:1>", LoraRef("my lora v2.1", 1.0, 1.0)),
    ],
)
def test_lora_tag_forms(tag: str, expected: LoraRef) -> None:
    text, loras, ignored = extract_extra_networks(f"a {tag} b")
    assert (text, loras, ignored) == ("a  b", [expected], [])


def test_other_tags_are_removed_and_reported() -> None:
    text, loras, ignored = extract_extra_networks(
        "x <hypernet:anime:0.5>, <lora:a:1> <foo:bar> <notatag> <lora> y"
    )
    assert text == "x ,   <notatag> <lora> y"
    assert loras == [LoraRef("a", 1.0, 1.0)]
    assert ignored == ["<hypernet:anime:0.5>", "<foo:bar>"]


def test_lora_ref_is_frozen() -> None:
    ref = LoraRef("a", 1.0, 1.0)
    with pytest.raises(AttributeError):
        ref.name = "b"  # type: ignore[misc]


@pytest.mark.parametrize("tag", ["<lora:name:abc>", "<lora:name:1:x>", "<lora:te=1>", "<lora::1>"])
def test_bad_lora_tags_raise(tag: str) -> None:
    with pytest.raises(ValueError, match="LoRA tag"):
        extract_extra_networks(tag)


# ---------------------------------------------------------------------------------------------
# to_compel
# ---------------------------------------------------------------------------------------------


def test_to_compel_output() -> None:
    assert to_compel(parse_prompt_attention("a cat")) == "a cat"
    assert to_compel(parse_prompt_attention("a (cat:1.5) dog")) == "a (cat)1.5 dog"
    assert to_compel(parse_prompt_attention("[cat]")) == "(cat)0.909091"
    assert to_compel(parse_prompt_attention("((cat))")) == "(cat)1.21"
    assert to_compel(parse_prompt_attention('\\(x\\) ("q":1.2)')) == '\\(x\\) (\\"q\\")1.2'
    assert to_compel(parse_prompt_attention("cat(s:1.2)dog")) == "cat (s)1.2 dog"
    assert to_compel(parse_prompt_attention("(a:1.2)(b:1.3)")) == "(a)1.2 (b)1.3"
    assert to_compel([("cat", 0.00001)]) == "(cat)0.00001"  # never exponent notation
    assert to_compel([("", 1.0)]) == ""
    with pytest.raises(ValueError, match="BREAK"):
        to_compel(parse_prompt_attention("a BREAK b"))


def compel_parser() -> Any:
    """compel's prompt_parser module alone: the package's __init__ imports every diffusers
    pipeline compel wraps, which takes many seconds; the parser needs only pyparsing."""
    spec = importlib.util.find_spec("compel")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("compel is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "prompt_parser.py"
    module_spec = importlib.util.spec_from_file_location("_compel_prompt_parser", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "prompt",
    [
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        'a \\(cat\\) (with "quotes":1.2) x',
        "cat(s:1.2)dog",
        "(masterpiece:1.2), best quality, [ugly]",
    ],
)
def test_to_compel_reads_back_in_compel(prompt: str) -> None:
    parsed = parse_prompt_attention(prompt)
    conjunction = compel_parser().PromptParser().parse_conjunction(to_compel(parsed))
    fragments = conjunction.prompts[0].children

    def squash(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
        # compel re-spaces punctuation and drops empty runs: compare text without spaces
        out = [("".join(t.split()), round(w, 6)) for t, w in pairs]
        return [(t, w) for t, w in out if t]

    assert squash([(f.text, f.weight) for f in fragments]) == squash(parsed)


# ---------------------------------------------------------------------------------------------
# chunking (pure)
# ---------------------------------------------------------------------------------------------

BOS, EOS, COMMA = 1000, 1001, 7


def chunks_of(runs: list[tuple[list[int], tuple[str, float]]]) -> list[Any]:
    return build_chunks([t for t, _ in runs], [p for _, p in runs], bos=BOS, eos=EOS, comma=COMMA)


def test_chunks_are_77_with_bos_eos_and_eos_padding() -> None:
    (chunk,) = chunks_of([([5, 6], ("a b", 1.5))])
    assert chunk.tokens == [BOS, 5, 6] + [EOS] * 74
    assert chunk.multipliers == [1.0, 1.5, 1.5] + [1.0] * 74
    (empty,) = chunks_of([([], ("", 1.0))])
    assert empty.tokens == [BOS] + [EOS] * 76


def test_long_prompt_splits_at_75_tokens() -> None:
    chunks = chunks_of([(list(range(10, 10 + 160)), ("x", 1.0))])
    assert [len(c.tokens) for c in chunks] == [77, 77, 77]
    assert chunks[0].tokens[1:76] == list(range(10, 85))
    assert chunks[1].tokens[1:76] == list(range(85, 160))
    assert chunks[2].tokens[1:11] == list(range(160, 170))


def test_full_chunk_breaks_after_a_near_comma() -> None:
    # a comma at index 60 of the chunk (15 from the end): the 14 tokens after it move on
    tokens = [2] * 60 + [COMMA] + [3] * 14 + [4] * 5
    first, second = chunks_of([(tokens, ("x", 1.0))])
    assert first.tokens[1:62] == [2] * 60 + [COMMA]
    assert first.tokens[62:] == [EOS] * 15
    assert second.tokens[1:20] == [3] * 14 + [4] * 5


def test_far_comma_does_not_break() -> None:
    tokens = [2] * 50 + [COMMA] + [3] * 30  # comma 24 tokens back: more than 20
    first, second = chunks_of([(tokens, ("x", 1.0))])
    assert first.tokens[1:76] == [2] * 50 + [COMMA] + [3] * 24
    assert second.tokens[1:7] == [3] * 6


def test_break_pads_the_chunk() -> None:
    runs = [([5], ("a", 1.0)), ([99], ("BREAK", -1.0)), ([6], ("b", 1.1))]
    first, second = chunks_of(runs)
    assert first.tokens == [BOS, 5] + [EOS] * 75
    assert second.tokens == [BOS, 6] + [EOS] * 75
    assert second.multipliers[1] == 1.1
    # a BREAK whose weight brackets changed is text, as in A1111
    (only,) = chunks_of([([5], ("a", 1.1)), ([99], ("BREAK", -1.1))])
    assert only.tokens[1:3] == [5, 99]


def test_emphasis_restores_the_mean() -> None:
    z = torch.arange(1.0, 1.0 + 2 * 3).reshape(1, 2, 3)
    out = _emphasis(z, [1.0, 2.0])
    expected = z * torch.tensor([1.0, 2.0]).reshape(1, 2, 1)
    expected = expected * (z.mean() / expected.mean())
    assert torch.equal(out, expected)
    assert out.mean().item() == pytest.approx(z.mean().item())
    assert _emphasis(z, [1.0, 1.0]) is z


# ---------------------------------------------------------------------------------------------
# encoding through the real tiny pipeline
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(models: ModelCache) -> Any:
    return models.pipeline("builtin:tiny-sd", "img2img")


@pytest.fixture(scope="module")
def encoder(pipe: Any) -> PromptEncoder:
    return PromptEncoder(pipe)


def embeds(encoder: PromptEncoder, prompt: str, **kwargs: Any) -> torch.Tensor:
    return encoder.encode(prompt, "", **kwargs)["prompt_embeds"]


def run_pipeline(pipe: Any, kwargs: dict[str, torch.Tensor]) -> Any:
    image = Image.new("RGB", (64, 64), (120, 80, 200))
    generator = torch.Generator().manual_seed(1)
    out = pipe(
        image=image,
        strength=1.0,
        num_inference_steps=2,
        generator=generator,
        output_type="np",
        **kwargs,
    )
    return out.images


def test_import_is_lazy() -> None:
    code = "import sys, daemon.a1111.prompts; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_plain_prompt_equals_diffusers_own_encoding(pipe: Any, encoder: PromptEncoder) -> None:
    ours = encoder.encode("a photo of a cat", "ugly, blurry")
    with torch.no_grad():
        theirs = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "ugly, blurry")
    assert torch.equal(ours["prompt_embeds"], theirs[0])
    assert torch.equal(ours["negative_prompt_embeds"], theirs[1])
    assert set(ours) == {"prompt_embeds", "negative_prompt_embeds"}


def test_weight_one_is_the_plain_prompt(encoder: PromptEncoder) -> None:
    assert torch.equal(embeds(encoder, "a (cat:1.0) dog"), embeds(encoder, "a cat dog"))
    assert torch.equal(embeds(encoder, "(cat:1.0)"), embeds(encoder, "cat"))


def test_weights_change_the_embedding(encoder: PromptEncoder) -> None:
    plain = embeds(encoder, "a cat")
    assert not torch.equal(embeds(encoder, "a (cat:1.5)"), plain)
    assert not torch.equal(embeds(encoder, "a [cat]"), plain)
    assert torch.isfinite(embeds(encoder, "a (cat:1.5)")).all()


def test_long_prompt_is_chunked_and_runs(pipe: Any, encoder: PromptEncoder) -> None:
    prompt = ", ".join(["cat"] * 150)  # 299 tokens: four chunks
    kwargs = encoder.encode(prompt, "ugly")
    assert kwargs["prompt_embeds"].shape == (1, 4 * 77, 32)
    assert kwargs["negative_prompt_embeds"].shape == (1, 4 * 77, 32)
    images = run_pipeline(pipe, kwargs)
    assert images.shape == (1, 64, 64, 3)


def test_negative_is_padded_with_the_empty_prompt(encoder: PromptEncoder) -> None:
    kwargs = encoder.encode("cat", " ".join(["dog"] * 100))
    pos, neg = kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]
    assert pos.shape == neg.shape == (1, 154, 32)
    assert torch.equal(pos[:, :77], embeds(encoder, "cat"))
    assert torch.equal(pos[:, 77:], embeds(encoder, ""))
    swapped = encoder.encode(" ".join(["dog"] * 100), "cat")
    assert torch.equal(swapped["negative_prompt_embeds"], pos)


def test_break_starts_a_new_chunk(encoder: PromptEncoder) -> None:
    z = embeds(encoder, "a cat BREAK a dog")
    assert z.shape == (1, 154, 32)
    assert torch.equal(z[:, :77], embeds(encoder, "a cat"))
    assert torch.equal(z[:, 77:], embeds(encoder, "a dog"))
    assert embeds(encoder, "a cat BREAK").shape == (1, 77, 32)


def test_clip_skip(pipe: Any, encoder: PromptEncoder) -> None:
    skip1 = encoder.encode("a cat", "ugly", clip_skip=1)
    skip2 = encoder.encode("a cat", "ugly", clip_skip=2)
    assert not torch.equal(skip1["prompt_embeds"], skip2["prompt_embeds"])
    # A1111: the hidden state 2 layers from the end, through the final layer norm
    text_encoder = pipe.text_encoder
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        hidden = text_encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2]
        expected = text_encoder.final_layer_norm(hidden)
    assert torch.equal(skip2["prompt_embeds"], expected)
    assert torch.isfinite(embeds(encoder, "a (cat:1.3)", clip_skip=2)).all()
    assert run_pipeline(pipe, skip2).shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="clip skip"):
        encoder.encode("a cat", "", clip_skip=4)  # the tiny encoder has 3 layers
    with pytest.raises(ValueError, match="clip skip"):
        encoder.encode("a cat", "", clip_skip=0)


@pytest.fixture(scope="module")
def sdxl(state_dir: Path) -> Any:
    """The built-in tiny SDXL, loaded once for the module: two real tokenizers and encoders
    (32 and 64 wide, the second projecting to 16 and padding with "!"), as SDXL's are."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from daemon.models.builtin import ensure_builtin

    folder = ensure_builtin("tiny-sdxl", state_dir / "builtin")
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_equals_diffusers_own_encoding(sdxl: Any) -> None:
    encoder = PromptEncoder(sdxl)
    assert encoder.is_sdxl
    names = [
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ]
    for negative, theirs_negative in (("ugly", "ugly"), ("", None)):
        ours = encoder.encode("a cat", negative, clip_skip=2)  # clip skip: ignored on SDXL
        with torch.no_grad():
            theirs = sdxl.encode_prompt(
                "a cat",
                device="cpu",
                do_classifier_free_guidance=True,
                negative_prompt=theirs_negative,
            )
        assert list(ours) == names
        for name, tensor in zip(names, theirs, strict=True):
            assert torch.equal(ours[name], tensor), (negative, name)
    empty_negative = encoder.encode("a cat", "")
    assert not empty_negative["negative_prompt_embeds"].any()  # A1111: zeros for SDXL
    assert not empty_negative["negative_pooled_prompt_embeds"].any()


def test_sdxl_long_prompt_and_refiner(sdxl: Any) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    # tiny-sdxl's encoders are 32 and 64 wide, side by side 96 (the UNet's cross-attention
    # width); the second projects its pooled output to 16. Two chunks: 2 x 77 tokens.
    kwargs = PromptEncoder(sdxl).encode("a cat BREAK a dog", "")
    assert kwargs["prompt_embeds"].shape == (1, 154, 96)
    assert kwargs["negative_prompt_embeds"].shape == (1, 154, 96)
    assert kwargs["pooled_prompt_embeds"].shape == (1, 16)
    # A refiner is SDXL without the first encoder (diffusers' refiner has text_encoder=None):
    # only the second, 64 wide, and still its pooled output.
    components = {**sdxl.components, "tokenizer": None, "text_encoder": None}
    refiner = StableDiffusionXLImg2ImgPipeline(**components)
    kwargs = PromptEncoder(refiner).encode("a cat", "ugly")
    assert kwargs["prompt_embeds"].shape == (1, 77, 64)
    assert kwargs["pooled_prompt_embeds"].shape == (1, 16)
