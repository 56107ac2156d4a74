"""The pure parts of ControlNet: the unit's keys, its infotext entry, the control image's
geometry, the preprocessors and the guidance schedule, against the extension's rules and
real infotexts (sd-webui-controlnet 1.1.455)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from daemon.a1111.infotext import format_parameters, parse_parameters
from daemon.controlnet.images import (
    area_resize,
    fit_control,
    hwc3,
    pixel_perfect_resolution,
    resize_with_pad,
)
from daemon.controlnet.infotext import infotext_entries, parse, serialize, units_from_params
from daemon.controlnet.preprocessors import PREPROCESSORS, opencv_canny, preprocess
from daemon.controlnet.schedule import conditional_only, control_scales, is_active
from daemon.controlnet.units import ControlMode, ControlNetUnit, ControlResize
from daemon.engines.controlnet_models import legacy_hash

REAL_ENTRY = (
    "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, "
    "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 192.0, Threshold B: 255.0, "
    "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
    "Control Mode: ControlNet is more important"
)
"""A unit as a public PNG written by the extension carries it."""


def unit(**keys: Any) -> ControlNetUnit:
    return ControlNetUnit(**{"enabled": True, "model": "builtin:tiny-controlnet", **keys})


# --- the unit -----------------------------------------------------------------------------


def test_defaults_are_the_extensions() -> None:
    plain = ControlNetUnit()
    assert not plain.enabled and plain.module == "none" and plain.model == "None"
    assert plain.weight == 1.0 and (plain.guidance_start, plain.guidance_end) == (0.0, 1.0)
    assert plain.resize_mode is ControlResize.INNER_FIT  # "Crop and Resize"
    assert plain.control_mode is ControlMode.BALANCED and not plain.pixel_perfect
    assert (plain.processor_res, plain.threshold_a, plain.threshold_b) == (-1, -1.0, -1.0)


def test_an_enabled_unit_takes_its_preprocessors_slider_defaults() -> None:
    canny = unit(module="canny")
    assert (canny.processor_res, canny.threshold_a, canny.threshold_b) == (512, 100.0, 200.0)
    # A hidden slider is 0..1 with value 0.5: why real infotexts say "Threshold A: 0.5".
    inverted = unit(module="invert (from white bg & black line)")
    assert (inverted.processor_res, inverted.threshold_a, inverted.threshold_b) == (0.5, 0.5, 0.5)
    assert unit(module="canny", threshold_a=300, threshold_b=20).threshold_a == 100.0
    assert unit(module="canny", threshold_a=300, threshold_b=20).threshold_b == 20.0
    assert unit(module="blur_gaussian", processor_res=4000).processor_res == 512
    assert unit(module="tile_resample", threshold_a=2).threshold_a == 2.0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Crop and Resize", ControlResize.INNER_FIT),
        ("just resize", ControlResize.RESIZE),
        ("Envelope (Outer Fit)", ControlResize.OUTER_FIT),
        ("Inner Fit (Scale to Fit)", ControlResize.INNER_FIT),
        (2, ControlResize.OUTER_FIT),
        (3, ControlResize.RESIZE),  # A1111's latent upscale
    ],
)
def test_resize_mode_labels_aliases_and_integers(given: Any, expected: ControlResize) -> None:
    assert unit(resize_mode=given).resize_mode is expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0, ControlMode.BALANCED), ("my prompt is more important", ControlMode.PROMPT),
     ("ControlNet is more important", ControlMode.CONTROL)],
)  # fmt: skip
def test_control_mode_labels_and_integers(given: Any, expected: ControlMode) -> None:
    assert unit(control_mode=given).control_mode is expected


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"module": "depth_anything"},
            "unknown ControlNet preprocessor 'depth_anything'; known: none",
        ),
        ({"guidance_start": 0.6, "guidance_end": 0.4}, "guidance_start (0.6) is after"),
        ({"model": "None"}, "an enabled unit needs a `model`"),
        ({"weight": 2.5}, "less than or equal to 2"),
        ({"resize_mode": "stretch"}, "unknown value 'stretch'"),
        ({"low_vram": True}, "Extra inputs are not permitted"),
    ],
)
def test_mistakes_are_named(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        unit(**keys)


# --- the infotext -------------------------------------------------------------------------


def test_a_real_entry_reads_back_and_is_written_again_byte_for_byte() -> None:
    fields = parse(REAL_ENTRY)
    assert fields["enabled"] is True and fields["threshold_a"] == 192.0
    assert fields["processor_res"] == 512 and fields["pixel_perfect"] is False
    read = ControlNetUnit(**fields)
    assert read.control_mode is ControlMode.CONTROL
    assert serialize(read, read.model) == REAL_ENTRY


def test_entries_count_enabled_units_and_are_quoted_in_the_parameter_line() -> None:
    units = (unit(module="canny"), ControlNetUnit(), unit(module="invert", weight=0.5))
    entries = infotext_entries(units, ("tiny-controlnet [e3b0c442]", "tiny-controlnet [e3b0c442]"))
    assert list(entries) == ["ControlNet 0", "ControlNet 1"]
    assert entries["ControlNet 1"].startswith(
        "Module: invert, Model: tiny-controlnet [e3b0c442], Weight: 0.5, "
        "Resize Mode: Crop and Resize, Processor Res: 0.5, Threshold A: 0.5, Threshold B: 0.5"
    )
    line = format_parameters({"Steps": 4, **entries})
    assert 'ControlNet 0: "Module: canny, ' in line
    read = units_from_params(parse_parameters(line))
    assert [fields["module"] for fields in read] == ["canny", "invert"]


def test_an_entry_that_could_not_be_read_back_is_not_written() -> None:
    assert serialize(unit(), "my, model") == ""
    assert infotext_entries((unit(),), ("a: b",)) == {}


def test_a_legacy_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="not a ControlNet entry"):
        parse("preprocessor canny")


# --- geometry -----------------------------------------------------------------------------


def test_pixel_perfect_resolution_is_the_extensions() -> None:
    # 600x400 control for a 512x512 painting: cover (max k) → 512/400·400 = 512
    assert pixel_perfect_resolution((600, 400), (512, 512), ControlResize.INNER_FIT) == 512
    # fit (min k): 512/600 · 400 = 341.33 → 341
    assert pixel_perfect_resolution((600, 400), (512, 512), ControlResize.OUTER_FIT) == 341
    # the target is first rounded down to the latent grid: 516 → 512
    assert pixel_perfect_resolution((100, 100), (516, 516), ControlResize.RESIZE) == 512


def picture(width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
    image[: height // 4] = (255, 255, 255)  # a white band on top
    return image


def test_the_three_resize_modes() -> None:
    image = picture(200, 100)
    stretched = fit_control(image, ControlResize.RESIZE, (64, 64))
    cropped = fit_control(image, ControlResize.INNER_FIT, (64, 64))
    filled = fit_control(image, ControlResize.OUTER_FIT, (64, 64))
    assert stretched.shape == cropped.shape == filled.shape == (64, 64, 3)
    # Crop and Resize keeps the middle: its left column is no longer the image's black edge.
    assert cropped[40, 0, 0] > 40 and stretched[40, 0, 0] < 10
    # Resize and Fill: a 64x32 picture in the middle, the rest the border's median colour.
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert (filled[0, 0] == np.median(border, axis=0).astype(np.uint8)).all()
    assert (filled[16:48] != filled[0, 0]).any()


def test_a_binary_map_stays_binary_when_resized() -> None:
    edges = np.zeros((50, 50, 3), np.uint8)
    edges[20:30, 20:30] = 255
    resized = fit_control(edges, ControlResize.RESIZE, (77, 77))
    assert set(np.unique(resized)) <= {0, 255}


def test_pad_to_64_keeps_the_aspect_and_crops_back() -> None:
    padded, remove_pad = resize_with_pad(picture(150, 100), 100)
    assert padded.shape == (128, 192, 3)
    assert remove_pad(padded).shape == (100, 150, 3)


def test_rgba_is_laid_on_white_and_grey_repeated() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)  # black, fully transparent
    assert (hwc3(rgba) == 255).all()
    assert hwc3(np.full((2, 2), 7, np.uint8)).shape == (2, 2, 3)


# --- preprocessors ------------------------------------------------------------------------


def test_every_preprocessor_gives_a_three_channel_map() -> None:
    image = picture(150, 100)
    for name in PREPROCESSORS:
        out = preprocess(name, image, 128, 100, 200)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name


def test_what_each_preprocessor_does() -> None:
    image = picture(150, 100)
    assert (preprocess("invert", image, 0.5, 0.5, 0.5) == 255 - image).all()
    assert preprocess("none", image, 512, 0.5, 0.5) is image
    assert preprocess("tile_resample", image, 512, 2.0, 0.5).shape == (50, 75, 3)
    assert preprocess("tile_resample", image, 512, 1.0, 0.5).shape == image.shape
    edges = preprocess("canny", image, 128, 100, 200)
    assert edges.shape == (128, 192, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[30:34].max() == 255  # the white band's lower edge (at 25 of 100 → 32 of 128)
    blurred = preprocess("blur_gaussian", image, 100, 9.0, 0.5)
    assert np.abs(np.diff(blurred[:, 75, 1].astype(int))).max() < 40  # the band's edge, soft
    dark = np.full((64, 64, 3), 255, np.uint8)
    dark[:, 30:33] = 0  # a black line on white
    lines = preprocess("lineart_standard (from white bg & black line)", dark, 64, 0.5, 0.5)
    assert lines[:, 31].min() > 100 and lines[:, 5].max() == 0
    binary = preprocess("binary", dark, 64, 0, 0.5)
    assert binary[0, 31, 0] == 255 and binary[0, 5, 0] == 0  # white where it is dark


# --- schedule -----------------------------------------------------------------------------


def test_guidance_counts_over_the_calls_that_run() -> None:
    assert [i for i in range(10) if is_active(i, 10, 0.0, 0.5)] == [0, 1, 2, 3, 4]
    assert [i for i in range(10) if is_active(i, 10, 0.3, 1.0)] == [3, 4, 5, 6, 7, 8, 9]
    assert not any(is_active(i, 4, 0.0, 0.0) for i in range(4))  # ends before the first


def test_control_mode_scales() -> None:
    assert control_scales(ControlMode.BALANCED, 0.7, 13) == [0.7] * 13
    soft = control_scales(ControlMode.PROMPT, 1.0, 13)
    assert soft[-1] == 1.0 and round(soft[0], 4) == 0.0994 and round(soft[11], 3) == 0.825
    assert round(control_scales(ControlMode.CONTROL, 1.0, 10)[-1], 4) == 0.5615  # SDXL's mid
    assert conditional_only(ControlMode.CONTROL) and not conditional_only(ControlMode.PROMPT)


def test_the_model_label_hash_is_a1111s_old_one(tmp_path) -> None:
    small = tmp_path / "small.safetensors"
    small.write_bytes(b"x" * 10)
    assert legacy_hash(small) == "e3b0c442"  # under 1 MiB: the hash of nothing
    data = bytes(range(256)) * 5000
    big = tmp_path / "big.safetensors"
    big.write_bytes(data)
    assert legacy_hash(big) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_canny_is_opencvs_thin_edges_on_any_channel() -> None:
    # Two colours of the same luma (38): a grey-level Canny would see no edge at all.
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (128, 0, 0)
    image[:, 32:] = (0, 65, 0)
    edges = opencv_canny(image, 100, 200)
    assert edges[:, 31].all() and edges.sum() == 64  # one column: non-maximum suppression
    faint = np.full((64, 64, 3), 100, np.uint8)
    faint[:, 32:] = 130  # |gx| + |gy| = 4·30 = 120: over the low threshold, not the high
    assert not opencv_canny(faint, 100, 200).any()
    assert opencv_canny(faint, 100, 110).sum() == 64


def test_area_resize_is_the_mean_of_the_area_each_pixel_covers() -> None:
    blocks = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10
    assert area_resize(blocks, (2, 2))[:, :, 0].tolist() == [[25, 45], [105, 125]]
    row = np.array([[[30], [60], [90]]], np.uint8)  # 3 → 2: the middle pixel split in half
    assert area_resize(row, (2, 1))[0, :, 0].tolist() == [40, 80]  # (30+30)/1.5, (30+90)/1.5
