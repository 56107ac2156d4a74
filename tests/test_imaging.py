"""Tests for daemon.a1111.imaging: hostile-file loading, sizes and A1111's resize modes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from daemon.a1111.imaging import (
    DEFAULT_MAX_PIXELS,
    flatten_on_white,
    load_image,
    load_mask,
    resize_image,
)
from daemon.a1111.sizes import ResizeMode, aspect_mismatch, fit_size, scaled_size
from daemon.errors import InputError
from daemon.intake.names import IMAGE_EXTENSIONS

DATA = Path(__file__).parent / "data"
ASTRONAUT = DATA / "astronaut.png"
CHELSEA = DATA / "chelsea.png"
LANCZOS = Image.Resampling.LANCZOS


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up)."""
    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------


def test_extensions_are_a1111_batch_list() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


def test_loads_sample_images_as_rgb() -> None:
    astronaut = load_image(ASTRONAUT)
    chelsea = load_image(CHELSEA)
    assert (astronaut.mode, astronaut.size) == ("RGB", (512, 512))
    assert (chelsea.mode, chelsea.size) == ("RGB", (451, 300))
    with Image.open(ASTRONAUT) as raw:
        assert np.array_equal(_array(astronaut), _array(raw.convert("RGB")))


def test_content_wins_over_extension(tmp_path: Path) -> None:
    fake_jpg = tmp_path / "really_a_png.jpg"
    Image.open(ASTRONAUT).save(fake_jpg, "PNG")
    loaded = load_image(fake_jpg)
    # Lossless PNG content: a JPEG decoder could never give the pixels back exactly.
    assert np.array_equal(_array(loaded), _array(Image.open(ASTRONAUT).convert("RGB")))


def test_truncated_png_is_input_error(tmp_path: Path) -> None:
    data = ASTRONAUT.read_bytes()
    broken = tmp_path / "half.png"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"half\.png.*truncated"):
        load_image(broken)


def test_text_file_named_png_is_input_error(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"notes\.png is not an image"):
        load_image(fake)


def test_format_outside_the_allowed_list_is_refused(tmp_path: Path) -> None:
    ppm = tmp_path / "frame.png"
    Image.new("RGB", (8, 8), "red").save(ppm, "PPM")  # Pillow could read it; we do not
    with pytest.raises(InputError, match=r"frame\.png"):
        load_image(ppm)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone\.png cannot be read"):
        load_image(tmp_path / "gone.png")


def test_pixel_cap_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10000x8000 = 80 MP: over our 64 MP cap, under Pillow's own 89 MP warning.
    bomb = _png_claiming_size(tmp_path / "big.png", 10_000, 8_000)
    assert bomb.stat().st_size < 200

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError, match=r"big\.png is 10000x8000.*limit of 64,000,000 pixels"):
        load_image(bomb)


def test_decompression_bomb_beyond_pillow_limit_is_input_error(tmp_path: Path) -> None:
    bomb = _png_claiming_size(tmp_path / "bomb.png", 20_000, 20_000)
    with pytest.raises(InputError, match=r"bomb\.png.*limit of 64,000,000 pixels"):
        load_image(bomb)
    # With a looser cap of our own, Pillow's hard limit (2 x MAX_IMAGE_PIXELS) is the one named.
    with pytest.raises(InputError, match=r"limit of 178,956,970 pixels"):
        load_image(bomb, max_pixels=10**9)


def test_custom_pixel_cap(tmp_path: Path) -> None:
    assert DEFAULT_MAX_PIXELS == 64_000_000
    with pytest.raises(InputError, match="limit of 100,000 pixels"):
        load_image(ASTRONAUT, max_pixels=100_000)
    assert load_image(ASTRONAUT, max_pixels=512 * 512).size == (512, 512)


