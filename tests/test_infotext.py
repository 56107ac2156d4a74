from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from sd_parsers import ParserManager

from daemon.a1111.infotext import (
    KEY_ORDER,
    Infotext,
    decode_user_comment,
    exif_with_user_comment,
    format_infotext,
    format_parameters,
    lora_hash,
    model_hash,
    parse_infotext,
    png_info,
    pnginfo_chunk,
    short_hash,
    with_inpaint_defaults,
)

# The example from REFERENCE-A1111.md ("Infotext: the parameters text").
EXAMPLE_PARAMS = (
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
    "Size: 512x768, Model hash: 7234b76e42, Model: chilloutmix_Ni, Denoising strength: 0.5, "
    'Mask blur: 4, Lora hashes: "korean: 7c6bad76eb54", '
    'TI hashes: "EasyNegative: c74b4e810b03", Version: v1.10.1'
)
EXAMPLE = (
    "masterpiece, best quality, 1girl <lora:korean:0.6>\n"
    "Negative prompt: EasyNegative, lowres\n" + EXAMPLE_PARAMS
)


def test_reference_example_round_trips() -> None:
    info = parse_infotext(EXAMPLE)
    assert info.prompt == "masterpiece, best quality, 1girl <lora:korean:0.6>"
    assert info.negative_prompt == "EasyNegative, lowres"
    assert info.params["Lora hashes"] == "korean: 7c6bad76eb54"
    assert info.params["TI hashes"] == "EasyNegative: c74b4e810b03"
    assert info.params["Size"] == "512x768"
    assert info.params["CFG scale"] == "7"
    assert list(info.params)[-1] == "Version"
    assert format_infotext(info.prompt, info.negative_prompt, info.params) == EXAMPLE


def test_multi_line_prompt_and_negative() -> None:
    text = format_infotext(
        "a cat\nsitting on a mat\nBREAK blue sky",
        "blurry\nlowres",
        {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1},
    )
    assert text == (
        "a cat\nsitting on a mat\nBREAK blue sky\nNegative prompt: blurry\nlowres\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"
    )
    info = parse_infotext(text)
    assert info.prompt == "a cat\nsitting on a mat\nBREAK blue sky"
    assert info.negative_prompt == "blurry\nlowres"
    assert info.params == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "1"}


def test_quoting_and_reading_back() -> None:
    params = {
        "Steps": 20,
        "Sampler": "Euler",
        "Seed": 5,
        "Model": "my, model",
        "Note": "key: value",
        "Multi": "line one\nline two",
        "Quoted": '"already quoted"',
        "Inner": 'say "hi"',
        "Unicode": "猫, 犬",
    }
    line = format_parameters(params)
    assert 'Model: "my, model"' in line
    assert 'Note: "key: value"' in line
    assert 'Multi: "line one\\nline two"' in line
    assert 'Quoted: "\\"already quoted\\""' in line
    assert 'Inner: "say \\"hi\\""' in line
    assert 'Unicode: "猫, 犬"' in line  # ensure_ascii=False, as A1111
    assert "\n" not in line
    back = parse_infotext(f"p\n{line}").params
    assert back == {k: str(v) for k, v in params.items()}


def test_plain_values_are_not_quoted() -> None:
    assert format_parameters({"Model": "v1-5-pruned", "Size": "512x512"}) == (
        "Size: 512x512, Model: v1-5-pruned"
    )


def test_empty_values_are_omitted() -> None:
    line = format_parameters(
        {
            "Steps": 20,
            "VAE": None,
            "Model": "",
            "Seed": 0,
            "Clip skip": 1,
            "Denoising strength": 0.0,
        }
    )
    # 0 is a value (seed 0, strength 0); None, "" and Clip skip 1 are not.
    assert line == "Steps: 20, Seed: 0, Denoising strength: 0"


