"""LoRA and textual-inversion embeddings on real files and real tiny pipelines.

The LoRAs are made with peft on the built-in tiny UNet and text encoder (random, non-zero
up weights from a fixed seed) and saved in kohya's key layout, the layout of civitai files.
Every test that touches adapters loads its own pipeline (0.3 s), so the session's shared
pipeline is never changed; a separate, untouched pipeline gives the reference pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from daemon.a1111.infotext import format_parameters, lora_hash, short_hash
from daemon.a1111.prompts import LoraRef
from daemon.engines.adapter_files import embeddings_in
from daemon.engines.adapters import AdapterManager
from daemon.models.builtin import ensure_builtin
from daemon.models.resolve import (
    ModelNotFound,
    PickleRefused,
    Search,
    files_by_stem,
    find,
    kind_folders,
)
from tests.support.lora import TE_TARGETS, LoraMaker, peft_lora, write


def vectors(seed: int, count: int, width: int = 32) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


# --- fixtures ----------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(state_dir: Path) -> Path:
    return ensure_builtin("tiny-sd", state_dir / "builtin")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """An A1111-style ``models`` folder with LoRAs, and embeddings beside it."""
    models = tmp_path_factory.mktemp("webui") / "models"
    lora = LoraMaker(folder).make
    write(models / "Lora" / "styles" / "StyleA.safetensors", lora(1))
    write(models / "LyCORIS" / "deep" / "er" / "OtherB.safetensors", lora(2))
    write(models / "Lora" / "Pickled.pt", lora(3), pickle=True)
    write(models / "Lora" / "UnetOnly.safetensors", lora(4, te=False))
    write(models / "Lora" / "TeOnly.safetensors", lora(5, unet=False))
    # Same stem twice: the .safetensors must win over the pickle.
    write(models / "Lora" / "Both.safetensors", {"x.lora_down.weight": torch.zeros(1)})
    write(models / "Lora" / "Both.pt", {"x.lora_down.weight": torch.zeros(1)}, pickle=True)
    # A LoRA for another architecture: its layers match nothing here.
    write(
        models / "Lora" / "Foreign.safetensors",
        {
            "lora_unet_foo_bar.lora_down.weight": torch.ones(4, 320),
            "lora_unet_foo_bar.lora_up.weight": torch.ones(320, 4),
        },
    )
    emb = models.parent / "embeddings"  # the webui's folder, beside `models`
    write(emb / "negative" / "EasyNegative.safetensors", {"emb_params": vectors(10, 2)})
    write(
        emb / "OldStyle.pt",  # A1111's own format, a pickle
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors(11, 3)},
            "name": "OldStyle",
            "step": 100,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
        },
        pickle=True,
    )
    write(emb / "catToy.safetensors", {"<cat-toy>": vectors(12, 1)[0]})  # diffusers format
    write(emb / "WideOne.safetensors", {"emb_params": vectors(13, 2, width=64)})
    return models


@pytest.fixture(scope="module")
def load_pipe(folder: Path) -> Callable[[], Any]:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        StableDiffusionImg2ImgPipeline,
    )

    def load() -> Any:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


@pytest.fixture(scope="module")
def reference(load_pipe: Callable[[], Any]) -> Any:
    """A pipeline that never sees an adapter: what "no LoRA" must look like."""
    return load_pipe()


@pytest.fixture
def pipe(load_pipe: Callable[[], Any]) -> Any:
    return load_pipe()


@pytest.fixture
def manager(pipe: Any, models_dir: Path) -> AdapterManager:
    return AdapterManager(
        pipe,
        lora_dirs=kind_folders("lora", models_dir),
        embedding_dirs=kind_folders("embedding", models_dir),
    )


@pytest.fixture
def load_count(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call of the pipeline's load_lora_weights (it still loads)."""
    calls: list[Any] = []
    real = pipe.load_lora_weights

    def spy(source: Any, **kwargs: Any) -> Any:
        calls.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(pipe, "load_lora_weights", spy)
    return calls


IMAGE = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))