def test_truncated_loading_must_stay_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(ASTRONAUT)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    r, g, b = _array(loaded)[16, 16]
    assert r > 240 and g < 15 and b < 15  # pure red ink on paper


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    got = _array(loaded)
    expected = np.rint(ramp / 257.0).astype(np.int32)
    for channel in range(3):
        assert np.array_equal(got[..., channel], expected)
    assert got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and 120 < got[0, 128, 0] < 136


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(0, (0, 0, 4, 8))  # left half: index 0, declared transparent
    path = tmp_path / "sprite.png"
    pal.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.mode == "RGBA"
    alpha = _array(loaded)[..., 3]
    assert (alpha[:, :4] == 0).all() and (alpha[:, 4:] == 255).all()
    assert tuple(_array(loaded)[0, 7]) == (255, 0, 0, 255)


def test_opaque_palette_la_l_and_1bit_modes(tmp_path: Path) -> None:
    cases = {
        "p.png": (Image.new("RGB", (8, 8), "green").convert("P"), "RGB"),
        "la.png": (Image.new("LA", (8, 8), (200, 100)), "RGBA"),
        "l.png": (Image.new("L", (8, 8), 77), "RGB"),
        "one.png": (Image.new("1", (8, 8), 1), "RGB"),
    }
    for name, (img, mode) in cases.items():
        img.save(tmp_path / name)
        assert load_image(tmp_path / name).mode == mode, name
    assert tuple(_array(load_image(tmp_path / "la.png"))[0, 0]) == (200, 200, 200, 100)
    assert tuple(_array(load_image(tmp_path / "l.png"))[0, 0]) == (77, 77, 77)
    assert tuple(_array(load_image(tmp_path / "one.png"))[0, 0]) == (255, 255, 255)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    px = _array(loaded)
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 50  # stored left is now the top
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 50


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    green = Image.new("RGB", (16, 16), (0, 255, 0))
    red.save(path, save_all=True, append_images=[green], duration=100, loop=0)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 2
    loaded = load_image(path)
    assert loaded.mode in {"RGB", "RGBA"}
    assert tuple(_array(loaded)[8, 8][:3]) == (255, 0, 0)


# --------------------------------------------------------------------------------------------
# flatten_on_white, load_mask
# --------------------------------------------------------------------------------------------


def test_flatten_on_white() -> None:
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    flat = flatten_on_white(rgba)
    assert flat.mode == "RGB"
    px = _array(flat)[0]
    assert tuple(px[0]) == (255, 255, 255)  # fully transparent -> white, not black
    assert tuple(px[1]) == (255, 0, 0)
    assert all(abs(v - 127) <= 1 for v in px[2])  # half-transparent black on white
    rgb = Image.open(CHELSEA).convert("RGB")
    assert flatten_on_white(rgb) is rgb


def test_load_mask_greyscale(tmp_path: Path) -> None:
    mask, note = load_mask(DATA / "astronaut.mask.png", (512, 512))
    assert note is None and mask.mode == "L"
    with Image.open(DATA / "astronaut.mask.png") as raw:
        assert np.array_equal(_array(mask), _array(raw))


def test_load_mask_uses_alpha_only_with_real_transparency(tmp_path: Path) -> None:
    # Strokes on a transparent layer: the colour is irrelevant, the alpha is the mask.
    layer = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    layer.paste((10, 20, 30, 255), (4, 4, 12, 12))
    layer.save(tmp_path / "layer.png")
    mask, _ = load_mask(tmp_path / "layer.png", (16, 16))
    assert np.array_equal(_array(mask), _array(layer.getchannel("A")))

    # Fully opaque RGBA: converted to greyscale instead.
    opaque = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (0, 0, 8, 16))
    opaque.save(tmp_path / "opaque.png")
    mask, _ = load_mask(tmp_path / "opaque.png", (16, 16))
    assert _array(mask)[0, 0] == 255 and _array(mask)[0, 15] == 0


def test_load_mask_resizes_with_note(tmp_path: Path) -> None:
    small = Image.new("L", (256, 256), 0)
    small.paste(255, (0, 0, 128, 256))
    small.save(tmp_path / "small.png")
    mask, note = load_mask(tmp_path / "small.png", (512, 512))
    assert mask.size == (512, 512) and mask.mode == "L"
    assert note == "mask was 256x256, resized to 512x512"
    assert _array(mask)[256, 100] == 255 and _array(mask)[256, 400] == 0


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "budget", "expected"),
    [
        ((451, 300), 512 * 512, (624, 416)),  # landscape
        ((300, 451), 512 * 512, (416, 624)),  # portrait
        ((1024, 1024), 512 * 512, (512, 512)),  # square, down
        ((256, 256), 512 * 512, (512, 512)),  # square, up
        ((1920, 1080), 512 * 512, (680, 384)),
        ((980, 3949), 512 * 512, (256, 1024)),  # full budget beats a 0.5 % closer ratio
    ],
)
def test_fit_size_examples(size: tuple[int, int], budget: int, expected: tuple[int, int]) -> None:
    assert fit_size(*size, max_pixels=budget) == expected


