"""``keep_alpha``: a transparent input gives a result with the input's alpha, resized as the
picture was, through the real daemon (real folders, the real tiny pipeline, 64 px).

The input is a 96x48 RGBA picture (a ramp of alpha, with a fully transparent corner) painted
at 64x64, so that each resize mode places it differently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from loguru import logger
from PIL import Image
from sd_parsers import ParserManager

from daemon.a1111.alpha import result_alpha
from daemon.a1111.imaging import resize_image
from daemon.a1111.infotext import png_info
from daemon.a1111.sizes import ResizeMode
from daemon.ops.service import Daemon
from daemon.render.cache import ModelCache
from tests.conftest import DATA, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = {"width": 64, "height": 64, "resize_mode": "Crop and Resize"}
PROFILES: dict[str, dict[str, object]] = {
    "crop": {"keep_alpha": True, "resize_mode": "Crop and Resize"},
    "just": {"keep_alpha": True, "resize_mode": "Just Resize"},
    "fill": {"keep_alpha": True, "resize_mode": "Resize and Fill"},
    "latent": {"keep_alpha": True, "resize_mode": "Just Resize (latent upscale)"},
    "masked": {"keep_alpha": True, "resize_mode": "Crop and Resize"},
    "only-masked": {"keep_alpha": True, "inpaint_full_res": True, "inpaint_full_res_padding": 4},
    "webp": {"keep_alpha": True, "output_format": "webp", "output_quality": 100},
    "jpg": {"keep_alpha": True, "output_format": "jpg"},
    "off": {"keep_alpha": False},
    "unset": {},
}


def transparent_input() -> Image.Image:
    """chelsea at 96x48 with an alpha ramp left to right and a fully transparent corner."""
    with Image.open(DATA / "chelsea.png") as source:
        picture = source.convert("RGB").resize((96, 48))
    ramp = np.tile(np.linspace(0, 255, 96).astype(np.uint8), (48, 1))
    ramp[:12, :24] = 0
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.fromarray(ramp, mode="L"))
    return rgba


def mask() -> Image.Image:
    plane = Image.new("L", (96, 48), 0)
    plane.paste(255, (30, 10, 70, 40))
    return plane


@pytest.fixture(scope="module")
def daemon_log() -> list[str]:
    """The log lines of the module's daemon run."""
    return []


@pytest.fixture(scope="module")
def painted(
    tmp_path_factory: pytest.TempPathFactory,
    state_dir: Path,
    models: ModelCache,
    daemon_log: list[str],
) -> Workspace:
    """Every profile paints the transparent input, and ``crop``/``off`` an opaque one too."""
    root = tmp_path_factory.mktemp("transparency")
    workspace = Workspace(root, state_dir).create()
    staged = root / "staged"
    staged.mkdir()
    transparent_input().save(staged / "layer.png")
    Image.open(DATA / "chelsea.png").convert("RGB").resize((96, 48)).save(staged / "opaque.png")
    mask().save(staged / "layer.mask.png")
    for name, keys in PROFILES.items():
        workspace.profile(name, **{**SIZE, **keys})
        if name.endswith("masked"):
            workspace.drop(staged / "layer.mask.png", f"{name}/layer.mask.png")
        workspace.drop(staged / "layer.png", f"{name}/layer.png")
    for name in ("crop", "off"):
        workspace.drop(staged / "opaque.png", f"{name}/opaque.png")
    handler = logger.add(lambda message: daemon_log.append(str(message).rstrip()), level="INFO")
    try:
        Daemon(workspace.settings(), models=models, watch=False).run_once(tick=0.01)
    finally:
        logger.remove(handler)
    return workspace


def result(workspace: Workspace, profile: str, name: str = "layer.png") -> Image.Image:
    with Image.open(workspace.outbox / profile / name) as image:
        image.load()
        return image


def alpha_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A"))


def input_alpha() -> Image.Image:
    return transparent_input().getchannel("A")