def render(pipe: Any, prompt: str = "a photo of a cat", negative: str = "blurry") -> np.ndarray:
    result = pipe(
        prompt,
        negative_prompt=negative,
        image=IMAGE,
        strength=0.5,
        num_inference_steps=2,  # one denoising step: enough to show any difference
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return np.asarray(result.images[0])


def run(
    pipe: Any,
    manager: AdapterManager,
    loras: list[LoraRef],
    prompt: str = "a photo of a cat",
    negative: str = "blurry",
) -> tuple[np.ndarray, Any]:
    applied = manager.apply(loras, prompt, negative)
    return render(pipe, applied.prompt, applied.negative_prompt), applied


def encode(pipe: Any, text: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(text, "cpu", 1, False)[0]


@pytest.fixture(scope="module")
def plain(reference: Any) -> np.ndarray:
    return render(reference)


# --- finding files -----------------------------------------------------------------------


def test_find_lora_recursive_case_insensitive_and_safetensors_first(models_dir: Path) -> None:
    dirs = kind_folders("lora", models_dir)
    style = models_dir / "Lora" / "styles" / "StyleA.safetensors"
    assert find("lora", "StyleA", Search(None), dirs=dirs) == style
    assert find("lora", "stylea", Search(None), dirs=dirs) == style  # case-insensitive fallback
    deep = models_dir / "LyCORIS" / "deep" / "er" / "OtherB.safetensors"
    assert find("lora", "OtherB", Search(None), dirs=dirs) == deep  # LyCORIS, nested
    both = find("lora", "Both", Search(None), dirs=dirs)
    assert both.suffix == ".safetensors"


def test_exact_case_wins_over_case_insensitive(tmp_path: Path) -> None:
    write(tmp_path / "a" / "Dup.safetensors", {"x": torch.zeros(1)})
    write(tmp_path / "b" / "dup.safetensors", {"x": torch.zeros(1)})
    assert find("lora", "dup", Search(None), dirs=[tmp_path]) == tmp_path / "b/dup.safetensors"
    assert find("lora", "Dup", Search(None), dirs=[tmp_path]) == tmp_path / "a/Dup.safetensors"
    # Neither matches exactly: the first in (sorted) folder order.
    assert find("lora", "DUP", Search(None), dirs=[tmp_path]) == tmp_path / "a/Dup.safetensors"


def test_symlinked_folders_are_searched_and_loops_end(tmp_path: Path) -> None:
    elsewhere = write(tmp_path / "elsewhere" / "Linked.safetensors", {"x": torch.zeros(1)})
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True)
    (lora / "shared").symlink_to(elsewhere.parent, target_is_directory=True)
    (lora / "loop").symlink_to(lora, target_is_directory=True)
    found = find("lora", "Linked", Search(None), dirs=kind_folders("lora", tmp_path / "models"))
    assert found.resolve() == elsewhere.resolve()


def test_missing_lora_error_says_where_it_looked(models_dir: Path) -> None:
    dirs = [*kind_folders("lora", models_dir), models_dir / "Nowhere"]
    with pytest.raises(ModelNotFound) as caught:
        find("lora", "NoSuchLora", Search(None), dirs=dirs)
    message = str(caught.value)
    assert "NoSuchLora" in message and str(models_dir / "Lora") in message
    assert f"{models_dir / 'Nowhere'} does not exist" in message
    with pytest.raises(ModelNotFound, match="no folder configured"):
        find("lora", "x", Search(None), dirs=[])


def test_pickle_refused_unless_allowed(models_dir: Path) -> None:
    dirs = kind_folders("lora", models_dir)
    with pytest.raises(PickleRefused) as caught:
        find("lora", "Pickled", Search(None), dirs=dirs)
    message = str(caught.value)
    assert "pickle" in message and "run arbitrary code" in message
    assert ".safetensors" in message and "allow_pickle" in message
    trusting = Search(None, allow_pickle=True)
    assert find("lora", "Pickled", trusting, dirs=dirs).name == "Pickled.pt"
    emb = kind_folders("embedding", models_dir)
    with pytest.raises(PickleRefused):
        find("embedding", "OldStyle", Search(None), dirs=emb)
    assert find("embedding", "oldstyle", trusting, dirs=emb).name == "OldStyle.pt"


def test_embedding_names_and_where_they_occur(models_dir: Path, tmp_path: Path) -> None:
    names = files_by_stem("embedding", kind_folders("embedding", models_dir))
    assert set(names) == {"EasyNegative", "OldStyle", "catToy", "WideOne"}
    assert names["EasyNegative"].parent.name == "negative"  # found recursively
    text = "(easynegative:1.2), EasyNegatives, <lora:EasyNegative:1> xEasyNegative, EasyNegative"
    found = embeddings_in(text, names)
    assert [(text[a:b], name) for a, b, name in found] == [
        ("easynegative", "EasyNegative"),  # any case, as A1111's lower-casing tokenizer
        ("EasyNegative", "EasyNegative"),  # not inside other words, not inside tags
    ]
    assert embeddings_in("foo FOO", ["foo", "Foo"]) == [(0, 3, "foo"), (4, 7, "Foo")]
    # A hidden or empty file is never an embedding.
    write(tmp_path / ".hidden.safetensors", {"x": torch.zeros(1)})
    (tmp_path / "empty.safetensors").touch()
    assert files_by_stem("embedding", [tmp_path]) == {}


# --- LoRA on a pipeline ------------------------------------------------------------------


def test_weight_zero_is_no_lora_and_weight_one_changes_pixels(
    pipe: Any, manager: AdapterManager, plain: np.ndarray, models_dir: Path
) -> None:
    zero, applied = run(pipe, manager, [LoraRef("StyleA", 0.0, 0.0)])
    np.testing.assert_array_equal(zero, plain)
    path = models_dir / "Lora" / "styles" / "StyleA.safetensors"
    assert applied.lora_hashes == {"StyleA": lora_hash(path)}
    assert [lora.path for lora in applied.loras] == [path]

    one, applied = run(pipe, manager, [LoraRef("StyleA", 1.0, 1.0)])
    assert np.abs(one - plain).max() > 0.01
    assert applied.notes == ()
    line = format_parameters({"Steps": 4, **applied.infotext_params()})
    assert line == f'Steps: 4, Lora hashes: "StyleA: {lora_hash(path)}"'


def test_switching_leaves_no_residue_and_loads_once(
    pipe: Any,
    manager: AdapterManager,
    plain: np.ndarray,
    load_count: list[Any],
    models_dir: Path,
) -> None:
    unet, weight = pipe.unet, pipe.unet.conv_in.weight
    before = weight.detach().clone()
    first, _ = run(pipe, manager, [LoraRef("StyleA", 1.0, 1.0)])
    none, applied = run(pipe, manager, [])
    np.testing.assert_array_equal(none, plain)  # as a pipeline that never saw a LoRA
    assert applied.lora_hashes == {} and applied.infotext_params() == {}
    again, _ = run(
        pipe,
        AdapterManager(pipe, state=manager.state, lora_dirs=kind_folders("lora", models_dir)),
        [LoraRef("StyleA", 1.0, 1.0)],
    )
    np.testing.assert_array_equal(again, first)
    assert len(load_count) == 1  # the second job found it loaded: the state is the model's
    adapters = pipe.get_list_adapters()
    assert adapters["unet"] == adapters["text_encoder"] and len(adapters["unet"]) == 1
    # The base model was never reloaded or changed.
    assert pipe.unet is unet and pipe.unet.conv_in.weight is weight
    assert torch.equal(weight, before)


def test_text_encoder_and_unet_weights_are_separate(
    pipe: Any, manager: AdapterManager, reference: Any, plain: np.ndarray
) -> None:
    prompt = "a photo of a cat"
    base = encode(reference, prompt)

    unet_only, _ = run(pipe, manager, [LoraRef("StyleA", 0.0, 1.0)])
    assert torch.equal(encode(pipe, prompt), base)  # text encoder untouched
    assert np.abs(unet_only - plain).max() > 0.01

    te_only, _ = run(pipe, manager, [LoraRef("StyleA", 1.0, 0.0)])
    assert not torch.allclose(encode(pipe, prompt), base)
    assert np.abs(te_only - plain).max() > 0.01
    both, _ = run(pipe, manager, [LoraRef("StyleA", 1.0, 1.0)])
    assert np.abs(both - te_only).max() > 0.01 and np.abs(both - unet_only).max() > 0.01


def test_partial_loras_several_at_once_and_a_name_twice(
    pipe: Any, manager: AdapterManager, plain: np.ndarray, reference: Any
) -> None:
    one, _ = run(pipe, manager, [LoraRef("StyleA", 1.0, 1.0)])
    halves, applied = run(pipe, manager, [LoraRef("StyleA", 0.5, 0.5), LoraRef("stylea", 0.5, 0.5)])
    np.testing.assert_array_equal(halves, one)  # named twice: the weights add up
    assert list(applied.lora_hashes) == ["StyleA"]

    pair, applied = run(pipe, manager, [LoraRef("StyleA", 1, 1), LoraRef("OtherB", 1, 1)])
    assert np.abs(pair - one).max() > 0.01
    assert list(applied.lora_hashes) == ["StyleA", "OtherB"]

    # UNet-only and text-encoder-only files, together.
    mixed, applied = run(pipe, manager, [LoraRef("UnetOnly", 1, 1), LoraRef("TeOnly", 1, 1)])
    assert applied.notes == () and len(applied.loras) == 2
    assert np.abs(mixed - plain).max() > 0.01
    manager.apply([LoraRef("TeOnly", 1, 1)], "a cat", "")
    assert not torch.equal(encode(pipe, "a cat"), encode(reference, "a cat"))
    manager.apply([LoraRef("UnetOnly", 1, 1)], "a cat", "")
    assert torch.equal(encode(pipe, "a cat"), encode(reference, "a cat"))
    none, _ = run(pipe, manager, [])
    np.testing.assert_array_equal(none, plain)


def test_pickled_lora_refused_unless_allowed(
    pipe: Any, models_dir: Path, plain: np.ndarray
) -> None:
    dirs = kind_folders("lora", models_dir)
    refused, applied = run(pipe, AdapterManager(pipe, lora_dirs=dirs), [LoraRef("Pickled")])
    np.testing.assert_array_equal(refused, plain)
    assert applied.lora_hashes == {} and len(applied.notes) == 1
    assert "pickle" in applied.notes[0] and "skipped" in applied.notes[0]
    assert pipe.get_list_adapters() in ({}, {"unet": [], "text_encoder": []})

    allowed = AdapterManager(pipe, lora_dirs=dirs, allow_pickle=True)
    loaded, applied = run(pipe, allowed, [LoraRef("Pickled")])
    assert np.abs(loaded - plain).max() > 0.01
    path = models_dir / "Lora" / "Pickled.pt"
    assert applied.lora_hashes == {"Pickled": short_hash(path)}  # plain sha256 for a .pt


def test_missing_or_foreign_lora_is_a_note_and_the_job_goes_on(
    pipe: Any, manager: AdapterManager, plain: np.ndarray
) -> None:
    missing, applied = run(pipe, manager, [LoraRef("NoSuchLora")])
    np.testing.assert_array_equal(missing, plain)
    assert applied.lora_hashes == {} and applied.loras == ()
    assert "NoSuchLora" in applied.notes[0] and "not found" in applied.notes[0]

    with_one, applied = run(
        pipe, manager, [LoraRef("NoSuchLora"), LoraRef("Foreign"), LoraRef("StyleA")]
    )
    assert list(applied.lora_hashes) == ["StyleA"] and len(applied.notes) == 2
    assert "Foreign" in applied.notes[1] and "could not be loaded" in applied.notes[1]
    assert np.abs(with_one - plain).max() > 0.01
    assert all("Foreign" not in a for a in manager.loaded_loras)


def test_least_recently_used_loras_are_unloaded(
    pipe: Any, models_dir: Path, load_count: list[Any], plain: np.ndarray
) -> None:
    manager = AdapterManager(pipe, lora_dirs=kind_folders("lora", models_dir), max_loras=1)
    first, _ = run(pipe, manager, [LoraRef("StyleA")])
    run(pipe, manager, [LoraRef("OtherB")])
    assert [p.stem for p in manager.loaded_loras.values()] == ["OtherB"]
    again, _ = run(pipe, manager, [LoraRef("StyleA")])
    np.testing.assert_array_equal(again, first)
    assert len(load_count) == 3
    run(pipe, manager, [LoraRef("StyleA"), LoraRef("OtherB")])  # both needed: both kept
    assert len(manager.loaded_loras) == 2


def test_changed_file_is_loaded_afresh(pipe: Any, tmp_path: Path, models_dir: Path) -> None:
    lora = tmp_path / "Lora" / "Evolving.safetensors"
    write(lora, load_file(str(models_dir / "Lora" / "styles" / "StyleA.safetensors")))
    manager = AdapterManager(pipe, lora_dirs=[tmp_path / "Lora"])
    run(pipe, manager, [LoraRef("Evolving")])
    write(lora, load_file(str(models_dir / "LyCORIS" / "deep" / "er" / "OtherB.safetensors")))
    stat = lora.stat()
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed, applied = run(pipe, manager, [LoraRef("Evolving")])
    assert len(manager.loaded_loras) == 1  # the old version was dropped
    assert applied.lora_hashes == {"Evolving": lora_hash(lora)}
    other = AdapterManager(pipe, state=manager.state, lora_dirs=kind_folders("lora", models_dir))
    expected, _ = run(pipe, other, [LoraRef("OtherB")])
    np.testing.assert_array_equal(changed, expected)


def test_inpaint_pipeline_from_pipe_shares_the_loaded_loras(
    pipe: Any, manager: AdapterManager, load_count: list[Any], models_dir: Path
) -> None:
    from diffusers import AutoPipelineForInpainting

    run(pipe, manager, [LoraRef("StyleA")])
    inpaint = AutoPipelineForInpainting.from_pipe(pipe)
    other = AdapterManager(inpaint, state=manager.state, lora_dirs=kind_folders("lora", models_dir))
    assert other.loaded_loras == manager.loaded_loras
    applied = other.apply([LoraRef("StyleA", 0.5, 0.5)], "a cat", "")
    assert applied.notes == () and len(load_count) == 1


# --- textual inversion -------------------------------------------------------------------


def test_embedding_in_the_negative_prompt(
    pipe: Any, manager: AdapterManager, reference: Any, plain: np.ndarray, models_dir: Path
) -> None:
    negative = "EasyNegative, blurry"
    size = len(pipe.tokenizer)
    used, applied = run(pipe, manager, [], "a photo of a cat", negative)
    path = models_dir.parent / "embeddings" / "negative" / "EasyNegative.safetensors"
    assert applied.ti_hashes == {"EasyNegative": short_hash(path)}
    assert applied.prompt == "a photo of a cat"
    (embedding,) = applied.embeddings
    assert len(embedding.tokens) == 2 and applied.negative_prompt.endswith(", blurry")
    # Every vector of the file is in the text encoder, under its token.
    ids = pipe.tokenizer.convert_tokens_to_ids(list(embedding.tokens))
    rows = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(rows, load_file(str(path))["emb_params"])
    # Any encoder that tokenizes the returned text (diffusers', daemon.a1111.prompts') gets them.
    assert pipe.tokenizer(applied.negative_prompt).input_ids[1:3] == ids
    # ... and the conditioning changes; the prompt without it does not.
    assert not torch.allclose(encode(pipe, applied.negative_prompt), encode(reference, negative))
    assert torch.equal(encode(pipe, "a photo of a cat"), encode(reference, "a photo of a cat"))
    assert np.abs(used - render(reference, "a photo of a cat", negative)).max() > 0.001

    # Loaded once; a later job without it is untouched, even if a word merely contains it.
    again, applied = run(pipe, manager, [], "a photo of a cat", "easynegative, blurry")
    assert list(applied.ti_hashes) == ["EasyNegative"] and len(pipe.tokenizer) == size + 2
    np.testing.assert_array_equal(again, used)
    none, applied = run(pipe, manager, [], "a photo of a cat", "EasyNegativeX, blurry")
    assert applied.ti_hashes == {}
    np.testing.assert_array_equal(
        none, render(reference, "a photo of a cat", "EasyNegativeX, blurry")
    )
    np.testing.assert_array_equal(render(pipe), plain)


def test_embedding_formats_pickles_and_misfits(pipe: Any, models_dir: Path, reference: Any) -> None:
    emb_dirs = kind_folders("embedding", models_dir)
    emb = models_dir.parent / "embeddings"
    strict = AdapterManager(pipe, embedding_dirs=emb_dirs)
    applied = strict.apply([], "OldStyle catToy WideOne", "")
    assert list(applied.ti_hashes) == ["catToy"]  # diffusers' {"<token>": vector} format
    assert "pickle" in applied.notes[0] and "OldStyle" in applied.notes[0]
    assert "WideOne" in applied.notes[1] and "64 wide" in applied.notes[1]
    assert applied.prompt.startswith("OldStyle ") and applied.prompt.endswith(" WideOne")

    allowed = AdapterManager(pipe, embedding_dirs=emb_dirs, allow_pickle=True)
    applied = allowed.apply([], "(OldStyle:1.2), catToy", "")
    assert applied.ti_hashes == {
        "OldStyle": short_hash(emb / "OldStyle.pt"),
        "catToy": short_hash(emb / "catToy.safetensors"),
    }
    old, cat = applied.embeddings
    ids = pipe.tokenizer.convert_tokens_to_ids(list(old.tokens))
    expected = torch.load(emb / "OldStyle.pt", weights_only=True)["string_to_param"]["*"]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], expected)
    assert applied.prompt == f"({' '.join(old.tokens)}:1.2), {cat.tokens[0]}"
    assert torch.equal(encode(pipe, "a cat"), encode(reference, "a cat"))