def test_fit_size_properties_over_many_shapes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(400):
        width, height = (int(v) for v in rng.integers(16, 5000, size=2))
        budget = int(rng.choice([512 * 512, 768 * 768, 1024 * 1024]))
        w, h = fit_size(width, height, max_pixels=budget)
        assert w % 8 == 0 and h % 8 == 0 and w >= 8 and h >= 8
        assert w * h <= budget
        # Aspect within one 8-px step of the input's.
        assert aspect_mismatch((width, height), (w, h)) < 8 / min(w, h) + 1e-9
        if max(width, height) <= 8 * min(width, height):
            # Ordinary shapes land close to the budget (extreme strips trade area for
            # aspect ratio, since their short side only has a few multiples of 8 to pick).
            assert w * h > budget * 0.95


def test_fit_size_other_multiple_and_extreme_aspect() -> None:
    w, h = fit_size(451, 300, max_pixels=512 * 512, multiple=64)
    assert (w % 64, h % 64) == (0, 0) and w * h <= 512 * 512
    assert fit_size(100_000, 10, max_pixels=64 * 64) == (512, 8)
    assert fit_size(10, 100_000, max_pixels=64 * 64) == (8, 512)
    with pytest.raises(ValueError):
        fit_size(0, 10, max_pixels=512 * 512)


def test_scaled_size() -> None:
    assert scaled_size(451, 300, 1.5) == (672, 448)  # int(676.5)=676 -> 672, 450 -> 448
    assert scaled_size(512, 512, 1.0) == (512, 512)
    assert scaled_size(10, 10, 0.5) == (8, 8)  # never below 8
    assert scaled_size(1000, 600, 0.25) == (248, 144)
    with pytest.raises(ValueError):
        scaled_size(10, 10, 0)


def test_aspect_mismatch() -> None:
    assert aspect_mismatch((512, 512), (1024, 1024)) == 0.0
    assert aspect_mismatch((451, 300), (512, 512)) == pytest.approx(451 / 300 - 1)
    assert aspect_mismatch((300, 451), (512, 512)) == pytest.approx(451 / 300 - 1)
    assert aspect_mismatch((624, 416), (451, 300)) < 0.01


# --------------------------------------------------------------------------------------------
# ResizeMode
# --------------------------------------------------------------------------------------------


def test_resize_mode_parse() -> None:
    assert [ResizeMode.parse(i) for i in range(4)] == list(ResizeMode)
    assert ResizeMode.parse("2") is ResizeMode.RESIZE_AND_FILL
    assert ResizeMode.parse("Crop and resize") is ResizeMode.CROP_AND_RESIZE
    assert ResizeMode.parse("  JUST   RESIZE ") is ResizeMode.JUST_RESIZE
    assert ResizeMode.parse("Just resize (latent upscale)") is ResizeMode.LATENT_UPSCALE
    assert ResizeMode.parse("latent upscale") is ResizeMode.LATENT_UPSCALE
    assert ResizeMode.parse(ResizeMode.JUST_RESIZE) is ResizeMode.JUST_RESIZE


@pytest.mark.parametrize("bad", [4, -1, "stretch", "", True])
def test_resize_mode_parse_rejects(bad: int | str) -> None:
    with pytest.raises(ValueError, match=r"valid values are 0 or 'just resize'.*3 or"):
        ResizeMode.parse(bad)


# --------------------------------------------------------------------------------------------
# resize_image
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.open(CHELSEA).convert("RGB")