@pytest.mark.parametrize(
    ("profile", "mode"),
    [("crop", ResizeMode.CROP_AND_RESIZE), ("just", ResizeMode.JUST_RESIZE),
     ("masked", ResizeMode.CROP_AND_RESIZE),
     # latent upscale stretches the picture to the size: its alpha is just resized
     ("latent", ResizeMode.JUST_RESIZE)],
)  # fmt: skip
def test_the_result_has_the_input_alpha_resized_as_the_picture(
    painted: Workspace, profile: str, mode: ResizeMode
) -> None:
    image = result(painted, profile)
    assert image.mode == "RGBA" and image.size == (64, 64)
    expected = np.asarray(resize_image(input_alpha(), mode, 64, 64))
    assert np.array_equal(alpha_of(image), expected)


def test_resize_and_fill_bands_are_transparent_and_the_picture_keeps_its_alpha(
    painted: Workspace,
) -> None:
    alpha = alpha_of(result(painted, "fill"))
    # 96x48 fitted into 64x64 is 64x32 at rows 16..47; the rows above and below are fill
    assert not alpha[:16].any() and not alpha[48:].any()
    scaled = np.asarray(input_alpha().resize((64, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(alpha[16:48], scaled)
    assert np.array_equal(
        alpha[16:48],
        np.asarray(resize_image(input_alpha(), ResizeMode.RESIZE_AND_FILL, 64, 64))[16:48],
    )


def test_only_masked_inpainting_keeps_the_alpha_of_the_whole_picture(painted: Workspace) -> None:
    image = result(painted, "only-masked")
    assert image.mode == "RGBA" and image.size == (96, 48)
    assert np.array_equal(alpha_of(image), np.asarray(input_alpha()))


def test_webp_keeps_the_alpha_and_jpeg_is_written_without_it_saying_so(
    painted: Workspace, daemon_log: list[str]
) -> None:
    webp = result(painted, "webp", "layer.webp")
    assert webp.mode == "RGBA"
    expected = np.asarray(resize_image(input_alpha(), ResizeMode.CROP_AND_RESIZE, 64, 64))
    assert np.abs(alpha_of(webp).astype(int) - expected).max() <= 2  # lossy even at 100
    assert result(painted, "jpg", "layer.jpg").mode == "RGB"
    assert (painted.outbox / "jpg" / "layer.txt").exists(), "delivered, with its parameters"
    said = [line for line in daemon_log if "JPEG has no transparency" in line]
    assert len(said) == 1 and "jpg/layer.png" in said[0] and "output_format: png" in said[0]


def test_without_keep_alpha_the_result_is_rgb_as_before(painted: Workspace) -> None:
    """keep_alpha false, or unset on a profile that is not live: the input's alpha is
    flattened on white and lost, as A1111 does."""
    assert result(painted, "off").mode == "RGB"
    assert result(painted, "unset").mode == "RGB"
    assert np.array_equal(np.asarray(result(painted, "off")), np.asarray(result(painted, "unset")))


def test_an_opaque_input_is_painted_exactly_as_without_keep_alpha(painted: Workspace) -> None:
    assert (painted.outbox / "crop" / "opaque.png").read_bytes() == (
        painted.outbox / "off" / "opaque.png"
    ).read_bytes()
    assert result(painted, "crop", "opaque.png").mode == "RGB"
    assert np.array_equal(
        np.asarray(result(painted, "crop", "opaque.png")),
        np.asarray(result(painted, "off", "opaque.png")),
    )


def test_the_parameters_stay_readable_in_a_transparent_png(painted: Workspace) -> None:
    with Image.open(painted.outbox / "crop" / "layer.png") as image:
        assert image.mode == "RGBA"
        text = png_info(image)
        parsed = ParserManager().parse(image)  # an independent reader of A1111 metadata
    assert text is not None and text.startswith("a test")
    assert parsed is not None and parsed.full_prompt == "a test"


def test_resize_and_fill_side_bands_are_transparent_too() -> None:
    """A tall input fitted into a square: the fill is left and right."""
    alpha = Image.new("L", (20, 40), 200)
    placed = np.asarray(result_alpha(alpha, ResizeMode.RESIZE_AND_FILL, (64, 64)))
    assert not placed[:, :16].any() and not placed[:, 48:].any()
    assert (placed[:, 16:48] == 200).all()
