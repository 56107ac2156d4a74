"""What a task's results deliver, as values: the files of one output group and their contents.

A task says *what* it writes; :mod:`daemon.deliver.results` says *how*: a free name for the
whole group, the journal told before the first file, each file written whole, and the group
removed again if one write fails.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from daemon.a1111.alpha import with_alpha
from daemon.paths import portable_name


@dataclass(frozen=True)
class ImageFile:
    """A picture with A1111's parameters in it (PNG chunk or EXIF UserComment)."""

    image: Image.Image
    infotext: str
    output_format: str
    quality: int


@dataclass(frozen=True)
class TextFile:
    text: str


@dataclass(frozen=True)
class CopyOf:
    """The input itself, copied beside its results."""

    source: Path


Content = ImageFile | TextFile | CopyOf


@dataclass(frozen=True)
class OutputGroup:
    """Files named ``<stem><suffix>``: every stem with every suffix, claimed together so
    that an output and its sidecar always share one name."""

    stems: tuple[str, ...]  # as wanted; a taken name gets -1, -2 … for the whole group
    suffixes: tuple[str, ...]
    contents: tuple[tuple[Content, ...], ...]  # per stem, one per suffix


def output_stems(stem: str, count: int) -> list[str]:
    """One result keeps the input's stem; a batch numbers them ``<stem>_1`` … ``<stem>_N``."""
    return [stem] if count == 1 else [f"{stem}_{index}" for index in range(1, count + 1)]


def image_group(
    source: Path,
    images: Sequence[Image.Image],
    infotexts: Sequence[str],
    *,
    output_format: str,
    quality: int,
    controls: Sequence[Image.Image] = (),
    alpha: Image.Image | None = None,
) -> OutputGroup:
    """Each image, and its parameters again in ``<stem>.txt``; each control image beside it
    as ``<stem>.control.png`` (unit 0) and ``<stem>.control-<n>.png``, the names a control
    image dropped beside an input has. `alpha` (keep_alpha) makes each image RGBA."""
    stems = output_stems(portable_name(source.stem), len(images))
    control_files = tuple(ImageFile(control, "", "png", quality) for control in controls)
    return OutputGroup(
        stems=tuple(stems),
        suffixes=(f".{output_format}", ".txt", *map(control_suffix, range(len(controls)))),
        contents=tuple(
            (
                ImageFile(with_alpha(image, alpha), text, output_format, quality),
                TextFile(text + "\n"),
                *control_files,
            )
            for image, text in zip(images, infotexts, strict=True)
        ),
    )


def control_suffix(unit: int) -> str:
    """How the control image of the `unit`-th enabled ControlNet unit is named."""
    return ".control.png" if unit == 0 else f".control-{unit}.png"


def caption_group(
    source: Path, line: str, details: dict[str, Any], *, copy_image: bool
) -> OutputGroup:
    """The caption on one line in ``<stem>.txt``, its details in ``<stem>.json``, and with
    `copy_image` the input beside them."""
    files: list[tuple[str, Content]] = [
        (".txt", TextFile(line + "\n")),
        (".json", TextFile(json.dumps(details, indent=2, ensure_ascii=False) + "\n")),
    ]
    if copy_image:
        files.append((source.suffix, CopyOf(source)))
    return OutputGroup(
        stems=(portable_name(source.stem),),
        suffixes=tuple(suffix for suffix, _ in files),
        contents=(tuple(content for _, content in files),),
    )