def test_clip_skip_written_only_above_one() -> None:
    assert format_parameters({"Clip skip": 2}) == "Clip skip: 2"
    assert format_parameters({"Clip skip": "1"}) == ""
    assert format_parameters({"Clip skip": 0}) == ""


def test_key_order_extra_keys_and_version_last() -> None:
    params: dict[str, object] = {
        "Version": "v1.10.1",
        "Zeta": "z",
        "Masked content": "original",
        "Seed": 3,
        "Alpha": "a",
        "TI hashes": "x",
        "Steps": 20,
        "Mask blur": 4,
        "Lora hashes": "y",
        "Sampler": "Euler a",
        "Clip skip": 2,
        "Denoising strength": 0.75,
    }
    keys = [part.split(":")[0] for part in format_parameters(params).split(", ")]
    assert keys == [
        "Steps",
        "Sampler",
        "Seed",
        "Denoising strength",
        "Clip skip",
        "Mask blur",
        "Masked content",
        "Lora hashes",
        "TI hashes",
        "Zeta",
        "Alpha",
        "Version",
    ]
    assert KEY_ORDER[:4] == ("Steps", "Sampler", "Schedule type", "CFG scale")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7.0, "7"),
        (7.5, "7.5"),
        (0.75, "0.75"),
        (0.1 + 0.2, "0.30000000000000004"),  # A1111 prints the float as Python does
        (1.0, "1"),
        (0.0, "0"),
        (20, "20"),
        (True, "True"),
        (1e-05, "1e-05"),
    ],
)
def test_number_formatting(value: object, text: str) -> None:
    assert format_parameters({"CFG scale": value}) == f"CFG scale: {text}"


def test_mapping_values_are_hash_lists() -> None:
    line = format_parameters({"Lora hashes": {"korean": "7c6bad76eb54", "b": "0123456789ab"}})
    assert line == 'Lora hashes: "korean: 7c6bad76eb54, b: 0123456789ab"'


def test_unreadable_key_is_refused() -> None:
    with pytest.raises(ValueError):
        format_parameters({"bad, key": 1})


def test_no_negative_prompt_layout() -> None:
    text = format_infotext("a cat", "", {"Steps": 20, "Sampler": "Euler a", "Seed": 1})
    assert text == "a cat\nSteps: 20, Sampler: Euler a, Seed: 1"
    assert "Negative prompt" not in text
    info = parse_infotext(text)
    assert (info.prompt, info.negative_prompt) == ("a cat", "")


def test_empty_prompt_with_negative() -> None:
    text = format_infotext("", "ugly", {"Steps": 20, "Sampler": "Euler a", "Seed": 1})
    assert text == "Negative prompt: ugly\nSteps: 20, Sampler: Euler a, Seed: 1"
    assert parse_infotext(text) == Infotext(
        "", "ugly", {"Steps": "20", "Sampler": "Euler a", "Seed": "1"}
    )


def test_text_without_parameter_line_is_all_prompt() -> None:
    text = "a photo of a cat\nStyle: watercolor, mood: calm"  # only 2 pairs on the last line
    info = parse_infotext(text)
    assert info.prompt == text
    assert info.negative_prompt == ""
    assert info.params == {}
    assert parse_infotext("just a prompt") == Infotext("just a prompt", "", {})


def test_negative_without_parameter_line() -> None:
    info = parse_infotext("a cat\nNegative prompt: dog\nmore negative")
    assert info == Infotext("a cat", "dog\nmore negative", {})


def test_parse_ignores_surrounding_whitespace() -> None:
    info = parse_infotext("\n  a cat  \n" + EXAMPLE_PARAMS + "\n\n")
    assert info.prompt == "a cat"
    assert info.params["Steps"] == "20"


