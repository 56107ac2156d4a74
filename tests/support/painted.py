"""Reading a painted result back: its pixels, its infotext, and the log of the daemon run
that painted it (for the module-scoped runs of the family tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.a1111.infotext import Infotext, parse_infotext, png_info
from tests.support.workspace import Workspace


def painted_with(path: Path) -> Infotext:
    """The infotext a result was written with (it must have one)."""
    with Image.open(path) as image:
        text = png_info(image)
    assert text is not None, path
    return parse_infotext(text)


def pixels(path: Path) -> np.ndarray:
    """A result's RGB pixels, signed so that differences do not wrap."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@dataclass(frozen=True)
class Run:
    """A finished daemon run: its folders and its log lines (INFO and up)."""

    workspace: Workspace
    log: list[str]


@contextmanager
def logged() -> Iterator[list[str]]:
    """The daemon's log lines (INFO and up) while the block runs, in a list."""
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message).rstrip()), level="INFO")
    try:
        yield lines
    finally:
        logger.remove(handler)