def test_reset_leaves_the_pipeline_as_it_was(
    pipe: Any, manager: AdapterManager, plain: np.ndarray
) -> None:
    size = len(pipe.tokenizer)
    run(pipe, manager, [LoraRef("StyleA")], "a photo of a cat", "EasyNegative")
    manager.reset()
    assert len(pipe.tokenizer) == size
    assert all(not names for names in pipe.get_list_adapters().values())
    np.testing.assert_array_equal(render(pipe), plain)
    _, applied = run(pipe, manager, [LoraRef("StyleA")], "a cat", "EasyNegative")
    assert applied.notes == () and applied.ti_hashes and applied.lora_hashes


# --- SDXL: two text encoders -------------------------------------------------------------


def test_sdxl_embeddings_and_lora_reach_both_text_encoders(state_dir: Path, tmp_path: Path) -> None:
    from diffusers import AutoPipelineForImage2Image

    from daemon.models.builtin import BUILTIN_MODELS

    if "tiny-sdxl" not in BUILTIN_MODELS:
        pytest.skip("no built-in tiny SDXL model")
    pipe = AutoPipelineForImage2Image.from_pretrained(
        ensure_builtin("tiny-sdxl", state_dir / "builtin")
    )
    widths = [
        pipe.text_encoder.get_input_embeddings().weight.shape[-1],
        pipe.text_encoder_2.get_input_embeddings().weight.shape[-1],
    ]
    emb = tmp_path / "embeddings"
    xl = {"clip_l": vectors(20, 2, widths[0]), "clip_g": vectors(21, 2, widths[1])}
    write(emb / "NegXL.safetensors", xl)
    write(emb / "NegSD1.safetensors", {"emb_params": vectors(22, 2, widths[0])})
    te_lora = peft_lora(
        7,
        [
            (pipe.text_encoder, TE_TARGETS, "lora_te1_text_model_"),
            (pipe.text_encoder_2, TE_TARGETS, "lora_te2_text_model_"),
        ],
    )
    write(tmp_path / "Lora" / "XLText.safetensors", te_lora)

    def encode_xl() -> list[torch.Tensor]:
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                "a cat", device="cpu", do_classifier_free_guidance=False
            )
        return [embeds, pooled]

    base = encode_xl()
    manager = AdapterManager(pipe, lora_dirs=[tmp_path / "Lora"], embedding_dirs=[emb])
    applied = manager.apply([LoraRef("XLText", 1.0, 1.0)], "a cat", "NegXL, NegSD1")
    assert list(applied.ti_hashes) == ["NegXL"] and list(applied.lora_hashes) == ["XLText"]
    assert "NegSD1" in applied.notes[0] and "SDXL" in applied.notes[0]
    (embedding,) = applied.embeddings
    for tokenizer, encoder, key in (
        (pipe.tokenizer, pipe.text_encoder, "clip_l"),
        (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"),
    ):
        ids = tokenizer.convert_tokens_to_ids(list(embedding.tokens))
        assert torch.equal(encoder.get_input_embeddings().weight[ids], xl[key])
        assert tokenizer(applied.negative_prompt).input_ids[1:3] == ids
    assert set(pipe.get_list_adapters()) == {"text_encoder", "text_encoder_2"}
    assert all(not torch.equal(a, b) for a, b in zip(encode_xl(), base, strict=True))
    manager.apply([LoraRef("XLText", 0.0, 1.0)], "a cat", "")
    assert all(torch.equal(a, b) for a, b in zip(encode_xl(), base, strict=True))