def test_inpaint_defaults_are_not_filled_by_parse() -> None:
    params = parse_infotext(EXAMPLE).params
    assert "Mask mode" not in params
    filled = with_inpaint_defaults(params)
    assert filled["Mask mode"] == "Inpaint masked"
    assert filled["Masked content"] == "original"
    assert filled["Inpaint area"] == "Whole picture"
    assert filled["Masked area padding"] == "32"
    assert filled["Steps"] == "20"
    given = with_inpaint_defaults({"Masked content": "fill", "Masked area padding": "8"})
    assert given["Masked content"] == "fill"
    assert given["Masked area padding"] == "8"


# --- files ------------------------------------------------------------------------------

SD_PARAMS = {
    "Steps": 28,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 6.5,
    "Seed": 123456789,
    "Size": "64x64",
    "Model hash": "7234b76e42",
    "Model": "dreamshaper_8",
    "Denoising strength": 0.75,
    "Version": "img2imgd 0.1.0",
}
SD_TEXT = format_infotext("a red fox in the snow, (masterpiece:1.2)", "blurry, lowres", SD_PARAMS)


def small_image() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 40, 40))


def check_sd_parsers(image: Image.Image, *, model: bool = True) -> None:
    result = ParserManager().parse(image)
    assert result is not None
    assert result.full_prompt == "a red fox in the snow, (masterpiece:1.2)"
    assert result.full_negative_prompt == "blurry, lowres"
    sampler = result.samplers[0]
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters["seed"] == "123456789"
    assert sampler.parameters["steps"] == "28"
    assert sampler.parameters["cfg_scale"] == "6.5"
    assert sampler.parameters["scheduler"] == "Karras"
    if not model:
        return
    assert sampler.model is not None
    assert sampler.model.name == "dreamshaper_8"
    assert sampler.model.hash == "7234b76e42"


def test_png_chunk_read_by_sd_parsers_and_png_info(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    small_image().save(path, pnginfo=pnginfo_chunk(SD_TEXT))
    with Image.open(path) as image:
        assert png_info(image) == SD_TEXT
        check_sd_parsers(image)


def test_png_non_latin1_prompt_round_trips(tmp_path: Path) -> None:
    text = format_infotext(
        "一只在雪地里的红狐狸", "模糊", {"Steps": 20, "Sampler": "Euler a", "Seed": 7}
    )
    chunk = pnginfo_chunk(text)
    assert chunk.chunks[0][0] == b"iTXt"
    assert pnginfo_chunk("plain").chunks[0][0] == b"tEXt"
    path = tmp_path / "zh.png"
    small_image().save(path, pnginfo=chunk)
    with Image.open(path) as image:
        assert png_info(image) == text
        info = parse_infotext(png_info(image) or "")
        assert info.prompt == "一只在雪地里的红狐狸"
        assert info.negative_prompt == "模糊"
        result = ParserManager().parse(image)
        assert result is not None
        assert result.full_prompt == "一只在雪地里的红狐狸"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_round_trips(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt.lower()}"
    small_image().save(path, fmt, exif=exif_with_user_comment(SD_TEXT))
    with Image.open(path) as image:
        assert png_info(image) == SD_TEXT
        check_sd_parsers(image)


def test_exif_user_comment_is_a1111_encoding() -> None:
    # piexif.helper.UserComment.dump(text, encoding="unicode"): prefix + UTF-16 BE.
    import piexif

    raw = exif_with_user_comment("ab")
    # Typed UNDEFINED, so piexif (A1111) reads bytes, not a tuple of numbers.
    assert piexif.load(raw)["Exif"][piexif.ExifIFD.UserComment] == b"UNICODE\x00\x00a\x00b"


def test_exif_non_latin1_round_trips(tmp_path: Path) -> None:
    text = format_infotext("桜の木, 夜", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1})
    path = tmp_path / "zh.jpg"
    small_image().save(path, exif=exif_with_user_comment(text))
    with Image.open(path) as image:
        assert png_info(image) == text


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"UNICODE\x00" + "Steps: 20, 猫".encode("utf-16-be"), "Steps: 20, 猫"),
        (b"UNICODE\x00" + "Steps: 20, 猫".encode("utf-16-le"), "Steps: 20, 猫"),
        (b"UNICODE\x00" + "Steps: 20".encode("utf-16"), "Steps: 20"),  # with BOM
        (b"ASCII\x00\x00\x00Steps: 20\x00", "Steps: 20"),
        (b"\x00" * 8 + b"Steps: 20", "Steps: 20"),
        (b"Steps: 20", "Steps: 20"),
        ("Steps: 20", "Steps: 20"),
    ],
)
def test_decode_user_comment(raw: bytes | str, text: str) -> None:
    assert decode_user_comment(raw) == text