def test_just_resize_stretches(chelsea: Image.Image) -> None:
    out = resize_image(chelsea, ResizeMode.JUST_RESIZE, 256, 256)
    assert out.size == (256, 256)
    assert np.array_equal(_array(out), _array(chelsea.resize((256, 256), LANCZOS)))


def test_crop_and_resize_keeps_the_centre(chelsea: Image.Image) -> None:
    out = resize_image(chelsea, ResizeMode.CROP_AND_RESIZE, 256, 256)
    assert out.size == (256, 256) and out.mode == "RGB"
    # Cover: 451x300 scaled to 384x256 (height fits), 64 px cut from each side.
    cover = chelsea.resize((384, 256), LANCZOS)
    assert np.array_equal(_array(out), _array(cover.crop((64, 0, 320, 256))))
    # And for a portrait target the top and bottom are cut instead.
    tall = resize_image(chelsea, ResizeMode.CROP_AND_RESIZE, 128, 256)
    cover = chelsea.resize((384, 256), LANCZOS)
    assert np.array_equal(_array(tall), _array(cover.crop((128, 0, 256, 256))))


def test_resize_and_fill_landscape_source_fills_top_and_bottom(chelsea: Image.Image) -> None:
    out = resize_image(chelsea, ResizeMode.RESIZE_AND_FILL, 256, 256)
    assert out.size == (256, 256)
    src_h = 300 * 256 // 451  # 170
    top = 128 - src_h // 2  # 43 rows of fill above, 43 below
    fitted = chelsea.resize((256, src_h), LANCZOS)
    px = _array(out)
    assert np.array_equal(px[top : top + src_h], _array(fitted))
    fitted_px = _array(fitted)
    top_band, bottom_band = px[:top], px[top + src_h :]
    assert top_band.shape[0] == 43 and bottom_band.shape[0] == 43
    # Each band is one stretched edge row: every row identical, close to the edge row.
    assert (top_band == top_band[0]).all() and (bottom_band == bottom_band[0]).all()
    assert np.abs(top_band[0] - fitted_px[0]).mean() < 6
    assert np.abs(bottom_band[0] - fitted_px[-1]).mean() < 6
    assert np.abs(top_band[0] - fitted_px[-1]).mean() > np.abs(top_band[0] - fitted_px[0]).mean()


def test_resize_and_fill_portrait_source_fills_left_and_right(chelsea: Image.Image) -> None:
    portrait = chelsea.transpose(Image.Transpose.TRANSPOSE)  # 300x451
    out = resize_image(portrait, ResizeMode.RESIZE_AND_FILL, 256, 256)
    src_w = 300 * 256 // 451
    left = 128 - src_w // 2
    px = _array(out)
    assert np.array_equal(
        px[:, left : left + src_w], _array(portrait.resize((src_w, 256), LANCZOS))
    )
    left_band, right_band = px[:, :left], px[:, left + src_w :]
    assert left_band.shape[1] == 43 and right_band.shape[1] == 43
    assert (left_band == left_band[:, :1]).all() and (right_band == right_band[:, :1]).all()


def test_resize_and_fill_same_aspect_is_plain_resize() -> None:
    img = Image.open(ASTRONAUT).convert("RGB")
    out = resize_image(img, ResizeMode.RESIZE_AND_FILL, 256, 256)
    assert np.array_equal(_array(out), _array(img.resize((256, 256), LANCZOS)))


def test_resize_keeps_mask_mode() -> None:
    mask = Image.open(DATA / "astronaut.mask.png")
    for mode in ResizeMode:
        out = resize_image(mask, mode, 640, 384)
        assert out.mode == "L", mode


def test_latent_upscale_only_rounds_to_multiples_of_8(chelsea: Image.Image) -> None:
    out = resize_image(chelsea, ResizeMode.LATENT_UPSCALE, 1024, 1024)
    assert out.size == (448, 296)
    same = Image.open(ASTRONAUT).convert("RGB")
    kept = resize_image(same, ResizeMode.LATENT_UPSCALE, 1024, 1024)
    assert kept.size == (512, 512) and np.array_equal(_array(kept), _array(same))
    assert resize_image(Image.new("RGB", (5, 3)), ResizeMode.LATENT_UPSCALE, 8, 8).size == (8, 8)