def test_png_info_none_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "bare.png"
    small_image().save(path)
    with Image.open(path) as image:
        assert png_info(image) is None
    path = tmp_path / "bare.jpg"
    small_image().save(path)
    with Image.open(path) as image:
        assert png_info(image) is None


# --- hashes -----------------------------------------------------------------------------


def test_model_hash_and_short_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB, so several blocks are read
    path = tmp_path / "model.ckpt"
    path.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert model_hash(path) == full[:10]
    assert short_hash(path) == full[:12]
    assert lora_hash(path) == full[:12]  # not safetensors: plain sha256


def write_safetensors(path: Path, metadata: dict[str, str] | None, payload: bytes) -> None:
    header: dict[str, object] = {
        "w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}
    }
    if metadata is not None:
        header["__metadata__"] = metadata
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + payload)


def test_lora_hash_is_addnet_hash_for_safetensors(tmp_path: Path) -> None:
    payload = b"tensor bytes" * 100
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors(a, {"ss_output_name": "a"}, payload)
    write_safetensors(b, {"ss_output_name": "something else"}, payload)
    # The header (metadata) does not count: same tensors, same hash.
    assert lora_hash(a) == lora_hash(b) == hashlib.sha256(payload).hexdigest()[:12]
    stored = tmp_path / "c.safetensors"
    write_safetensors(stored, {"sshs_model_hash": "abcdef0123456789"}, payload)
    assert lora_hash(stored) == "abcdef012345"


def test_controlnet_entries_leave_the_file_readable_by_both_readers(tmp_path: Path) -> None:
    """The extension's ``ControlNet N`` entries are quoted values full of commas and colons:
    sd-parsers and img2imgd's own reader (A1111's PNG Info rules) still read the prompts and
    the sampler, and the entries come back whole. sd-parsers 0.6 does not know quoted values
    and takes the last ``Model:`` inside an entry for the model, as it does with A1111's own
    files from the extension, so its model is not checked here."""
    from daemon.controlnet.infotext import infotext_entries, parse
    from daemon.controlnet.units import ControlNetUnit

    units = (
        ControlNetUnit(enabled=True, module="canny", model="control_v11p_sd15_canny", weight=0.8),
        ControlNetUnit(enabled=True, module="reference_only", guidance_end=0.5),
    )
    entries = infotext_entries(units, ("control_v11p_sd15_canny [d14c016b]", "None"))
    text = format_infotext(
        "a red fox in the snow, (masterpiece:1.2)", "blurry, lowres", {**SD_PARAMS, **entries}
    )
    path = tmp_path / "out.png"
    small_image().save(path, pnginfo=pnginfo_chunk(text))
    with Image.open(path) as image:
        check_sd_parsers(image, model=False)
        read = parse_infotext(png_info(image) or "")
    assert read.params["Sampler"] == "DPM++ 2M" and read.params["Version"] == "img2imgd 0.1.0"
    assert read.params["Model"] == "dreamshaper_8"
    first, second = parse(read.params["ControlNet 0"]), parse(read.params["ControlNet 1"])
    assert first["model"] == "control_v11p_sd15_canny [d14c016b]" and first["weight"] == 0.8
    assert second["module"] == "reference_only" and second["guidance_end"] == 0.5
